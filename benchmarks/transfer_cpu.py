"""Time to 96% validation accuracy: torchgraft's transfer recipe against the taught loop.

Both arms fine-tune EfficientNet-Lite0 at 64 px from the same bundled ImageNet weights on the
same mnist5k split (4,000 train / 1,000 val, `load_data("mnist5k", val_fraction=0.2, seed=0)`),
one after the other in one process, on the CPU with 2 threads:

- torchgraft: `api.train` with the settings of `examples/demo.py` (head on cached features of
  the frozen backbone, then the whole network under one-cycle AdamW; images decoded once).
- reference, the loop the PyTorch Challenge teaches: the same images written as PNG files,
  read by torchvision `ImageFolder` with PIL transforms every epoch, a new 10-class timm model
  given the same weights, full fine-tune with Adam at 3e-4, batch 64, cross-entropy.

How time is counted, the same rule for both: the clock covers training and validation
(measuring accuracy is part of reaching it).
- reference: the clock starts at its first training step, after the PNG files are written and
  the model is built (those are left out, reported as `setup_s_not_counted`); the PIL decoding
  and transforms of every epoch are counted. Validation runs every `--eval-every` steps and at
  each epoch end; training stops at `--budget` seconds.
- torchgraft: the wall time of the whole `api.train` call. metrics.csv gives each epoch's
  seconds (validation included); everything else (loading, decoding, model creation, feature
  caching, saving) is charged up front as setup, so the point after epoch k is at
  setup + the seconds of epochs 1..k, never earlier than the truth. The run always
  completes; only epochs ending within the budget count towards the best accuracy.

    python benchmarks/transfer_cpu.py [--budget 120] [--eval-every 20] [--arm both]
    python benchmarks/transfer_cpu.py --budget 20 --max-images 600 --eval-every 5  # smoke

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import logging
import os
import platform
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from torchgraft import api
from torchgraft.data import load_data
from torchgraft.data.sources import LabeledImages
from torchgraft.models.bundled import efficientnet_lite0_weights
from torchgraft.models.registry import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger("transfer_cpu")

SEED = 0
THREADS = 2
IMAGE_SIZE = 64
BATCH_SIZE = 64
REFERENCE_LR = 3e-4
TARGET_ACCURACY = 0.96
TARGETS = {"time_to_96_ratio_at_least": 4.0, "accuracy_within_120s_at_least": 0.985}
ACCOUNTING = (
    "points are [elapsed_s, val_accuracy]; both clocks include validation. reference: clock "
    "from its first step; PNG writing and model creation not counted; PIL decoding every "
    "epoch counted. torchgraft: wall time of api.train; time outside the epoch seconds of "
    "metrics.csv (loading, decoding, model creation, feature caching, saving) is charged "
    "before epoch 1; its run always completes, so its seconds_to_96 may lie past the budget "
    "(the reference stops at the budget)."
)
DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.py"


@dataclass
class Point:
    """One validation: when it finished and what it measured."""

    elapsed_s: float  # on the arm's clock, validation included
    accuracy: float
    training_s: float | None = None  # the same moment, validation left out (reference only)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", type=float, default=120.0, help="seconds per arm")
    parser.add_argument(
        "--eval-every", type=int, default=20, help="reference: validate every N steps"
    )
    parser.add_argument(
        "--max-images",
        type=int,
        default=None,
        help="smoke tests: at most N train and N/4 val images (both arms then read PNG files)",
    )
    parser.add_argument("--arm", choices=("both", "reference", "torchgraft"), default="both")
    parser.add_argument(
        "--epochs", type=int, default=None, help="torchgraft fine-tune epochs (default: demo's)"
    )
    return parser.parse_args()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def subsample(split: LabeledImages, limit: int | None) -> LabeledImages:
    """At most `limit` images of `split`, chosen by a seeded shuffle, in their original order."""
    if limit is None or limit >= len(split):
        return split
    chosen = np.random.default_rng(SEED).permutation(len(split))[:limit]
    return split.subset(np.sort(chosen))


def write_image_tree(root: Path, splits: dict[str, LabeledImages]) -> Path:
    """`root/<split>/<digit>/<index>.png` for every image: the layout ImageFolder reads."""
    for name, split in splits.items():
        for index, (image, label) in enumerate(zip(split.images, split.labels, strict=True)):
            folder = root / name / str(int(label))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(image)).save(folder / f"{index}.png")
    return root


# --- reference: the taught loop ------------------------------------------------------------


def reference_loaders(root: Path) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """ImageFolder train and val loaders; PIL decodes and transforms every image every epoch."""
    transform = transforms.Compose(
        [
            transforms.Grayscale(3),
            transforms.Resize(IMAGE_SIZE),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    train = datasets.ImageFolder(str(root / "train"), transform=transform)
    val = datasets.ImageFolder(str(root / "val"), transform=transform)
    shuffle = torch.Generator().manual_seed(SEED)
    return (
        DataLoader(train, batch_size=BATCH_SIZE, shuffle=True, num_workers=0, generator=shuffle),
        DataLoader(val, batch_size=BATCH_SIZE, shuffle=False, num_workers=0),
    )


def reference_model(num_classes: int) -> nn.Module:
    """timm's efficientnet_lite0, a new head, the bundled weights: as a learner loads them."""
    model = timm.create_model("efficientnet_lite0", num_classes=num_classes)
    weights = {
        key: value
        for key, value in efficientnet_lite0_weights().items()
        if not key.startswith("classifier.")
    }
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or any(not key.startswith("classifier.") for key in missing):
        raise RuntimeError(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    return model


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader[Any]) -> float:
    model.eval()
    correct = total = 0
    for images, labels in loader:
        correct += int((model(images).argmax(1) == labels).sum())
        total += len(labels)
    return correct / total


class Clock:
    """Seconds since the start, and how many of them went to validation."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.validating = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def validate(model: nn.Module, val: DataLoader[Any], clock: Clock) -> Point:
    began = time.perf_counter()
    training_s = began - clock.started - clock.validating
    value = accuracy(model, val)
    clock.validating += time.perf_counter() - began
    logger.info("reference: %.4f at %.1fs", value, clock.elapsed())
    return Point(clock.elapsed(), value, training_s)


def train_reference(
    model: nn.Module, train: DataLoader[Any], val: DataLoader[Any], budget: float, eval_every: int
) -> tuple[list[Point], dict[str, Any]]:
    """Adam at 3e-4 until the budget runs out, validating every `eval_every` steps and epoch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=REFERENCE_LR)
    loss_function = nn.CrossEntropyLoss()
    points: list[Point] = []
    clock = Clock()
    steps = epochs = 0
    while clock.elapsed() < budget:
        for images, labels in train:
            if clock.elapsed() >= budget:
                break
            model.train()
            optimizer.zero_grad()
            loss_function(model(images), labels).backward()
            optimizer.step()
            steps += 1
            if steps % eval_every == 0:
                points.append(validate(model, val, clock))
        else:  # the epoch ran to its end
            epochs += 1
            if steps % eval_every:
                points.append(validate(model, val, clock))
    details = {
        "steps": steps,
        "epochs_completed": epochs,
        "validations": len(points),
        "validation_s": round(clock.validating, 2),
    }
    return points, details


def run_reference(root: Path, budget: float, eval_every: int) -> dict[str, Any]:
    seed_everything(SEED)
    began = time.perf_counter()
    train, val = reference_loaders(root)
    model = reference_model(len(train.dataset.classes))
    setup = time.perf_counter() - began
    points, details = train_reference(model, train, val, budget, eval_every)
    trained_only = next(
        (round(p.training_s or 0.0, 2) for p in points if p.accuracy >= TARGET_ACCURACY), None
    )
    return {
        **summarise(points, budget),
        "seconds_to_96_without_validation": trained_only,
        "setup_s_not_counted": round(setup, 2),
        **details,
        "total_s": round(time.perf_counter() - began, 2),
    }


# --- torchgraft ------------------------------------------------------------------------------


def demo_settings() -> dict[str, Any]:
    """The training settings of examples/demo.py, read from the file so they stay in step."""
    spec = importlib.util.spec_from_file_location("torchgraft_demo", DEMO)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot read {DEMO}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.SETTINGS)


def read_epochs(metrics: Path) -> list[tuple[str, float, float]]:
    """(phase, seconds, val_accuracy) of every epoch in a run's metrics.csv."""
    with metrics.open(newline="") as file:
        rows = list(csv.DictReader(file))
    return [(row["phase"], float(row["seconds"]), float(row["val_accuracy"])) for row in rows]


def run_torchgraft(
    data: str, settings: dict[str, Any], runs_dir: Path, budget: float
) -> dict[str, Any]:
    seed_everything(SEED)
    began = time.perf_counter()
    run = api.train(data, runs_dir=str(runs_dir), quiet=True, device="cpu", **settings)
    total = time.perf_counter() - began
    epochs = read_epochs(run.path / "metrics.csv")
    setup = total - sum(seconds for _, seconds, _ in epochs)
    points, elapsed = [], setup
    for phase, seconds, val_accuracy in epochs:
        elapsed += seconds
        points.append(Point(elapsed, val_accuracy))
        logger.info("torchgraft %s epoch: %.4f at %.1fs", phase, val_accuracy, elapsed)
    return {
        **summarise(points, budget),
        "setup_s_counted": round(setup, 2),
        "epochs": [phase for phase, _, _ in epochs],
        "settings": settings,
        "total_s": round(total, 2),
    }


# --- summary ---------------------------------------------------------------------------------


def first_reaching(points: list[Point]) -> float | None:
    return next((round(p.elapsed_s, 2) for p in points if p.accuracy >= TARGET_ACCURACY), None)


def best_within(points: list[Point], seconds: float) -> float | None:
    within = [p.accuracy for p in points if p.elapsed_s <= seconds]
    return max(within) if within else None


def summarise(points: list[Point], budget: float) -> dict[str, Any]:
    return {
        "seconds_to_96": first_reaching(points),
        "best_accuracy_within_budget": best_within(points, budget),
        "best_accuracy_within_120s": best_within(points, 120.0),
        "points": [[round(p.elapsed_s, 2), round(p.accuracy, 4)] for p in points],
    }


def verdict(arms: dict[str, dict[str, Any]], budget: float) -> dict[str, Any]:
    """The ratio reference / torchgraft of time to 96%, and whether the targets are met.

    If the reference never reaches 96% within its budget, its time is at least the budget, so
    budget / torchgraft's time is a lower bound on the ratio.
    """
    ours, theirs = arms.get("torchgraft"), arms.get("reference")
    ratio = lower_bound = ratio_met = None
    if ours is not None and theirs is not None:
        ours_s, theirs_s = ours["seconds_to_96"], theirs["seconds_to_96"]
        if ours_s is None:
            ratio_met = False
        elif theirs_s is not None:
            ratio = round(theirs_s / ours_s, 2)
            ratio_met = ratio >= TARGETS["time_to_96_ratio_at_least"]
        else:
            lower_bound = round(budget / ours_s, 2)
            ratio_met = lower_bound >= TARGETS["time_to_96_ratio_at_least"] or None
    accuracy_met = None
    if ours is not None:  # its run always completes, so its first 120 s are always known
        best = ours["best_accuracy_within_120s"]
        accuracy_met = best is not None and best >= TARGETS["accuracy_within_120s_at_least"]
    return {
        "ratio_time_to_96": ratio,
        "ratio_time_to_96_at_least": lower_bound,
        "targets": {
            **TARGETS,
            "met": {"time_to_96_ratio": ratio_met, "accuracy_within_120s": accuracy_met},
        },
    }


def run_arms(
    args: argparse.Namespace, train: LabeledImages, val: LabeledImages
) -> tuple[dict[str, dict[str, Any]], str]:
    """Run the chosen arms on the same images; returns their results and torchgraft's data."""
    settings = demo_settings() | ({"epochs": args.epochs} if args.epochs is not None else {})
    arms: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="transfer_cpu_") as temporary:
        folder = Path(temporary)
        # Cold caches: nothing decoded or computed by an earlier run is reused.
        os.environ["TORCHGRAFT_CACHE"] = str(folder / "cache")
        tree = write_image_tree(folder / "images", {"train": train, "val": val})
        # Subsampled data exists only as the PNG files, so then torchgraft reads them too.
        data = str(tree) if args.max_images else "mnist5k"
        # torchgraft first: any one-off warm-up in the process is charged to it.
        if args.arm in ("both", "torchgraft"):
            logger.info("torchgraft arm on %s", data)
            arms["torchgraft"] = run_torchgraft(data, settings, folder / "runs", args.budget)
        if args.arm in ("both", "reference"):
            logger.info("reference arm on %s", tree)
            arms["reference"] = run_reference(tree, args.budget, args.eval_every)
    return arms, "bundled arrays" if data == "mnist5k" else "the reference's PNG files"


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(THREADS)
    # Other processes on the cores distort both arms, unevenly: record how busy the machine was.
    load_before = os.getloadavg()[0]
    splits = load_data("mnist5k", val_fraction=0.2, seed=SEED)
    train = subsample(splits.train, args.max_images)
    val = subsample(splits.val, args.max_images // 4 if args.max_images else None)
    arms, torchgraft_data = run_arms(args, train, val)
    report = {
        "benchmark": "transfer_cpu",
        "data": f"mnist5k: {len(train)} train / {len(val)} val images, {IMAGE_SIZE} px",
        "torchgraft_data": torchgraft_data,
        "budget_s": args.budget,
        **arms,
        **verdict(arms, args.budget),
        "accounting": ACCOUNTING,
        "machine": {
            "platform": platform.machine(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "load_average_1min_before_after": [load_before, os.getloadavg()[0]],
        },
    }
    # The targets are stated for the full data at 120 s; a smoke run only shows the plumbing.
    report["targets"]["judged"] = args.max_images is None and args.budget == 120
    print(json.dumps(report))


if __name__ == "__main__":
    main()
