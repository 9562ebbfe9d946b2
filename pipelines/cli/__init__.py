"""The `medr1` command: ``main.py`` builds the parser; one module per subcommand. Nothing imports these."""
