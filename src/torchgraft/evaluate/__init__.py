"""Evaluation: metrics, calibration and the evaluation of a run."""

from torchgraft.evaluate.calibration import expected_calibration_error, fit_temperature
from torchgraft.evaluate.evaluator import Evaluation, evaluate_run
from torchgraft.evaluate.metrics import Metrics, classification_metrics

__all__ = [
    "Evaluation",
    "Metrics",
    "classification_metrics",
    "evaluate_run",
    "expected_calibration_error",
    "fit_temperature",
]
