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


def _choice(default: str, choices: tuple[str, ...]) -> Any:
    return field(default=default, metadata={"choices": choices})


def _path() -> Any:
    # Made absolute when the config is read, so a run resumed (or evaluated) from another
    # directory still finds the file its config names.
    return field(default=None, metadata={"path": True})


def _at_least(default: float | int | None, minimum: float, maximum: float | None = None) -> Any:
    return field(default=default, metadata={"minimum": minimum, "maximum": maximum})


@dataclass
class DataConfig:
    source: str = "mnist5k"  # bundled set (mnist5k, digits) or a folder of images
    val_fraction: float = _at_least(0.2, 0.0, 0.9)  # share of each class held out if no val/ folder
    image_size: int | None = _at_least(None, 8)  # training resolution; None: the model's default
    resize: str = _choice("crop", RESIZE_MODES)  # crop (centre), pad (letterbox) or squash
    augment: str = _choice("none", AUGMENTATIONS)  # training augmentation preset
    batch_size: int = _at_least(64, 1)  # images per optimisation step
    num_workers: int | None = _at_least(None, 0)  # loader processes; None: 0 on a CPU, else cores-1
    loader: str = _choice("auto", LOADERS)  # auto: images resident on a GPU when they fit
    class_names: str | None = None  # JSON file mapping folder name -> display name
    cache: str = _choice("memory", CACHE_MODES)  # decode once: memory, disk (reused), none
    cache_dir: str | None = (
        None  # disk cache folder; None: $TORCHGRAFT_CACHE or ~/.cache/torchgraft
    )
    exclude: str | None = _path()  # graft doctor --json output or a CSV: files to leave out


@dataclass
class ModelConfig:
    name: str = "efficientnet_lite0"  # a registered backbone, mlp, cnn, or any timm model name
    weights: str | None = None  # local weights file; None: bundled weights, else the timm hub
    pretrained: bool = True  # start from pretrained weights (False: random initialisation)


@dataclass
class TrainConfig:
    name: str | None = None  # run name; None: <model>-<data>, numbered if taken
    runs_dir: str = "runs"  # parent folder of run directories
    # None below: the model's default (models.registry.RecipeDefaults), resolved before the run
    freeze_epochs: int | None = _at_least(None, 0)  # epochs of the new head alone, on features
    epochs: int | None = _at_least(None, 0)  # whole-network epochs (a time limit replans them)
    lr: float | str | None = field(  # peak head lr (one-cycle); auto: lr-find; None: by model
        default=None, metadata={"minimum": 0.0, "auto": True}
    )
    head_lr: float | None = _at_least(None, 0.0)  # peak lr of the head-only phase; None: 5 x lr
    backbone_lr_divisor: float | None = _at_least(None, 1.0)  # backbone lr = lr / this
    depthwise: str = _choice("auto", DEPTHWISE)  # depthwise filters; auto: frozen on the CPU
    norm_statistics: str = _choice("auto", NORM_STATISTICS)  # BatchNorm stats in fine-tuning
    layer_decay: float | None = _at_least(None, 0.0, 1.0)  # layer-wise lr decay, e.g. 0.75
    weight_decay: float = _at_least(0.01, 0.0)  # AdamW decoupled weight decay
    seed: int = 0  # seeds the split, the initialisation and the shuffling
    device: str = _choice("auto", DEVICES)  # auto picks cuda, then mps, then cpu
    precision: str = _choice("auto", PRECISIONS)  # auto: bf16 (Ampere+), fp16 (older GPUs), fp32
    channels_last: bool = True  # NHWC layout: 1.9x faster conv steps measured on this CPU
    compile: bool = False  # torch.compile the network (whole-network phases)
    accumulate: int = _at_least(1, 1)  # batches per optimizer step (gradient accumulation)
    grad_clip: float | None = _at_least(None, 0.0)  # max gradient norm; None: no clipping
    label_smoothing: float | None = _at_least(None, 0.0, 0.5)  # target mass spread evenly
    class_weights: str = _choice("none", CLASS_WEIGHTS)  # auto: inverse class frequency
    mixup: float = _at_least(0.0, 0.0)  # MixUp Beta(alpha, alpha); 0: off
    cutmix: float = _at_least(0.0, 0.0)  # CutMix Beta(alpha, alpha); 0: off
    ema_decay: float | None = _at_least(None, 0.0, 1.0)  # EMA of the weights; 0: none
    early_stop: int | None = _at_least(None, 1)  # patience in epochs; None: never stop early
    monitor: str = _choice("val_accuracy", MONITORS)  # the score for best weights, early stop
    time_limit: str | None = field(default=None, metadata={"duration": True})  # 90s, 10m, 2h
    deterministic: bool = False  # deterministic algorithms: bitwise-repeatable CPU runs
    feature_cache: bool = True  # keep frozen-backbone features on disk, reused across runs
    feature_views: int = _at_least(1, 1)  # frozen phase: 1 plain + K-1 augmented views
    tensorboard: bool = True  # write TensorBoard event files to the run's tensorboard/
    logger: str = field(  # experiment trackers too, comma-separated: mlflow, wandb
        default="", metadata={"each_of": LOGGERS}
    )
    report: bool = True  # at the end: evaluate, calibrate, write report.html and figures/
    quiet: bool = False  # no progress bars


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
