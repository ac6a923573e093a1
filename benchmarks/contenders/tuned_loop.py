"""Contender: a plain hand-written loop with the usual good choices, no torchgraft recipe.

Images decoded once into a uint8 tensor in memory, timm's efficientnet_lite0 with the bundled
ImageNet weights, channels-last, every layer trained by AdamW under a one-cycle schedule
peaking at 3e-3, batch 128, label smoothing 0.1, validated after each epoch. Prints
`val_accuracy X` lines as it goes.

    python benchmarks/contenders/tuned_loop.py TREE [--epochs 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from course_finetune import IMAGE_SIZE, pretrained_model  # same model, same weights
from PIL import Image
from torch import nn

from torchgraft.models.registry import IMAGENET_MEAN, IMAGENET_STD

BATCH_SIZE = 128


def decoded(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of a class-per-folder tree as uint8 (N, 3, 64, 64), decoded once."""
    images, labels = [], []
    for label, class_folder in enumerate(sorted(p for p in folder.iterdir() if p.is_dir())):
        for path in sorted(class_folder.iterdir()):
            image = Image.open(path).convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
            images.append(np.asarray(image).transpose(2, 0, 1))
            labels.append(label)
    return torch.from_numpy(np.stack(images)), torch.tensor(labels)


def normalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    normalized = (images.float() - mean) / std
    return normalized.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    correct = sum(
        int((model(normalize(images[i : i + 256])).argmax(1) == labels[i : i + 256]).sum())
        for i in range(0, len(images), 256)
    )
    return correct / len(images)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tree", type=Path)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    train_x, train_y = decoded(args.tree / "train")
    val_x, val_y = decoded(args.tree / "val")
    model = pretrained_model(10).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    steps = args.epochs * -(-len(train_x) // BATCH_SIZE)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    for _ in range(args.epochs):
        model.train()
        order = torch.randperm(len(train_x))
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            loss = F.cross_entropy(
                model(normalize(train_x[batch])), train_y[batch], label_smoothing=0.1
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        print(f"val_accuracy {accuracy(model, val_x, val_y):.4f}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
