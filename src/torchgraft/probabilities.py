"""Calibrated probabilities: softmax(logits / temperature), the one formula every stage uses.

A run stores its calibration temperature in graft.json; evaluation, prediction, export and
explanation must all turn logits into the same probabilities. Low in the import order (it
needs only torch), so any stage can use it. Pure tensor operations, so the export wrapper
that calls it stays traceable by torch.export and ONNX.
"""

from __future__ import annotations

import torch


def calibrated_probabilities(
    logits: torch.Tensor, temperature: float, dim: int = -1
) -> torch.Tensor:
    """softmax(logits / temperature) along `dim`, as float32.

    Logits from a half-precision model are upcast first: a softmax in float16 loses the
    small probabilities a calibrated output is meant to report. A plain-float `temperature`
    is baked into an exported graph as a constant.
    """
    return (logits.float() / temperature).softmax(dim=dim)
