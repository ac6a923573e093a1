"""Contender: the fine-tune the PyTorch Challenge teaches, as a learner writes it.

ImageFolder with PIL transforms every epoch, timm's efficientnet_lite0 given the bundled
ImageNet weights and a new 10-class head, every layer trained with Adam at 3e-4, batch 64,
cross-entropy, validated after each epoch. Prints `val_accuracy X` lines as it goes.

    python benchmarks/contenders/course_finetune.py TREE [--epochs 3]
"""

from __future__ import annotations

import argparse
import sys

import timm
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from torchgraft.models.bundled import efficientnet_lite0_weights
from torchgraft.models.registry import IMAGENET_MEAN, IMAGENET_STD

IMAGE_SIZE = 64


def loaders(root: str) -> tuple[DataLoader, DataLoader]:
    transform = transforms.Compose([
        transforms.Grayscale(3), transforms.Resize(IMAGE_SIZE), transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])  # fmt: skip
    train = datasets.ImageFolder(f"{root}/train", transform=transform)
    val = datasets.ImageFolder(f"{root}/val", transform=transform)
    return DataLoader(train, batch_size=64, shuffle=True), DataLoader(val, batch_size=64)


def pretrained_model(num_classes: int) -> nn.Module:
    model = timm.create_model("efficientnet_lite0", num_classes=num_classes)
    weights = {
        k: v for k, v in efficientnet_lite0_weights().items() if not k.startswith("classifier.")
    }
    model.load_state_dict(weights, strict=False)
    return model


@torch.no_grad()
def accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = total = 0
    for images, labels in loader:
        correct += int((model(images).argmax(1) == labels).sum())
        total += len(labels)
    return correct / total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tree")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    train, val = loaders(args.tree)
    model = pretrained_model(len(train.dataset.classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    loss_function = nn.CrossEntropyLoss()
    for _ in range(args.epochs):
        model.train()
        for images, labels in train:
            optimizer.zero_grad()
            loss_function(model(images), labels).backward()
            optimizer.step()
        print(f"val_accuracy {accuracy(model, val):.4f}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
