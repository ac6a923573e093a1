"""`graft train` and `graft lr-find`."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Annotated

import typer

from torchgraft.cli.common import app, default_help, flag, guard, option
from torchgraft.config import (
    AUGMENTATIONS,
    CACHE_MODES,
    DEPTHWISE,
    DEVICES,
    LOADERS,
    MONITORS,
    NORM_STATISTICS,
    PRECISIONS,
    RESIZE_MODES,
)


@app.command()
def train(
    data: Annotated[
        str | None,
        typer.Argument(
            help="A folder with one sub-folder per class (or train/ and val/ folders), or a "
            f"bundled set: mnist5k, digits. {default_help('data.source')}",
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
        option("model.name", "Backbone: efficientnet_lite0, mlp, cnn, or any timm model name."),
    ] = None,
    weights: Annotated[
        str | None,
        option(
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
        option(
            "train.epochs",
            "Epochs training the whole network (with --time-limit, the limit decides).",
        ),
    ] = None,
    freeze_epochs: Annotated[
        int | None,
        option(
            "train.freeze_epochs",
            "Epochs training only the new head on cached features of the frozen backbone.",
        ),
    ] = None,
    head_lr: Annotated[
        float | None,
        option("train.head_lr", "Peak learning rate of the head-only epochs (default: 5 x lr)."),
    ] = None,
    lr: Annotated[
        str | None,
        option(
            "train.lr",
            "Peak learning rate of the head, one-cycle, or auto to run the lr finder first.",
        ),
    ] = None,
    backbone_lr_divisor: Annotated[
        float | None,
        option(
            "train.backbone_lr_divisor",
            "Backbone learning rate is lr divided by this while fine-tuning.",
        ),
    ] = None,
    depthwise: Annotated[
        str | None,
        option(
            "train.depthwise",
            f"Depthwise filters: {', '.join(DEPTHWISE)} (auto: fixed on the CPU, where their "
            "gradient is the slowest part of a step; trained on a GPU).",
        ),
    ] = None,
    norm_statistics: Annotated[
        str | None,
        option(
            "train.norm_statistics",
            f"BatchNorm statistics while fine-tuning: {', '.join(NORM_STATISTICS)} (auto: keep "
            "them after head-only epochs, whose head learned on them; update otherwise).",
        ),
    ] = None,
    weight_decay: Annotated[
        float | None, option("train.weight_decay", "AdamW weight decay.")
    ] = None,
    layer_decay: Annotated[
        float | None,
        option(
            "train.layer_decay",
            "Layer-wise lr decay, e.g. 0.75: each block towards the input learns this much "
            "slower than the one above (replaces the divisor; default: off).",
        ),
    ] = None,
    batch_size: Annotated[int | None, option("data.batch_size", "Images per step.")] = None,
    image_size: Annotated[
        int | None,
        option(
            "data.image_size",
            "Training resolution in pixels (default: the model's, e.g. 224; "
            "64 for bundled digits, their own size from scratch).",
        ),
    ] = None,
    resize: Annotated[
        str | None, option("data.resize", f"Resize mode: {', '.join(RESIZE_MODES)}.")
    ] = None,
    augment: Annotated[
        str | None, option("data.augment", f"Augmentation preset: {', '.join(AUGMENTATIONS)}.")
    ] = None,
    val_fraction: Annotated[
        float | None,
        option(
            "data.val_fraction",
            "Share of each class held out for validation when there is no val/ folder.",
        ),
    ] = None,
    class_names: Annotated[
        str | None,
        option(
            "data.class_names",
            "JSON file mapping class folder names to display names "
            "(cat_to_name.json; default: folder names).",
        ),
    ] = None,
    exclude: Annotated[
        str | None,
        option(
            "data.exclude",
            "Leave out the files listed in this file: `graft doctor DATA --json` output or a CSV. "
            "From the report: unreadable, blank, label-issue and outlier files, and every copy "
            "but one of each duplicate group (a val or test copy kept when the copies span "
            "splits); tiny images stay. From a CSV: the file (or path) column, else the first; "
            "header optional. Names relative to DATA, or absolute; listed files the data no "
            "longer holds are counted in a warning. Recorded in the run, so --resume and "
            "evaluation leave out the same files (default: none).",
        ),
    ] = None,
    num_workers: Annotated[
        int | None,
        option(
            "data.num_workers",
            "Data-loading worker processes (default: 0 on a CPU, where the cores run the steps; "
            "the cores less one, at most 8, for a GPU).",
        ),
    ] = None,
    loader: Annotated[
        str | None,
        option(
            "data.loader",
            f"Batches: {', '.join(LOADERS)} (auto: the decoded images resident in GPU memory "
            "when they fit, with none or light augmentation run there; else a DataLoader).",
        ),
    ] = None,
    cache: Annotated[
        str | None,
        option(
            "data.cache",
            f"Decoded-image cache: {', '.join(CACHE_MODES)} (disk reuses decoding across runs).",
        ),
    ] = None,
    cache_dir: Annotated[
        str | None,
        option(
            "data.cache_dir",
            "Folder for --cache disk (default: $TORCHGRAFT_CACHE or ~/.cache/torchgraft).",
        ),
    ] = None,
    seed: Annotated[
        int | None,
        option("train.seed", "Random seed for the split, initialisation and shuffling."),
    ] = None,
    device: Annotated[str | None, option("train.device", f"Device: {', '.join(DEVICES)}.")] = None,
    name: Annotated[
        str | None,
        option(
            "train.name",
            "Run name, a folder under --runs-dir (default: <model>-<data>, numbered if taken).",
        ),
    ] = None,
    runs_dir: Annotated[
        str | None, option("train.runs_dir", "Parent folder for run directories.")
    ] = None,
    precision: Annotated[
        str | None,
        option(
            "train.precision",
            f"Precision: {', '.join(PRECISIONS)} (auto: bf16 on Ampere and later GPUs, fp16 "
            "with a gradient scaler on older ones, fp32 on the CPU).",
        ),
    ] = None,
    channels_last: Annotated[
        bool | None, flag("train.channels_last", "Channels-last memory layout.")
    ] = None,
    compile: Annotated[
        bool | None, flag("train.compile", "torch.compile the network (whole-network phases).")
    ] = None,
    accumulate: Annotated[
        int | None, option("train.accumulate", "Batches per optimizer step.")
    ] = None,
    grad_clip: Annotated[
        float | None, option("train.grad_clip", "Clip the gradient norm to this (default: off).")
    ] = None,
    label_smoothing: Annotated[
        float | None, option("train.label_smoothing", "Label smoothing, 0 to 0.5.")
    ] = None,
    class_weights: Annotated[
        str | None,
        option("train.class_weights", "Loss weights per class: none, or auto (inverse frequency)."),
    ] = None,
    mixup: Annotated[float | None, option("train.mixup", "MixUp alpha (0: off).")] = None,
    cutmix: Annotated[float | None, option("train.cutmix", "CutMix alpha (0: off).")] = None,
    ema_decay: Annotated[
        float | None,
        option(
            "train.ema_decay",
            "Score an EMA of the weights with this decay (0: off).",
        ),
    ] = None,
    early_stop: Annotated[
        int | None,
        option(
            "train.early_stop", "Stop after this many epochs without improvement (default: off)."
        ),
    ] = None,
    monitor: Annotated[
        str | None,
        option("train.monitor", f"Score for best weights and early stop: {', '.join(MONITORS)}."),
    ] = None,
    time_limit: Annotated[
        str | None,
        option(
            "train.time_limit",
            "Plan the run to end within this, e.g. 90s, 10m, 2h: the step time measured "
            "early sets the epochs, so the schedule still anneals (default: none).",
        ),
    ] = None,
    deterministic: Annotated[
        bool | None,
        flag("train.deterministic", "Deterministic algorithms (bitwise-repeatable CPU runs)."),
    ] = None,
    feature_cache: Annotated[
        bool | None,
        flag("train.feature_cache", "Keep frozen-backbone features on disk for later runs."),
    ] = None,
    feature_views: Annotated[
        int | None,
        option(
            "train.feature_views",
            "Frozen phase: features of K views per training image (1 plain + K-1 augmented).",
        ),
    ] = None,
    tensorboard: Annotated[
        bool | None, flag("train.tensorboard", "Write TensorBoard logs to the run's tensorboard/.")
    ] = None,
    logger: Annotated[
        str | None,
        option(
            "train.logger",
            "Experiment trackers as well, comma-separated: mlflow, wandb (pip install "
            "'torchgraft[track]'; they read MLFLOW_TRACKING_URI, WANDB_MODE, ...).",
        ),
    ] = None,
    report: Annotated[
        bool | None,
        flag("train.report", "At the end, evaluate and calibrate; write report.html."),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue runs/NAME from its last checkpoint (after Ctrl-C, a crash or kill -9); "
            "with --epochs N, extend a finished run to N fine-tune epochs.",
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace the run --name names, once the new run's data has decoded "
            "(without it, an existing name is refused). Needs --name: refused without one.",
        ),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars; only the result.")
    ] = False,
    print_config: Annotated[
        bool,
        typer.Option(
            "--print-config",
            help="Print the config this would train with (YAML, as --config reads it, the "
            "model's defaults filled in) and exit without training.",
        ),
    ] = False,
) -> None:
    """Train a classifier: graft a new head onto a pretrained backbone and fine-tune it.

    Every run saves its config as config.yaml: `graft train --config runs/X/config.yaml`
    trains the same thing again.
    """
    settings = {
        key: value
        for key, value in locals().items()
        if value is not None
        and key not in ("config", "quiet", "resume", "overwrite", "print_config")
    }
    if quiet:
        settings["quiet"] = True
    from torchgraft import api

    if print_config:
        from torchgraft.config import config_yaml, to_dict

        resolved = guard(lambda: api.resolved_config(config=config, **settings), quiet)
        typer.echo(config_yaml(to_dict(resolved)), nl=False)
        return

    if resume is not None:
        extra = sorted(set(settings) - {"epochs", "quiet"}) + ["--overwrite"] * overwrite
        if extra or config is not None or data is not None:
            typer.echo(
                "error: --resume continues a run as it was configured; only --epochs "
                f"can change (got {', '.join(extra) or 'DATA/--config'})",
                err=True,
            )
            raise typer.Exit(2)
        run = guard(lambda: api.resume(resume, epochs=epochs, quiet=quiet), quiet)
    else:
        run = guard(lambda: api.train(config=config, overwrite=overwrite, **settings), quiet)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun, rank 0 speaks for all
    accuracy = run.info.metrics.get("val_accuracy")
    typer.echo(
        f"run saved to {run.path}"
        + (f" (validation accuracy {accuracy:.2%})" if accuracy is not None else "")
    )


@app.command("lr-find")
def lr_find(
    data: Annotated[
        str | None,
        typer.Argument(help="The data, as for `graft train`.", show_default=False),
    ] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config, as for `graft train`.")] = None,
    time_limit: Annotated[
        str,
        typer.Option(
            help="Finish within this long, loading included (e.g. 30s, 2m): the sweep takes "
            "as many steps (10 to 100) as fit."
        ),
    ] = "60s",
    model: Annotated[str | None, option("model.name", "Backbone, as for `graft train`.")] = None,
    weights: Annotated[
        str | None, option("model.weights", "Local pretrained weights file.")
    ] = None,
    image_size: Annotated[
        int | None, option("data.image_size", "Training resolution in pixels.")
    ] = None,
    batch_size: Annotated[int | None, option("data.batch_size", "Images per step.")] = None,
    resize: Annotated[
        str | None, option("data.resize", f"Resize mode: {', '.join(RESIZE_MODES)}.")
    ] = None,
    augment: Annotated[
        str | None, option("data.augment", f"Augmentation preset: {', '.join(AUGMENTATIONS)}.")
    ] = None,
    val_fraction: Annotated[
        float | None, option("data.val_fraction", "Share held out, as for `graft train`.")
    ] = None,
    num_workers: Annotated[
        int | None, option("data.num_workers", "Data-loading worker processes.")
    ] = None,
    cache: Annotated[
        str | None, option("data.cache", f"Decoded-image cache: {', '.join(CACHE_MODES)}.")
    ] = None,
    cache_dir: Annotated[str | None, option("data.cache_dir", "Folder for --cache disk.")] = None,
    backbone_lr_divisor: Annotated[
        float | None,
        option("train.backbone_lr_divisor", "Backbone rate = head rate / this, as in training."),
    ] = None,
    layer_decay: Annotated[
        float | None,
        option("train.layer_decay", "Layer-wise lr decay, as in training (default: off)."),
    ] = None,
    weight_decay: Annotated[
        float | None, option("train.weight_decay", "AdamW weight decay.")
    ] = None,
    channels_last: Annotated[
        bool | None, flag("train.channels_last", "Channels-last memory layout.")
    ] = None,
    seed: Annotated[int | None, option("train.seed", "Random seed.")] = None,
    device: Annotated[str | None, option("train.device", f"Device: {', '.join(DEVICES)}.")] = None,
    name: Annotated[
        str | None,
        option(
            "train.name", "Folder name under RUNS_DIR/lr-find (default: <model>-<data>, numbered)."
        ),
    ] = None,
    runs_dir: Annotated[
        str | None, option("train.runs_dir", "Parent of the lr-find/ folder.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Sweep the learning rate (the range test): plot, suggestion, and the command to use it.

    The sweep runs the fine-tune set-up (the optimizer groups training uses) from the
    pretrained weights, then puts the model back; `graft train --lr auto` does the same
    before training. Its plot goes to RUNS_DIR/lr-find/, never to a training run's folder.
    """
    settings = {
        k: v
        for k, v in locals().items()
        if v is not None and k not in ("config", "quiet", "time_limit")
    }
    settings["quiet"] = quiet
    from torchgraft import api

    found = guard(lambda: api.lr_find(config=config, budget=time_limit, **settings), quiet)
    typer.echo(f"suggested learning rate: {found.suggestion:.2e}")
    typer.echo(f"plot: {found.plot}")
    typer.echo(f"use it: {train_command(data, config, settings, found.suggestion)}")


def train_command(
    data: str | None, config: Path | None, settings: dict[str, object], lr: float
) -> str:
    """The `graft train` line with lr-find's options (they shaped the curve) and `--lr`."""
    parts = ["graft", "train"]
    parts += [shlex.quote(data)] if data is not None else []
    parts += ["--config", shlex.quote(str(config))] if config is not None else []
    for key, value in settings.items():
        if key in ("data", "quiet", "name"):  # name: the sweep's folder, not the run's
            continue
        flag_name = key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(f"--{flag_name}" if value else f"--no-{flag_name}")
        else:
            parts += [f"--{flag_name}", shlex.quote(str(value))]
    return " ".join([*parts, "--lr", f"{lr:.2e}"])
