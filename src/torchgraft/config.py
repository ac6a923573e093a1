"""Dataclass configs, one per stage, read from YAML with CLI overrides and validated once.

A config file mirrors the dataclasses:

    data:
      source: mnist5k
    model:
      name: efficientnet_lite0
    train:
      epochs: 3

`load_train_config(path, overrides)` reads the file, applies overrides such as
``{"train.epochs": 5}`` on top, and refuses unknown keys and bad values with the allowed
values and a close-match suggestion. Everything downstream can trust the result.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from torchgraft.errors import UserError, did_you_mean

RESIZE_MODES = ("crop", "pad", "squash")
AUGMENTATIONS = ("none", "light", "trivial", "randaugment")
DEVICES = ("auto", "cpu", "cuda", "mps")
CACHE_MODES = ("memory", "disk", "none")
LOADERS = ("auto", "resident", "dataloader")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DEPTHWISE = ("auto", "train", "freeze")
NORM_STATISTICS = ("auto", "update", "keep")
MONITORS = ("val_accuracy", "val_loss")
CLASS_WEIGHTS = ("none", "auto")
LOGGERS = ("tensorboard", "csv", "mlflow", "wandb")


def setting(default: Any, help: str, **rules: Any) -> Any:
    """A config field: its default, the help text `graft train --help` shows for it (the one
    place it is written), and the rules its values must follow (choices, minimum, maximum,
    path, duration, each_of, auto)."""
    return field(default=default, metadata={"help": help, **rules})


def _choice(default: str, choices: tuple[str, ...], help: str) -> Any:
    return setting(default, help, choices=choices)


def _path(help: str) -> Any:
    # Made absolute when the config is read, so a run resumed (or evaluated) from another
    # directory still finds the file its config names.
    return setting(None, help, path=True)


def _at_least(
    default: float | int | None, minimum: float, help: str, maximum: float | None = None
) -> Any:
    return setting(default, help, minimum=minimum, maximum=maximum)


@dataclass
class DataConfig:
    source: str = setting(
        "mnist5k",
        "A folder with one sub-folder per class (or train/ and val/ folders), a CSV or "
        "JSON-lines file of (path, label), or a bundled set: mnist5k, digits.",
    )
    val_fraction: float = _at_least(
        0.2, 0.0, "Share of each class held out for validation when there is no val/ folder.",
        maximum=0.9,
    )  # fmt: skip
    image_size: int | None = _at_least(
        None, 8, "Training resolution in pixels (default: the model's, e.g. 224; 64 for "
        "bundled digits, their own size from scratch).",
    )  # fmt: skip
    resize: str = _choice(
        "crop", RESIZE_MODES, "Resize mode: crop (the centre), pad (letterbox) or squash."
    )
    augment: str = _choice(
        "none", AUGMENTATIONS, "Augmentation preset: none, light, trivial, randaugment."
    )
    batch_size: int = _at_least(64, 1, "Images per step.")
    num_workers: int | None = _at_least(
        None, 0, "Data-loading worker processes (default: 0 on a CPU, where the cores run "
        "the steps; the cores less one, at most 8, for a GPU).",
    )  # fmt: skip
    loader: str = _choice(
        "auto", LOADERS, "Batches: auto, resident, dataloader (auto: the decoded images "
        "resident in GPU memory when they fit, with none or light augmentation run there; "
        "else a DataLoader).",
    )  # fmt: skip
    class_names: str | None = setting(
        None, "JSON file mapping class folder names to display names (cat_to_name.json; "
        "default: folder names).",
    )  # fmt: skip
    cache: str = _choice(
        "memory", CACHE_MODES,
        "Decoded-image cache: memory, disk, none (disk reuses decoding across runs).",
    )  # fmt: skip
    cache_dir: str | None = setting(
        None, "Folder for --cache disk (default: $TORCHGRAFT_CACHE or ~/.cache/torchgraft)."
    )
    exclude: str | None = _path(
        "Leave out the files listed in this file: `graft doctor DATA --json` output or a "
        "CSV. From the report: unreadable, blank, label-issue and outlier files, and every "
        "copy but one of each duplicate group (a val or test copy kept when the copies span "
        "splits); tiny images stay. From a CSV: the file (or path) column, else the first; "
        "header optional. Names relative to DATA, or absolute; listed files the data no "
        "longer holds are counted in a warning. Recorded in the run, so --resume and "
        "evaluation leave out the same files (default: none)."
    )


@dataclass
class ModelConfig:
    name: str = setting(
        "efficientnet_lite0",
        "Backbone: efficientnet_lite0, mlp, cnn, any timm model name, or hf-hub:ORG/NAME.",
    )
    weights: str | None = setting(
        None, "Local pretrained weights file (.safetensors/.pth) for the backbone (default: "
        "bundled weights, else the timm hub).",
    )  # fmt: skip
    pretrained: bool = setting(
        True, "Start from pretrained weights (--no-pretrained: random initialisation)."
    )


@dataclass
class TrainConfig:
    name: str | None = setting(
        None, "Run name, a folder under --runs-dir (default: <model>-<data>, numbered if "
        "taken).",
    )  # fmt: skip
    runs_dir: str = setting("runs", "Parent folder for run directories.")
    # None below: the model's default (defaults.RecipeDefaults), resolved before the run
    freeze_epochs: int | None = _at_least(
        None, 0, "Epochs training only the new head on cached features of the frozen backbone."
    )
    epochs: int | None = _at_least(
        None, 0,
        "Epochs training the whole network (with --time-limit, the limit decides).",
    )  # fmt: skip
    lr: float | str | None = setting(
        None, "Peak learning rate of the head, one-cycle, or auto to run the lr finder first.",
        minimum=0.0, auto=True,
    )  # fmt: skip
    head_lr: float | None = _at_least(
        None, 0.0, "Peak learning rate of the head-only epochs (default: 5 x lr)."
    )
    backbone_lr_divisor: float | None = _at_least(
        None, 1.0, "Backbone learning rate is lr divided by this while fine-tuning."
    )
    depthwise: str = _choice(
        "auto", DEPTHWISE, "Depthwise filters: auto, train, freeze (auto: fixed on the CPU, "
        "where their gradient is the slowest part of a step; trained on a GPU).",
    )  # fmt: skip
    norm_statistics: str = _choice(
        "auto", NORM_STATISTICS, "BatchNorm statistics while fine-tuning: auto, update, keep "
        "(auto: keep them after head-only epochs, whose head learned on them; update "
        "otherwise).",
    )  # fmt: skip
    layer_decay: float | None = _at_least(
        None, 0.0, "Layer-wise lr decay, e.g. 0.75: each block towards the input learns this "
        "much slower than the one above (replaces the divisor; default: off).", maximum=1.0,
    )  # fmt: skip
    weight_decay: float = _at_least(0.01, 0.0, "AdamW weight decay (decoupled).")
    seed: int = setting(0, "Random seed for the split, initialisation and shuffling.")
    device: str = _choice(
        "auto", DEVICES, "Device: auto (cuda, then mps, then cpu), cpu, cuda or mps."
    )
    precision: str = _choice(
        "auto", PRECISIONS, "Precision: auto, bf16, fp16, fp32 (auto: bf16 on Ampere and "
        "later GPUs, fp16 with a gradient scaler on older ones, fp32 on the CPU).",
    )  # fmt: skip
    channels_last: bool = setting(
        True, "Channels-last memory layout (1.9x faster conv steps measured on a CPU)."
    )
    compile: bool = setting(False, "torch.compile the network (whole-network phases).")
    accumulate: int = _at_least(1, 1, "Batches per optimizer step (gradient accumulation).")
    grad_clip: float | None = _at_least(None, 0.0, "Clip the gradient norm to this (default: off).")
    label_smoothing: float | None = _at_least(
        None, 0.0, "Label smoothing: target mass spread evenly, 0 to 0.5.", maximum=0.5
    )
    class_weights: str = _choice(
        "none", CLASS_WEIGHTS, "Loss weights per class: none, or auto (inverse frequency)."
    )
    mixup: float = _at_least(0.0, 0.0, "MixUp alpha, Beta(alpha, alpha) (0: off).")
    cutmix: float = _at_least(0.0, 0.0, "CutMix alpha, Beta(alpha, alpha) (0: off).")
    ema_decay: float | None = _at_least(
        None, 0.0, "Score an EMA of the weights with this decay (0: off).", maximum=1.0
    )
    early_stop: int | None = _at_least(
        None, 1, "Stop after this many epochs without improvement (default: off)."
    )
    monitor: str = _choice(
        "val_accuracy", MONITORS, "Score for best weights and early stop: val_accuracy, "
        "val_loss.",
    )  # fmt: skip
    time_limit: str | None = setting(
        None, "Plan the run to end within this, e.g. 90s, 10m, 2h: the step time measured "
        "early sets the epochs, so the schedule still anneals (default: none).", duration=True,
    )  # fmt: skip
    deterministic: bool = setting(False, "Deterministic algorithms (bitwise-repeatable CPU runs).")
    feature_cache: bool = setting(True, "Keep frozen-backbone features on disk for later runs.")
    feature_views: int = _at_least(
        1, 1, "Frozen phase: features of K views per training image (1 plain + K-1 "
        "augmented).",
    )  # fmt: skip
    tensorboard: bool = setting(True, "Write TensorBoard logs to the run's tensorboard/.")
    logger: str = setting(
        "", "Experiment trackers as well, comma-separated: mlflow, wandb (pip install "
        "'torchgraft[track]'; they read MLFLOW_TRACKING_URI, WANDB_MODE, ...).",
        each_of=LOGGERS,
    )  # fmt: skip
    report: bool = setting(True, "At the end, evaluate and calibrate; write report.html.")
    quiet: bool = setting(False, "No progress bars; only the result.")


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)  # where the images come from
    model: ModelConfig = field(default_factory=ModelConfig)  # which network, which weights
    train: TrainConfig = field(default_factory=TrainConfig)  # how long and how fast to learn


def load_train_config(
    path: Path | None = None, overrides: dict[str, Any] | None = None
) -> RunConfig:
    """Read `path` (YAML) if given, then apply dotted `overrides`; validate everything once."""
    raw: dict[str, Any] = _read_yaml(path) if path is not None else {}
    where = str(path) if path is not None else "config"
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise UserError(f"{where}: '{section}' must be a mapping of settings")
        raw[section][key] = value
    return _build(RunConfig, raw, where)


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """A RunConfig from its saved form (graft.json's resolved config), validated again."""
    return typing.cast(RunConfig, _build(RunConfig, raw, "config"))


def to_dict(config: Any) -> dict[str, Any]:
    """Plain, JSON-ready data for a config (saved as the resolved config in graft.json)."""
    return dataclasses.asdict(config)


def config_yaml(raw: dict[str, Any]) -> str:
    """A saved config (`to_dict`'s form) as the YAML `--config` reads: a run's config.yaml."""
    return yaml.safe_dump(raw, sort_keys=False, allow_unicode=True)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"config file not found: {path}. Pass an existing YAML file to --config.")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UserError(f"{path} is not valid YAML: {error}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UserError(f"{path}: expected a mapping with sections data, model, train")
    return loaded


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    """Instantiate dataclass `cls` from `raw`, recursing into nested dataclasses."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            allowed = ", ".join(fields)
            raise UserError(
                f"{where}: unknown setting '{key}'.{did_you_mean(str(key), fields)} "
                f"Allowed: {allowed}."
            )
        name = f"{where}.{key}" if where != "config" else key
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise UserError(f"{name}: expected a mapping of settings, got {value!r}")
            values[key] = _build(typing.cast(type, hint), value, name)
        else:
            metadata = fields[key].metadata
            if metadata.get("auto") and str(value).strip().lower() == "auto":
                values[key] = "auto"  # resolved later, by measurement (the lr finder)
                continue
            values[key] = _check_value(name, _coerce(name, value, hint), metadata)
            if metadata.get("path") and values[key] is not None:
                values[key] = os.path.abspath(os.path.expanduser(values[key]))
    return cls(**values)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Convert `value` to the field type `hint` (int, float, str, bool, or X | None)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise UserError(f"{name}: a value is required")
    target = next(option for option in options if option is not type(None))
    if target is bool:
        return _to_bool(name, value)
    try:
        if target is int and (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        return target(value)
    except (TypeError, ValueError):
        raise UserError(f"{name}: expected {target.__name__}, got {value!r}") from None


def _to_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise UserError(f"{name}: expected true or false, got {value!r}")


def _check_value(name: str, value: Any, metadata: typing.Mapping[str, Any]) -> Any:
    choices = metadata.get("choices")
    if choices is not None and value not in choices:
        hint = did_you_mean(str(value), choices)
        raise UserError(f"{name}: {value!r} is not one of {', '.join(choices)}.{hint}")
    for item in str(value).split(",") if metadata.get("each_of") and value else ():
        if item.strip() not in metadata["each_of"]:
            hint = did_you_mean(item.strip(), metadata["each_of"])
            allowed = ", ".join(metadata["each_of"])
            raise UserError(f"{name}: {item.strip()!r} is not one of {allowed}.{hint}")
    minimum = metadata.get("minimum")
    if minimum is not None and value is not None and value < minimum:
        raise UserError(f"{name}: {value!r} is below the minimum {minimum}")
    if metadata.get("duration") and value is not None:
        try:
            parse_duration(str(value))
        except UserError as error:
            raise UserError(f"{name}: {error}") from None
    maximum = metadata.get("maximum")
    if maximum is not None and value is not None and value > maximum:
        raise UserError(f"{name}: {value!r} is above the maximum {maximum}")
    return value


# Flat setting names (api.train(epochs=5), CLI flags) -> dotted config keys. Field names are
# unique across sections except `name`, which the aliases settle.
_ALIASES = {"data": "data.source", "model": "model.name", "name": "train.name"}


def flat_settings() -> dict[str, str]:
    """Every flat setting name and the dotted key it sets."""
    table: dict[str, str] = {}
    for section in dataclasses.fields(RunConfig):
        for item in dataclasses.fields(typing.cast(type, section.default_factory)):
            table.setdefault(item.name, f"{section.name}.{item.name}")
    table.update(_ALIASES)
    return table


def dotted_overrides(settings: dict[str, Any]) -> dict[str, Any]:
    """Turn flat settings such as {"epochs": 5} into {"train.epochs": 5}; refuse unknown ones."""
    table = flat_settings()
    dotted: dict[str, Any] = {}
    for name, value in settings.items():
        if name not in table:
            raise UserError(
                f"unknown setting '{name}'.{did_you_mean(name, table)} "
                f"Allowed: {', '.join(sorted(table))}."
            )
        dotted[table[name]] = value
    return dotted


def default_of(dotted: str) -> Any:
    """The default value of a dotted setting (for help texts)."""
    section, _, key = dotted.partition(".")
    return getattr(getattr(RunConfig(), section), key)


def help_of(dotted: str) -> str:
    """The help text of a dotted setting, as its field declares it."""
    section, _, key = dotted.partition(".")
    section_class = type(getattr(RunConfig(), section))
    fields = {item.name: item for item in dataclasses.fields(section_class)}
    return str(fields[key].metadata["help"])


def parse_duration(text: str) -> float:
    """Seconds in "90", "90s", "10m", "1.5h"; refuses anything else with an example."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    cleaned = text.strip().lower()
    scale = units.get(cleaned[-1:], 1.0) if cleaned else 1.0
    number = cleaned[:-1] if cleaned[-1:] in units else cleaned
    try:
        seconds = float(number) * scale
    except ValueError:
        raise UserError(f"time limit {text!r} is not a duration: use e.g. 90s, 10m or 2h") from None
    if seconds <= 0:
        raise UserError(f"time limit {text!r} must be positive")
    return seconds
