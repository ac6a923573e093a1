import pytest
import torch

from torchgraft.artifact import Preprocessing
from torchgraft.data import resize_transform, train_transform


@pytest.mark.parametrize("mode", ["crop", "pad", "squash"])
def test_every_resize_mode_gives_the_square_size(mode: str) -> None:
    image = torch.full((3, 40, 80), 200, dtype=torch.uint8)
    assert resize_transform(32, mode, "bilinear")(image).shape == (3, 32, 32)


def test_pad_keeps_the_whole_image_and_letterboxes() -> None:
    image = torch.full((3, 40, 80), 200, dtype=torch.uint8)
    out = resize_transform(32, "pad", "bilinear")(image)
    assert out[:, 16, :].min() == 200  # the full width survives
    assert out[:, 0, :].max() == 0  # bars above and below


@pytest.mark.parametrize("augment", ["none", "light", "trivial", "randaugment"])
def test_augmentation_presets_keep_shape_and_dtype(augment: str) -> None:
    prep = Preprocessing(24, "crop", (0.5,), (0.5,))
    out = train_transform(prep, augment)(torch.randint(0, 255, (3, 30, 40), dtype=torch.uint8))
    assert out.shape == (3, 24, 24) and out.dtype == torch.uint8
