"""`graft benchmark`: images/s and latency of eager PyTorch and the exported models.

Each engine classifies the same random uint8 batches (speed does not depend on the pixels)
at batch size 1 and batched, on this machine, with the same thread count. Formats the
benchmark needs (onnx, aoti) are exported first when the run has none yet; int8 ONNX and
TorchScript are timed too when they were exported. Only files parity.json reports for the
run's current weights and temperature are timed: a stale export is exported again.

model.pt2 and model.ts are code (a native library, a pickle-based archive): they are timed
only when this user's `graft export` signed them (`signatures`), or when the caller names
them in `engines` (`graft benchmark --engine aoti`). Others are listed as not timed, with
the reason; parity.json, which anyone can write, vouches for nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from torchgraft.artifact import Run
from torchgraft.devices import resolve_device
from torchgraft.errors import UserError
from torchgraft.export.exporter import EXPORTS_DIR, checked_formats, export_run
from torchgraft.export.formats import FORMATS
from torchgraft.export.loader import load_exported
from torchgraft.export.model import Predict, numpy_predict, probability_model
from torchgraft.export.signatures import signed_here

logger = logging.getLogger(__name__)

REQUIRED_FORMATS = ("onnx", "aoti")  # exported on demand
ENGINES = {  # engine label -> export format, in table order
    "onnxruntime": "onnx",
    "aoti": "aoti",
    "onnxruntime-int8": "onnx-int8",
    "torchscript": "torchscript",
}
WARMUP_CALLS = 3  # first calls pay for allocation and lazy initialisation
MIN_CALLS = 5


@dataclass
class Timing:
    engine: str  # eager, onnxruntime, aoti, ...
    batch_size: int
    images_per_second: float
    p50_ms: float  # median latency of one call (one batch)
    p95_ms: float
    calls: int  # timed calls behind these numbers


@dataclass
class BenchmarkReport:
    threads: int  # intra-op threads every engine used
    timings: list[Timing]
    eager_device: str = "cpu"  # where eager PyTorch ran (the exports run on the CPU)
    not_timed: dict[str, str] = dataclasses.field(default_factory=dict)  # engine -> why not

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def benchmark_run(
    run: Run, batch_sizes: Sequence[int] = (1, 64), seconds: float = 2.0, quiet: bool = False,
    device: str | torch.device = "auto", engines: Sequence[str] = (),
) -> BenchmarkReport:  # fmt: skip
    """Time every engine at every batch size for about `seconds` each: eager PyTorch on
    `device` (auto: the GPU when there is one), the exports on the CPU they were built for.
    `engines` names code formats (aoti, torchscript) to load even if not signed here."""
    asked = check_code_engines(engines)
    eager_device = resolve_device(device)
    folder = run.path / EXPORTS_DIR
    missing = [name for name in (*REQUIRED_FORMATS, *asked) if name not in checked_formats(run)]
    if missing:
        logger.info("no current %s export: exporting it first", " or ".join(missing))
        export_run(run, list(dict.fromkeys(missing)), quiet=quiet)  # deletes older ones too
    exported = checked_formats(run)
    loaders: dict[str, Callable[[], Predict]] = {
        "eager": lambda: numpy_predict(probability_model(run).to(eager_device), eager_device)
    }
    not_timed: dict[str, str] = {}
    for label, name in ENGINES.items():
        spec = FORMATS[name]
        path = folder / spec.file_name
        if name not in exported:
            continue
        if spec.code and name not in asked and not signed_here(path):
            not_timed[label] = (
                f"{path.name} is code and was not signed by graft export on this machine: pass "
                f"--engine {name} to load it anyway, or export it again here"
            )
            logger.warning("not timing %s: %s", label, not_timed[label])
            continue
        loaders[label] = partial(load_exported, path, allow_code=name in asked)
    images = random_images(run, max(batch_sizes))
    timings = []
    for label, load in loaders.items():
        # One engine in memory at a time: an idle onnxruntime or OpenMP thread pool would
        # otherwise compete with the engine being timed.
        predict = load()
        timings += [time_engine(label, predict, images[:size], seconds) for size in batch_sizes]
        del predict
    return BenchmarkReport(torch.get_num_threads(), timings, str(eager_device), not_timed)


def check_code_engines(engines: Sequence[str]) -> list[str]:
    """The code formats named in `engines`, each once; anything else is refused."""
    code = [spec.name for spec in FORMATS.values() if spec.code]
    for name in engines:
        if name not in code:
            raise UserError(
                f"--engine {name}: benchmark takes --engine for the exports that are code, to "
                f"load them unsigned: {' or '.join(code)} (ONNX, a data format, is always timed)"
            )
    return list(dict.fromkeys(engines))


def random_images(run: Run, count: int) -> np.ndarray:
    prep = run.info.preprocessing
    shape = (count, prep.channels, prep.image_size, prep.image_size)
    return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)


def time_engine(label: str, predict: Predict, images: np.ndarray, seconds: float) -> Timing:
    """Call `predict` on `images` repeatedly for about `seconds`, after a warm-up."""
    for _ in range(WARMUP_CALLS):
        predict(images)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(latencies) < MIN_CALLS or time.perf_counter() < deadline:
        started = time.perf_counter()
        predict(images)
        latencies.append(time.perf_counter() - started)
    milliseconds = np.array(latencies) * 1000
    logger.info("%s, batch %d: %d calls", label, len(images), len(latencies))
    return Timing(
        label,
        len(images),
        images_per_second=len(images) * len(latencies) / sum(latencies),
        p50_ms=float(np.percentile(milliseconds, 50)),
        p95_ms=float(np.percentile(milliseconds, 95)),
        calls=len(latencies),
    )
