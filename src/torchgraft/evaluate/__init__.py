"""Evaluation: metrics, calibration and the evaluation of a run.

The names below load on first use: prediction imports evaluate.familiar (the unfamiliar
score), and `import torchgraft` must not pay for torchmetrics and matplotlib with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torchgraft.evaluate.calibration import expected_calibration_error, fit_temperature
    from torchgraft.evaluate.evaluator import Evaluation, evaluate_run
    from torchgraft.evaluate.metrics import Metrics, classification_metrics

_MODULES = {
    "Evaluation": "evaluator",
    "Metrics": "metrics",
    "classification_metrics": "metrics",
    "evaluate_run": "evaluator",
    "expected_calibration_error": "calibration",
    "fit_temperature": "calibration",
}

__all__ = [
    "Evaluation",
    "Metrics",
    "classification_metrics",
    "evaluate_run",
    "expected_calibration_error",
    "fit_temperature",
]


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULES[name]}"), name)
