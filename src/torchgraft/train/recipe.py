"""The transfer-learning recipe: settle the config, prepare the data, run the phases.

`fit(config)` starts a run and `resume(run)` continues one. Both read as a recipe of named
steps, as fastai's `fine_tune` does, and hand the epochs to the `Trainer`. The config is
settled (every default filled for this model, the learning rate found if asked) before
graft.json is first written, and not changed afterwards.
"""

from __future__ import annotations

import errno
import functools
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import torch

from torchgraft.artifact import Preprocessing, Run
from torchgraft.config import (
    DataConfig,
    RunConfig,
    TrainConfig,
    config_from_dict,
    parse_duration,
    to_dict,
)
from torchgraft.data import DataSplits, DecodedSplit, load_run_splits, split_datasets
from torchgraft.data.cache import cache_root
from torchgraft.devices import resolve_device
from torchgraft.errors import GraftRuntimeError, UserError
from torchgraft.models import (
    GraftedClassifier,
    RecipeDefaults,
    create_classifier,
    get_spec,
    recipe_defaults,
)
from torchgraft.precision import precision_for, trained_on
from torchgraft.progress import logging_to
from torchgraft.train.budget import TimeBudget
from torchgraft.train.callbacks import (
    BestWeights,
    Callback,
    Checkpointer,
    EarlyStopping,
    EpochLog,
    MetricsCsv,
    TensorBoardLogger,
)
from torchgraft.train.checkpoint import (
    Checkpoint,
    has_checkpoint,
    how_to_resume,
    load_checkpoint,
    replace_it,
)
from torchgraft.train.distributed import (
    Distributed,
    broadcast_float,
    broadcast_text,
    device_for,
    join_process_group,
    leave_process_group,
)
from torchgraft.train.engine import Trainer, TrainerSettings, TrainingData, saved_phases
from torchgraft.train.features import FeatureSettings, frozen_features
from torchgraft.train.lr_find import LrFindResult
from torchgraft.train.optim import OptimizerSettings
from torchgraft.train.phases import ImageSet, Phase, extend_plan, plan_phases, whole_network_epochs
from torchgraft.train.setup import (
    RESUME,
    START_AGAIN,
    agree_on_decoded,
    create_run,
    decode_splits,
    elastic_restart,
    loader_workers,
    record_skipped,
    refuse_existing_run,
    resolve_preprocessing,
)
from torchgraft.train.signals import sigterm_as_interrupt
from torchgraft.train.steps import step_options
from torchgraft.train.trackers import require_trackers, trackers_for

logger = logging.getLogger(__name__)

HEAD_LR_FACTOR = 5.0  # the head alone on fixed features takes larger steps (mnist5k: 93% vs 86%)


def fit(config: RunConfig, callbacks: Sequence[Callback] = (), overwrite: bool = False) -> Run:
    """Train a classifier as `config` says and return its run directory.

    `callbacks` are the user's own (see `train.callbacks.Callback`), called after ours.
    A run named like an existing one is refused unless `overwrite`. Under a torchrun
    restart, the named run this job started resumes from its checkpoint instead.
    """
    started = time.monotonic()  # a time limit counts from here: data and features included
    train = config.train
    # The group is joined now, before anything is read, so that all ranks take rank 0's
    # decision (training_session joins it again: a no-op, and leaves it at the end).
    restart = elastic_restart(train.runs_dir, train.name, join_process_group())
    if restart == RESUME:
        path = Path(train.runs_dir, str(train.name))
        logger.warning("torchrun restarted the job: resuming %s from its checkpoint", path)
        return resume(path, quiet=train.quiet, callbacks=callbacks)
    # This job's failed attempt ended before its first epoch did: nothing in it to keep.
    overwrite = overwrite or restart == START_AGAIN
    refuse_existing_run(train.runs_dir, train.name, overwrite)
    require_trackers(train.logger)
    seed_everything(config.train)
    splits = load_run_splits(config)
    spec = get_spec(config.model.name)
    pretrained_start = starts_pretrained(config)
    epochs_asked = config.train.epochs
    config = with_model_defaults(config)
    preprocessing = resolve_preprocessing(spec, config.data, splits)
    model = build_model(config, preprocessing, len(splits.class_names), pretrained=True)
    phases = plan_phases(
        config.train.freeze_epochs or 0, config.train.epochs or 0, pretrained_start
    )
    with training_session(config) as (context, config):
        device = place_model(model, config, context)
        decoded = decode_splits(splits, preprocessing, config.data, config.train.quiet)
        decoded = agree_on_decoded(decoded, context)
        config, sweep = settle_learning_rate(
            config, model, splits, decoded, preprocessing, device, context
        )
        run = create_run(config, splits, preprocessing, context.is_main, overwrite)
        if context.world_size > 1:  # rank 0 chose the (unique) folder; everyone uses it
            run.path = Path(broadcast_text(str(run.path), context))
        with saying_how_to_resume(run, context), logging_to(run.log_file, context.is_main):
            record_skipped(run, splits, decoded, write=context.is_main)
            if sweep is not None and context.is_main:
                keep_lr_sweep(run, sweep, config)
            ours = build_callbacks(config, context.is_main, started, epochs_asked)
            trainer = trainer_for(
                run, config, model, splits, decoded, phases, device, context, [*ours, *callbacks]
            )
            run_trainer(trainer, None)
    return run


def resume(
    path: str | Path, epochs: int | None = None, quiet: bool | None = None,
    callbacks: Sequence[Callback] = (),
) -> Run:  # fmt: skip
    """Continue a run from its last checkpoint; `epochs` extends it to that many
    whole-network epochs in all. `callbacks` are the user's own, as for `fit`."""
    run = Run.load(path)
    config = config_from_dict(run.info.config)
    checkpoint = load_checkpoint(run.path)
    phases = extend_plan(saved_phases(checkpoint), epochs)
    say_where_resume_starts(run, checkpoint, phases, epochs)
    if whole_network_epochs(phases) != config.train.epochs:  # the user asked for more
        config = replace(config, train=replace(config.train, epochs=whole_network_epochs(phases)))
        run.info.config = to_dict(config)  # saved with the skipped files, below
    if quiet is not None:  # this session's display, not the run's config
        config = replace(config, train=replace(config.train, quiet=quiet))
    seed_everything(config.train)
    splits = load_run_splits(config)
    if splits.fingerprint() != run.info.data_fingerprint:
        logger.warning(
            "the data changed since %s was trained; resuming on the data as it is now", run.path
        )
    model = build_model(config, run.info.preprocessing, run.info.num_classes, pretrained=False)
    with (
        training_session(config) as (context, config),
        saying_how_to_resume(run, context),
        logging_to(run.log_file, context.is_main),
    ):
        device = place_model(model, config, context)
        preprocessing = run.info.preprocessing
        decoded = decode_splits(splits, preprocessing, config.data, config.train.quiet)
        decoded = agree_on_decoded(decoded, context)
        record_skipped(run, splits, decoded, write=context.is_main)
        ours = build_callbacks(config, context.is_main, time.monotonic(), None)
        trainer = trainer_for(
            run, config, model, splits, decoded, phases, device, context, [*ours, *callbacks]
        )
        run_trainer(trainer, checkpoint)
    return run


def say_where_resume_starts(
    run: Run, checkpoint: Checkpoint, phases: list[Phase], epochs: int | None
) -> None:
    """Log the epoch a resume continues from; refuse a finished run with how to extend it."""
    progress = checkpoint.meta["progress"]
    index, done = (int(value) for value in progress["position"])
    finished = index == len(phases) - 1 and done >= phases[index].epochs
    whole = whole_network_epochs(phases)
    if finished:
        raise UserError(
            f"{run.path} has finished: all {progress['epoch']} epochs are done "
            f"({whole} of the whole network), so there is nothing to resume. To train "
            f"longer, pass a larger total: graft train --resume {run.path} --epochs {whole + 2}"
        )
    if done >= phases[index].epochs:
        index, done = index + 1, 0
    logger.info(
        "resuming %s after epoch %d: %s phase, epoch %d of %d next%s", run.path,
        int(progress["epoch"]), phases[index].name, done + 1, phases[index].epochs,
        f" (extended to {whole} whole-network epochs)" if epochs is not None else "",
    )  # fmt: skip


def starts_pretrained(config: RunConfig) -> bool:
    return get_spec(config.model.name).pretrainable and config.model.pretrained


def with_model_defaults(config: RunConfig) -> RunConfig:
    """`config` as its run records it, with the settings left to the model's recipe filled in
    (what `graft train --print-config` shows)."""
    return replace(config, train=resolve_training(config.train, starts_pretrained(config)))


def resolve_training(train: TrainConfig, starts_pretrained: bool) -> TrainConfig:
    """Fill every setting whose default depends on the model (models.recipe_defaults).

    Saved resolved in graft.json, so the run says what it did.
    """
    defaults = recipe_defaults(starts_pretrained)
    lr = train.lr if train.lr is not None else defaults.lr
    return replace(
        train,
        freeze_epochs=(
            defaults.freeze_epochs if train.freeze_epochs is None else train.freeze_epochs
        ),
        epochs=defaults.epochs if train.epochs is None else train.epochs,
        lr=lr,
        head_lr=train.head_lr,
        backbone_lr_divisor=backbone_divisor(train, defaults, starts_pretrained),
        layer_decay=train.layer_decay if starts_pretrained else None,
        label_smoothing=(
            defaults.label_smoothing if train.label_smoothing is None else train.label_smoothing
        ),
        ema_decay=defaults.ema_decay if train.ema_decay is None else train.ema_decay,
    )  # fmt: skip


def backbone_divisor(
    train: TrainConfig, defaults: RecipeDefaults, starts_pretrained: bool
) -> float:
    """The user's divisor for a pretrained backbone; else the default for this plan."""
    if not starts_pretrained:
        return 1.0  # a random network has no pretrained layers to protect
    if train.backbone_lr_divisor is not None:
        return train.backbone_lr_divisor
    head_first = (train.freeze_epochs or 0) > 0
    return defaults.backbone_lr_divisor_after_head if head_first else defaults.backbone_lr_divisor


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


@contextmanager
def training_session(config: RunConfig) -> Iterator[tuple[Distributed, RunConfig]]:
    """The process group (torchrun) and the process's settings, put back afterwards.

    Under DDP only rank 0 shows progress and logs; every rank trains. SIGTERM stops the
    session as Ctrl-C does (train.signals).
    """
    context = join_process_group()
    if not context.is_main:
        config = replace(config, train=replace(config.train, quiet=True))
        logging.getLogger("torchgraft").setLevel(logging.WARNING)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        with sigterm_as_interrupt():
            yield context, config
    finally:
        torch.use_deterministic_algorithms(deterministic)  # leave the process as it was
        leave_process_group(context)


def place_model(model: GraftedClassifier, config: RunConfig, context: Distributed) -> torch.device:
    device = device_for(context, resolve_device(config.train.device))
    precision_for(config.train.precision, device)  # fp16 on a CPU: refused before decoding
    model.to(device)
    if config.train.channels_last:
        model.to(memory_format=torch.channels_last)
    return device


def settle_learning_rate(
    config: RunConfig, model: GraftedClassifier, splits: DataSplits,
    decoded: dict[str, DecodedSplit], preprocessing: Preprocessing, device: torch.device,
    context: Distributed,
) -> tuple[RunConfig, LrFindResult | None]:  # fmt: skip
    """`lr: auto` becomes the lr finder's suggestion, found on the fine-tune set-up (rank
    0's under DDP: each rank's sweep sees other batches, and all must train alike)."""
    if config.train.lr != "auto":
        return config, None
    _, train_images = split_datasets(
        splits.train, decoded["train"], preprocessing, config.data.augment
    )
    result = sweep_fine_tune(
        model, train_images, config.train, config.data, device, LR_FIND_BUDGET_S
    )
    lr = broadcast_float(result.suggestion, context)
    logger.info("learning-rate finder suggests %.2e for this run", lr)
    return replace(config, train=replace(config.train, lr=lr)), result


def sweep_fine_tune(
    model: GraftedClassifier, train_images: ImageSet, train: TrainConfig, data: DataConfig,
    device: torch.device, budget_s: float,
) -> LrFindResult:  # fmt: skip
    """The lr finder on the fine-tune set-up as training builds it: its batches (augmented),
    its trainable parameters and its groups. `train` is resolved (resolve_training)."""
    from torchgraft.data import make_loader
    from torchgraft.train.lr_find import sweep_for_training

    workers = loader_workers(data.num_workers, device)
    loader = make_loader(train_images, data.batch_size, True, workers, train.seed)
    model.set_backbone_trainable(True, depthwise=trains_depthwise(train, device))
    settings = optimizer_settings(replace(train, lr=1.0))  # the groups carry the ratios
    return sweep_for_training(model, loader, device, settings, budget_s=budget_s, quiet=train.quiet)


def keep_lr_sweep(run: Run, sweep: LrFindResult, config: RunConfig) -> None:
    """The sweep's plot and curve in the run's figures/, its suggestion in the metrics."""
    from torchgraft.train.lr_find_run import write_lr_find

    write_lr_find(run.path, sweep, config)
    run.info.metrics = {**run.info.metrics, "lr_find_suggestion": sweep.suggestion}
    run.save_info()


LR_FIND_BUDGET_S = 60.0  # lr: auto sweeps for at most this long before training


def optimizer_settings(train: TrainConfig) -> OptimizerSettings:
    assert isinstance(train.lr, float), "the learning rate is settled before training"
    assert train.backbone_lr_divisor is not None
    return OptimizerSettings(
        lr=train.lr, head_lr=train.head_lr or HEAD_LR_FACTOR * train.lr,
        weight_decay=train.weight_decay, backbone_lr_divisor=train.backbone_lr_divisor,
        layer_decay=train.layer_decay,
    )  # fmt: skip


def trains_depthwise(train: TrainConfig, device: torch.device) -> bool:
    """Depthwise filters learn, except on the CPU with `auto` (their gradient is slow there)."""
    if train.depthwise == "auto":
        return device.type != "cpu"
    return train.depthwise == "train"


def trainer_settings(
    config: RunConfig, device: torch.device, phases: list[Phase]
) -> TrainerSettings:
    train = config.train
    statistics = train.norm_statistics
    after_head = any(not phase.whole_network for phase in phases)
    return TrainerSettings(
        optimizer=optimizer_settings(train), batch_size=config.data.batch_size,
        num_workers=loader_workers(config.data.num_workers, device), seed=train.seed,
        ema_decay=float(train.ema_decay or 0.0),
        train_depthwise=trains_depthwise(train, device),
        # The head learned on features normalised by the running statistics: keep them.
        keep_norm_statistics=statistics == "keep" or (statistics == "auto" and after_head),
        quiet=train.quiet, loader=config.data.loader, compile=train.compile,
    )  # fmt: skip


def trainer_for(
    run: Run, config: RunConfig, model: GraftedClassifier, splits: DataSplits,
    decoded: dict[str, DecodedSplit], phases: list[Phase], device: torch.device,
    context: Distributed, callbacks: list[Callback],
) -> Trainer:  # fmt: skip
    """A Trainer over the decoded images, ready to fit."""
    preprocessing, data = run.info.preprocessing, config.data
    train_plain, train_images = split_datasets(
        splits.train, decoded["train"], preprocessing, data.augment
    )
    val_images, _ = split_datasets(splits.val, decoded["val"], preprocessing, "none")
    logger.info(
        "training %s on %s: %d train / %d val images, %d classes, %dpx, %s -> %s",
        config.model.name, splits.source, len(decoded["train"].kept), len(decoded["val"].kept),
        len(splits.class_names), preprocessing.image_size, device, run.path,
    )  # fmt: skip
    feature_settings = FeatureSettings(
        model_name=config.model.name, preprocessing=preprocessing,
        train_key=decoded["train"].key, val_key=decoded["val"].key,
        cache_dir=cache_root(data.cache_dir) if config.train.feature_cache else None,
        views=config.train.feature_views, augment=data.augment, seed=config.train.seed,
        batch_size=data.batch_size * 2,
    )  # fmt: skip
    features = functools.partial(
        frozen_features, model, train_plain, train_images, val_images, feature_settings,
        device, config.train.quiet,
    )  # fmt: skip
    train_labels = splits.train.labels[decoded["train"].kept]
    options = step_options(config, train_labels, len(splits.class_names), device)
    run.info.trained_on = trained_on(device, options.precision)  # saved with the best weights
    logger.info("precision: %s on %s", options.precision, run.info.trained_on["device_name"])
    return Trainer(
        run, model, TrainingData(train_images, val_images, features), phases,
        trainer_settings(config, device, phases), options, callbacks, device,
        distributed=context,
    )  # fmt: skip


@contextmanager
def saying_how_to_resume(run: Run, context: Distributed) -> Iterator[None]:
    """Ctrl-C or SIGTERM once the run's folder exists (while decoding, computing features or
    training): say what the folder kept and how to go on with it, resumed or replaced."""
    try:
        yield
    except KeyboardInterrupt:
        if context.is_main:
            logger.warning("%s", how_to_resume(run.path))
        raise
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        go_on = (
            f"resume with `graft train --resume {run.path}`"
            if has_checkpoint(run.path)
            else f"train again {replace_it(run.path)}"
        )
        raise GraftRuntimeError(
            f"the disk is full: {error.filename or 'a file of the run'} could not be written "
            f"({error.strerror}); {run.path} keeps its files as they were before that write. "
            f"Free some space, then {go_on}"
        ) from None


def run_trainer(trainer: Trainer, checkpoint: Checkpoint | None) -> None:
    trainer.fit(checkpoint)
    if trainer.stop_reason:
        logger.info("%s", trainer.stop_reason)
    best = next((cb for cb in trainer.callbacks if isinstance(cb, BestWeights)), None)
    if best is not None and best.best is not None:
        logger.info(
            "best %s at epoch %d, saved in %s", best.monitor, best.best.epoch, trainer.run.path
        )


def build_callbacks(
    config: RunConfig, writer: bool, started: float, epochs_asked: int | None
) -> list[Callback]:
    """The callbacks a run uses, in order: record, keep the best, decide, checkpoint, log,
    plan the time. Only the `writer` (rank 0 under DDP) touches the run directory; every
    rank decides."""
    train = config.train
    callbacks: list[Callback] = [MetricsCsv()] if writer else []
    callbacks.append(BestWeights(train.monitor, write=writer))
    if train.early_stop is not None:
        callbacks.append(EarlyStopping(train.monitor, train.early_stop))
    if writer:
        callbacks += [Checkpointer(), EpochLog(train.monitor)]
    if writer and train.tensorboard:
        callbacks.append(TensorBoardLogger(hyperparameters(config)))
    if writer:
        callbacks += trackers_for(train.logger, hyperparameters(config))
    if train.time_limit is not None:  # last: it measures the others' epoch-end work too
        callbacks.append(TimeBudget(parse_duration(train.time_limit), started, epochs_asked))
    return callbacks


def hyperparameters(config: RunConfig) -> dict[str, object]:
    """The run's plain settings, flattened for TensorBoard's hparams view."""
    flat: dict[str, object] = {"model": config.model.name}
    for section in ("data", "train"):
        for key, value in asdict(getattr(config, section)).items():
            if isinstance(value, (int, float, str, bool)):
                flat[f"{section}.{key}"] = value
    return flat
