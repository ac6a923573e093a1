import os
from pathlib import Path

import numpy as np
import pytest
import torch

from torchgraft.artifact import Preprocessing
from torchgraft.data import cache as cache_module
from torchgraft.data import decode_split, eval_transform, load_data, load_image
from torchgraft.data.sources import LabeledImages
from torchgraft.errors import UserError
from torchgraft.testing import BAD_KINDS, ODD_KINDS, make_image_folder, make_messy_folder

PREP = Preprocessing(24, "pad", (0.5,) * 3, (0.5,) * 3, channels=3)


def _split(folder: Path) -> LabeledImages:
    splits = load_data(str(folder), val_fraction=0.0)
    return splits.train


def test_cached_pixels_equal_decoding_then_resizing(tmp_path: Path) -> None:
    images = _split(make_image_folder(tmp_path, per_class=4, size=40))
    decoded = decode_split(images, PREP, quiet=True)
    assert decoded.pixels is not None and decoded.pixels.shape == (12, 3, 24, 24)
    resize = eval_transform(PREP)
    for row, path in enumerate(images.images):
        assert torch.equal(torch.from_numpy(decoded.pixels[row]), resize(load_image(path, 3)))


def test_bad_files_are_skipped_with_reasons_and_odd_files_kept(tmp_path: Path) -> None:
    files = make_messy_folder(tmp_path)
    images = _split(tmp_path)
    decoded = decode_split(images, PREP, quiet=True)
    skipped = {Path(item.path): item.reason for item in decoded.skipped}
    assert set(skipped) == {files[kind] for kind in BAD_KINDS}
    assert all(reason for reason in skipped.values())
    kept = {images.images[i] for i in decoded.kept}
    assert {files[kind] for kind in ODD_KINDS} <= kept
    assert len(kept) == len(images) - len(BAD_KINDS)


@pytest.mark.parametrize("workers", [0, 2])
def test_worker_processes_give_the_same_pixels(tmp_path: Path, workers: int) -> None:
    make_messy_folder(tmp_path)
    images = _split(tmp_path)
    reference = decode_split(images, PREP, quiet=True)
    decoded = decode_split(images, PREP, workers=workers, quiet=True)
    np.testing.assert_array_equal(decoded.kept, reference.kept)
    np.testing.assert_array_equal(decoded.pixels, reference.pixels)  # type: ignore[arg-type]


def test_disk_cache_is_reused_and_keyed_by_content_and_preprocessing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = make_image_folder(tmp_path / "data", per_class=3, size=32)
    images = _split(folder)
    first = decode_split(images, PREP, mode="disk", cache_dir=tmp_path / "cache", quiet=True)
    assert isinstance(first.pixels, np.memmap)

    calls: list[Path] = []
    real_decode = cache_module.decode_file
    monkeypatch.setattr(
        cache_module, "decode_file", lambda p, c: calls.append(p) or real_decode(p, c)
    )
    again = decode_split(images, PREP, mode="disk", cache_dir=tmp_path / "cache", quiet=True)
    assert calls == []  # a cache hit decodes nothing
    np.testing.assert_array_equal(again.pixels, first.pixels)  # type: ignore[arg-type]

    bigger = Preprocessing(32, "pad", PREP.mean, PREP.std)
    decode_split(images, bigger, mode="disk", cache_dir=tmp_path / "cache", quiet=True)
    assert len(calls) == len(images)  # new preprocessing, new entry

    calls.clear()
    images.images[0].write_bytes(images.images[1].read_bytes())  # same name, new content
    changed = decode_split(images, PREP, mode="disk", cache_dir=tmp_path / "cache", quiet=True)
    assert len(calls) == len(images)
    np.testing.assert_array_equal(changed.pixels[0], first.pixels[1])  # type: ignore[index]


def test_disk_cache_files_get_ordinary_permissions(tmp_path: Path) -> None:
    """Not mkstemp's owner-only 0600: a shared cache folder must be readable by its group."""
    images = _split(make_image_folder(tmp_path / "data", per_class=2, size=32))
    previous = os.umask(0o027)
    try:
        decode_split(images, PREP, mode="disk", cache_dir=tmp_path / "cache", quiet=True)
    finally:
        os.umask(previous)
    entry = sorted((tmp_path / "cache" / "images").iterdir())
    assert [path.suffix for path in entry] == [".json", ".npy"]  # and no temporaries left
    assert [path.stat().st_mode & 0o777 for path in entry] == [0o640, 0o640]


def test_none_mode_checks_files_but_keeps_no_pixels(tmp_path: Path) -> None:
    make_messy_folder(tmp_path)
    decoded = decode_split(_split(tmp_path), PREP, mode="none", quiet=True)
    assert decoded.pixels is None and len(decoded.skipped) == len(BAD_KINDS)


def test_bundled_arrays_are_cached_too() -> None:
    digits = load_data("digits").val
    decoded = decode_split(digits, Preprocessing(16, "squash", (0.5,), (0.5,), 1), quiet=True)
    assert decoded.pixels is not None and decoded.pixels.shape == (len(digits), 1, 16, 16)


def test_disk_cache_written_in_released_pieces_matches_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows go to disk through a memory map dropped every few rows; none are lost, and the
    rows reserved for files that did not decode are not served."""
    make_messy_folder(tmp_path / "data")
    images = _split(tmp_path / "data")
    in_memory = decode_split(images, PREP, quiet=True)
    monkeypatch.setattr(cache_module, "RELEASE_BYTES", 3 * 24 * 24 * 2)  # every 2 rows
    on_disk = decode_split(images, PREP, mode="disk", cache_dir=tmp_path / "cache", quiet=True)
    assert in_memory.pixels is not None and on_disk.pixels is not None
    assert len(on_disk.skipped) == len(BAD_KINDS) and len(on_disk.pixels) == len(on_disk.kept)
    np.testing.assert_array_equal(on_disk.pixels, in_memory.pixels)
    np.testing.assert_array_equal(on_disk.kept, in_memory.kept)


def test_an_interrupted_disk_cache_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = _split(make_image_folder(tmp_path / "data", per_class=3, size=32))

    def interrupted(path: Path, channels: int) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module, "decode_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        decode_split(images, PREP, mode="disk", cache_dir=tmp_path / "cache", quiet=True)
    assert list((tmp_path / "cache" / "images").iterdir()) == []


def test_a_memory_cache_too_large_stops_before_allocating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = _split(make_image_folder(tmp_path / "data", per_class=3, size=32))
    allocations: list[object] = []
    monkeypatch.setattr(cache_module, "available_memory", lambda: 10_000)  # 10 kB free
    monkeypatch.setattr(cache_module.np, "empty", lambda *a, **k: allocations.append(a))
    with pytest.raises(UserError, match=r"need 0\.0 GB in memory.*--cache disk"):
        decode_split(images, PREP, quiet=True)
    assert allocations == []


def test_no_room_on_disk_decodes_on_the_fly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    images = _split(make_image_folder(tmp_path / "data", per_class=3, size=32))
    monkeypatch.setattr(cache_module, "DISK_MARGIN", 1 << 60)  # more than any disk has
    decoded = decode_split(images, PREP, mode="disk", cache_dir=tmp_path / "cache", quiet=True)
    assert decoded.pixels is None and len(decoded.kept) == len(images)
    assert "decoding every image on the fly" in caplog.text


def test_unchanged_files_are_not_read_again(tmp_path: Path) -> None:
    images = _split(make_image_folder(tmp_path / "data", per_class=3, size=32))
    cache = tmp_path / "cache"
    first = cache_key_reading(images, cache)
    assert first[1] == len(images)  # the first run reads every file
    again = cache_key_reading(images, cache)
    assert again == (first[0], 0)  # same key, nothing read
    images.images[0].write_bytes(images.images[1].read_bytes())  # one file changes
    changed = cache_key_reading(images, cache)
    assert changed[0] != first[0] and changed[1] == 1


def test_opting_in_to_another_format_changes_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file skipped as an unsupported format decodes once its format is allowed, so the
    entry made without it must not be reused."""
    from torchgraft.data.decode import EXTRA_FORMATS_VARIABLE

    images = _split(make_image_folder(tmp_path / "data", per_class=3, size=32))
    default = cache_key_reading(images, tmp_path / "cache")[0]
    monkeypatch.setenv(EXTRA_FORMATS_VARIABLE, "PPM")
    assert cache_key_reading(images, tmp_path / "cache")[0] != default


def test_names_that_are_not_utf8_and_missing_files_still_make_a_key(tmp_path: Path) -> None:
    """Linux file names are bytes: a folder and a file named in Latin-1, and a label file
    row naming a file that is gone (its digest is then its path), key the cache too."""
    folder = make_image_folder(tmp_path / os.fsdecode(b"donn\xe9es"), per_class=3, size=32)
    cat = sorted(path for path in folder.iterdir() if path.is_dir())[0]
    first = sorted(cat.iterdir())[0]
    (cat / os.fsdecode(b"caf\xe9.png")).write_bytes(first.read_bytes())
    (folder / "labels.csv").write_text(
        f"path,label\n{first.relative_to(folder)},{cat.name}\ngone.png,{cat.name}\n"
    )
    for source in (folder, folder / "labels.csv"):
        images = _split(source)
        assert len(cache_key_reading(images, tmp_path / "cache")[0]) == 24
        decoded = decode_split(images, PREP, mode="disk", cache_dir=tmp_path / "cache", quiet=True)
        assert len(decoded.kept) == len(images) - (source.suffix == ".csv")  # gone.png skipped


def cache_key_reading(images: LabeledImages, cache: Path) -> tuple[str, int]:
    """(the cache key, how many files computing it read)."""
    from torchgraft.data import manifest

    reads: list[Path] = []
    real = manifest.content_digest
    manifest.content_digest = lambda path: reads.append(path) or real(path)  # type: ignore[assignment]
    try:
        return cache_module.cache_key(images, PREP, cache), len(reads)
    finally:
        manifest.content_digest = real


def test_a_training_run_too_large_for_memory_names_the_disk_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchgraft import api

    monkeypatch.setattr(cache_module, "available_memory", lambda: 100_000)  # 100 kB free
    with pytest.raises(
        UserError, match=r"decoding train: the 1438 decoded images need .*--cache disk"
    ):
        api.train("digits", model="mlp", epochs=1, runs_dir=str(tmp_path), quiet=True)
    assert not (tmp_path / "mlp-digits" / "model.safetensors").exists()
