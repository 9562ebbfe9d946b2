"""Programs a user runs: data preparation, the tiny model, training, evaluation; the `medr1` CLI."""
