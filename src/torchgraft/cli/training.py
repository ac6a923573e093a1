"""`graft train` and `graft lr-find`."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Annotated

import typer

from torchgraft.cli.common import app, flag, guard, help_with_default, option
from torchgraft.config import (
    AUGMENTATIONS,
    CACHE_MODES,
    DEVICES,
    RESIZE_MODES,
)


@app.command()
def train(
    data: Annotated[
        str | None,
        typer.Argument(help=help_with_default("data.source", None), show_default=False),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            help="YAML file with data/model/train sections; flags given here override it."
        ),
    ] = None,
    model: Annotated[str | None, option("model.name")] = None,
    weights: Annotated[str | None, option("model.weights")] = None,
    pretrained: Annotated[bool | None, flag("model.pretrained")] = None,
    epochs: Annotated[int | None, option("train.epochs")] = None,
    freeze_epochs: Annotated[int | None, option("train.freeze_epochs")] = None,
    head_lr: Annotated[float | None, option("train.head_lr")] = None,
    lr: Annotated[str | None, option("train.lr")] = None,
    backbone_lr_divisor: Annotated[float | None, option("train.backbone_lr_divisor")] = None,
    depthwise: Annotated[str | None, option("train.depthwise")] = None,
    norm_statistics: Annotated[str | None, option("train.norm_statistics")] = None,
    weight_decay: Annotated[float | None, option("train.weight_decay")] = None,
    layer_decay: Annotated[float | None, option("train.layer_decay")] = None,
    batch_size: Annotated[int | None, option("data.batch_size")] = None,
    image_size: Annotated[int | None, option("data.image_size")] = None,
    resize: Annotated[str | None, option("data.resize")] = None,
    augment: Annotated[str | None, option("data.augment")] = None,
    val_fraction: Annotated[float | None, option("data.val_fraction")] = None,
    class_names: Annotated[str | None, option("data.class_names")] = None,
    exclude: Annotated[str | None, option("data.exclude")] = None,
    num_workers: Annotated[int | None, option("data.num_workers")] = None,
    loader: Annotated[str | None, option("data.loader")] = None,
    cache: Annotated[str | None, option("data.cache")] = None,
    cache_dir: Annotated[str | None, option("data.cache_dir")] = None,
    seed: Annotated[int | None, option("train.seed")] = None,
    device: Annotated[str | None, option("train.device")] = None,
    name: Annotated[str | None, option("train.name")] = None,
    runs_dir: Annotated[str | None, option("train.runs_dir")] = None,
    precision: Annotated[str | None, option("train.precision")] = None,
    channels_last: Annotated[bool | None, flag("train.channels_last")] = None,
    compile: Annotated[bool | None, flag("train.compile")] = None,
    accumulate: Annotated[int | None, option("train.accumulate")] = None,
    grad_clip: Annotated[float | None, option("train.grad_clip")] = None,
    label_smoothing: Annotated[float | None, option("train.label_smoothing")] = None,
    class_weights: Annotated[str | None, option("train.class_weights")] = None,
    mixup: Annotated[float | None, option("train.mixup")] = None,
    cutmix: Annotated[float | None, option("train.cutmix")] = None,
    ema_decay: Annotated[float | None, option("train.ema_decay")] = None,
    early_stop: Annotated[int | None, option("train.early_stop")] = None,
    monitor: Annotated[str | None, option("train.monitor")] = None,
    time_limit: Annotated[str | None, option("train.time_limit")] = None,
    deterministic: Annotated[bool | None, flag("train.deterministic")] = None,
    feature_cache: Annotated[bool | None, flag("train.feature_cache")] = None,
    feature_views: Annotated[int | None, option("train.feature_views")] = None,
    tensorboard: Annotated[bool | None, flag("train.tensorboard")] = None,
    logger: Annotated[str | None, option("train.logger")] = None,
    report: Annotated[bool | None, flag("train.report")] = None,
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
