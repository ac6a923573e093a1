"""The public verbs. Each takes plain arguments and returns plain objects or a Run.

from torchgraft import api
run = api.train("mnist5k", model="efficientnet_lite0", epochs=2)
predictions = api.predict(run, ["digit.png"], top_k=3)
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from torchgraft.artifact import Run
from torchgraft.config import RunConfig, dotted_overrides, load_train_config
from torchgraft.data.memory import hold, is_in_memory
from torchgraft.errors import UserError
from torchgraft.extras import require
from torchgraft.progress import logging_to
from torchgraft.serve.predictor import ImageInput, Prediction, Predictor

if TYPE_CHECKING:
    import numpy as np

    from torchgraft.data.audit import AuditReport
    from torchgraft.data.sources import DataSplits
    from torchgraft.evaluate import Evaluation
    from torchgraft.evaluate.deep_audit import DeepReport
    from torchgraft.explain import Explanations
    from torchgraft.export import BenchmarkReport, ExportReport
    from torchgraft.serve.server import ServerSettings
    from torchgraft.train.callbacks import Callback
    from torchgraft.train.lr_find_run import LrFindReport

# What `train` and `lr_find` take as data: a bundled set name or a folder (or label file), or
# images in memory (see torchgraft.data.memory): (images, labels) arrays or tensors, a torch
# Dataset, a Hugging Face dataset.
Data = str | Path | tuple[Any, Any] | Any


def train_config(config: str | Path | None = None, **settings: Any) -> RunConfig:
    """The validated config `train` would use: a YAML file, then flat `settings` on top."""
    path = Path(config) if config is not None else None
    return load_train_config(path, dotted_overrides(settings))


def resolved_config(
    data: Data | None = None, *, config: str | Path | None = None, **settings: Any
) -> RunConfig:
    """The config `train` would record for these arguments, with the model's defaults filled
    in, without training: `graft train --print-config`."""
    from torchgraft.train.recipe import with_model_defaults

    return with_model_defaults(_config_with_data(data, config, settings))


def train(
    data: Data | None = None,
    *,
    config: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
    overwrite: bool = False,
    **settings: Any,
) -> Run:
    """Train a classifier and return its run directory.

    `data` is a bundled set (mnist5k, digits), a folder or a label file, or images in memory:
    `(images, labels)` as arrays or tensors, a torch Dataset such as torchvision's
    ImageFolder, or a Hugging Face dataset (see torchgraft.data.memory; `class_names=[...]`
    names their classes). `settings` are any config fields by their flat names (model,
    epochs, lr, image_size, ...); `config` a YAML file under them.
    `callbacks` are your own `torchgraft.train.callbacks.Callback` objects: they hear every
    optimizer step (`on_step_end`) and epoch (`on_epoch_end`) and may call `trainer.stop()`.
    A `name` whose run exists is refused (a UserError) unless `overwrite`, which replaces
    that run once the new one's data has decoded (`overwrite` without a `name` is refused).
    """
    from torchgraft.train import fit

    run_config = _config_with_data(data, config, settings)
    run = fit(run_config, callbacks=callbacks, overwrite=overwrite)
    return _with_report(run, run_config.train.report, run_config.train.quiet)


def lr_find(
    data: Data | None = None,
    *,
    config: str | Path | None = None,
    budget: float | str = 60.0,
    **settings: Any,
) -> LrFindReport:
    """Sweep the learning rate for this set-up and suggest the head's rate to train with.

    The sweep runs the fine-tune optimizer's parameter groups (backbone slower, layer decay
    if set) from the pretrained weights, with as many steps as `budget` (seconds, or e.g.
    "90s", "2m") allows, loading and decoding included. It never creates a training run:
    the plot and curve go to <runs_dir>/lr-find/<model>-<data>/figures/ (numbered if
    taken), so `train` afterwards still gets <runs_dir>/<model>-<data>. Settings as for
    `train`; the returned report has `suggestion`, `path` and `plot`.
    """
    started = time.perf_counter()  # the budget covers everything, imports included
    from torchgraft.config import parse_duration
    from torchgraft.train.lr_find_run import run_lr_find

    seconds = parse_duration(budget) if isinstance(budget, str) else float(budget)
    if not seconds > 0:
        raise UserError(f"budget must be positive seconds, got {budget}: e.g. 60 or '2m'.")
    return run_lr_find(_config_with_data(data, config, settings), seconds, started)


def _config_with_data(
    data: Data | None, config: str | Path | None, settings: dict[str, Any]
) -> RunConfig:
    if is_in_memory(data):
        # Class names as a list name the classes of in-memory data; data.class_names (a
        # file of display names) stays a path.
        names = settings.get("class_names")
        names = settings.pop("class_names") if isinstance(names, list | tuple) else None
        data = hold(data, names, quiet=bool(settings.get("quiet", False)))
    if data is not None:
        settings = {**settings, "data": str(data)}
    return train_config(config, **settings)


def resume(run: Run | str | Path, epochs: int | None = None, quiet: bool | None = None) -> Run:
    """Continue a run from its last checkpoint, exactly where it stopped.

    `epochs` extends a finished run to that many fine-tune epochs in all (a new one-cycle
    schedule from the current weights).
    """
    from torchgraft.train import resume as resume_run

    resumed = resume_run(load_run(run).path, epochs=epochs, quiet=quiet)
    settings = resumed.info.config.get("train", {})
    quiet_now = quiet if quiet is not None else bool(settings.get("quiet", False))
    return _with_report(resumed, bool(settings.get("report", True)), quiet_now)


def _with_report(run: Run, report: bool, quiet: bool) -> Run:
    """Training ends with an evaluation: calibration, figures, report.html (rank 0 only),
    on the device the run trained on.

    The weights are saved by then, so a failure here is a warning, not a failed training.
    """
    if report and int(os.environ.get("RANK", "0")) == 0:
        device = run.info.trained_on.get("device", "auto")
        try:
            with logging_to(run.log_file):  # the evaluation's messages belong to the run too
                evaluate(run, quiet=quiet, device=device)
        except Exception as error:  # anything: the trained run must still be returned
            logging.getLogger(__name__).warning(
                "training finished, but the evaluation failed (%s); run `graft evaluate --run "
                "%s` to retry", error, run.path,
            )  # fmt: skip
    return run


def evaluate(
    run: Run | str | Path, data: str | Path | None = None, quiet: bool = False,
    tta: bool = False, device: str = "auto",
) -> Evaluation:  # fmt: skip
    """Score a run on its validation split (fitting its calibration temperature), or on
    `data`, a test folder or label file; writes metrics.json, figures/ and report.html.
    `tta` averages predictions over crops (and flips, when the run trained with flips).
    `device` auto is the GPU when there is one (bf16 or fp16 there, as in training)."""
    from torchgraft.evaluate import evaluate_run

    source = str(data) if data is not None else None
    return evaluate_run(load_run(run), source, quiet=quiet, tta=tta, device=device)


def explain(
    run: Run | str | Path,
    images: str | Path | Iterable[str | Path],
    *,
    class_name: str | None = None,
    output_dir: str | Path | None = None,
    device: str = "auto",
) -> Explanations:
    """Grad-CAM heatmaps for image files, for the predicted class or `class_name`, saved as
    PNGs (image and overlay side by side) in RUN/figures/gradcam or `output_dir`."""
    from torchgraft.explain import explain_images

    files = [images] if isinstance(images, (str, Path)) else list(images)
    return explain_images(load_run(run), files, class_name, output_dir, device)


def load_run(run: Run | str | Path) -> Run:
    return run if isinstance(run, Run) else Run.load(run)


def predictor(
    run: Run | str | Path,
    device: str = "auto",
    class_names: str | Path | None = None,
    batch_size: int = 64,
    engine: str = "auto",
) -> Predictor:
    """A loaded model for repeated predictions; `class_names` overrides the display names;
    `engine` is auto, eager (the run's weights) or an export format (see `predict`)."""
    return Predictor.from_run(load_run(run), device, batch_size, class_names, engine)


@overload
def predict(
    run: Run | str | Path,
    images: ImageInput | Iterable[ImageInput],
    top_k: int = ...,
    *,
    device: str = ...,
    class_names: str | Path | None = ...,
    batch_size: int = ...,
    engine: str = ...,
    probabilities: Literal[False] = ...,
) -> list[Prediction]: ...
@overload
def predict(
    run: Run | str | Path,
    images: ImageInput | Iterable[ImageInput],
    top_k: int = ...,
    *,
    device: str = ...,
    class_names: str | Path | None = ...,
    batch_size: int = ...,
    engine: str = ...,
    probabilities: Literal[True],
) -> tuple[list[Prediction], np.ndarray]: ...
def predict(
    run: Run | str | Path,
    images: ImageInput | Iterable[ImageInput],
    top_k: int = 3,
    *,
    device: str = "auto",
    class_names: str | Path | None = None,
    batch_size: int = 64,
    engine: str = "auto",
    probabilities: bool = False,
) -> list[Prediction] | tuple[list[Prediction], np.ndarray]:
    """One record per image, each with its top-k classes, for files, folders (searched
    recursively), glob patterns, bytes, PIL images, NumPy arrays or tensors.

    Images are classified `batch_size` at a time. A file that does not decode is skipped
    with a warning; its record's `error` says why. With `probabilities=True`, also returns
    the (N, num_classes) calibrated probabilities, row for row (NaN for a skipped image).

    `engine` "auto" (the default) uses the run's float ONNX export on a CPU when
    parity.json vouches for it with the current weights (and it carries the embedding that
    unfamiliar scores need), else eager PyTorch; "eager" computes with the run's safetensors
    weights; an export format (onnx, onnx-int8, aoti, torchscript) uses that file of
    runs/NAME/exports on the CPU. aoti and torchscript files are code: they load only
    because you named them. `Predictor.engine` says which one was used.
    """
    loaded = predictor(run, device, class_names, batch_size, engine)
    records, scores = loaded.predict_with_probabilities(images, top_k)
    return (records, scores) if probabilities else records


def export(
    run: Run | str | Path, formats: str | Iterable[str] | None = None, quiet: bool = False
) -> ExportReport:
    """Export a run to `formats` (onnx, aoti, torchscript, onnx-int8; default: all) under
    runs/NAME/exports/, each checked against eager PyTorch on real validation images.

    Raises GraftRuntimeError when a format fails its parity check (the files and
    parity.json stay on disk, saying what failed)."""
    from torchgraft.export import export_run

    return export_run(load_run(run), formats, quiet=quiet)


def benchmark(
    run: Run | str | Path, batch_size: int = 64, seconds: float = 2.0, quiet: bool = False,
    device: str = "auto", engines: Sequence[str] = (),
) -> BenchmarkReport:  # fmt: skip
    """Images/s and p50/p95 latency of eager PyTorch (on `device`), onnxruntime and
    AOTInductor (and of the int8 and TorchScript exports when present; these run on the
    CPU) at batch 1 and `batch_size`, on this machine. Exports the ONNX and AOTInductor
    models first if the run has none. model.pt2 and model.ts are code: they are timed when
    graft export signed them on this machine, or when named in `engines`."""
    from torchgraft.export import benchmark_run

    return benchmark_run(
        load_run(run), (1, batch_size), seconds=seconds, quiet=quiet, device=device,
        engines=engines,
    )  # fmt: skip


def serve(
    run: Run | str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    device: str = "auto",
    class_names: str | Path | None = None,
    top_k: int = 5,
    max_upload_mb: float = 10.0,
    max_megapixels: float = 25.0,
    engine: str = "auto",
    settings: ServerSettings | None = None,
    access_log: bool = False,
) -> None:
    """Serve the run over HTTP until Ctrl-C: POST /predict (top-k JSON), POST /explain (the
    Grad-CAM overlay as PNG, for models with a spatial feature map), GET /health, and a page
    at GET / to try it.

    The model loads once, before the server starts listening; `engine` picks what computes
    the predictions (see `predict`). Uploads over `max_upload_mb` or images over
    `max_megapixels` (read from the header, before decoding) get 413. `settings` holds the
    timeouts, the number of uploads in progress beyond which the server answers 503 with
    Retry-After, and how uploads are batched (`serve.server.ServerSettings`); `/health`
    answers regardless. `access_log` prints a line per request (GET /metrics counts them)."""
    require(("fastapi", "uvicorn"), "serve", "graft serve")
    from torchgraft.serve.app import create_app
    from torchgraft.serve.server import ServerSettings, serve_app

    settings = settings or ServerSettings()
    app = create_app(
        Predictor.from_run(load_run(run), device, class_names=class_names, engine=engine),
        top_k=top_k,
        max_upload_bytes=int(max_upload_mb * 2**20),
        max_pixels=round(max_megapixels * 1e6),
        settings=settings,
    )
    # uvicorn shuts down gracefully on Ctrl-C, then re-raises it: stopping is not an error.
    with contextlib.suppress(KeyboardInterrupt):
        serve_app(app, host, port, settings, access_log)


def doctor(
    data: str | Path,
    *,
    val_fraction: float | None = None,
    seed: int | None = None,
    workers: int = 2,
    quiet: bool = False,
    model: str | None = None,
    image_size: int | None = None,
    deep: bool = False,
    fix: str | Path | None = None,
    config: str | Path | None = None,
    html: str | Path | None = None,
    **settings: Any,
) -> AuditReport:
    """Audit a data source before training: unreadable and blank files, duplicates and
    leakage, imbalance, missing classes, images tiny for `model` at `image_size`. What is not
    given comes from `config` (a training YAML), else training's defaults: the split
    (`val_fraction`, `seed`) is the one that training would draw. `report.is_clean` is the
    verdict.

    `deep` also embeds every image with the model's pretrained backbone and finds wrong
    labels, copies (flipped or cropped ones too) and outliers (`report.deep`). It trains
    nothing; `settings` (weights, device, cache_dir, ... as for `train`) say how training
    would see the images. When it cannot run (no readable image, no weights offline) the
    pixel-level report is still returned, with a warning.

    `fix` (with `deep`) names a new CSV label file to write: every image, with the class
    suggested for each label issue in place of its label, for `train(fix)`
    (`report.label_fix`). The images are not touched and no existing file is overwritten.
    `html` writes a self-contained review page there: the findings that name images, each
    with its thumbnail (evaluate.doctor_page).
    """
    from dataclasses import replace

    from torchgraft.data.audit import audit

    asked = {"model": model, "image_size": image_size, "val_fraction": val_fraction,
             "seed": seed, **settings}  # fmt: skip
    run_config = train_config(
        config, data=str(data), quiet=quiet,
        **{name: value for name, value in asked.items() if value is not None},
    )  # fmt: skip
    # Every file is examined, whatever exclusion list the config names for training.
    run_config = replace(run_config, data=replace(run_config.data, exclude=None))
    val_fraction, seed = run_config.data.val_fraction, run_config.train.seed
    page = _page_path(html)  # a path that cannot be written is refused before the audit
    fix_target = _fix_target(data, fix, deep, val_fraction, seed)  # refused before the audit
    report = audit(
        str(data), val_fraction=val_fraction, seed=seed, workers=workers, quiet=quiet,
        model=run_config.model.name, image_size=run_config.data.image_size,
    )  # fmt: skip
    deep_report = _deep_findings(report, run_config) if deep else None
    report.deep = deep_report
    if deep_report is not None and fix_target is not None:
        from torchgraft.data.label_fix import write_fixed_labels

        corrections = {issue.file: issue.suggested for issue in deep_report.label_issues}
        report.label_fix = write_fixed_labels(fix_target[1], corrections, fix_target[0])
    if page is not None:
        from torchgraft.evaluate.doctor_page import write_doctor_page

        write_doctor_page(report, page)
    return report


def _deep_findings(report: AuditReport, config: RunConfig) -> DeepReport | None:
    """The deep audit, or None with a warning when it cannot run: the pixel-level findings
    (every unreadable file, say) are worth having all the same."""
    from torchgraft.evaluate.deep_audit import deep_audit_of

    try:
        return deep_audit_of(report, config)
    except UserError as error:
        logging.getLogger(__name__).warning("the deep audit did not run: %s", error)
        return None


def _page_path(html: str | Path | None) -> Path | None:
    if html is None:
        return None
    from torchgraft.evaluate.doctor_page import check_page_path

    return check_page_path(html)


def _fix_target(
    data: str | Path, fix: str | Path | None, deep: bool, val_fraction: float, seed: int
) -> tuple[Path, DataSplits] | None:
    """The label file to write and the splits it will list (those the audit examines), once
    it is known that the file can be written."""
    if fix is None:
        return None
    if not deep:
        raise UserError(
            f"--fix {fix} needs --deep: the corrected labels are the deep audit's suggestions. "
            f"Run graft doctor {data} --deep --fix {fix}"
        )
    from torchgraft.data.label_fix import check_fix_target
    from torchgraft.data.sources import load_data

    splits = load_data(str(data), val_fraction=val_fraction, seed=seed)
    check_fix_target(Path(fix), splits)
    return Path(fix), splits
