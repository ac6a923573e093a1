"""Reading pretrained weights: bundled, a local file the user names, or the timm hub."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from torchgraft.errors import UserError
from torchgraft.models.hub import raise_if_hub_unreachable
from torchgraft.models.registry import BackboneSpec

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file or a PyTorch checkpoint, never executing its code."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for foreign or unsafe pickles
        raise UserError(
            f"cannot read {path} as tensors ({error}). Save the weights with "
            f"safetensors, or torch.save(model.state_dict(), path)."
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):  # common checkpoint wrappers
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict):
        raise UserError(f"{path} does not hold a state dict (name -> tensor)")
    return {k.removeprefix("module."): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}


def load_backbone_weights(net: nn.Module, weights: dict[str, torch.Tensor], origin: str) -> None:
    """Load pretrained weights into `net`, keeping its new classifier where shapes differ."""
    own = net.state_dict()
    usable = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable]
    classifier_keys = _classifier_keys(net)
    not_head = [k for k in missing if k not in classifier_keys]
    if not_head:
        raise UserError(
            f"{origin} does not fit this model: {len(not_head)} tensors missing or of another "
            f"shape (first: {not_head[0]}). Check that the file belongs to the model you named."
        )
    net.load_state_dict(usable, strict=False)
    logger.info("loaded pretrained weights from %s", origin)


def pretrained_weights(
    spec: BackboneSpec, weights_path: str | None
) -> tuple[dict[str, torch.Tensor], str]:
    """The weights to start from and where they came from: a file, bundled, or the hub."""
    if weights_path is not None:
        return read_weights_file(weights_path), str(weights_path)
    if spec.offline_weights is not None:
        return spec.offline_weights(), "bundled weights"
    return _hub_weights(spec.name), "the timm hub"


def _hub_weights(name: str) -> dict[str, torch.Tensor]:
    import timm

    try:
        raise_if_hub_unreachable()
        return timm.create_model(name, pretrained=True).state_dict()
    except Exception as error:  # no network, no such tag, hub outage: all mean the same to a user
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(
            f"could not download pretrained weights for {name!r} ({reason}). Offline, pass a "
            f"local file with --weights PATH ({', '.join(WEIGHT_SUFFIXES)}), or train from "
            f"random weights with --no-pretrained."
        ) from None


def _classifier_keys(net: nn.Module) -> set[str]:
    """State-dict keys of the classifier, the part a new task replaces."""
    get_classifier = getattr(net, "get_classifier", None)
    if get_classifier is None:
        return set()
    head = get_classifier()
    for name, module in net.named_modules():
        if module is head:
            return {f"{name}.{key}" for key in module.state_dict()}
    return set()
