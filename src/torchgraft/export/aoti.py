"""AOTInductor: torch.export, then compile to a model.pt2 package for Python and C++.

The package is native code for this machine's CPU (its instruction set is recorded in the
package metadata); Python loads it with torch._inductor.aoti_load_package, C++ with
torch::inductor::AOTIModelPackageLoader (see examples/cpp).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from torchgraft.export.model import ExportInputs, dynamic_batch, quieter_loggers

logger = logging.getLogger(__name__)


def export_aoti(inputs: ExportInputs, path: Path) -> None:
    """model.pt2: uint8 (batch, C, H, W) in, probabilities out, metadata inside."""
    program = torch.export.export(inputs.model, (inputs.example,), dynamic_shapes=dynamic_batch())
    logger.info("compiling the AOTInductor package (C++ compilation; this takes a while)")
    with quieter_loggers("torch.utils.cpp_extension", level=logging.ERROR):
        torch._inductor.aoti_compile_and_package(
            program,
            package_path=str(path),
            inductor_configs={"aot_inductor.metadata": inputs.metadata},
        )
