"""`graft export`: write each format, check it against eager PyTorch, report.

Export reads the run directory only (graft.json, model.safetensors) plus the run's own
images for the parity check and int8 calibration. Every file lands in runs/NAME/exports/,
with parity.json (the check's numbers: a report, not a voucher), signatures.json (what proves
this user wrote the code files, `signatures`), test_vectors/ (inputs and the probabilities
eager PyTorch gives them, for a port to check itself) and README.md (the input contract for
deployers).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from torchgraft.artifact import WEIGHTS_FILE, Run, atomic_folder, atomic_path, atomic_write_bytes
from torchgraft.data.hashing import content_digest
from torchgraft.errors import GraftRuntimeError, UserError
from torchgraft.export.formats import FORMATS, ExportFormat, resolve_formats
from torchgraft.export.images import calibration_images, parity_images
from torchgraft.export.loader import load_exported
from torchgraft.export.model import (
    ExportInputs,
    example_batch,
    export_metadata,
    predict_in_batches,
    probability_model,
)
from torchgraft.export.model_card import model_card
from torchgraft.export.parity import (
    INT8_MAX_ACCURACY_DROP,
    INT8_MAX_DISAGREEMENT,
    FormatParity,
    Reference,
    compare,
    eager_reference,
    failure_reason,
)
from torchgraft.export.readme import write_readme
from torchgraft.export.signatures import sign_or_warn
from torchgraft.export.test_vectors import write_test_vectors
from torchgraft.extras import require

logger = logging.getLogger(__name__)

EXPORTS_DIR = "exports"
PARITY_FILE = "parity.json"


@dataclass
class ExportReport:
    folder: Path  # runs/NAME/exports
    source: str  # which images the parity check used
    eager_float32_error: float  # max |p_float32 - p_float64| of eager PyTorch on them
    float_tolerance: float  # the largest probability difference a float format may have
    results: list[FormatParity]  # one per format, in table order

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "eager_float32_error": self.eager_float32_error,
            "tolerances": {
                "float_max_abs_diff": self.float_tolerance,
                "float_top1_disagreements": 0,
                "int8_max_accuracy_drop": INT8_MAX_ACCURACY_DROP,
                "int8_max_top1_disagreement_share": INT8_MAX_DISAGREEMENT,
            },
            "passed": self.passed,
            "formats": {result.format: result.to_dict() for result in self.results},
        }


def export_run(
    run: Run, formats: str | Iterable[str] | None = None, quiet: bool = False
) -> ExportReport:
    """Export `run` to `formats` (default: all), check each, and fail if any check fails.

    A format that cannot be exported (aoti without a C++ compiler, say) is recorded as failed
    and the others go on, so parity.json and README.md still describe every file written;
    the failures are raised at the end.
    """
    chosen = resolve_formats(formats)
    for spec in chosen:
        require(spec.modules, "export", f"--format {spec.name}")
    inputs = export_inputs(run, quiet)
    images = parity_images(run, quiet)
    reference = eager_reference(inputs.model, images.pixels, images.labels)
    folder = run.path / EXPORTS_DIR
    results = [export_and_check(spec, inputs, folder, images.pixels, reference) for spec in chosen]
    report = ExportReport(
        folder, images.source, reference.float32_error, reference.float_tolerance, results
    )
    recorded = write_parity(report, model_identity(run))
    write_test_vectors(
        folder, images.pixels, images.labels, reference.probabilities, run.info.class_names,
        reference.float_tolerance,
    )  # fmt: skip
    write_readme(folder, run, len(images.labels), recorded)
    raise_on_failure(report)
    return report


def export_inputs(run: Run, quiet: bool) -> ExportInputs:
    return ExportInputs(
        model=probability_model(run),
        example=example_batch(run),
        metadata=export_metadata(run),
        calibration_images=lambda: calibration_images(run, quiet),
        model_card=lambda: model_card(run),
    )


def export_and_check(
    spec: ExportFormat, inputs: ExportInputs, folder: Path, pixels: np.ndarray, reference: Reference
) -> FormatParity:
    """Write one format's file, then compare its probabilities with eager PyTorch's.

    Failing to write or run the file is this format's failure alone: it comes back as a
    failed result, not an exception, so the other formats are still exported and recorded.
    """
    path = folder / spec.file_name
    logger.info("exporting %s to %s", spec.name, path)
    started = time.perf_counter()
    try:
        write_atomically(spec, inputs, path)
        seconds = time.perf_counter() - started
        if spec.code:  # before anything else can touch the file; ONNX is data, left unsigned
            sign_or_warn(folder, spec.file_name, spec.name)
        numbers = compare(run_exported(spec, path, pixels), reference)
    except GraftRuntimeError as error:
        logger.warning("%s failed (reported at the end); going on with the others", spec.name)
        size = export_size(path)
        names = (spec.name, spec.file_name, spec.precision)
        return FormatParity.not_checked(names, reference, size, str(error))
    reason = failure_reason(spec.precision, numbers, reference.float_tolerance)
    result = FormatParity(
        spec.name, spec.file_name, spec.precision, **numbers,
        export_seconds=round(seconds, 2), size_bytes=export_size(path), failure=reason,
    )  # fmt: skip
    logger.info("%s: %s", spec.name, "parity passed" if result.passed else result.failure)
    return result


def write_atomically(spec: ExportFormat, inputs: ExportInputs, path: Path) -> None:
    """Export to a temporary name beside `path`, then rename: no half-written model file.

    The temporary name keeps the extension, which some exporters check (".pt2"). When the
    export fails, an earlier file of this format goes too: parity.json is about to record the
    format as failed, and that file is not what this export was asked to write.
    """
    writing = atomic_folder(path) if spec.folder else atomic_path(path, suffix=path.suffix)
    try:
        with writing as temporary:
            spec.export(inputs, temporary)
    except UserError:
        raise  # the run's, not the format's (e.g. the training images cannot be loaded)
    except Exception as error:
        remove_export(path)
        if isinstance(error, GraftRuntimeError):
            raise  # already names the format and the fix (e.g. no C++ compiler for aoti)
        raise GraftRuntimeError(
            f"exporting to {spec.name} ({spec.file_name}) failed ({type(error).__name__}: {error})"
        ) from error


def run_exported(spec: ExportFormat, path: Path, pixels: np.ndarray) -> np.ndarray:
    """The exported file's probabilities on `pixels`; any error there is the format's."""
    try:
        # Written and signed by this process a moment ago: no need to check it again.
        return predict_in_batches(load_exported(path, allow_code=True), pixels)
    except Exception as error:
        raise GraftRuntimeError(
            f"the {spec.name} export {path.name} was written but could not be run "
            f"({type(error).__name__}: {error})"
        ) from error


def model_identity(run: Run) -> dict[str, Any]:
    """What the exports were made from: a parity result is valid for these only."""
    weights = content_digest(run.path / WEIGHTS_FILE)
    return {"weights_sha256": weights, "temperature": run.info.temperature}


def checked_formats(run: Run) -> dict[str, Any]:
    """parity.json's entries, by format, for export files of the run's current model.

    A file exported before the weights or temperature changed (resume, recalibration) has
    no entry here: it no longer computes what the run does.
    """
    return recorded_results(run.path / EXPORTS_DIR, model_identity(run))


def recorded_results(folder: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """The parity entries in `folder` made from the model `identity` names, whose file is there."""
    return {
        name: result
        for name, result in _earlier_results(folder / PARITY_FILE, identity).items()
        if (folder / result["file"]).exists()
    }


def write_parity(report: ExportReport, identity: dict[str, Any]) -> dict[str, Any]:
    """parity.json: this export's results, plus earlier ones for files of the same model.

    Exporting one format at a time thus builds up one file that covers them all. Returns
    the formats it records; export files it does not record are stale and deleted.
    """
    formats = recorded_results(report.folder, identity)
    data = report.to_dict()
    formats.update(data["formats"])
    data.update(identity, formats=formats)
    data["passed"] = all(result["passed"] for result in formats.values())
    atomic_write_bytes(report.folder / PARITY_FILE, json.dumps(data, indent=2).encode())
    remove_stale_exports(report.folder, formats)
    return formats


def remove_stale_exports(folder: Path, recorded: dict[str, Any]) -> None:
    """Delete export files parity.json does not vouch for, so nothing loads or times them.

    They were made from other weights or another temperature than the run has now.
    """
    for spec in FORMATS.values():
        path = folder / spec.file_name
        if spec.name not in recorded and path.exists():
            remove_export(path)
            logger.warning(
                "deleted %s: stale, parity.json has no check of it for the run's current "
                "weights and temperature (export --format %s again to replace it)",
                path, spec.name,
            )  # fmt: skip


def export_size(path: Path) -> int:
    """Bytes of an export: its file, or every file of a folder format; 0 if not there."""
    if path.is_dir():
        return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())
    return path.stat().st_size if path.is_file() else 0


def remove_export(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _earlier_results(path: Path, identity: dict[str, Any]) -> dict[str, Any]:
    try:
        earlier = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    same_model = all(earlier.get(key) == value for key, value in identity.items())
    return dict(earlier.get("formats", {})) if same_model else {}


def raise_on_failure(report: ExportReport) -> None:
    failed = [result for result in report.results if not result.passed]
    if failed:
        details = "; ".join(f"{result.format}: {result.failure}" for result in failed)
        raise GraftRuntimeError(
            f"export failed for {len(failed)} of {len(report.results)} formats, checked on the "
            f"{report.source} ({details}). The files written are kept in {report.folder} and "
            f"{PARITY_FILE} there has the numbers."
        )
