"""Export: one module per format, a format table, parity checks against eager PyTorch.

from torchgraft.export import export_run, load_exported
report = export_run(run, ["onnx", "aoti"])          # runs/NAME/exports/...
probabilities = load_exported(report.folder / "model.onnx")(uint8_images)
"""

from torchgraft.export.benchmark import BenchmarkReport, Timing, benchmark_run
from torchgraft.export.exporter import EXPORTS_DIR, PARITY_FILE, ExportReport, export_run
from torchgraft.export.formats import FORMATS, ExportFormat, resolve_formats
from torchgraft.export.loader import ExportedModel, load_exported
from torchgraft.export.model import ProbabilityModel
from torchgraft.export.parity import FLOAT_TOLERANCE, INT8_MAX_ACCURACY_DROP, FormatParity

__all__ = [
    "EXPORTS_DIR",
    "FLOAT_TOLERANCE",
    "FORMATS",
    "INT8_MAX_ACCURACY_DROP",
    "PARITY_FILE",
    "BenchmarkReport",
    "ExportFormat",
    "ExportReport",
    "ExportedModel",
    "FormatParity",
    "ProbabilityModel",
    "Timing",
    "benchmark_run",
    "export_run",
    "load_exported",
    "resolve_formats",
]
