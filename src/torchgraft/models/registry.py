"""The backbone registry: which networks torchgraft knows, and the preprocessing each expects.

Registered names carry their defaults (input size, mean/std, where offline weights come from).
Any other timm model name also works; its defaults come from timm's pretrained config.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from torchgraft.errors import UserError, did_you_mean
from torchgraft.models.hub import raise_if_hub_unreachable

HF_HUB_PREFIX = "hf-hub:"  # timm's prefix for models on the Hugging Face Hub
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

WeightsLoader = Callable[[], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one kind of network and feed it."""

    name: str  # the name users type
    family: str  # "timm" (built by timm.create_model) or "scratch" (torchgraft's own nets)
    image_size: int  # default input side length for images of ordinary size
    mean: tuple[float, ...]  # normalisation the weights were trained with
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    offline_weights: WeightsLoader | None = None  # bundled pretrained weights, if any
    description: str = ""

    @property
    def pretrainable(self) -> bool:
        return self.family == "timm"


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone; a second registration under the same name is a bug, so it is refused."""
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def registered_names() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> BackboneSpec:
    """The spec for `name`: registered, derived from timm for any other timm model, or read
    from the Hugging Face Hub for `hf-hub:org/name`."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith(HF_HUB_PREFIX):
        return _hub_spec(name)
    import timm

    if not timm.is_model(name):
        # Registered names first: they work offline, most timm names need a download.
        hint = did_you_mean(name, registered_names()) or did_you_mean(name, timm.list_models())
        raise UserError(
            f"unknown model {name!r}.{hint} Use one of "
            f"{', '.join(registered_names())}, or a timm model name (timm.list_models())."
        )
    config = timm.models.get_pretrained_cfg(name)
    return _timm_spec(name, config.to_dict() if config is not None else {})


def _timm_spec(name: str, pretrained_config: dict[str, Any]) -> BackboneSpec:
    """A spec from timm's pretrained config: the preprocessing the weights were trained with."""
    return BackboneSpec(
        name=name,
        family="timm",
        image_size=int(pretrained_config.get("input_size", (3, 224, 224))[-1]),
        mean=tuple(pretrained_config.get("mean", IMAGENET_MEAN)),
        std=tuple(pretrained_config.get("std", IMAGENET_STD)),
        interpolation=_supported_interpolation(pretrained_config.get("interpolation", "bilinear")),
    )


@functools.cache  # one hub request per name and process (a failure is not kept)
def _hub_spec(name: str) -> BackboneSpec:
    """A model on the Hugging Face Hub (hf-hub:org/name), described by its config.json,
    which timm's own loader reads. timm builds and loads it under the same name later."""
    from timm.models import load_model_config_from_hf

    try:
        raise_if_hub_unreachable()
        pretrained_config, _, _ = load_model_config_from_hf(name.removeprefix(HF_HUB_PREFIX))
    except Exception as error:  # offline, no such repository, not a timm model: one message
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(
            f"could not read {name!r} from the Hugging Face Hub ({reason}). Hub models need "
            f"the network; offline, use {', '.join(registered_names())}, or a timm model "
            "name with --weights PATH (a local weights file)."
        ) from None
    return _timm_spec(name, pretrained_config)


def _supported_interpolation(name: str) -> str:
    return name if name in ("bilinear", "bicubic", "nearest") else "bilinear"


def _register_builtins() -> None:
    from torchgraft.models.bundled import efficientnet_lite0_weights

    register(
        BackboneSpec(
            name="efficientnet_lite0",
            family="timm",
            image_size=224,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            interpolation="bicubic",
            offline_weights=efficientnet_lite0_weights,
            description="EfficientNet-Lite0, ImageNet weights bundled (4.7M parameters)",
        )
    )
    for name, description in (
        ("mlp", "two-layer perceptron, trained from scratch (MNIST-sized inputs)"),
        ("cnn", "three-block convolutional network, trained from scratch"),
    ):
        register(BackboneSpec(name, "scratch", 28, (0.5,), (0.5,), description=description))


_register_builtins()
