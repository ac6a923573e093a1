"""Preparing a photo-sized dataset: decoding, caching and the first optimizer steps, on a CPU.

20,000 generated JPEGs of 500x375 (two classes of smooth colour fields with noise, so they
compress like photos) are prepared for EfficientNet-Lite0 at 224 px: `api.train(FOLDER,
cache=...)` with every other setting at its default. Each run is its own process, stopped by
a callback once the first optimizer steps are done (no full epochs on a CPU). Recorded, per
run, from the process's start: the time to the first optimizer step (the preparation:
imports, listing, digesting, decoding, caching, building the model) and to its end; the
process's peak RSS at the first step (the data path) and at the end (with the steps'
activations: batch 64 at 224 px); and how long digesting every file against the manifest
took.

Runs, one after another on one cache folder:
1. `--cache disk`, cold: every file digested, decoded and written to the disk cache;
2. `--cache disk`, warm: unchanged files (manifest hit), cache hit: nothing decoded;
3. `--cache memory` (a fresh cache folder): the decoded images held in RAM.

Targets: peak RSS of the disk-cache runs under 2 GB; the warm run reaches its first step in
under a tenth of the cold run's preparation time (to_first_step_s, warm over cold).

    python benchmarks/scale_cpu.py             # 20,000 images, about 10 minutes here
    python benchmarks/scale_cpu.py --smoke     # 400 images

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

WIDTH, HEIGHT = 500, 375
STEPS = 2  # optimizer steps before a run is stopped
TARGETS = {"disk_peak_rss_gb_below": 2.0, "warm_first_step_over_cold_preparation_below": 0.1}


def write_photos(root: Path, count: int) -> None:
    """`count` JPEGs in root/{warm,cool}/: smooth random colour fields plus noise."""
    rng = np.random.default_rng(0)
    for index in range(count):
        label = index % 2
        folder = root / ("warm" if label == 0 else "cool")
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        coarse[..., 0 if label == 0 else 2] |= 0x80  # the class: a warm or a cool cast
        field = Image.fromarray(coarse).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC)
        noisy = np.asarray(field, dtype=np.int16) + rng.integers(-12, 13, (HEIGHT, WIDTH, 3))
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(
            folder / f"{index:05d}.jpg", quality=85
        )


CHILD = r"""
import json, os, resource, sys, time
started = float(sys.argv[4])
from torchgraft import api
from torchgraft.data import cache as cache_module
from torchgraft.train.callbacks import Callback

timings = {}
real_key = cache_module.cache_key
def timed_key(*args, **kwargs):
    begun = time.time()
    try:
        return real_key(*args, **kwargs)
    finally:
        timings["digest_s"] = timings.get("digest_s", 0.0) + time.time() - begun
cache_module.cache_key = timed_key

class FirstSteps(Callback):
    def on_train_start(self, trainer):  # preparation done: the first step starts now
        timings["to_first_step_s"] = time.time() - started
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        timings["preparation_peak_rss_gb"] = peak_kb / 2**20
    def on_step_end(self, trainer, step):
        timings.setdefault("to_first_step_end_s", time.time() - started)
        if step.step >= int(sys.argv[3]):
            raise SystemExit(0)

try:
    api.train(sys.argv[1], cache=sys.argv[2], cache_dir=os.environ["SCALE_CACHE"],
              runs_dir=os.environ["SCALE_RUNS"], quiet=True, callbacks=[FirstSteps()])
finally:
    timings["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    # the decoding pass's worker processes, each on its own
    timings["workers_peak_rss_gb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print("RESULT " + json.dumps(timings), flush=True)
"""


def run_once(folder: Path, cache: str, cache_dir: Path, runs: Path) -> dict[str, Any]:
    environment = {**os.environ, "SCALE_CACHE": str(cache_dir), "SCALE_RUNS": str(runs)}
    command = [sys.executable, "-c", CHILD, str(folder), cache, str(STEPS), str(time.time())]
    result = subprocess.run(command, capture_output=True, text=True, env=environment)
    line = next((x for x in result.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{cache} run failed:\n{result.stderr[-3000:]}")
    return {"cache": cache, **json.loads(line.removeprefix("RESULT "))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--smoke", action="store_true", help="400 images")
    arguments = parser.parse_args()
    count = 400 if arguments.smoke else arguments.images
    with tempfile.TemporaryDirectory(prefix="scale-") as temporary:
        root = Path(temporary)
        begun = time.perf_counter()
        write_photos(root / "photos", count)
        written_s = time.perf_counter() - begun
        disk_cache, memory_cache = root / "cache-disk", root / "cache-memory"
        cold = run_once(root / "photos", "disk", disk_cache, root / "runs")
        warm = run_once(root / "photos", "disk", disk_cache, root / "runs")
        memory = run_once(root / "photos", "memory", memory_cache, root / "runs")
    ratio = warm["to_first_step_s"] / cold["to_first_step_s"]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(json.dumps({
        "machine": machine,
        "images": count, "size": f"{WIDTH}x{HEIGHT} JPEG", "writing_images_s": round(written_s, 1),
        "runs": {"disk_cold": cold, "disk_warm": warm, "memory": memory},
        "warm_first_step_over_cold_preparation": round(ratio, 4),
        "targets": TARGETS,
        "met": {
            "disk_peak_rss_gb_below": max(cold["peak_rss_gb"], warm["peak_rss_gb"]) < 2.0,
            "disk_preparation_peak_rss_gb_below": max(
                cold["preparation_peak_rss_gb"], warm["preparation_peak_rss_gb"]
            ) < 2.0,
            "warm_first_step_over_cold_preparation_below": ratio < 0.1,
        },
        "children_peak_rss_gb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
