"""TorchScript (legacy): torch.jit.trace to model.ts.

TorchScript is deprecated in current PyTorch in favour of torch.export; it is here for
runtimes that still only load TorchScript. Prefer model.pt2 (AOTInductor) or model.onnx.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from torchgraft.export.model import ExportInputs

logger = logging.getLogger(__name__)

METADATA_FILE = "torchgraft.json"  # the extra file inside model.ts that holds the metadata


def export_torchscript(inputs: ExportInputs, path: Path) -> None:
    """model.ts: a traced module with the metadata as an extra file."""
    logger.warning(
        "TorchScript is a legacy format, deprecated in current PyTorch: prefer model.pt2 "
        "(AOTInductor) or model.onnx"
    )
    with without_jit_deprecation(), torch.no_grad():
        traced = torch.jit.trace(inputs.model, (inputs.example,))
        extra_files = {METADATA_FILE: json.dumps(inputs.metadata)}
        torch.jit.save(traced, str(path), _extra_files=extra_files)


@contextlib.contextmanager
def without_jit_deprecation() -> Iterator[None]:
    """torch.jit warns on every call; one warning from torchgraft says it once."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        yield
