"""The transfer-learning recipe: train a new head on the frozen backbone, then fine-tune all.

`fit(config)` starts a run and `resume(run)` continues one; both read as a recipe of named
steps and hand the epochs to the `Trainer`. From-scratch networks skip the frozen phase.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from torchgraft.artifact import Preprocessing, Run, atomic_write_bytes
from torchgraft.config import RunConfig, TrainConfig, config_from_dict, parse_duration
from torchgraft.data import DataSplits, DecodedSplit, load_run_splits, split_datasets
from torchgraft.data.cache import cache_root
from torchgraft.models import GraftedClassifier, create_classifier, get_spec
from torchgraft.train.callbacks import (
    BestWeights,
    Callback,
    Checkpointer,
    EarlyStopping,
    EpochLog,
    MetricsCsv,
    TensorBoardLogger,
    TimeLimit,
)
from torchgraft.train.checkpoint import Checkpoint, load_checkpoint
from torchgraft.train.distributed import (
    Distributed,
    broadcast_text,
    device_for,
    join_process_group,
    leave_process_group,
)
from torchgraft.train.engine import ImageSet, Phase, Trainer, TrainingData
from torchgraft.train.features import backbone_digest, cached_features, feature_key
from torchgraft.train.loop import StepOptions
from torchgraft.train.setup import (
    create_run,
    decode_splits,
    record_skipped,
    resolve_device,
    resolve_preprocessing,
)

logger = logging.getLogger(__name__)


def fit(config: RunConfig, find_lr_only: bool = False) -> Run:
    """Train a classifier as `config` says and return its run directory.

    With `find_lr_only`, stop after the learning-rate sweep (its plot and suggestion are in
    the run directory).
    """
    seed_everything(config.train)
    splits = load_run_splits(config)
    spec = get_spec(config.model.name)
    starts_pretrained = spec.pretrainable and config.model.pretrained
    config = replace(config, train=resolve_training(config.train, starts_pretrained))
    preprocessing = resolve_preprocessing(spec, config.data, splits)
    model = build_model(config, preprocessing, len(splits.class_names), pretrained=True)
    context = join_process_group()
    run = create_run(config, splits, preprocessing, write=context.is_main)
    if context.world_size > 1:  # rank 0 chose the (unique) folder; everyone uses it
        run.path = Path(broadcast_text(str(run.path), context))
    frozen = config.train.freeze_epochs if starts_pretrained else 0
    phases = [Phase("frozen", frozen), Phase("finetune", config.train.epochs or 0)]
    phases = [p for p in phases if p.epochs]
    return train_run(run, config, splits, model, phases, None, find_lr_only)


def resume(path: str | Path, epochs: int | None = None, quiet: bool | None = None) -> Run:
    """Continue a run from its last checkpoint; `epochs` extends the fine-tune to that total."""
    run = Run.load(path)
    config = config_from_dict(run.info.config)
    if quiet is not None:
        config = replace(config, train=replace(config.train, quiet=quiet))
    checkpoint = load_checkpoint(run.path)
    seed_everything(config.train)
    splits = load_run_splits(config)
    if splits.fingerprint() != run.info.data_fingerprint:
        logger.warning(
            "the data changed since %s was trained; resuming on the data as it is now", run.path
        )
    model = build_model(config, run.info.preprocessing, run.info.num_classes, pretrained=False)
    phases = [Phase(**phase) for phase in checkpoint.meta["progress"]["phases"]]
    phases = extend_plan(phases, epochs)
    config = replace(config, train=replace(config.train, epochs=sum_finetune(phases)))
    run.info.config["train"]["epochs"] = config.train.epochs
    return train_run(run, config, splits, model, phases, checkpoint)


def resolve_training(train: TrainConfig, starts_pretrained: bool) -> TrainConfig:
    """Fill the settings whose default depends on the model (saved resolved in graft.json).

    A pretrained backbone starts close to a good solution and must not be knocked far from
    it; a random network needs more epochs and larger steps (measured on mnist5k: the mlp
    reaches 95% at 1e-2 and 92% at 2e-3 in 10 epochs).
    """
    epochs = train.epochs if train.epochs is not None else (6 if starts_pretrained else 10)
    lr = train.lr if train.lr is not None else (2e-3 if starts_pretrained else 1e-2)
    # A random network has no pretrained layers to protect: one learning rate for all.
    divisor = train.backbone_lr_divisor if starts_pretrained else 1.0
    layer_decay = train.layer_decay if starts_pretrained else None
    return replace(
        train, epochs=epochs, lr=lr, backbone_lr_divisor=divisor, layer_decay=layer_decay
    )


def seed_everything(train: TrainConfig) -> None:
    torch.manual_seed(train.seed)
    if train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def build_model(
    config: RunConfig, preprocessing: Preprocessing, num_classes: int, pretrained: bool
) -> GraftedClassifier:
    return create_classifier(
        config.model.name, num_classes, channels=preprocessing.channels,
        image_size=preprocessing.image_size, mean=preprocessing.mean, std=preprocessing.std,
        pretrained=pretrained and config.model.pretrained, weights_path=config.model.weights,
    )  # fmt: skip


def extend_plan(phases: list[Phase], epochs: int | None) -> list[Phase]:
    """A finished plan plus a new fine-tune phase reaching `epochs` fine-tune epochs in all.

    The new phase gets its own one-cycle schedule, warming up from the current weights.
    """
    if epochs is None or epochs <= sum_finetune(phases):
        return phases
    return [*phases, Phase("finetune", epochs - sum_finetune(phases))]


def sum_finetune(phases: list[Phase]) -> int:
    return sum(phase.epochs for phase in phases if phase.name == "finetune")


def train_run(
    run: Run, config: RunConfig, splits: DataSplits, model: GraftedClassifier,
    phases: list[Phase], checkpoint: Checkpoint | None, find_lr_only: bool = False,
) -> Run:  # fmt: skip
    """Decode the data, then let the Trainer run the phases (from `checkpoint` if given)."""
    context = join_process_group()
    if not context.is_main:  # one progress bar and one log, from rank 0
        config = replace(config, train=replace(config.train, quiet=True))
        logging.getLogger("torchgraft").setLevel(logging.WARNING)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        return _train_run(run, config, splits, model, phases, checkpoint, context, find_lr_only)
    finally:
        torch.use_deterministic_algorithms(deterministic)  # leave the process as it was
        leave_process_group(context)


def _train_run(
    run: Run, config: RunConfig, splits: DataSplits, model: GraftedClassifier,
    phases: list[Phase], checkpoint: Checkpoint | None, context: Distributed,
    find_lr_only: bool = False,
) -> Run:  # fmt: skip
    device = device_for(context, resolve_device(config.train.device))
    model.to(device)
    if config.train.channels_last:
        model.to(memory_format=torch.channels_last)
    preprocessing, data = run.info.preprocessing, config.data
    decoded = decode_splits(splits, preprocessing, data, config.train.quiet)
    record_skipped(run, splits, decoded, write=context.is_main)
    train_plain, train_images = split_datasets(
        splits.train, decoded["train"], preprocessing, data.augment
    )
    val_images, _ = split_datasets(splits.val, decoded["val"], preprocessing, "none")
    logger.info(
        "training %s on %s: %d train / %d val images, %d classes, %dpx, %s -> %s",
        config.model.name, splits.source, len(decoded["train"].kept), len(decoded["val"].kept),
        len(splits.class_names), preprocessing.image_size, device, run.path,
    )  # fmt: skip
    if config.train.lr == "auto" or find_lr_only:
        lr = sweep_learning_rate(run, model, train_images, config, device, write=context.is_main)
        if find_lr_only:
            return run
        config = replace(config, train=replace(config.train, lr=lr))
        run.info.config["train"]["lr"] = lr
    train_labels = splits.train.labels[decoded["train"].kept]
    options = step_options(config, train_labels, len(splits.class_names), device)
    features = functools.partial(frozen_features, model, config, preprocessing, decoded, device)
    trainer = Trainer(
        run, model, TrainingData(train_images, train_plain, val_images), config, device,
        phases, build_callbacks(config.train, context.is_main), options,
        feature_source=features, distributed=context,
    )  # fmt: skip
    try:
        trainer.fit(checkpoint)
    except KeyboardInterrupt:
        logger.warning("interrupted: resume with `graft train --resume %s`", run.path)
        raise
    if trainer.stop_reason:
        logger.info("%s", trainer.stop_reason)
    logger.info("best %s at epoch %s, saved in %s", trainer.monitor, trainer.best_epoch, run.path)
    return run


def build_callbacks(train: TrainConfig, writer: bool = True) -> list[Callback]:
    """The callbacks a run uses, in order: record, keep the best, decide, checkpoint, log.

    Only the `writer` (rank 0 under DDP) touches the run directory; every rank decides.
    """
    callbacks: list[Callback] = [MetricsCsv()] if writer else []
    callbacks.append(BestWeights(write=writer))
    if train.early_stop is not None:
        callbacks.append(EarlyStopping(train.early_stop))
    if train.time_limit is not None:
        callbacks.append(TimeLimit(parse_duration(train.time_limit)))
    if writer:
        callbacks += [Checkpointer(), EpochLog()]
    if writer and train.tensorboard:
        callbacks.append(TensorBoardLogger())
    return callbacks


def step_options(
    config: RunConfig, train_labels: np.ndarray, num_classes: int, device: torch.device
) -> StepOptions:
    """Loss, precision and the optional step features of the fine-tune phase."""
    train = config.train
    weight = (
        class_weights(train_labels, num_classes).to(device)
        if train.class_weights == "auto"
        else None
    )
    loss = functools.partial(F.cross_entropy, weight=weight, label_smoothing=train.label_smoothing)
    return StepOptions(
        loss=loss,
        autocast_dtype=autocast_dtype(train.precision, device),
        channels_last=train.channels_last,
        accumulate=train.accumulate,
        grad_clip=train.grad_clip,
        batch_transform=mix_transform(train.mixup, train.cutmix, num_classes),
    )


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse class frequency, scaled to mean 1 (absent classes get weight 0)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.divide(
        counts.sum() / num_classes, counts, out=np.zeros_like(counts), where=counts > 0
    )
    return torch.tensor(weights / weights[weights > 0].mean(), dtype=torch.float32)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 where asked, or on `auto` where the GPU supports it; full precision otherwise."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def mix_transform(
    mixup: float, cutmix: float, num_classes: int
) -> functools.partial[tuple[torch.Tensor, torch.Tensor]] | None:
    """MixUp and/or CutMix on float batches (one of them per batch when both are on)."""
    from torchvision.transforms import v2

    chosen = [v2.MixUp(alpha=mixup, num_classes=num_classes)] if mixup > 0 else []
    chosen += [v2.CutMix(alpha=cutmix, num_classes=num_classes)] if cutmix > 0 else []
    if not chosen:
        return None
    mixer = chosen[0] if len(chosen) == 1 else v2.RandomChoice(chosen)
    return functools.partial(_mix, mixer)


def _mix(
    mixer: object, images: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return mixer(images.float(), labels)  # type: ignore[operator]


def frozen_features(
    model: GraftedClassifier, config: RunConfig, preprocessing: Preprocessing,
    decoded: dict[str, DecodedSplit], device: torch.device, data: TrainingData,
) -> tuple[TensorDataset, TensorDataset]:  # fmt: skip
    """Backbone features of train and val images: from the feature cache, or computed once.

    A frozen backbone maps each image to fixed features, so one pass is enough and every head
    epoch after it costs milliseconds. With `feature_views` K > 1 the training images pass
    K times, first plain, then through the augmentation preset (seeded per view), so the
    head sees varied views while the backbone still runs once per view.
    """
    cache_dir = cache_root(config.data.cache_dir) if config.train.feature_cache else None
    compute = functools.partial(
        cached_features, model, cache_dir=cache_dir, batch_size=config.data.batch_size * 2,
        device=device, quiet=config.train.quiet,
    )  # fmt: skip
    base = functools.partial(feature_key, config.model.name, backbone_digest(model), preprocessing)
    val = compute(data.val_images, base(decoded["val"].key), description="features (val)")
    views = config.train.feature_views if config.data.augment != "none" else 1
    train_views = []
    for view in range(views):
        images = data.train_plain if view == 0 else data.train_images
        # An augmented view also depends on the preset and the seed that drew it.
        tag = "" if view == 0 else f"|view{view}|{config.data.augment}|{config.train.seed}"
        key = base(decoded["train"].key + tag)
        with seeded(config.train.seed * 7919 + view):
            train_views.append(
                compute(images, key, description=f"features (train, view {view + 1})")
            )
    features = torch.cat([view.tensors[0] for view in train_views])
    labels = torch.cat([view.tensors[1] for view in train_views])
    return TensorDataset(features, labels), val


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block under its own seed, leaving the global random state as it was."""
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(state)


def sweep_learning_rate(
    run: Run, model: GraftedClassifier, train_images: ImageSet, config: RunConfig,
    device: torch.device, write: bool,
) -> float:  # fmt: skip
    """The lr finder on the fine-tune set-up (discriminative groups), its plot in figures/."""
    from torchgraft.data import make_loader
    from torchgraft.train.lr_find import find_lr, save_lr_plot

    divisor = config.train.backbone_lr_divisor
    groups = [
        {"params": model.backbone_parameters(), "lr": 1.0 / divisor},
        {"params": list(model.head.parameters()), "lr": 1.0},
    ]
    loader = make_loader(
        train_images, config.data.batch_size, True, config.data.num_workers, config.train.seed
    )
    result = find_lr(
        model, loader, device, param_groups=groups, weight_decay=config.train.weight_decay,
        quiet=config.train.quiet,
    )  # fmt: skip
    if write:
        save_lr_plot(result, run.path / "figures" / "lr_find.png")
        atomic_write_bytes(
            run.path / "figures" / "lr_find.json", json.dumps(result.to_dict()).encode()
        )
        run.info.metrics = {**run.info.metrics, "lr_find_suggestion": result.suggestion}
        run.save_info()
    logger.info(
        "learning-rate finder suggests %.2e (plot: %s)",
        result.suggestion,
        run.path / "figures" / "lr_find.png",
    )
    return result.suggestion
