"""The `graft` command: each subcommand is a few lines over torchgraft.api.

Only this module prints. User errors become one line on stderr and exit status 2; runtime
failures exit 1; Ctrl-C exits 130 after training has kept its best weights.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from tqdm.contrib.logging import logging_redirect_tqdm

from torchgraft.config import (
    AUGMENTATIONS,
    CACHE_MODES,
    DEVICES,
    MONITORS,
    PRECISIONS,
    RESIZE_MODES,
    default_of,
)
from torchgraft.errors import GraftError

if TYPE_CHECKING:
    from torchgraft.data.audit import AuditReport
    from torchgraft.serve.predictor import Prediction

app = typer.Typer(
    name="graft",
    help="torchgraft: train, fine-tune and use image classifiers, offline by default.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

T = TypeVar("T")


def _default(dotted: str) -> str:
    """ "(default: X)" for help texts; settings whose default depends on the model say so."""
    value = default_of(dotted)
    return "" if value is None else f"(default: {value})"


def _flag(dotted: str, help_text: str) -> Any:
    """An on/off option (--x/--no-x) whose absence means "use the config file or default"."""
    name = dotted.split(".")[-1].replace("_", "-")
    return typer.Option(
        f"--{name}/--no-{name}", help=f"{help_text} {_default(dotted)}", show_default=False
    )


def _option(dotted: str, help_text: str, *flags: str) -> Any:
    """A CLI option whose absence means "use the config file or the default"."""
    return typer.Option(*flags, help=f"{help_text} {_default(dotted)}", show_default=False)


@app.command()
def train(
    data: Annotated[
        str | None,
        typer.Argument(
            help="A folder with one sub-folder per class (or train/ and val/ folders), or a "
            f"bundled set: mnist5k, digits. {_default('data.source')}",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="YAML file with data/model/train sections; flags given here override it."
        ),
    ] = None,
    model: Annotated[
        str | None,
        _option("model.name", "Backbone: efficientnet_lite0, mlp, cnn, or any timm model name."),
    ] = None,
    weights: Annotated[
        str | None,
        _option(
            "model.weights",
            "Local pretrained weights file (.safetensors/.pth) for the backbone "
            "(default: bundled weights, else the timm hub).",
        ),
    ] = None,
    pretrained: Annotated[
        bool | None,
        typer.Option(
            "--pretrained/--no-pretrained",
            help="Start from pretrained weights. (default: pretrained)",
            show_default=False,
        ),
    ] = None,
    epochs: Annotated[
        int | None,
        _option(
            "train.epochs",
            "Epochs fine-tuning the whole network "
            "(default: 6 for a pretrained backbone, 10 from scratch).",
        ),
    ] = None,
    freeze_epochs: Annotated[
        int | None,
        _option(
            "train.freeze_epochs",
            "Epochs training only the new head on the frozen backbone (0: plain fine-tune).",
        ),
    ] = None,
    lr: Annotated[
        str | None,
        _option(
            "train.lr",
            "Peak learning rate of the head, one-cycle, or auto to run the lr finder first "
            "(default: 2e-3 for a pretrained backbone, 1e-2 from scratch).",
        ),
    ] = None,
    backbone_lr_divisor: Annotated[
        float | None,
        _option(
            "train.backbone_lr_divisor",
            "Backbone learning rate is lr divided by this while fine-tuning.",
        ),
    ] = None,
    weight_decay: Annotated[
        float | None, _option("train.weight_decay", "AdamW weight decay.")
    ] = None,
    layer_decay: Annotated[
        float | None,
        _option(
            "train.layer_decay",
            "Layer-wise lr decay, e.g. 0.75: each block towards the input learns this much "
            "slower than the one above (replaces the divisor; default: off).",
        ),
    ] = None,
    batch_size: Annotated[int | None, _option("data.batch_size", "Images per step.")] = None,
    image_size: Annotated[
        int | None,
        _option(
            "data.image_size",
            "Training resolution in pixels (default: the model's, e.g. 224; "
            "64 for bundled digits, their own size from scratch).",
        ),
    ] = None,
    resize: Annotated[
        str | None, _option("data.resize", f"Resize mode: {', '.join(RESIZE_MODES)}.")
    ] = None,
    augment: Annotated[
        str | None, _option("data.augment", f"Augmentation preset: {', '.join(AUGMENTATIONS)}.")
    ] = None,
    val_fraction: Annotated[
        float | None,
        _option(
            "data.val_fraction",
            "Share of each class held out for validation when there is no val/ folder.",
        ),
    ] = None,
    class_names: Annotated[
        str | None,
        _option(
            "data.class_names",
            "JSON file mapping class folder names to display names "
            "(cat_to_name.json; default: folder names).",
        ),
    ] = None,
    num_workers: Annotated[
        int | None,
        _option(
            "data.num_workers", "Data-loading worker processes (keep workers + threads <= cores)."
        ),
    ] = None,
    cache: Annotated[
        str | None,
        _option(
            "data.cache",
            f"Decoded-image cache: {', '.join(CACHE_MODES)} (disk reuses decoding across runs).",
        ),
    ] = None,
    cache_dir: Annotated[
        str | None,
        _option(
            "data.cache_dir",
            "Folder for --cache disk (default: $TORCHGRAFT_CACHE or ~/.cache/torchgraft).",
        ),
    ] = None,
    seed: Annotated[
        int | None,
        _option("train.seed", "Random seed for the split, initialisation and shuffling."),
    ] = None,
    device: Annotated[str | None, _option("train.device", f"Device: {', '.join(DEVICES)}.")] = None,
    name: Annotated[
        str | None,
        _option(
            "train.name",
            "Run name, a folder under --runs-dir (default: <model>-<data>, numbered if taken).",
        ),
    ] = None,
    runs_dir: Annotated[
        str | None, _option("train.runs_dir", "Parent folder for run directories.")
    ] = None,
    precision: Annotated[
        str | None,
        _option(
            "train.precision", f"Precision: {', '.join(PRECISIONS)} (auto: bf16 on GPUs with it)."
        ),
    ] = None,
    channels_last: Annotated[
        bool | None, _flag("train.channels_last", "Channels-last memory layout.")
    ] = None,
    accumulate: Annotated[
        int | None, _option("train.accumulate", "Batches per optimizer step.")
    ] = None,
    grad_clip: Annotated[
        float | None, _option("train.grad_clip", "Clip the gradient norm to this (default: off).")
    ] = None,
    label_smoothing: Annotated[
        float | None, _option("train.label_smoothing", "Label smoothing, 0 to 0.5.")
    ] = None,
    class_weights: Annotated[
        str | None,
        _option(
            "train.class_weights", "Loss weights per class: none, or auto (inverse frequency)."
        ),
    ] = None,
    mixup: Annotated[float | None, _option("train.mixup", "MixUp alpha (0: off).")] = None,
    cutmix: Annotated[float | None, _option("train.cutmix", "CutMix alpha (0: off).")] = None,
    ema_decay: Annotated[
        float | None,
        _option(
            "train.ema_decay",
            "Keep an EMA of the weights with this decay, e.g. 0.999 (default: off).",
        ),
    ] = None,
    early_stop: Annotated[
        int | None,
        _option(
            "train.early_stop", "Stop after this many epochs without improvement (default: off)."
        ),
    ] = None,
    monitor: Annotated[
        str | None,
        _option("train.monitor", f"Score for best weights and early stop: {', '.join(MONITORS)}."),
    ] = None,
    time_limit: Annotated[
        str | None,
        _option(
            "train.time_limit", "Stop cleanly after this long, e.g. 90s, 10m, 2h (default: none)."
        ),
    ] = None,
    deterministic: Annotated[
        bool | None,
        _flag("train.deterministic", "Deterministic algorithms (bitwise-repeatable CPU runs)."),
    ] = None,
    feature_cache: Annotated[
        bool | None,
        _flag("train.feature_cache", "Keep frozen-backbone features on disk for later runs."),
    ] = None,
    feature_views: Annotated[
        int | None,
        _option(
            "train.feature_views",
            "Frozen phase: features of K views per training image (1 plain + K-1 augmented).",
        ),
    ] = None,
    tensorboard: Annotated[
        bool | None, _flag("train.tensorboard", "Write TensorBoard logs to the run's tensorboard/.")
    ] = None,
    report: Annotated[
        bool | None,
        _flag("train.report", "At the end, evaluate and calibrate; write report.html."),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue runs/NAME from its last checkpoint (after Ctrl-C, a crash or kill -9); "
            "with --epochs N, extend a finished run to N fine-tune epochs.",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars; only the result.")
    ] = False,
) -> None:
    """Train a classifier: a new head on a frozen backbone, then fine-tune the whole network."""
    settings = {
        key: value
        for key, value in locals().items()
        if value is not None and key not in ("config", "quiet", "resume")
    }
    if quiet:
        settings["quiet"] = True
    from torchgraft import api

    if resume is not None:
        extra = sorted(set(settings) - {"epochs", "quiet"})
        if extra or config is not None or data is not None:
            typer.echo(
                "error: --resume continues a run as it was configured; only --epochs "
                f"can change (got {', '.join(extra) or 'DATA/--config'})",
                err=True,
            )
            raise typer.Exit(2)
        run = _guard(lambda: api.resume(resume, epochs=epochs, quiet=quiet), quiet)
    else:
        run = _guard(lambda: api.train(config=config, **settings), quiet)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun, rank 0 speaks for all
    accuracy = run.info.metrics.get("val_accuracy")
    typer.echo(
        f"run saved to {run.path}"
        + (f" (validation accuracy {accuracy:.2%})" if accuracy is not None else "")
    )


@app.command()
def evaluate(
    data: Annotated[
        str | None,
        typer.Argument(
            help="A test folder (or label file) to score; default: the run's validation split, "
            "where the calibration temperature is also fitted.",
            show_default=False,
        ),
    ] = None,
    run: Annotated[
        Path, typer.Option(help="Run directory made by `graft train` (runs/NAME).")
    ] = Path(),
    tta: Annotated[
        bool,
        typer.Option(
            "--tta",
            help="Test-time augmentation: average over crops (and flips, if trained with them).",
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Accuracy, top-k, per-class precision/recall/F1, confusion, calibration, top losses;
    writes metrics.json, figures/ and report.html."""
    from torchgraft import api

    result = _guard(lambda: api.evaluate(run, data, quiet=quiet, tta=tta), quiet)
    metrics = result.metrics
    typer.echo(f"{result.images} images ({result.source})")
    if result.tta_views:
        typer.echo(
            f"test-time augmentation over {len(result.tta_views)} views: accuracy "
            f"{metrics.accuracy:.2%} (plain image alone: {result.plain_accuracy:.2%})"
        )
    top_k = ", ".join(f"top-{k} {v:.2%}" for k, v in metrics.top_k_accuracy.items())
    typer.echo(f"accuracy {metrics.accuracy:.2%} | {top_k}")
    width = max(len(name) for name in [*(c.name for c in metrics.per_class), "weighted"]) + 2
    typer.echo(f"{'class':<{width}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}")
    rows = [(c.name, c.precision, c.recall, c.f1, c.support) for c in metrics.per_class]
    total = sum(c.support for c in metrics.per_class)
    for label, averages in (("macro", metrics.macro), ("weighted", metrics.weighted)):
        rows.append((label, averages["precision"], averages["recall"], averages["f1"], total))
    for name, precision, recall, f1, support in rows:
        typer.echo(f"{name:<{width}}{precision:>10.3f}{recall:>10.3f}{f1:>10.3f}{support:>9}")
    for true, predicted, count in metrics.most_confused[:5]:
        typer.echo(f"confused: {true} -> {predicted} ({count})")
    ece = f"ECE {result.ece_before:.4f} -> {result.ece_after:.4f}"
    typer.echo(f"calibration: {ece} at temperature {result.temperature:.3f}")
    for loss in result.top_losses[:3]:
        typer.echo(
            f"top loss: {loss.source}: {loss.true_class} taken for {loss.predicted_class} "
            f"({loss.probability:.0%})"
        )
    typer.echo(f"report: {Path(run) / 'report.html'}")


@app.command()
def explain(
    images: Annotated[list[Path], typer.Argument(help="Image files to explain.")],
    run: Annotated[
        Path, typer.Option(help="Run directory made by `graft train` (runs/NAME).")
    ] = Path(),
    class_name: Annotated[
        str | None,
        typer.Option("--class", help="Explain this class instead of the predicted one."),
    ] = None,
    output_dir: Annotated[
        Path | None, typer.Option(help="Where to save the PNGs (default: RUN/figures/gradcam).")
    ] = None,
) -> None:
    """Grad-CAM: where in each image the network found its evidence (PNG overlays)."""
    from torchgraft import api

    result = _guard(lambda: api.explain(run, images, class_name=class_name, output_dir=output_dir))
    for item in result.explained:
        typer.echo(
            f"{item.source}: {item.class_name} ({item.probability:.1%}, predicted "
            f"{item.predicted}) -> {item.heatmap_path}"
        )
    for source, reason in result.skipped:
        typer.echo(f"skipped {source}: {reason}", err=True)
    if not result.explained:
        raise typer.Exit(2)


@app.command("lr-find")
def lr_find(
    data: Annotated[
        str | None,
        typer.Argument(help="The data, as for `graft train`.", show_default=False),
    ] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config, as for `graft train`.")] = None,
    model: Annotated[str | None, _option("model.name", "Backbone, as for `graft train`.")] = None,
    weights: Annotated[
        str | None, _option("model.weights", "Local pretrained weights file.")
    ] = None,
    image_size: Annotated[
        int | None, _option("data.image_size", "Training resolution in pixels.")
    ] = None,
    batch_size: Annotated[int | None, _option("data.batch_size", "Images per step.")] = None,
    backbone_lr_divisor: Annotated[
        float | None,
        _option("train.backbone_lr_divisor", "Backbone rate = head rate / this, as in training."),
    ] = None,
    weight_decay: Annotated[
        float | None, _option("train.weight_decay", "AdamW weight decay.")
    ] = None,
    seed: Annotated[int | None, _option("train.seed", "Random seed.")] = None,
    device: Annotated[str | None, _option("train.device", f"Device: {', '.join(DEVICES)}.")] = None,
    name: Annotated[str | None, _option("train.name", "Run name for the plot's folder.")] = None,
    runs_dir: Annotated[
        str | None, _option("train.runs_dir", "Parent folder for run directories.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Sweep the learning rate (the range test): plot, suggestion, and the command to use it.

    The sweep runs the fine-tune set-up (backbone at lr / divisor) from the pretrained
    weights, then puts the model back; `graft train --lr auto` does the same before training.
    """
    settings = {k: v for k, v in locals().items() if v is not None and k not in ("config", "quiet")}
    settings["quiet"] = quiet
    from torchgraft import api

    run = _guard(lambda: api.lr_find(config=config, **settings), quiet)
    suggestion = run.info.metrics["lr_find_suggestion"]
    typer.echo(f"suggested learning rate: {suggestion:.2e}")
    typer.echo(f"plot: {run.path / 'figures' / 'lr_find.png'}")
    typer.echo(
        f"use it: graft train with the same options and --lr {suggestion:.2e} (or --lr auto)"
    )


@app.command()
def predict(
    images: Annotated[
        list[str],
        typer.Argument(
            help="Image files, folders (searched recursively) or quoted glob patterns such as "
            "'photos/*.jpg'.",
            show_default=False,
        ),
    ],
    run: Annotated[Path, typer.Option(help="Run directory made by `graft train` (runs/NAME).")],
    top_k: Annotated[int, typer.Option(min=1, help="How many classes to show per image.")] = 3,
    class_names: Annotated[
        Path | None,
        typer.Option(help="JSON file mapping class names to display names (overrides the run's)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            help="Write every image's top-k to this file instead of the screen: preds.csv "
            "(one row per image) or preds.json (one record per image)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per model call.")] = 64,
    device: Annotated[str, typer.Option(help="Device to run on (cpu, cuda, mps).")] = "cpu",
) -> None:
    """Classify images: the top-k classes, with display names and probabilities, for each.

    Files that cannot be read are skipped with a warning (and listed with the reason in
    --output); the exit status is 1 only when no image could be read.
    """
    from torchgraft import api
    from torchgraft.serve.outputs import check_output_path, write_predictions

    def classify() -> list[Prediction]:
        if output is not None:
            check_output_path(output)  # a bad suffix is refused before the model runs
        records = api.predict(
            run, images, top_k, device=device, class_names=class_names, batch_size=batch_size
        )
        if output is not None:
            write_predictions(records, output)
        return records

    predictions = _guard(classify)
    read = [prediction for prediction in predictions if prediction.ok]
    if output is None:
        _print_predictions(read)
    else:
        typer.echo(f"wrote {len(predictions)} predictions to {output}")
    skipped = len(predictions) - len(read)
    if skipped:
        typer.echo(f"{skipped} of {len(predictions)} images could not be read", err=True)
    if not read:
        raise typer.Exit(1)


def _print_predictions(predictions: list[Prediction]) -> None:
    for prediction in predictions:
        typer.echo(prediction.source)
        for rank, score in enumerate(prediction.top_k, start=1):
            label = (
                score.display_name
                if score.display_name == score.class_name
                else f"{score.display_name} ({score.class_name})"
            )
            typer.echo(f"  {rank}. {label:<30} {score.probability:7.2%}")


@app.command()
def doctor(
    data: Annotated[
        str,
        typer.Argument(
            help="A folder with one sub-folder per class (or train/ and val/ folders), a CSV "
            "or JSON-lines file of (path, label), or a bundled set: mnist5k, digits.",
            show_default=False,
        ),
    ],
    json_output: Annotated[
        bool, typer.Option("--json", help="Print only the full report as JSON.")
    ] = False,
    workers: Annotated[
        int,
        typer.Option(min=0, help="Processes decoding and hashing images (0: this process)."),
    ] = 2,
    val_fraction: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.9,
            help="Share of each class training holds out when there is no val/ folder "
            "(says which duplicates land on both sides of that split).",
        ),
    ] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of that automatic train/val split.")] = 0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar; only the report.")
    ] = False,
) -> None:
    """Audit a dataset: unreadable files, duplicates, leakage, imbalance, missing classes.

    Exits 0 when the data is clean, 1 when it found problems, 2 for bad input.
    """
    from torchgraft import api

    report = _guard(
        lambda: api.doctor(
            data, val_fraction=val_fraction, seed=seed, workers=workers, quiet=quiet
        ),
        quiet or json_output,
    )
    if json_output:
        import json

        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for line in _doctor_lines(report):
            typer.echo(line)
    raise typer.Exit(0 if report.is_clean else 1)


_DOCTOR_SHOWN = 20  # findings shown per category; --json lists them all


def _doctor_lines(report: AuditReport) -> list[str]:
    """The human report: images per class and split, then the findings by category."""
    from torchgraft.data.audit import CATEGORIES

    splits = list(report.counts)
    width = max(len(name) for name in [*report.class_names, "class", "total"])
    header = f"{'class':<{width}}" + "".join(f"{split:>8}" for split in splits)
    lines = [f"readable images per class and split in {report.source}"]
    if report.automatic_split:
        lines.append("(training draws val from these images, so they are audited as one split)")
    lines.append(header)
    for name in [*report.class_names, "total"]:
        cells = [
            sum(report.counts[split].values()) if name == "total" else report.counts[split][name]
            for split in splits
        ]
        lines.append(f"{name:<{width}}" + "".join(f"{cell:>8}" for cell in cells))
    findings = report.findings()
    for category in CATEGORIES:
        details = [finding.detail for finding in findings if finding.category == category]
        if details:
            lines += ["", f"{category} ({len(details)})" if len(details) > 1 else category]
            lines += [f"  {detail}" for detail in details[:_DOCTOR_SHOWN]]
        if len(details) > _DOCTOR_SHOWN:
            lines.append(f"  ... and {len(details) - _DOCTOR_SHOWN} more (--json lists all)")
    problems = len(report.problems())
    lines += ["", f"{problems} problem(s) found" if problems else "no problems found"]
    return lines


@app.command()
def serve(
    run: Annotated[Path, typer.Option(help="Run directory made by `graft train` (runs/NAME).")],
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0: every network interface).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port to listen on.")] = 8000,
    top_k: Annotated[
        int, typer.Option(min=1, help="Classes per answer (a request may ask ?top_k=N).")
    ] = 5,
    class_names: Annotated[
        Path | None,
        typer.Option(help="JSON file mapping class names to display names (overrides the run's)."),
    ] = None,
    max_upload_mb: Annotated[
        float, typer.Option(min=0.01, help="Largest upload accepted, in MB (larger: 413).")
    ] = 10.0,
    device: Annotated[str, typer.Option(help="Device to run on (cpu, cuda, mps).")] = "cpu",
) -> None:
    """Serve the model over HTTP: a page at /, POST /predict (an image in, top-k JSON out),
    POST /explain (its Grad-CAM overlay as PNG), GET /health. The model loads once; Ctrl-C
    stops the server."""
    from torchgraft import api

    _guard(
        lambda: api.serve(
            run, host, port, device=device, class_names=class_names, top_k=top_k,
            max_upload_mb=max_upload_mb,
        )
    )  # fmt: skip


@app.command()
def export(
    run: Annotated[Path, typer.Option(help="Run directory made by `graft train` (runs/NAME).")],
    formats: Annotated[
        list[str] | None,
        typer.Option(
            "--format",
            "-f",
            help="Format to export, repeatable: onnx, aoti (AOTInductor .pt2, Python or C++), "
            "torchscript (legacy), onnx-int8 (static quantization).",
            show_default=False,
        ),
    ] = None,
    all_formats: Annotated[bool, typer.Option("--all", help="Export every format.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Export to runs/NAME/exports/: uint8 images in, calibrated probabilities out.

    Each file is checked against eager PyTorch on the run's validation images
    (exports/parity.json); the export fails (exit 1) when a float format disagrees on any
    top-1 or differs by more than 1e-4 (or 10x eager PyTorch's own float32 error, if that
    is larger), or int8 loses more than 1 point of accuracy.
    """
    if bool(formats) == all_formats:
        typer.echo("error: give --format NAME (repeatable) or --all, one of the two", err=True)
        raise typer.Exit(2)
    from torchgraft import api

    report = _guard(lambda: api.export(run, None if all_formats else formats, quiet=quiet), quiet)
    typer.echo(f"parity on {report.results[0].images} images ({report.source}):")
    typer.echo(f"{'format':<13}{'file':<17}{'top-1 agree':>12}{'max |diff|':>12}{'accuracy':>10}")
    for result in report.results:
        typer.echo(
            f"{result.format:<13}{result.file:<17}{result.top1_agreement:>12.2%}"
            f"{result.max_abs_diff:>12.1e}{result.accuracy:>10.2%}"
        )
    typer.echo(f"exported to {report.folder} (README.md there gives the input contract)")


@app.command()
def benchmark(
    run: Annotated[Path, typer.Option(help="Run directory made by `graft train` (runs/NAME).")],
    batch_size: Annotated[int, typer.Option(min=2, help="The batched case's batch size.")] = 64,
    seconds: Annotated[
        float, typer.Option(min=0.1, help="Time spent measuring each engine and batch size.")
    ] = 2.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Images/s and p50/p95 latency of eager PyTorch, onnxruntime and AOTInductor (and the
    int8 and TorchScript exports if present), at batch 1 and batched, on this machine, with
    torch's thread count (set OMP_NUM_THREADS). Runs `graft export` for ONNX and AOTInductor
    first when the run has no such exports yet."""
    from torchgraft import api

    report = _guard(lambda: api.benchmark(run, batch_size, seconds, quiet=quiet), quiet)
    typer.echo(f"{report.threads} thread(s), random uint8 images")
    typer.echo(f"{'engine':<18}{'batch':>6}{'images/s':>11}{'p50 ms':>10}{'p95 ms':>10}")
    for timing in report.timings:
        typer.echo(
            f"{timing.engine:<18}{timing.batch_size:>6}{timing.images_per_second:>11.1f}"
            f"{timing.p50_ms:>10.2f}{timing.p95_ms:>10.2f}"
        )


@app.command("models")
def list_models() -> None:
    """List the registered backbones (any timm model name works too)."""
    from torchgraft.models import get_spec, registered_names

    for model_name in registered_names():
        typer.echo(f"{model_name:<20} {get_spec(model_name).description}")


def _guard(action: Callable[[], T], quiet: bool = False) -> T:
    """Run `action`, turning torchgraft errors and Ctrl-C into a message and an exit status."""
    _configure_logging(quiet)
    try:
        with logging_redirect_tqdm():  # log lines print above progress bars, not through them
            return action()
    except GraftError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted: the best weights so far are kept in the run directory", err=True)
        raise typer.Exit(130) from None


def _configure_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )


def main() -> None:
    app()
