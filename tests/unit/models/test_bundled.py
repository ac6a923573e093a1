"""The bundled EfficientNet-Lite0 weights, mapped onto timm's names, classify real photos."""

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F

from torchgraft.errors import GraftRuntimeError
from torchgraft.models.bundled import map_by_position

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _top1(model: torch.nn.Module, photo: np.ndarray) -> int:
    image = torch.from_numpy(photo).permute(2, 0, 1)[None].float()
    image = F.interpolate(image, size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        return int(model(image.round().clamp(0, 255)).argmax())


def test_chelsea_is_a_cat(imagenet_model: torch.nn.Module) -> None:
    assert _top1(imagenet_model, skimage.data.chelsea()) in IMAGENET_CATS


def test_coffee_is_espresso(imagenet_model: torch.nn.Module) -> None:
    assert _top1(imagenet_model, skimage.data.coffee()) == ESPRESSO


def test_mapping_refuses_a_shape_mismatch() -> None:
    source = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    target = {"x": torch.zeros(2, 3), "y": torch.zeros(5)}
    with pytest.raises(GraftRuntimeError, match=r"b has shape \(4,\) but y needs \(5,\)"):
        map_by_position(source, target, origin="test")
