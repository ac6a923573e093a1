"""torchgraft: from tensors to a deployed image classifier.

The verbs live in `torchgraft.api` (train, predict, ...): `torchgraft.train` is the training
package, so the verbs are not re-exported here under the same names.

The names below that need torch load on first use (PEP 562), so that `graft --help` and the
CLI's usage errors answer without importing torch, which takes seconds.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from torchgraft.errors import GraftError, UserError

if TYPE_CHECKING:
    from torchgraft import api
    from torchgraft.artifact import Run, RunInfo
    from torchgraft.serve.predictor import Prediction, Predictor

__version__ = "0.1.0"

# name -> the module it comes from; `api` is the module itself.
_LAZY = {
    "api": "torchgraft.api",
    "Run": "torchgraft.artifact",
    "RunInfo": "torchgraft.artifact",
    "Prediction": "torchgraft.serve.predictor",
    "Predictor": "torchgraft.serve.predictor",
}

__all__ = [
    "GraftError",
    "Prediction",
    "Predictor",
    "Run",
    "RunInfo",
    "UserError",
    "__version__",
    "api",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'torchgraft' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    value = module if name == "api" else getattr(module, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
