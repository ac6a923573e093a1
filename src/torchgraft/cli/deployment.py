"""`graft predict`, `graft export`, `graft benchmark` and `graft serve`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from torchgraft.cli.common import DeviceOption, app, guard

if TYPE_CHECKING:
    from torchgraft.serve.predictor import Prediction

EngineOption = Annotated[
    str,
    typer.Option(
        help="What computes the predictions: auto (the run's parity-checked ONNX export on "
        "a CPU, else the run's weights), eager (the run's weights) or an export of "
        "runs/NAME/exports, on the CPU: onnx, onnx-int8, aoti, torchscript. aoti (model.pt2) "
        "and torchscript (model.ts) are code: they load only when named here."
    ),
]


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
    device: DeviceOption = "auto",
    engine: EngineOption = "auto",
) -> None:
    """Classify images: the top-k classes, with display names and probabilities, for each.

    An image unlike the training images is marked "unfamiliar input" (the score and the
    run's threshold are in --output). Files that cannot be read are skipped with a warning
    (and listed with the reason in --output); the exit status is 1 only when no image could
    be read.
    """
    from torchgraft import api
    from torchgraft.serve.outputs import check_output_path, write_predictions

    def classify() -> list[Prediction]:
        if output is not None:
            check_output_path(output)  # a bad suffix is refused before the model runs
        records = api.predict(
            run, images, top_k, device=device, class_names=class_names, batch_size=batch_size,
            engine=engine,
        )  # fmt: skip
        if output is not None:
            write_predictions(records, output)
        return records

    predictions = guard(classify)
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
        if prediction.is_unfamiliar:
            typer.echo(
                f"  unfamiliar input, unlike the training images (score "
                f"{prediction.unfamiliar:.3f} > {prediction.unfamiliar_threshold:.3f}):"
            )
        for rank, score in enumerate(prediction.top_k, start=1):
            label = (
                score.display_name
                if score.display_name == score.class_name
                else f"{score.display_name} ({score.class_name})"
            )
            typer.echo(f"  {rank}. {label:<30} {score.probability:7.2%}")


@app.command()
def export(
    run: Annotated[Path, typer.Option(help="Run directory made by `graft train` (runs/NAME).")],
    formats: Annotated[
        list[str] | None,
        typer.Option(
            "--format",
            "-f",
            help="Format to export, repeatable: onnx, aoti (AOTInductor .pt2, Python or C++), "
            "torchscript (legacy), onnx-int8 (static quantization), timm (a folder plain timm "
            "loads, with a model card, ready for the Hugging Face Hub; timm backbones only).",
            show_default=False,
        ),
    ] = None,
    all_formats: Annotated[
        bool, typer.Option("--all", help="Export every format but timm (ask for it by name).")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Export to runs/NAME/exports/: uint8 images in, calibrated probabilities out.

    Each file is checked against eager PyTorch on the run's validation images
    (exports/parity.json); the export fails (exit 1) when a float format disagrees on any
    top-1 or differs by more than 1e-4 (where eager PyTorch's own float32 rounding exceeds
    1e-4: by more than 10 times that rounding), or int8 loses more than 1 point of accuracy
    or changes the top-1 answer on more than 2% of the images.
    """
    if bool(formats) == all_formats:
        typer.echo("error: give --format NAME (repeatable) or --all, one of the two", err=True)
        raise typer.Exit(2)
    from torchgraft import api

    report = guard(lambda: api.export(run, None if all_formats else formats, quiet=quiet), quiet)
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
    device: DeviceOption = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    engines: Annotated[
        list[str] | None,
        typer.Option(
            "--engine",
            help="Load this code export even if it was not signed by graft export on this "
            "machine, repeatable: aoti (model.pt2), torchscript (model.ts).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Images/s and p50/p95 latency: eager PyTorch, ONNX Runtime, AOTInductor.

    Also the int8 and TorchScript exports if present; batch 1 and batched, on this machine,
    with torch's thread count (set OMP_NUM_THREADS). Runs `graft export` for ONNX and
    AOTInductor first when the run has no such exports yet (or only stale ones).

    Security: RUN/exports/model.pt2 (a native shared library) and model.ts (TorchScript)
    are code. They are timed only when graft export signed them on this machine, or when
    named with --engine; parity.json vouches for nothing. .onnx files and the run's
    safetensors weights are data.
    """
    from torchgraft import api

    report = guard(
        lambda: api.benchmark(
            run, batch_size, seconds, quiet=quiet, device=device, engines=engines or ()
        ),
        quiet,
    )
    typer.echo(
        f"{report.threads} thread(s), random uint8 images; eager on {report.eager_device}, "
        "the exports on the CPU"
    )
    typer.echo(f"{'engine':<18}{'batch':>6}{'images/s':>11}{'p50 ms':>10}{'p95 ms':>10}")
    for timing in report.timings:
        typer.echo(
            f"{timing.engine:<18}{timing.batch_size:>6}{timing.images_per_second:>11.1f}"
            f"{timing.p50_ms:>10.2f}{timing.p95_ms:>10.2f}"
        )
    for engine, reason in report.not_timed.items():
        typer.echo(f"not timed: {engine}: {reason}", err=True)


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
    max_megapixels: Annotated[
        float,
        typer.Option(
            min=0.01,
            help="Largest image accepted, in megapixels, read from its header before decoding "
            "(larger: 413). At most 89 (Pillow's decompression-bomb limit).",
        ),
    ] = 25.0,
    device: DeviceOption = "auto",
    engine: EngineOption = "auto",
    body_timeout: Annotated[
        float,
        typer.Option(
            min=0.1,
            help="Seconds of grace for an upload's body; after it, the body must average "
            "--min-body-rate (else 408).",
        ),
    ] = 10.0,
    min_body_rate: Annotated[
        float,
        typer.Option(
            min=0.1,
            help="KiB/s an upload must average after --body-timeout (32: a 10 MB upload may "
            "take 330 s).",
        ),
    ] = 32.0,
    decode_timeout: Annotated[
        float,
        typer.Option(
            min=0.1,
            help="Seconds one upload may take to decode and resize (503); the wait "
            "for the model is not counted.",
        ),
    ] = 10.0,
    idle_timeout: Annotated[
        float,
        typer.Option(min=0.1, help="Seconds a connection may stay open without sending a request."),
    ] = 5.0,
    max_pending: Annotated[
        int,
        typer.Option(min=1, help="Uploads in progress at once; more get 503 with Retry-After."),
    ] = 64,
    max_batch: Annotated[
        int,
        typer.Option(min=1, help="Most uploads that share one model call (1: no batching)."),
    ] = 16,
    max_wait_ms: Annotated[
        float,
        typer.Option(
            min=0,
            max=1000,
            help="Milliseconds an upload may wait for others to share its model call.",
        ),
    ] = 5.0,
    access_log: Annotated[
        bool, typer.Option(help="Print a line per request (GET /metrics counts them anyway).")
    ] = False,
) -> None:
    """Serve the model over HTTP, with a web page to try it.

    A page at /, POST /predict (an image in, top-k JSON out), POST /explain (its Grad-CAM
    overlay as PNG), GET /health, GET /metrics (Prometheus). The model loads once;
    uploads that arrive together share a model call; Ctrl-C stops the server.
    There is no authentication: put it behind a reverse proxy (README.md, Serving).
    """
    from torchgraft import api
    from torchgraft.serve.server import ServerSettings

    def start() -> None:
        settings = ServerSettings(
            body_timeout=body_timeout, min_body_rate=min_body_rate * 1024,
            decode_timeout=decode_timeout,
            idle_timeout=idle_timeout, max_pending=max_pending,
            max_batch=max_batch, max_wait=max_wait_ms / 1000,
        )  # fmt: skip
        api.serve(
            run, host, port, device=device, class_names=class_names, top_k=top_k,
            max_upload_mb=max_upload_mb, max_megapixels=max_megapixels, engine=engine,
            settings=settings, access_log=access_log,
        )  # fmt: skip

    guard(start)
