"""Parity of an export with eager PyTorch, on real images.

A float format must pick the same top-1 class on every image and stay within the float
tolerance of eager PyTorch's probabilities; an int8 format may differ more but must not lose
more than INT8_MAX_ACCURACY_DROP of accuracy, nor change the top-1 answer on more than
INT8_MAX_DISAGREEMENT of the images (accuracy alone hides flips that cancel out: right
answers turned wrong and as many wrong ones turned right).

The float tolerance is FLOAT_TOLERANCE, unless eager PyTorch itself is further than that
from the exact answer: float32 rounding in a deep network (EfficientNet-Lite0 at 64 px:
2.4e-4 from float64 on 1000 mnist5k images) is no export bug, and another engine's different
summation order rounds differently (onnxruntime: 6.5e-4 there). So the reference is
also computed in float64, and when eager float32's own error exceeds FLOAT_TOLERANCE, a
float export may differ by NOISE_FACTOR times that error instead. A wrong export (perturbed
weights) differs by orders of magnitude more.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from torchgraft.export.model import ProbabilityModel, numpy_predict, predict_in_batches

FLOAT_TOLERANCE = 1e-4  # largest allowed |p_export - p_eager| for a float format...
NOISE_FACTOR = 10.0  # ... or this many times eager float32's own error, when that exceeds it
INT8_MAX_ACCURACY_DROP = 0.01  # one point of accuracy
INT8_MAX_DISAGREEMENT = 0.02  # share of images whose int8 top-1 may differ from eager's


@dataclass
class Reference:
    """Eager PyTorch on the parity images: what every export is compared with."""

    probabilities: np.ndarray  # (N, classes), float32 as deployed
    labels: np.ndarray
    float32_error: float  # max |p_float32 - p_float64| of eager PyTorch itself

    @property
    def float_tolerance(self) -> float:
        """1e-4 wherever eager PyTorch is itself that accurate; beyond, its own noise x10."""
        if self.float32_error <= FLOAT_TOLERANCE:
            return FLOAT_TOLERANCE
        return NOISE_FACTOR * self.float32_error


def eager_reference(model: ProbabilityModel, pixels: np.ndarray, labels: np.ndarray) -> Reference:
    """The model's probabilities in float32, and how far they are from float64's."""
    probabilities = predict_in_batches(numpy_predict(model), pixels)
    # uint8 -> float32 is exact, and the float64 mean/std promote the rest to float64.
    exact = predict_in_batches(numpy_predict(copy.deepcopy(model).double()), pixels)
    float32_error = float(np.abs(probabilities - exact).max(initial=0.0))
    return Reference(probabilities, labels, float32_error)


@dataclass
class FormatParity:
    """How one exported file compares with eager PyTorch on the parity images."""

    format: str
    file: str  # file name under exports/
    precision: str  # float or int8
    images: int
    disagreements: int  # images whose top-1 class differs from eager PyTorch's
    top1_agreement: float  # share of images with the same top-1 class
    max_abs_diff: float  # largest |probability difference| over all images and classes
    accuracy: float  # top-1 accuracy of the export on the labelled images
    eager_accuracy: float  # ... of eager PyTorch on the same images
    export_seconds: float  # time to write the file
    size_bytes: int
    failure: str = ""  # why the check failed; empty when it passed

    @property
    def passed(self) -> bool:
        return not self.failure

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "passed": self.passed}

    @classmethod
    def not_checked(
        cls, spec: tuple[str, str, str], reference: Reference, size_bytes: int, failure: str
    ) -> FormatParity:
        """A format (name, file, precision) whose file could not be written or run.

        Its numbers are the worst possible (no top-1 agreement, a difference of 1, accuracy 0)
        so none reads as a pass; eager PyTorch's accuracy on the same images is still real.
        """
        images = len(reference.labels)
        eager_accuracy = compare(reference.probabilities, reference)["eager_accuracy"]
        return cls(
            *spec, images=images, disagreements=images, top1_agreement=0.0, max_abs_diff=1.0,
            accuracy=0.0, eager_accuracy=eager_accuracy, export_seconds=0.0,
            size_bytes=size_bytes, failure=failure,
        )  # fmt: skip


def compare(probabilities: np.ndarray, reference: Reference) -> dict[str, Any]:
    """The parity numbers of an export's `probabilities` against the eager reference."""
    predicted = probabilities.argmax(axis=1)
    expected = reference.probabilities.argmax(axis=1)
    labels = reference.labels
    disagreements = int((predicted != expected).sum())
    return {
        "images": len(labels),
        "disagreements": disagreements,
        "top1_agreement": 1.0 - disagreements / max(len(labels), 1),
        "max_abs_diff": float(np.abs(probabilities - reference.probabilities).max(initial=0.0)),
        "accuracy": float((predicted == labels).mean()),
        "eager_accuracy": float((expected == labels).mean()),
    }


def failure_reason(precision: str, numbers: dict[str, Any], float_tolerance: float) -> str:
    """Why `compare`'s numbers fail the check for a format of `precision`; '' if they pass."""
    images, disagreements, difference = (
        numbers["images"], numbers["disagreements"], numbers["max_abs_diff"]
    )  # fmt: skip
    if precision == "int8":
        drop = numbers["eager_accuracy"] - numbers["accuracy"]
        if drop > INT8_MAX_ACCURACY_DROP + 1e-9:  # 0.892 - 0.882 is 0.010000000000000009
            return (
                f"int8 quantization lost {drop:.2%} of accuracy on {images} images "
                f"(at most {INT8_MAX_ACCURACY_DROP:.0%} allowed): use the float ONNX model "
                "(onnx) instead, or train longer for larger class margins"
            )
        if disagreements > INT8_MAX_DISAGREEMENT * images + 1e-9:
            return (
                f"int8 quantization changed {disagreements} of {images} top-1 predictions "
                f"(at most {INT8_MAX_DISAGREEMENT:.0%} allowed): use the float ONNX model "
                "(onnx) instead, or train longer for larger class margins"
            )
        return ""
    if disagreements or difference > float_tolerance:
        return (
            f"{disagreements} of {images} top-1 predictions differ from eager PyTorch and "
            f"probabilities differ by up to {difference:.2e} (allowed: 0 and {float_tolerance:.1e})"
        )
    return ""
