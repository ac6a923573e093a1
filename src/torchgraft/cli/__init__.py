"""The `graft` command: each subcommand is a few lines over torchgraft.api.

Only this package prints. User errors become one line on stderr and exit status 2; runtime
failures exit 1; Ctrl-C exits 130 after training has kept its best weights.
"""

# Importing the command modules registers their commands on `app`, in this order in --help:
# the pipeline from left to right.
# isort: off
from torchgraft.cli import training, evaluation, deployment, data, cache

# isort: on
from torchgraft.cli.common import app, main

__all__ = ["app", "cache", "data", "deployment", "evaluation", "main", "training"]
