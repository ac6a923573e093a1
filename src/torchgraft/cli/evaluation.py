"""`graft evaluate` and `graft explain`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from torchgraft.cli.common import DeviceOption, app, guard


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
    device: DeviceOption = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Score a run: per-class metrics, confusion, calibration, top losses, report.html.

    On the validation split (default) it also fits the calibration temperature; results go
    to metrics.json, figures/ and report.html.
    """
    from torchgraft import api

    result = guard(lambda: api.evaluate(run, data, quiet=quiet, tta=tta, device=device), quiet)
    metrics = result.metrics
    typer.echo(f"{result.images} images ({result.source}) on {result.device}, {result.precision}")
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
    if metrics.absent:
        typer.echo(f"no images of {', '.join(metrics.absent)}: recall and f1 undefined (0 above)")
    for true, predicted, count in metrics.most_confused[:5]:
        typer.echo(f"confused: {true} -> {predicted} ({count})")
    ece = f"ECE {result.ece_before:.4f} -> {result.ece_after:.4f}"
    typer.echo(f"calibration: {ece} at temperature {result.temperature:.3f}")
    if result.familiar is not None:
        familiar = result.familiar
        typer.echo(
            f"unfamiliar inputs: score above {familiar.threshold:.4f} (the {familiar.quantile:g} "
            f"quantile of the validation images; {familiar.flagged:.1%} of them flagged)"
        )
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
    device: DeviceOption = "auto",
) -> None:
    """Grad-CAM: where in each image the network found its evidence (PNG overlays)."""
    from torchgraft import api

    result = guard(
        lambda: api.explain(
            run, images, class_name=class_name, output_dir=output_dir, device=device
        )
    )
    for item in result.explained:
        typer.echo(
            f"{item.source}: {item.class_name} ({item.probability:.1%}, predicted "
            f"{item.predicted}) -> {item.heatmap_path}"
        )
    for source, reason in result.skipped:
        typer.echo(f"skipped {source}: {reason}", err=True)
    if not result.explained:
        raise typer.Exit(2)
