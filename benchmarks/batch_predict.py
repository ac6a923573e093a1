"""Batch prediction from image files: `graft predict` with its defaults against the PyTorch
Challenge's `predict` (one image at a time: PIL open, torchvision Resize/CenterCrop/ToTensor/
Normalize, the eager model, topk), on the 1,000 mnist5k validation images written as PNG files.

Two measurements, each the median of `--rounds` rounds:
- throughput, in one process, arms taking turns so that a burst of load from elsewhere hits
  them all alike: the reference; torchgraft's defaults (`api.predictor(run).predict(paths)`,
  what `graft predict` runs: the run's parity-checked ONNX export on a CPU when it has one);
  and torchgraft with `engine="eager"`. Every clock includes decoding the files.
- end to end, each contender in its own process, timed from process start: `graft predict
  FOLDER --run RUN --output preds.csv` against this script running the reference over the
  same folder (`--reference-folder`). Both pay for importing torch and loading the model.

Prints JSON; `speedup` is the default arm's images/s over the reference's (target: 10x).

    python benchmarks/batch_predict.py --run runs/NAME [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from torchgraft import api
from torchgraft.artifact import Run
from torchgraft.data import load_data
from torchgraft.serve import Predictor

TOP_K = 5
TARGET_SPEEDUP = 10


def write_validation_pngs(run: Run, folder: Path) -> list[Path]:
    """The run's mnist5k validation split (same seed and fraction as training) as PNG files."""
    data, train = run.info.config["data"], run.info.config["train"]
    if data["source"] != "mnist5k":
        raise SystemExit(f"{run.path} was trained on {data['source']}; pass an mnist5k run")
    splits = load_data("mnist5k", data["val_fraction"], train["seed"])
    paths = []
    for index, image in enumerate(splits.val.images):
        path = folder / f"{index:04d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def challenge_predict(run: Run) -> Callable[[Path], np.ndarray]:
    """The PyTorch Challenge's process_image + predict, for one image path (top-k indices)."""
    prep = run.info.preprocessing
    process_image = transforms.Compose(
        [
            transforms.Resize(prep.image_size, transforms.InterpolationMode(prep.interpolation)),
            transforms.CenterCrop(prep.image_size),
            transforms.ToTensor(),
            transforms.Normalize(prep.mean, prep.std),
        ]
    )
    # The plain network, contiguous as the course has it (no uint8 input, no channels-last).
    net = Predictor(run, "cpu", channels_last=False, engine="eager").model.net
    net.eval()

    def predict(image_path: Path) -> np.ndarray:
        image = Image.open(image_path).convert("RGB" if prep.channels == 3 else "L")
        batch = process_image(image).unsqueeze(0)
        with torch.no_grad():
            output = net(batch)
        probabilities = torch.softmax(output / run.info.temperature, dim=1)
        _, top_class = probabilities.topk(TOP_K, dim=1)
        return top_class[0].numpy()

    return predict


def median_times(
    arms: dict[str, Callable[[], np.ndarray]], rounds: int
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Median wall time of each arm over `rounds` rounds, the arms taking turns within each
    round; and each arm's result."""
    times: dict[str, list[float]] = {name: [] for name in arms}
    results: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        for name, action in arms.items():
            started = time.perf_counter()
            results[name] = action()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}, results


def throughput(run: Run, paths: list[Path], rounds: int) -> dict[str, object]:
    reference = challenge_predict(run)
    defaults = api.predictor(run)  # what `graft predict` loads
    eager = api.predictor(run, engine="eager")
    class_index = {name: index for index, name in enumerate(run.info.class_names)}

    def classes(predictor: api.Predictor) -> np.ndarray:
        return np.array([class_index[r.class_name] for r in predictor.predict(paths)])

    arms: dict[str, Callable[[], np.ndarray]] = {
        "reference_one_at_a_time": lambda: np.stack([reference(p)[0] for p in paths]),
        "torchgraft_defaults": lambda: classes(defaults),
        "torchgraft_eager": lambda: classes(eager),
    }
    seconds, results = median_times(arms, rounds)
    images_per_s = {name: len(paths) / value for name, value in seconds.items()}
    reference_top1 = results.pop("reference_one_at_a_time")
    reference_rate = images_per_s["reference_one_at_a_time"]
    return {
        "engine_of_the_defaults": defaults.engine,
        "images_per_s": {name: round(value, 1) for name, value in images_per_s.items()},
        "speedup": round(images_per_s["torchgraft_defaults"] / reference_rate, 2),
        "speedup_vs_reference": {
            name: round(value / reference_rate, 2) for name, value in images_per_s.items()
        },
        "top1_agreement_with_reference": {
            name: round(float(np.mean(found == reference_top1)), 4)
            for name, found in results.items()
        },
        "target_speedup_at_least": TARGET_SPEEDUP,
    }


def end_to_end(run: Run, folder: Path, rounds: int) -> dict[str, object]:
    """Seconds from process start to exit, median of `rounds`, each contender in turn."""
    contenders = {
        "graft_predict": [sys.executable, "-m", "torchgraft", "predict", str(folder), "--run",
                          str(run.path), "--output", str(folder.parent / "preds.csv")],
        "reference_one_at_a_time": [sys.executable, __file__, "--run", str(run.path),
                                    "--reference-folder", str(folder)],
    }  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, command in contenders.items():
            started = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times[name].append(time.perf_counter() - started)
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "seconds": {name: round(value, 2) for name, value in median.items()},
        "speedup": round(median["reference_one_at_a_time"] / median["graft_predict"], 2),
    }


def run_reference_over(run: Run, folder: Path) -> None:
    """The reference contender of `end_to_end`: every PNG of `folder`, one at a time."""
    predict = challenge_predict(run)
    for path in sorted(folder.glob("*.png")):
        predict(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", required=True, help="a run trained on mnist5k")
    parser.add_argument("--rounds", type=int, default=3, help="median of N rounds")
    parser.add_argument("--reference-folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    run = Run.load(args.run)
    if args.reference_folder is not None:
        run_reference_over(run, args.reference_folder)
        return
    with tempfile.TemporaryDirectory(prefix="batch-predict-") as scratch:
        folder = Path(scratch) / "images"
        folder.mkdir()
        paths = write_validation_pngs(run, folder)
        results = {
            "data": f"mnist5k validation, {len(paths)} PNG files, {run.info.model_name} at "
            f"{run.info.preprocessing.image_size} px, median of {args.rounds} rounds",
            "throughput": throughput(run, paths, args.rounds),
            "end_to_end_from_process_start": end_to_end(run, folder, args.rounds),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
            f"{torch.get_num_threads()} threads, torch {torch.__version__}",
            "load_average": [round(x, 2) for x in os.getloadavg()],
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
