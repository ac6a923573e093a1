"""AOTInductor: torch.export, then compile to a model.pt2 package for Python and C++.

The package is native code for this machine's CPU (its instruction set is recorded in the
package metadata); Python loads it with torch._inductor.aoti_load_package, C++ with
torch::inductor::AOTIModelPackageLoader (see examples/cpp).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from torchgraft.errors import GraftRuntimeError
from torchgraft.export.model import ExportInputs, dynamic_batch, quieter_loggers

logger = logging.getLogger(__name__)


def export_aoti(inputs: ExportInputs, path: Path) -> None:
    """model.pt2: uint8 (batch, C, H, W) in, probabilities out, metadata inside."""
    require_cpp_compiler()
    program = torch.export.export(inputs.model, (inputs.example,), dynamic_shapes=dynamic_batch())
    logger.info("compiling the AOTInductor package (C++ compilation; this takes a while)")
    with quieter_loggers("torch.utils.cpp_extension", level=logging.ERROR):
        torch._inductor.aoti_compile_and_package(
            program,
            package_path=str(path),
            inductor_configs={"aot_inductor.metadata": inputs.metadata},
        )


def require_cpp_compiler() -> None:
    """Fail first, and say how to fix it, where inductor would find no C++ compiler.

    Common on slim servers and containers; inductor's own error comes after tracing,
    wrapped in an InductorError that does not say which export needed the compiler.
    """
    from torch._inductor.cpp_builder import get_cpp_compiler
    from torch._inductor.exc import InvalidCxxCompiler

    try:
        get_cpp_compiler()
    except InvalidCxxCompiler as error:
        raise GraftRuntimeError(
            f"exporting to aoti (model.pt2) needs a C++ compiler and none works here ({error}):"
            " install g++ or clang++, or set CXX to one. The other formats (onnx, torchscript,"
            " onnx-int8) need no compiler"
        ) from error
