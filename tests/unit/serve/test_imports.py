"""The web stack is imported by the app alone: `import torchgraft` stays light."""

from __future__ import annotations

import subprocess
import sys


def test_importing_torchgraft_does_not_import_the_web_stack() -> None:
    code = (
        "import sys, torchgraft, torchgraft.api, torchgraft.serve\n"
        "print(sorted(m for m in ('fastapi', 'starlette', 'uvicorn', 'httpx') if m in sys.modules))"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "[]"


def test_prediction_does_not_import_the_evaluation_stack() -> None:
    """The predictor scores unfamiliar inputs with evaluate.familiar; that must not bring in
    torchmetrics and matplotlib (the evaluator's), which `graft predict` never uses."""
    code = (
        "import sys, torchgraft, torchgraft.serve.predictor\n"
        "print(sorted(m for m in ('torchmetrics', 'matplotlib') if m in sys.modules))"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "[]"


def test_the_cli_answers_help_without_importing_torch() -> None:
    """`graft --help` and `graft train --help` answer in well under a second because torch
    (seconds to import) loads inside the commands, never for the help."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from torchgraft.cli import app\n"
        "for args in (['--help'], ['train', '--help'], ['predict', '--help']):\n"
        "    assert CliRunner().invoke(app, args).exit_code == 0, args\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules))"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "[]"
