"""The frozen-backbone feature cache: reused when nothing changed, rebuilt when anything did.

Every run here is a pretrained efficientnet_lite0 on 24 generated 32 px images with one
head epoch (freeze_epochs=1) and no fine-tuning, so each costs a second or two on a CPU.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from torchgraft import api
from torchgraft.artifact import load_tensors
from torchgraft.data import decode_split, load_data, make_loader, split_datasets
from torchgraft.models import create_classifier
from torchgraft.models.bundled import efficientnet_lite0_weights
from torchgraft.testing import make_image_folder
from torchgraft.train import features


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "data", per_class=8, size=32)


@pytest.fixture
def settings(tmp_path: Path) -> dict[str, Any]:
    return dict(
        model="efficientnet_lite0", image_size=32, freeze_epochs=1, epochs=0,
        runs_dir=str(tmp_path / "runs"), cache_dir=str(tmp_path / "cache"),
        quiet=True, tensorboard=False,
    )  # fmt: skip


def cache_entries(tmp_path: Path) -> set[str]:
    folder = tmp_path / "cache" / "features"
    return {path.name for path in folder.iterdir()} if folder.is_dir() else set()


@pytest.fixture
def backbone_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the times the backbone computes features (one call per split)."""
    calls: list[int] = []
    original = features.compute_features

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(features, "compute_features", counting)
    return calls


def test_first_run_fills_the_cache_and_an_identical_run_reuses_it(
    tmp_path: Path, data: Path, settings: dict[str, Any], backbone_calls: list[int],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    api.train(data, **settings)
    first = cache_entries(tmp_path)
    assert len(first) == 2  # one entry for the train split, one for the val split
    assert len(backbone_calls) == 2

    backbone_calls.clear()
    caplog.set_level(logging.INFO, logger="torchgraft")
    api.train(data, **settings)
    assert cache_entries(tmp_path) == first
    assert backbone_calls == []  # the backbone never ran
    hits = [r.getMessage() for r in caplog.records if "feature cache hit" in r.getMessage()]
    assert len(hits) == 2


def test_a_larger_image_size_makes_new_entries(
    tmp_path: Path, data: Path, settings: dict[str, Any], backbone_calls: list[int]
) -> None:
    api.train(data, **settings)
    before = cache_entries(tmp_path)
    backbone_calls.clear()
    api.train(data, **{**settings, "image_size": 40})
    after = cache_entries(tmp_path)
    assert before < after and len(after - before) == 2
    assert len(backbone_calls) == 2


def test_changed_backbone_weights_make_new_entries(
    tmp_path: Path, data: Path, settings: dict[str, Any], backbone_calls: list[int]
) -> None:
    weights = {k: v.contiguous() for k, v in efficientnet_lite0_weights().items()}
    same_file = tmp_path / "same.safetensors"
    save_file(weights, str(same_file))
    weights["conv_stem.weight"] = weights["conv_stem.weight"] + 0.01
    changed_file = tmp_path / "changed.safetensors"
    save_file(weights, str(changed_file))

    api.train(data, **settings)
    before = cache_entries(tmp_path)
    # The key follows the weights' contents, not where they came from: the bundled weights
    # saved to a file are the same backbone and hit the same entries.
    api.train(data, **settings, weights=str(same_file))
    assert cache_entries(tmp_path) == before
    backbone_calls.clear()
    api.train(data, **settings, weights=str(changed_file))
    after = cache_entries(tmp_path)
    assert before < after and len(after - before) == 2
    assert len(backbone_calls) == 2


def test_a_changed_image_file_makes_a_new_entry(
    tmp_path: Path, data: Path, settings: dict[str, Any]
) -> None:
    api.train(data, **settings)
    before = cache_entries(tmp_path)
    train_files = load_data(str(data)).train.images
    victim = Path(train_files[0])
    other_class = next(Path(p) for p in train_files if Path(p).parent != victim.parent)
    victim.write_bytes(other_class.read_bytes())
    api.train(data, **settings)
    after = cache_entries(tmp_path)
    assert before < after
    assert len(after - before) == 1  # only the train split changed; val is reused


def test_feature_cache_off_writes_nothing(
    tmp_path: Path, data: Path, settings: dict[str, Any]
) -> None:
    run = api.train(data, **settings, feature_cache=False)
    assert cache_entries(tmp_path) == set()
    assert run.info.metrics["epoch"] == 1


def test_cached_features_equal_freshly_computed_ones(
    tmp_path: Path, data: Path, settings: dict[str, Any]
) -> None:
    """Oracle: the backbone run by hand on the same images gives exactly the stored tensors."""
    run = api.train(data, **settings)
    prep = run.info.preprocessing
    splits = load_data(str(data))
    model = create_classifier(
        "efficientnet_lite0", 3, channels=prep.channels, image_size=prep.image_size,
        mean=prep.mean, std=prep.std, pretrained=True,
    )  # fmt: skip
    model.to(memory_format=torch.channels_last)  # as training runs it (channels-last default)
    digest = features.backbone_digest(model)
    for split in (splits.train, splits.val):
        decoded = decode_split(split, prep, quiet=True)
        images, _ = split_datasets(split, decoded, prep, "none")
        key = features.feature_key(
            "efficientnet_lite0", digest, prep, decoded.key, split.labels[decoded.kept]
        )
        stored = load_tensors(tmp_path / "cache" / "features" / f"{key}.safetensors")
        loader = make_loader(images, 128, False, 0)
        fresh = features.compute_features(model, loader, torch.device("cpu"), quiet=True)
        assert torch.equal(stored["features"], fresh.tensors[0])
        assert torch.equal(stored["labels"], fresh.tensors[1])
        assert torch.equal(stored["labels"], torch.as_tensor(split.labels[decoded.kept]))


def test_augmented_views_are_cached_per_view_and_reused(
    tmp_path: Path, data: Path, settings: dict[str, Any], backbone_calls: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from torchgraft.train import recipe

    seen: list[int] = []
    original = recipe.frozen_features

    def recording(*args: Any, **kwargs: Any) -> Any:
        train, val = original(*args, **kwargs)
        seen.append(len(train))
        return train, val

    monkeypatch.setattr(recipe, "frozen_features", recording)
    views = dict(settings, augment="light", feature_views=3)
    api.train(data, **views)
    assert len(cache_entries(tmp_path)) == 4  # val, plain train, two augmented train views
    assert len(backbone_calls) == 4
    train_images = 24 - 6  # 3 classes x 8 images, a quarter held out for validation
    assert seen == [3 * train_images]

    backbone_calls.clear()
    api.train(data, **views)
    assert backbone_calls == []  # every view came from the cache
    assert len(cache_entries(tmp_path)) == 4


def write_labels(csv: Path, data: Path, relabel: dict[str, str]) -> None:
    """A label file over the class folders' images, each labelled by its folder's name, or by
    `relabel` of it; a fixed split (the first two images of each class are val)."""
    rows = ["path,label,split"]
    for image in sorted(data.glob("*/*.png")):
        split = "val" if int(image.stem.split("_")[-1]) < 2 else "train"
        label = relabel.get(image.parent.name, image.parent.name)
        rows.append(f"{image.relative_to(csv.parent)},{label},{split}")
    csv.write_text("\n".join(rows) + "\n")


def test_a_relabelled_dataset_trains_the_head_on_the_new_labels(
    tmp_path: Path, data: Path, settings: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same files in the same splits, two classes' labels swapped: the features may be the
    same, but the head must learn the new labels, not the ones stored with the old entry."""
    from torchgraft.train import recipe

    targets: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = recipe.frozen_features

    def recording(*args: Any, **kwargs: Any) -> Any:
        train, val = original(*args, **kwargs)
        targets.append((train.tensors[1], val.tensors[1]))
        return train, val

    monkeypatch.setattr(recipe, "frozen_features", recording)
    first, second = sorted(path.name for path in data.iterdir())[:2]
    csv = tmp_path / "labels.csv"
    for relabel in ({}, {first: second, second: first}):
        write_labels(csv, data, relabel)
        api.train(csv, **settings)
        splits = load_data(str(csv))
        assert torch.equal(targets[-1][0], torch.as_tensor(splits.train.labels))
        assert torch.equal(targets[-1][1], torch.as_tensor(splits.val.labels))
    assert not torch.equal(targets[0][0], targets[1][0])  # the labels did change
    assert len(cache_entries(tmp_path)) == 4  # and got entries of their own


def test_damaged_feature_entries_are_recomputed_with_one_warning_each(
    tmp_path: Path, data: Path, settings: dict[str, Any], backbone_calls: list[int],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """One entry truncated, the other with a flipped byte that only the checksum can tell."""
    api.train(data, **settings)
    entries = [tmp_path / "cache" / "features" / name for name in sorted(cache_entries(tmp_path))]
    originals = [entry.read_bytes() for entry in entries]
    stored = [load_tensors(entry) for entry in entries]
    entries[0].write_bytes(originals[0][: len(originals[0]) // 2])
    flipped = bytearray(originals[1])
    flipped[-5] ^= 0xFF  # inside the last tensor's bytes
    entries[1].write_bytes(bytes(flipped))

    backbone_calls.clear()
    run = api.train(data, **settings)
    assert run.info.metrics["epoch"] == 1
    warnings = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(warnings) == 2  # one per damaged entry, each named
    assert all(any(entry.name in warning for warning in warnings) for entry in entries)
    assert len(backbone_calls) == 2
    for entry, before in zip(entries, stored, strict=True):  # rebuilt whole, and verified
        after = load_tensors(entry)
        torch.testing.assert_close(after["features"], before["features"], rtol=1e-4, atol=1e-5)
        assert torch.equal(after["labels"], before["labels"])
        assert features.read_entry(entry, before["labels"].numpy()) is not None
