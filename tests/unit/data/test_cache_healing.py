"""The decoded-image disk cache heals: a damaged entry, or a run killed while writing one,
costs one warning and a rebuild, never a crash."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from torchgraft import api
from torchgraft.artifact import Preprocessing
from torchgraft.data import cache as cache_module
from torchgraft.data import cache_files, decode_split, load_data
from torchgraft.testing import make_image_folder

PREP = Preprocessing(24, "pad", (0.5,) * 3, (0.5,) * 3, channels=3)


@pytest.fixture(autouse=True)
def fresh_process_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test is a new process as far as the cache knows: no entry in use."""
    monkeypatch.setattr(cache_files, "_in_use", set())


@pytest.fixture
def decoded_files(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files decoded from here on (a cache hit decodes none)."""
    calls: list[Path] = []
    real = cache_module.decode_file
    monkeypatch.setattr(cache_module, "decode_file", lambda p, c: calls.append(p) or real(p, c))
    return calls


def damage_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]


def truncate(pixels: Path, index: Path) -> None:
    pixels.write_bytes(pixels.read_bytes()[: pixels.stat().st_size // 2])


def corrupt_header(pixels: Path, index: Path) -> None:
    data = bytearray(pixels.read_bytes())
    data[:10] = b"not numpy!"  # same size: only the header is wrong
    pixels.write_bytes(bytes(data))


def wrong_shape(pixels: Path, index: Path) -> None:
    """A whole, valid .npy of another image size, its index agreeing on the file size."""
    rows = np.load(pixels)
    np.save(pixels, np.zeros((len(rows), 3, 20, 20), np.uint8))
    entry = json.loads(index.read_text())
    index.write_text(json.dumps(entry | {"bytes": pixels.stat().st_size}))


def flip_a_pixel(pixels: Path, index: Path) -> None:
    data = bytearray(pixels.read_bytes())
    data[-len(data) // 3] ^= 0xFF  # inside the rows of decoded images
    pixels.write_bytes(bytes(data))


def drop_index(pixels: Path, index: Path) -> None:
    index.unlink()  # as a kill between the pixels' rename and the index's leaves it
    hour_ago = time.time() - 3600
    os.utime(pixels, (hour_ago, hour_ago))  # long enough ago that its writer is gone


def garble_index(pixels: Path, index: Path) -> None:
    index.write_text('{"kept": [0, 1')


@pytest.mark.parametrize(
    "damage", [truncate, corrupt_header, wrong_shape, flip_a_pixel, drop_index, garble_index]
)
def test_a_damaged_entry_is_rebuilt_with_one_warning(
    tmp_path: Path, damage: Callable[[Path, Path], None], decoded_files: list[Path],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    images = load_data(str(make_image_folder(tmp_path / "data", per_class=3, size=32))).train
    cache = tmp_path / "cache"
    expected = np.array(decode_split(images, PREP, quiet=True).pixels)  # in memory: an oracle
    key = decode_split(images, PREP, mode="disk", cache_dir=cache, quiet=True).key
    damage(cache / "images" / f"{key}.npy", cache / "images" / f"{key}.json")

    decoded_files.clear()
    healed = decode_split(images, PREP, mode="disk", cache_dir=cache, quiet=True)
    assert len(damage_warnings(caplog)) == 1
    assert len(decoded_files) == len(images)  # rebuilt from the images
    np.testing.assert_array_equal(healed.pixels, expected)  # type: ignore[arg-type]

    decoded_files.clear()
    caplog.clear()
    again = decode_split(images, PREP, mode="disk", cache_dir=cache, quiet=True)
    assert decoded_files == [] and damage_warnings(caplog) == []  # a clean hit now
    np.testing.assert_array_equal(again.pixels, expected)  # type: ignore[arg-type]


@pytest.fixture
def checksummed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The pixel files whose rows are read back to check their checksum."""
    calls: list[Path] = []
    real = cache_module._rows_checksum
    monkeypatch.setattr(
        cache_module, "_rows_checksum", lambda p, *a: calls.append(p) or real(p, *a)
    )
    return calls


def test_building_and_hitting_an_entry_read_no_pixel_rows_back(
    tmp_path: Path, checksummed: list[Path], decoded_files: list[Path]
) -> None:
    """The checksum is made while writing; a hit checks size, header, inode and mtime."""
    images = load_data(str(make_image_folder(tmp_path / "data", per_class=3, size=32))).train
    expected = np.array(decode_split(images, PREP, quiet=True).pixels)
    built = decode_split(images, PREP, mode="disk", cache_dir=tmp_path / "cache", quiet=True)
    decoded_files.clear()
    hit = decode_split(images, PREP, mode="disk", cache_dir=tmp_path / "cache", quiet=True)
    assert decoded_files == [] and checksummed == []
    for split in (built, hit):
        np.testing.assert_array_equal(split.pixels, expected)  # type: ignore[arg-type]


def test_a_copied_cache_is_checksummed_once_then_hits_cheaply(
    tmp_path: Path, checksummed: list[Path], decoded_files: list[Path],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """A copy has new inodes: its rows are checked once, and the index then names them."""
    images = load_data(str(make_image_folder(tmp_path / "data", per_class=3, size=32))).train
    built = decode_split(images, PREP, mode="disk", cache_dir=tmp_path / "cache", quiet=True)
    expected = np.array(built.pixels)
    shutil.copytree(tmp_path / "cache", tmp_path / "copy")
    decoded_files.clear()
    for _ in range(2):
        copy = decode_split(images, PREP, mode="disk", cache_dir=tmp_path / "copy", quiet=True)
        np.testing.assert_array_equal(copy.pixels, expected)  # type: ignore[arg-type]
    assert decoded_files == [] and damage_warnings(caplog) == []
    assert checksummed == [tmp_path / "copy" / "images" / f"{built.key}.npy"]  # once


def test_a_pixel_file_just_renamed_before_its_index_is_a_quiet_miss(
    tmp_path: Path, decoded_files: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Another run is between its two renames: no "damaged" warning, the entry is built."""
    images = load_data(str(make_image_folder(tmp_path / "data", per_class=3, size=32))).train
    key = decode_split(images, PREP, mode="disk", cache_dir=tmp_path / "cache", quiet=True).key
    (tmp_path / "cache" / "images" / f"{key}.json").unlink()  # the pixel file is seconds old
    decoded_files.clear()
    decode_split(images, PREP, mode="disk", cache_dir=tmp_path / "cache", quiet=True)
    assert len(decoded_files) == len(images) and damage_warnings(caplog) == []
    assert (tmp_path / "cache" / "images" / f"{key}.json").is_file()


def test_skipped_files_are_named_by_their_path_in_this_run(tmp_path: Path) -> None:
    """Moving the data folder keeps the cache (same contents), and the report names the
    files where they are now."""
    folder = make_image_folder(tmp_path / "data", per_class=3, size=32)
    broken = folder / sorted(p.name for p in folder.iterdir())[0] / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    cache = tmp_path / "cache"
    decode_split(load_data(str(folder)).train, PREP, mode="disk", cache_dir=cache, quiet=True)
    moved = folder.rename(tmp_path / "moved")
    split = load_data(str(moved)).train
    decoded = decode_split(split, PREP, mode="disk", cache_dir=cache, quiet=True)
    assert [Path(item.path) for item in decoded.skipped] == [moved / broken.relative_to(folder)]


def training(tmp_path: Path) -> dict[str, Any]:
    """Settings of a one-epoch mlp run whose decoded images go to the disk cache."""
    return dict(
        model="mlp", epochs=1, cache="disk", cache_dir=str(tmp_path / "cache"),
        runs_dir=str(tmp_path / "runs"), quiet=True, tensorboard=False, report=False,
    )  # fmt: skip


def assert_cache_serves(data: Path, run: Any, cache: Path, decoded_files: list[Path]) -> None:
    """Every split of the run is a verified cache hit, equal to decoding the images anew."""
    splits = load_data(str(data))
    for split in (splits.train, splits.val):
        expected = np.array(decode_split(split, run.info.preprocessing, quiet=True).pixels)
        decoded_files.clear()
        hit = decode_split(split, run.info.preprocessing, mode="disk", cache_dir=cache, quiet=True)
        assert decoded_files == []
        np.testing.assert_array_equal(hit.pixels, expected)  # type: ignore[arg-type]


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_training_after_a_killed_one_rebuilds_the_cache(
    tmp_path: Path, decoded_files: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Simulated kill -9: a truncated entry and a dataset-sized temporary of a dead pid."""
    data = make_image_folder(tmp_path / "data", per_class=4, size=32)
    api.train(data, **training(tmp_path), name="first")
    folder = tmp_path / "cache" / "images"
    victim = sorted(folder.glob("*.npy"))[0]
    truncate(victim, victim.with_suffix(".json"))
    size = victim.stat().st_size
    stale = folder / f".{victim.name}.k3y5{cache_files.temporary_suffix(dead_pid())}"
    stale.write_bytes(b"\0" * size)

    caplog.set_level(logging.INFO, logger="torchgraft")
    run = api.train(data, **training(tmp_path), name="second")
    assert run.info.metrics["epoch"] == 1 and (run.path / "model.safetensors").is_file()
    assert not stale.exists() and cache_files.temporaries(tmp_path / "cache") == []
    assert len(damage_warnings(caplog)) == 1
    assert_cache_serves(data, run, tmp_path / "cache", decoded_files)


# `graft train`, with decoding slowed down so that the kill lands while the cache is written.
SLOW_TRAIN = """
import sys, time
from torchgraft.cli import main
from torchgraft.data import cache
real = cache.decode_file
def slow_decode(path, channels):
    time.sleep(0.1)  # sleep-ok: slow decoding, so the kill lands while the cache is written
    return real(path, channels)
cache.decode_file = slow_decode
sys.argv[0] = "graft"
main()
"""


@pytest.mark.slow  # the subprocess spends most of its ~20 s importing torch
def test_a_training_killed_while_writing_the_cache_then_rerun_finishes(
    tmp_path: Path, decoded_files: list[Path]
) -> None:
    """A real kill -9 of `graft train` while the decoded-image cache is being written."""
    data = make_image_folder(tmp_path / "data", per_class=10, size=32)
    cache = tmp_path / "cache"
    args = ["train", str(data), "--model", "mlp", "--epochs", "1", "--cache", "disk",
            "--cache-dir", str(cache), "--runs-dir", str(tmp_path / "runs"), "--quiet"]  # fmt: skip
    process = subprocess.Popen([sys.executable, "-c", SLOW_TRAIN, *args], env=os.environ.copy())
    try:
        writing = wait_for(lambda: list((cache / "images").glob(".*.npy.*.tmp-*")), process)
        time.sleep(0.5)  # sleep-ok: lets a few rows be written; the asserts do not rely on it
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert writing and writing[0].exists() and list((cache / "images").glob("*.npy")) == []

    run = api.train(data, **training(tmp_path))
    assert run.info.metrics["epoch"] == 1
    assert cache_files.temporaries(cache) == []
    assert_cache_serves(data, run, cache, decoded_files)


def wait_for(found: Callable[[], list[Path]], process: subprocess.Popen[bytes]) -> list[Path]:
    """Poll until `found` finds something, while `process` still runs (two minutes at most)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if result := found():
            return result
        time.sleep(0.02)  # sleep-ok: paces a poll with a deadline
    raise AssertionError(f"nothing appeared (the process exited with {process.returncode})")
