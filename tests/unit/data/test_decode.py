import numpy as np
import torch
from PIL import Image

from torchgraft.data import array_to_tensor, load_image, pil_to_tensor


def test_rgba_is_composited_on_white() -> None:
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    assert pil_to_tensor(image, 3).unique().tolist() == [255]


def test_grayscale_becomes_three_equal_channels() -> None:
    image = Image.fromarray(np.full((5, 6), 77, dtype=np.uint8))
    tensor = pil_to_tensor(image, 3)
    assert tensor.shape == (3, 5, 6) and tensor.unique().tolist() == [77]


def test_exif_orientation_is_applied(tmp_path) -> None:  # type: ignore[no-untyped-def]
    image = Image.new("RGB", (8, 4))  # wide
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    image.save(tmp_path / "phone.jpg", exif=exif)
    assert load_image(tmp_path / "phone.jpg", 3).shape == (3, 8, 4)  # tall, as shown


def test_uint8_arrays_are_not_copied() -> None:
    array = np.zeros((6, 7, 3), dtype=np.uint8)
    tensor = array_to_tensor(array, 3)
    array[0, 0, 0] = 9
    assert tensor[0, 0, 0] == 9  # shares memory with the array


def test_float_arrays_are_read_as_unit_range() -> None:
    tensor = array_to_tensor(np.full((2, 2), 0.5, dtype=np.float32), 1)
    assert tensor.dtype == torch.uint8 and tensor.unique().tolist() == [128]
