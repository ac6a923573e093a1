"""Training throughput on a GPU: torchgraft's engine against a plain timm loop, side by side.

For `efficientnet_lite0` and `resnet50` at 224 px, batch 256, bf16 autocast, channels-last,
10 classes, random initialisation (no hub access), on generated 224 px JPEGs:

- timm: a plain loop written below (the images already on the GPU as one uint8 tensor,
  normalised in the loop, AdamW, cross-entropy): the fastest input a hand-written loop has;
- torchgraft: `api.train(FOLDER, model=..., batch_size=256, precision="bf16",
  image_size=224, pretrained=False)` and its defaults otherwise (the EMA of the weights and
  label smoothing included), with `loader=resident` (the default `auto` on a GPU when the
  images fit), `loader=dataloader` (pinned memory, workers from the cores), and `compile`.

Each contender runs in its own process, one after another. Throughput is timed over
MEASURE optimizer steps after WARMUP steps (torch.cuda.synchronize at both ends), within
one epoch. Reported per run: images/s, the ratio to the timm loop, an MFU estimate (3x the
forward FLOPs counted by torch.utils.flop_counter, over the GPU's dense bf16 peak), the GPU's
utilisation (nvidia-smi sampled every 100 ms over the timed steps) and peak memory.

    python benchmarks/gpu.py                         # on the GPU, about 5 minutes
    python benchmarks/gpu.py --device cpu --smoke    # the same path, tiny, on a CPU

Prints one JSON object; a full (non-smoke) run also appends a row per model to
benchmarks/README.md with the GPU's name. Installs nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
MODELS = ("efficientnet_lite0", "resnet50")
CONTENDERS = ("timm", "resident", "dataloader", "resident+compile")
CLASSES = 10
# Dense bf16 (fp16 where the GPU has no bf16) tensor-core peaks, FLOP/s, from the datasheets.
PEAK_FLOPS = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "A10": 125e12, "L4": 121e12,
    "L40": 181e12, "4090": 165e12, "3090": 71e12, "V100": 125e12, "T4": 65e12,
}  # fmt: skip
TARGETS = {"torchgraft_over_timm_at_least": 1.0, "lite0_resident_gpu_busy_at_least": 90.0}


@dataclass(frozen=True)
class Scale:
    image_size: int
    batch_size: int
    warmup: int  # optimizer steps before the clock starts (cuDNN autotuning, compilation)
    measure: int  # optimizer steps timed
    precision: str

    @property
    def images(self) -> int:
        """Enough for warm-up and measurement within one epoch, with the 20% held out."""
        return int((self.warmup + self.measure + 2) * self.batch_size / 0.8) + CLASSES


FULL = Scale(224, 256, warmup=15, measure=40, precision="bf16")
SMOKE = Scale(64, 16, warmup=2, measure=3, precision="bf16")


def write_images(root: Path, count: int, size: int) -> None:
    """`count` random-noise JPEGs at `size` px over CLASSES folders (in parallel)."""
    chunks = [(root, start, min(start + 256, count), size) for start in range(0, count, 256)]
    with ProcessPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(_write_chunk, chunks))


def _write_chunk(task: tuple[Path, int, int, int]) -> None:
    from PIL import Image

    root, start, stop, size = task
    rng = np.random.default_rng(start)
    for index in range(start, stop):
        folder = root / f"class{index % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:06d}.jpg", quality=90)


# --- what each child process runs --------------------------------------------------------


class GpuSampler:
    """nvidia-smi's utilisation every 100 ms while running (nothing on a CPU)."""

    def __init__(self, device: str) -> None:
        self.process: subprocess.Popen[str] | None = None
        if device.startswith("cuda"):
            index = device.partition(":")[2] or "0"
            self.process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 "-i", index, "-lms", "100"],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip

    def stop(self) -> float | None:
        if self.process is None:
            return None
        self.process.terminate()
        output, _ = self.process.communicate()
        values = [float(line) for line in output.split() if line.strip().isdigit()]
        return sum(values) / len(values) if values else None


class Clock:
    """Times optimizer steps warmup+1 .. warmup+measure, waiting for the device at both ends."""

    def __init__(self, scale: Scale, device: str) -> None:
        self.scale, self.device = scale, device
        self.started = self.elapsed = 0.0
        self.sampler: GpuSampler | None = None
        self.gpu_busy: float | None = None

    def step_done(self, step: int) -> bool:
        """After optimizer step `step` (1-based); True once the measurement is over."""
        if step == self.scale.warmup:
            self._synchronize()
            self.sampler = GpuSampler(self.device)
            self.started = time.perf_counter()
        if step == self.scale.warmup + self.scale.measure:
            self._synchronize()
            self.elapsed = time.perf_counter() - self.started
            self.gpu_busy = self.sampler.stop() if self.sampler else None
            return True
        return False

    def _synchronize(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def result(self) -> dict[str, Any]:
        import torch

        images = self.scale.measure * self.scale.batch_size
        peak = torch.cuda.max_memory_allocated() / 2**30 if self.device != "cpu" else None
        return {
            "images_per_s": round(images / self.elapsed, 1),
            "gpu_busy_percent": None if self.gpu_busy is None else round(self.gpu_busy, 1),
            "peak_memory_gib": None if peak is None else round(peak, 2),
        }


def run_torchgraft(folder: Path, model: str, contender: str, scale: Scale, device: str) -> Any:
    from torchgraft import api
    from torchgraft.train.callbacks import Callback

    clock = Clock(scale, device)

    class Timed(Callback):
        def on_step_end(self, trainer: Any, step: Any) -> None:
            if clock.step_done(step.step):
                trainer.stop("measured")

    api.train(
        str(folder), model=model, pretrained=False, image_size=scale.image_size,
        batch_size=scale.batch_size, precision=scale.precision, epochs=1, device=device,
        loader="dataloader" if contender == "dataloader" else "resident",
        compile=contender.endswith("compile"), cache="disk",
        cache_dir=os.environ["GPU_BENCH_CACHE"], runs_dir=os.environ["GPU_BENCH_RUNS"],
        quiet=True, report=False, tensorboard=False, callbacks=[Timed()],
    )  # fmt: skip
    return clock.result()


def run_timm(folder: Path, model: str, scale: Scale, device_name: str) -> Any:
    """The plain loop: decoded images on the device, normalised in the loop."""
    import timm
    import torch
    import torch.nn.functional as F
    from PIL import Image

    device = torch.device(device_name)
    files = sorted(folder.glob("*/*.jpg"))
    pixels = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in files])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous().to(device)
    labels = torch.tensor([int(path.parent.name.removeprefix("class")) for path in files])
    labels = labels.to(device)
    network = timm.create_model(model, pretrained=False, num_classes=CLASSES).to(device)
    network = network.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3, weight_decay=0.01)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1) * 255
    clock, order = Clock(scale, device_name), torch.randperm(len(images), device=device)
    for step in range(1, scale.warmup + scale.measure + 1):
        index = order[(step - 1) * scale.batch_size : step * scale.batch_size]
        batch = ((images[index].float() - mean) / std).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(network(batch).float(), labels[index])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if clock.step_done(step):
            break
    return clock.result()


def child_main() -> None:
    folder, model, contender, scale_name, device = sys.argv[2:7]
    scale = SMOKE if scale_name == "smoke" else FULL
    if contender == "timm":
        result = run_timm(Path(folder), model, scale, device)
    else:
        result = run_torchgraft(Path(folder), model, contender, scale, device)
    print("RESULT " + json.dumps(result), flush=True)


# --- the parent: one process per contender, then the table ------------------------------


def run_child(folder: Path, model: str, contender: str, scale_name: str, device: str,
              environment: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    command = [sys.executable, __file__, "--child", str(folder), model, contender, scale_name,
               device]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=environment)
    line = next((x for x in result.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        return {"error": result.stderr[-2000:], "process_s": time.perf_counter() - started}
    return {**json.loads(line.removeprefix("RESULT ")),
            "process_s": round(time.perf_counter() - started, 1)}  # fmt: skip


def training_flops_per_image(model: str, size: int) -> float:
    """3x the forward FLOPs of one image (backward is about twice the forward)."""
    import timm
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    network = timm.create_model(model, pretrained=False, num_classes=CLASSES).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network(torch.zeros(1, 3, size, size))
    return 3.0 * counter.get_total_flops()


def device_facts(device: str) -> tuple[str, float | None]:
    import torch

    if not device.startswith("cuda"):
        return "cpu", None
    name = torch.cuda.get_device_name(torch.device(device))
    peak = next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)
    return name, peak


def summarise(model: str, runs: dict[str, dict[str, Any]], flops: float,
              peak: float | None) -> dict[str, Any]:  # fmt: skip
    timm_speed = runs["timm"].get("images_per_s")
    for result in runs.values():
        speed = result.get("images_per_s")
        if speed is None:
            continue
        result["over_timm"] = round(speed / timm_speed, 3) if timm_speed else None
        result["mfu"] = round(speed * flops / peak, 3) if peak else None
    return {"model": model, "training_gflops_per_image": round(flops / 1e9, 2), "runs": runs}


def append_to_readme(gpu: str, models: list[dict[str, Any]]) -> None:
    today = datetime.date.today().isoformat()
    lines = []
    for entry in models:
        runs = entry["runs"]

        def cell(name: str, key: str, runs: dict[str, Any] = runs) -> str:
            value = runs.get(name, {}).get(key)
            return "failed" if value is None else str(value)

        lines.append(
            f"| {today} | {gpu} | {entry['model']} | {cell('timm', 'images_per_s')} | "
            f"{cell('resident', 'images_per_s')} ({cell('resident', 'over_timm')}x) | "
            f"{cell('dataloader', 'images_per_s')} | {cell('resident+compile', 'images_per_s')} | "
            f"{cell('resident', 'gpu_busy_percent')} | {cell('resident', 'mfu')} | "
            f"{cell('resident', 'peak_memory_gib')} |"
        )
    with (HERE / "README.md").open("a") as readme:
        readme.write("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the path")
    parser.add_argument("--models", default=",".join(MODELS))
    arguments = parser.parse_args()
    scale, scale_name = (SMOKE, "smoke") if arguments.smoke else (FULL, "full")
    started = time.perf_counter()
    gpu, peak = device_facts(arguments.device)
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as temporary:
        root = Path(temporary)
        write_images(root / "images", scale.images, scale.image_size)
        environment = {**os.environ, "GPU_BENCH_CACHE": str(root / "cache"),
                       "GPU_BENCH_RUNS": str(root / "runs")}  # fmt: skip
        models = []
        for model in arguments.models.split(","):
            runs = {
                contender: run_child(
                    root / "images", model, contender, scale_name, arguments.device, environment
                )
                for contender in CONTENDERS
            }
            flops = training_flops_per_image(model, scale.image_size)
            models.append(summarise(model, runs, flops, peak))
    report = {
        "device": gpu, "scale": asdict(scale), "smoke": arguments.smoke, "models": models,
        "targets": TARGETS, "total_s": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    print(json.dumps(report, indent=2))
    if not arguments.smoke:
        append_to_readme(gpu, models)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main()
    else:
        main()
