"""The transfer-learning recipe: train a new head on the frozen backbone, then fine-tune all.

`fit(config)` reads as the recipe itself; each step is a small function below it.
From-scratch networks skip the frozen phase and train everything from the first epoch.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import AdamW
from torch.optim.lr_scheduler import OneCycleLR
from torch.utils.data import DataLoader

from torchgraft.artifact import Preprocessing, Run, RunInfo, library_versions
from torchgraft.config import DataConfig, RunConfig, to_dict
from torchgraft.data import (
    DataSplits,
    ImageDataset,
    eval_transform,
    load_data,
    load_display_names,
    make_loader,
    train_transform,
)
from torchgraft.models import GraftedClassifier, create_classifier, get_spec
from torchgraft.models.registry import BackboneSpec
from torchgraft.train.features import compute_features
from torchgraft.train.history import EpochRecord, History
from torchgraft.train.loop import evaluate, train_one_epoch

logger = logging.getLogger(__name__)

Loader = DataLoader[Any]


def fit(config: RunConfig) -> Run:
    """Train a classifier as `config` says and return its run directory."""
    torch.manual_seed(config.train.seed)
    splits = load_data(config.data.source, config.data.val_fraction, config.train.seed)
    spec = get_spec(config.model.name)
    preprocessing = resolve_preprocessing(spec, config.data, splits)
    model = create_classifier(
        spec.name,
        len(splits.class_names),
        channels=preprocessing.channels,
        image_size=preprocessing.image_size,
        mean=preprocessing.mean,
        std=preprocessing.std,
        pretrained=config.model.pretrained,
        weights_path=config.model.weights,
    )
    device = resolve_device(config.train.device)
    model.to(device)
    run = create_run(config, splits, preprocessing)
    history = History(run)
    train_loader, val_loader = make_loaders(splits, preprocessing, config)
    logger.info(
        "training %s on %s: %d train / %d val images, %d classes, %dpx, device %s -> %s",
        spec.name,
        splits.source,
        len(splits.train),
        len(splits.val),
        len(splits.class_names),
        preprocessing.image_size,
        device,
        run.path,
    )
    frozen_epochs = config.train.freeze_epochs if uses_frozen_phase(spec, config) else 0
    if frozen_epochs:
        train_head_frozen(model, splits, preprocessing, config, frozen_epochs, device, history)
    fine_tune(
        model, train_loader, val_loader, config, device, history, first_epoch=frozen_epochs + 1
    )
    logger.info("best validation accuracy %.4f, saved in %s", history.best_accuracy, run.path)
    return run


def uses_frozen_phase(spec: BackboneSpec, config: RunConfig) -> bool:
    """Only a pretrained backbone is worth freezing; a random one must learn everything."""
    return spec.pretrainable and config.model.pretrained and config.train.freeze_epochs > 0


def resolve_preprocessing(
    spec: BackboneSpec, data: DataConfig, splits: DataSplits
) -> Preprocessing:
    """Input size, channels and normalisation for this model on this data."""
    channels = 3 if spec.pretrainable else splits.channels
    return Preprocessing(
        image_size=data.image_size or default_image_size(spec, splits.native_size),
        resize_mode=data.resize,
        mean=spec.mean,
        std=spec.std,
        channels=channels,
        interpolation=spec.interpolation,
    )


def default_image_size(spec: BackboneSpec, native_size: int | None) -> int:
    """The model's own size, except for tiny bundled images (28 px digits).

    Scratch nets use tiny images as they are; a pretrained backbone sees them upscaled to
    64 px, enough for its stride-32 features and far cheaper than 224 px.
    """
    if native_size is None:
        return spec.image_size
    return native_size if not spec.pretrainable else max(native_size, 64)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def create_run(config: RunConfig, splits: DataSplits, preprocessing: Preprocessing) -> Run:
    class_names = splits.class_names
    display_names = (
        load_display_names(config.data.class_names, class_names)
        if config.data.class_names
        else list(class_names)
    )
    info = RunInfo(
        model_name=config.model.name,
        class_names=class_names,
        display_names=display_names,
        preprocessing=preprocessing,
        config=to_dict(config),
        data_fingerprint=splits.fingerprint(),
        versions=library_versions(),
    )
    return Run.create(unique_run_path(config, splits.source), info)


def unique_run_path(config: RunConfig, source: str) -> Path:
    """runs/<name>, or runs/<model>-<data>[-2, -3, ...] so earlier runs are never overwritten."""
    runs_dir = Path(config.train.runs_dir)
    if config.train.name:
        return runs_dir / config.train.name
    base = f"{config.model.name}-{Path(source).name or 'data'}"
    candidate, number = runs_dir / base, 2
    while candidate.exists():
        candidate, number = runs_dir / f"{base}-{number}", number + 1
    return candidate


def make_loaders(
    splits: DataSplits, preprocessing: Preprocessing, config: RunConfig
) -> tuple[Loader, Loader]:
    data = config.data
    train_set = ImageDataset(
        splits.train, train_transform(preprocessing, data.augment), preprocessing.channels
    )
    val_set = ImageDataset(splits.val, eval_transform(preprocessing), preprocessing.channels)
    train = make_loader(train_set, data.batch_size, True, data.num_workers, config.train.seed)
    val = make_loader(val_set, data.batch_size * 2, False, data.num_workers)
    return train, val


def train_head_frozen(
    model: GraftedClassifier,
    splits: DataSplits,
    preprocessing: Preprocessing,
    config: RunConfig,
    epochs: int,
    device: torch.device,
    history: History,
) -> None:
    """Phase 1: features from the frozen backbone, computed once; the new head learns on them."""
    quiet, data = config.train.quiet, config.data
    plain = eval_transform(preprocessing)  # no augmentation: each image's features are fixed
    features = {
        name: compute_features(
            model,
            make_loader(
                ImageDataset(split, plain, preprocessing.channels),
                data.batch_size * 2,
                False,
                data.num_workers,
            ),
            device,
            description=f"features ({name})",
            quiet=quiet,
        )
        for name, split in (("train", splits.train), ("val", splits.val))
    }
    train = make_loader(features["train"], data.batch_size, True, 0, config.train.seed)
    val = make_loader(features["val"], 1024, False, 0)
    optimizer = AdamW(
        model.head.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay
    )
    scheduler = OneCycleLR(optimizer, max_lr=config.train.lr, total_steps=epochs * len(train))
    for epoch in range(1, epochs + 1):
        run_epoch(
            model.head,
            train,
            val,
            optimizer,
            scheduler,
            device,
            history,
            phase="frozen",
            epoch=epoch,
            quiet=quiet,
            keep=model,
        )


def fine_tune(
    model: GraftedClassifier,
    train: Loader,
    val: Loader,
    config: RunConfig,
    device: torch.device,
    history: History,
    first_epoch: int,
) -> None:
    """Phase 2: the whole network, the backbone at a fraction of the head's learning rate."""
    epochs, lr = config.train.epochs, config.train.lr
    if epochs == 0:
        return
    model.set_backbone_trainable(True)
    backbone_lr = lr / config.train.backbone_lr_divisor
    groups = [
        {"params": model.backbone_parameters(), "lr": backbone_lr},
        {"params": list(model.head.parameters()), "lr": lr},
    ]
    optimizer = AdamW(groups, weight_decay=config.train.weight_decay)
    scheduler = OneCycleLR(optimizer, max_lr=[backbone_lr, lr], total_steps=epochs * len(train))
    for epoch in range(first_epoch, first_epoch + epochs):
        run_epoch(
            model,
            train,
            val,
            optimizer,
            scheduler,
            device,
            history,
            phase="finetune",
            epoch=epoch,
            quiet=config.train.quiet,
            keep=model,
        )


def run_epoch(
    module: nn.Module,
    train: Loader,
    val: Loader,
    optimizer: AdamW,
    scheduler: OneCycleLR,
    device: torch.device,
    history: History,
    *,
    phase: str,
    epoch: int,
    quiet: bool,
    keep: GraftedClassifier,
) -> None:
    """Train and validate `module` once, then record the epoch (saving `keep` if it is best)."""
    started = time.perf_counter()
    trained = train_one_epoch(
        module,
        train,
        optimizer,
        scheduler,
        device,
        description=f"epoch {epoch} {phase}",
        quiet=quiet,
    )
    validated = evaluate(module, val, device, quiet=quiet)
    record = EpochRecord(
        phase=phase,
        epoch=epoch,
        train_loss=trained.loss,
        train_accuracy=trained.accuracy,
        val_loss=validated.loss,
        val_accuracy=validated.accuracy,
        lr=optimizer.param_groups[-1]["lr"],
        seconds=time.perf_counter() - started,
    )
    history.record(record, keep)
