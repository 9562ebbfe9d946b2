"""``python -m pipelines.cli``: what a Ray Job's entrypoint runs (no console script needed on the cluster)."""
import sys

from pipelines.cli.main import main

sys.exit(main())
