"""The one table of export formats: name, file, exporter, and float or int8.

Everything else (the CLI's --format choices, `--all`, the parity thresholds, the README)
reads this table, so adding a format is one row and one module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from torchgraft.errors import UserError, did_you_mean
from torchgraft.export.aoti import export_aoti
from torchgraft.export.model import ExportInputs
from torchgraft.export.onnx_format import export_onnx
from torchgraft.export.onnx_int8 import export_onnx_int8
from torchgraft.export.timm_folder import export_timm
from torchgraft.export.torchscript import export_torchscript

Exporter = Callable[[ExportInputs, Path], None]
ONNX_MODULES = ("onnx", "onnxscript", "onnxruntime")


@dataclass(frozen=True)
class ExportFormat:
    name: str  # what --format takes
    file_name: str  # the file under the run's exports/
    export: Exporter  # writes that file from the run's model
    precision: str  # "float" (must match eager PyTorch) or "int8" (may lose a little accuracy)
    description: str
    code: bool = False  # loading the file runs code from it (a shared library, TorchScript)
    folder: bool = False  # a folder of files rather than one file
    in_all: bool = True  # part of `--all` (timm: for timm backbones only, so asked for by name)
    modules: tuple[str, ...] = ()  # what exporting and checking it imports: the [export] extra


FORMATS: dict[str, ExportFormat] = {
    spec.name: spec
    for spec in (
        ExportFormat(
            "onnx",
            "model.onnx",
            export_onnx,
            "float",
            "ONNX, for onnxruntime and other engines",
            modules=ONNX_MODULES,
        ),
        ExportFormat(
            "aoti",
            "model.pt2",
            export_aoti,
            "float",
            "AOTInductor package, Python or C++",
            code=True,
        ),
        ExportFormat(
            "torchscript",
            "model.ts",
            export_torchscript,
            "float",
            "TorchScript (legacy)",
            code=True,
        ),
        ExportFormat(
            "timm",
            "timm",
            export_timm,
            "float",
            "a folder plain timm loads, with a model card: ready for the Hugging Face Hub",
            folder=True,
            in_all=False,
        ),
        ExportFormat(
            "onnx-int8",
            "model.int8.onnx",
            export_onnx_int8,
            "int8",
            "ONNX with int8 static quantization, for onnxruntime",
            modules=ONNX_MODULES,
        ),
    )
}


def resolve_formats(formats: str | Iterable[str] | None) -> list[ExportFormat]:
    """The formats named (in table order, each once); None or "all" means every format that
    is `in_all`."""
    names = ["all"] if formats is None else [formats] if isinstance(formats, str) else [*formats]
    if "all" in names:
        return [spec for spec in FORMATS.values() if spec.in_all]
    if not names:
        raise UserError(f"no export format given: use one or more of {', '.join(FORMATS)}")
    for name in names:
        if name not in FORMATS:
            raise UserError(
                f"unknown export format {name!r}: use one of {', '.join(FORMATS)} or all."
                + did_you_mean(name, FORMATS)
            )
    return [spec for spec in FORMATS.values() if spec.name in names]


def format_of_file(file_name: str) -> ExportFormat | None:
    """The format whose export file is named `file_name`, if any."""
    return next((spec for spec in FORMATS.values() if spec.file_name == file_name), None)
