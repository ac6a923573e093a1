import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skimage_data

from torchgraft.data.decode import UnreadableImage, decode_file
from torchgraft.data.hashing import (
    content_digest,
    fingerprint_arrays,
    fingerprint_file,
    hamming_distance,
    near_duplicate_pairs,
    perceptual_hash,
    pixel_spreads,
)
from torchgraft.testing import class_image


def photo() -> np.ndarray:
    """A real photo (scikit-image's cat), halved: (150, 225, 3) uint8."""
    return np.asarray(Image.fromarray(skimage_data.chelsea()).reduce(2))


def dhash(image: np.ndarray) -> int:
    return perceptual_hash(torch.from_numpy(np.array(image)).permute(2, 0, 1))


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def test_digest_is_the_sha256_of_the_bytes(tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # over a megabyte: read in more than one chunk
    (tmp_path / "a.bin").write_bytes(data)
    (tmp_path / "copy.bin").write_bytes(data)
    (tmp_path / "changed.bin").write_bytes(data[:-1] + b"x")
    assert content_digest(tmp_path / "a.bin") == hashlib.sha256(data).hexdigest()
    assert content_digest(tmp_path / "copy.bin") == content_digest(tmp_path / "a.bin")
    assert content_digest(tmp_path / "changed.bin") != content_digest(tmp_path / "a.bin")


def test_dhash_is_the_same_for_the_same_picture() -> None:
    image = photo()
    assert dhash(image) == dhash(image.copy())
    assert 0 <= dhash(image) < 2**64


def test_dhash_barely_moves_for_reencoded_noised_or_resized_copies() -> None:
    image = photo()
    noised = np.clip(image + np.random.default_rng(0).normal(0, 4, image.shape), 0, 255)
    resized = np.asarray(Image.fromarray(image).resize((150, 100)))
    original = dhash(image)
    assert hamming_distance(original, dhash(jpeg(image, 90))) <= 2
    assert hamming_distance(original, dhash(noised.astype(np.uint8))) <= 2
    assert hamming_distance(original, dhash(resized)) <= 2


def test_dhash_tells_different_pictures_apart() -> None:
    stripes_across, stripes_down = class_image(0, 64, seed=1), class_image(1, 64, seed=2)
    assert hamming_distance(dhash(stripes_across), dhash(stripes_down)) >= 16
    cropped = photo()[20:120, 40:180]  # another view of the cat
    assert hamming_distance(dhash(photo()), dhash(np.ascontiguousarray(cropped))) > 4


def test_dhash_of_grayscale_matches_rgb_of_the_same_gray() -> None:
    gray = photo().mean(axis=2).astype(np.uint8)
    as_rgb = np.repeat(gray[..., None], 3, axis=2)
    single = perceptual_hash(torch.from_numpy(gray).unsqueeze(0))
    assert hamming_distance(single, dhash(as_rgb)) <= 1


def test_hamming_distance_counts_differing_bits() -> None:
    assert hamming_distance(0, 0) == 0
    assert hamming_distance(0b1011, 0b0001) == 2
    assert hamming_distance(0, 2**64 - 1) == 64


def test_near_duplicate_pairs_finds_the_planted_pairs_and_nothing_else() -> None:
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, size=300, dtype=np.uint64) * np.uint64(2)
    hashes[17] = hashes[3] ^ np.uint64(0b101)  # 2 bits apart
    hashes[250] = hashes[40] ^ np.uint64(1 << 63 | 1 << 10 | 1 << 5 | 1)  # 4 bits apart
    hashes[123] = hashes[200]  # identical
    hashes[99] = hashes[7] ^ np.uint64(0b11111)  # 5 bits apart: not near enough
    pairs = near_duplicate_pairs(hashes, max_distance=4)
    assert sorted(pairs) == [(3, 17), (40, 250), (123, 200)]
    assert (7, 99) in near_duplicate_pairs(hashes, max_distance=5)


def test_near_duplicate_pairs_handles_edge_sizes() -> None:
    assert near_duplicate_pairs(np.array([], dtype=np.uint64), 4) == []
    assert near_duplicate_pairs(np.array([5], dtype=np.uint64), 4) == []
    same = np.full(5, 7, dtype=np.uint64)
    assert len(near_duplicate_pairs(same, 0)) == 10  # every pair once, never (i, i)


def test_fingerprint_file_gives_a_reason_instead_of_raising(tmp_path: Path) -> None:
    Image.fromarray(class_image(0, 40)).save(tmp_path / "good.png")
    (tmp_path / "notes.jpg").write_text("not a picture")
    good = fingerprint_file(tmp_path / "good.png")
    assert good.reason is None and (good.width, good.height, good.mode) == (40, 40, "RGB")
    assert fingerprint_file(tmp_path / "notes.jpg").reason == "not an image (unrecognised format)"
    with pytest.raises(UnreadableImage) as training_says:  # what training skips it for
        decode_file(tmp_path / "missing.png", 3)
    assert fingerprint_file(tmp_path / "missing.png").reason == training_says.value.reason


def lab_tiff(path: Path) -> Path:
    """A CIE LAB TIFF: a mid-grey square with a light, reddish one inside."""
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[..., 0] = 128  # L* about 50
    pixels[8:24, 8:24] = (220, 40, 20)  # Pillow stores a* and b* as signed bytes
    Image.frombytes("LAB", (32, 32), pixels.tobytes()).save(path)
    return path


@pytest.mark.parametrize("channels", [1, 3])
def test_a_lab_tiff_is_read_as_training_reads_it(tmp_path: Path, channels: int) -> None:
    path = lab_tiff(tmp_path / "lab.tif")
    scan = fingerprint_file(path, channels)
    assert scan.reason is None and scan.mode == "LAB"
    image = decode_file(path, channels)[0]
    assert image.shape == (channels, 32, 32)
    assert image[:, 16, 16].float().mean() > image[:, 0, 0].float().mean() + 40  # lighter inside
    if channels == 3:
        red, green, _ = image[:, 16, 16].tolist()
        assert red > green + 30  # positive a* is towards red


def test_spread_is_zero_for_a_constant_image_and_large_for_a_picture(tmp_path: Path) -> None:
    Image.new("RGB", (40, 30), (90, 90, 90)).save(tmp_path / "grey.png")
    Image.fromarray(class_image(1, 40)).save(tmp_path / "picture.png")
    assert fingerprint_file(tmp_path / "grey.png").spread == 0
    assert fingerprint_file(tmp_path / "picture.png").spread > 20
    arrays = fingerprint_arrays(np.stack([np.full((28, 28), 7, np.uint8), photo()[:28, :28, 0]]))
    assert arrays[0].spread == 0 and arrays[1].spread > 5


def test_a_file_name_that_is_not_utf8_is_fingerprinted(tmp_path: Path) -> None:
    path = tmp_path / os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes, as old cameras wrote
    Image.fromarray(class_image(0, 40)).save(path)
    scan = fingerprint_file(path)
    assert scan.reason is None and scan.digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_fingerprint_arrays_matches_hashing_each_image() -> None:
    images = np.stack([class_image(label, 32, seed=label)[..., 0] for label in range(3)])
    fingerprints = fingerprint_arrays(images)
    expected = [perceptual_hash(torch.from_numpy(image).unsqueeze(0)) for image in images]
    assert [f.phash for f in fingerprints] == expected
    assert {(f.width, f.height, f.mode) for f in fingerprints} == {(32, 32, "L")}
    assert len({f.digest for f in fingerprints}) == 3


def test_spread_is_each_channels_standard_deviation() -> None:
    pictures = np.stack([photo()[:40, :40], class_image(2, 40, seed=3)])
    images = torch.from_numpy(pictures).permute(0, 3, 1, 2)
    expected = images.reshape(2, 3, -1).double().std(dim=2, correction=0).amax(dim=1)
    assert pixel_spreads(images) == pytest.approx(expected.numpy(), abs=1e-9)


# Hashes, thumbnail and spread of a 3x4000x4000 image in a fresh process; prints how many
# bytes the peak resident set grew by past the image itself.
_FINGERPRINT_MEMORY = """
import resource, torch
from torchgraft.data.hashing import perceptual_hashes, pixel_spreads, thumbnails
images = torch.randint(0, 256, (1, 3, 4000, 4000), dtype=torch.uint8)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
perceptual_hashes(images), thumbnails(images), pixel_spreads(images)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_fingerprinting_a_big_image_takes_one_float_plane_not_three_channels() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _FINGERPRINT_MEMORY], capture_output=True, text=True, check=True
    )
    grown = int(done.stdout.split()[-1])
    plane = 4000 * 4000 * 4  # one float32 luma plane: 64 MB (three float channels: 192 MB)
    assert grown < 2.5 * plane, f"peak grew by {grown / 2**20:.0f} MB"
