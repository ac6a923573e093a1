"""How well `graft doctor --deep` finds planted mistakes in mnist5k.

mnist5k is written out as train/ and val/ class folders (training's own 80/20 split, seed 0),
then, with a seed:
- 2% of all files are moved to a wrong class folder (label flips);
- 10 validation images are mirrored, cropped and saved into their class folder in train/
  (leaked copies).
Then `graft doctor DIR --deep --json` runs with its defaults, in its own process, timed from
process start, embeddings included (a fresh cache folder, so nothing is reused). Prints one
JSON object: recall and precision of the planted flips among `label_issues`, the planted
leaks found among the `semantic_duplicates` groups that span train and val, and the time.

    python benchmarks/label_issues.py [--seed 0] [--keep DIR] [--runs 1] [--figure PNG]

`--figure` draws the listed issues that were not planted (MNIST's own label errors, or the
probe's mistakes) with their given and suggested labels, for a person to judge.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from torchgraft.data import load_data

FLIP_SHARE = 0.02
LEAKS = 10
CROP = 0.85  # a leaked copy keeps this share of each side of the original


@dataclass
class Planted:
    flips: set[str]  # files (relative to the data folder) now in a wrong class folder
    leaks: list[tuple[str, str]]  # (validation original, its mirrored-cropped copy in train)


def write_mnist5k(folder: Path) -> dict[str, list[tuple[Path, int]]]:
    """mnist5k as train/ and val/ class folders; returns each split's files and labels."""
    splits = load_data("mnist5k", val_fraction=0.2, seed=0)
    written: dict[str, list[tuple[Path, int]]] = {}
    for name in ("train", "val"):
        split = getattr(splits, name)
        written[name] = []
        for index, (pixels, label) in enumerate(zip(split.images, split.labels, strict=True)):
            path = folder / name / str(label) / f"{name}{index:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
            written[name].append((path, int(label)))
    return written


def plant(folder: Path, seed: int) -> Planted:
    """Write mnist5k into `folder` and plant the flips and leaks."""
    rng = np.random.default_rng(seed)
    written = write_mnist5k(folder)
    files = written["train"] + written["val"]
    flipped = set(rng.choice(len(files), size=round(FLIP_SHARE * len(files)), replace=False))
    flips = {_move_to_wrong_class(folder, *files[i], rng) for i in sorted(flipped)}
    # Leaks copy validation images that were not flipped (their labels stay right).
    first_val = len(written["train"])
    unflipped = [i for i in range(len(written["val"])) if first_val + i not in flipped]
    sources = rng.choice(unflipped, size=LEAKS, replace=False)
    leaks = [_leak(folder, *written["val"][i], rng, n) for n, i in enumerate(sources)]
    return Planted(flips, leaks)


def _move_to_wrong_class(folder: Path, path: Path, label: int, rng: np.random.Generator) -> str:
    wrong = (label + int(rng.integers(1, 10))) % 10
    target = path.parent.parent / str(wrong) / path.name
    path.rename(target)
    return target.relative_to(folder).as_posix()


def _leak(
    folder: Path, path: Path, label: int, rng: np.random.Generator, number: int
) -> tuple[str, str]:
    image = Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    side = round(image.width * CROP)
    left, top = (int(rng.integers(0, image.width - side + 1)) for _ in range(2))
    copy = image.crop((left, top, left + side, top + side))
    target = folder / "train" / str(label) / f"leak{number:02d}.png"
    copy.save(target)
    return path.relative_to(folder).as_posix(), target.relative_to(folder).as_posix()


def run_doctor(folder: Path, cache: Path) -> tuple[dict[str, Any], float]:
    """`graft doctor --deep --json` with its defaults, in its own process: (report, seconds)."""
    environment = {**os.environ, "TORCHGRAFT_CACHE": str(cache)}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "torchgraft", "doctor", str(folder), "--deep", "--json", "-q"],
        capture_output=True, text=True, env=environment, check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):  # 1: problems found, as planted
        raise SystemExit(f"graft doctor failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout), seconds


def score(report: dict[str, Any], planted: Planted) -> dict[str, Any]:
    listed = [issue["file"] for issue in report["label_issues"]]
    found = planted.flips & set(listed)
    leaking = [set(group["files"]) for group in report["semantic_duplicates"] if group["leaks"]]
    leaks_found = sum(any({a, b} <= group for group in leaking) for a, b in planted.leaks)
    return {
        "planted_flips": len(planted.flips),
        "label_issues": len(listed),
        "flips_found": len(found),
        "recall": round(len(found) / len(planted.flips), 3),
        "precision": round(len(found) / max(1, len(listed)), 3),
        "leaks_planted": len(planted.leaks),
        "leaks_found": leaks_found,
        "semantic_duplicate_groups": len(report["semantic_duplicates"]),
        "outliers": len(report["outliers"]),
        "not_planted": [issue for issue in report["label_issues"] if issue["file"] not in found],
    }


def draw_unplanted(issues: list[dict[str, Any]], folder: Path, path: Path, count: int = 16) -> None:
    """A grid of the first `count` issues that were not planted, captioned given -> suggested."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = issues[:count]
    columns = 8
    rows = max(1, -(-len(shown) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.3, rows * 1.9))
    for axis in np.atleast_1d(axes).flat:
        axis.axis("off")
    for axis, issue in zip(np.atleast_1d(axes).flat, shown, strict=False):
        axis.imshow(Image.open(folder / issue["file"]).convert("L"), cmap="gray")
        axis.set_title(
            f"{issue['given']} -> {issue['suggested']}\n{issue['confidence']:.0%}", fontsize=9
        )
    figure.suptitle("doctor --deep: listed issues not planted (given -> suggested, confidence)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=1, help="doctor runs; the median is kept")
    parser.add_argument("--keep", type=Path, help="write the planted data here and keep it")
    parser.add_argument("--figure", type=Path, help="draw the issues not planted to this PNG")
    args = parser.parse_args()
    if args.keep and args.keep.exists() and any(args.keep.iterdir()):
        raise SystemExit(f"--keep {args.keep}: not empty; planting twice would skew the scores")
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch) / "mnist5k-planted"
        planted = plant(folder, args.seed)
        times, report = [], {}
        for run in range(args.runs):
            report, seconds = run_doctor(folder, Path(scratch) / f"cache{run}")
            times.append(seconds)
        scored = score(report, planted)
        if args.figure:
            draw_unplanted(scored["not_planted"], folder, args.figure)
    result = {
        "benchmark": "label_issues", "seed": args.seed, "machine": platform.processor()
        or platform.machine(), "cores": os.cpu_count(), **scored,
        "doctor_seconds": [round(t, 1) for t in times],
        "doctor_seconds_median": round(statistics.median(times), 1),
    }  # fmt: skip
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
