"""`graft doctor` and `graft models`."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from torchgraft.cli.common import app, guard, option

if TYPE_CHECKING:
    from torchgraft.data.audit import AuditReport


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
    config: Annotated[
        Path | None,
        typer.Option(
            help="The YAML file training will use: its model, image size, val fraction and "
            "seed (flags given here override it)."
        ),
    ] = None,
    model: Annotated[
        str | None,
        option(
            "model.name",
            "The model training will use: images are judged tiny against its input size "
            "and decoded to its channels.",
        ),
    ] = None,
    image_size: Annotated[
        int | None,
        option("data.image_size", "Training resolution in pixels (default: the model's)."),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print only the full report as JSON.")
    ] = False,
    workers: Annotated[
        int,
        typer.Option(min=0, help="Processes decoding and hashing images (0: this process)."),
    ] = 2,
    val_fraction: Annotated[
        float | None,
        option(
            "data.val_fraction",
            "Share of each class training holds out when there is no val/ folder "
            "(says which duplicates land on both sides of that split).",
        ),
    ] = None,
    seed: Annotated[int | None, option("train.seed", "Seed of that automatic split.")] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar; only the report.")
    ] = False,
    deep: Annotated[
        bool,
        typer.Option(
            "--deep",
            help="Also embed every image with the model's pretrained backbone and find wrong "
            "labels, copies (flipped or cropped too) that leak across splits, and outliers.",
        ),
    ] = False,
    fix: Annotated[
        Path | None,
        typer.Option(
            help="With --deep: write a new CSV label file here, every image with the suggested "
            "class in place of its label for each label issue, to train on with `graft train "
            "FILE`. Review the label issues first (this report, --json): the suggestions are a "
            "probe's guesses. Images are never moved or deleted; an existing file is never "
            "overwritten.",
            show_default=False,
        ),
    ] = None,
    weights: Annotated[
        str | None, option("model.weights", "Local weights file of the backbone (--deep).")
    ] = None,
    device: Annotated[
        str | None, option("train.device", "Where --deep runs the backbone: auto, cpu, cuda.")
    ] = None,
    html: Annotated[
        Path | None,
        typer.Option(
            "--html",
            help="Also write a self-contained review page to this file: the findings that "
            "name images, each with its thumbnail (with --deep: label issues, copies, "
            "outliers too).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Audit a dataset: unreadable or blank files, duplicates, leakage, imbalance, missing
    classes, images tiny for the model; with --deep, wrong labels, copies and outliers too
    (and with --fix, a corrected label file to train on).

    Exits 0 when it found nothing to act on (notes only), 1 when it found problems, 2 for
    bad input.
    """
    if not deep and (weights is not None or device is not None):
        typer.echo(
            "error: --weights and --device choose the backbone --deep embeds the images with: "
            "add --deep, or leave them out.",
            err=True,
        )
        raise typer.Exit(2)
    from torchgraft import api
    from torchgraft.config import load_train_config

    flags = {
        "model.name": model, "data.image_size": image_size,
        "data.val_fraction": val_fraction, "train.seed": seed,
    }  # fmt: skip

    def run() -> AuditReport:
        settings = load_train_config(config, {k: v for k, v in flags.items() if v is not None})
        deep_settings = {"weights": weights, "device": device} if deep else {}
        return api.doctor(
            data, val_fraction=settings.data.val_fraction, seed=settings.train.seed,
            workers=workers, quiet=quiet, model=settings.model.name,
            image_size=settings.data.image_size, deep=deep, fix=fix, config=config,
            html=html,
            **{name: value for name, value in deep_settings.items() if value is not None},
        )  # fmt: skip

    report = guard(run, quiet or json_output)
    if json_output:
        import json

        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        for line in _doctor_lines(report):
            typer.echo(line)
        if html is not None:
            typer.echo(f"review page: {html}")
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
    judged = f"{report.model} at {report.image_size} px, {report.channels} channel(s)"
    lines += ["", f"judged for training {judged} (--model, --image-size)"]
    lines.append(f"{problems} problem(s) found" if problems else "no problems found")
    if report.label_fix is not None:
        path = report.label_fix.path
        lines.append(
            f"wrote {report.label_fix.corrected} corrected labels to {path}; "
            f"train with: graft train {shlex.quote(path)}"
        )
    return lines


@app.command("models")
def list_models() -> None:
    """List the registered backbones (any timm model name works too)."""
    from torchgraft.models import get_spec, registered_names

    for model_name in registered_names():
        typer.echo(f"{model_name:<20} {get_spec(model_name).description}")
