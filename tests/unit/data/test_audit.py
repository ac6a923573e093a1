import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from torchgraft.data.audit import AuditReport, audit
from torchgraft.errors import UserError
from torchgraft.testing import (
    BAD_KINDS,
    ODD_KINDS,
    class_image,
    make_image_folder,
    make_messy_folder,
)


def make_pets_folder(
    root: Path, classes: Sequence[str] = ("cat", "dog"), per_class: int = 8, split: bool = False
) -> Path:
    """A generated folder whose images are all distinct pictures (a clean folder)."""
    return make_image_folder(root, classes, per_class, size=48, split=split)


def files_of(report: AuditReport, kind: str) -> list[set[str]]:
    return [set(copies.files) for copies in getattr(report, kind)]


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path], AuditReport]:
    root = tmp_path_factory.mktemp("messy") / "data"
    files = make_messy_folder(root)
    return root, files, audit(str(root), workers=2, quiet=True)


def test_every_bad_file_is_unreadable_with_a_reason(messy) -> None:  # type: ignore[no-untyped-def]
    root, files, report = messy
    reasons = {entry.file: entry.reason for entry in report.unreadable}
    assert set(reasons) == {files[kind].relative_to(root).as_posix() for kind in BAD_KINDS}
    assert all(reasons.values())
    name = {kind: files[kind].relative_to(root).as_posix() for kind in BAD_KINDS}
    assert reasons[name["empty_jpg"]] == "empty file (0 bytes)"
    assert reasons[name["text_as_jpg"]].startswith("not an image")
    assert reasons[name["html_as_png"]].startswith("not an image")
    assert reasons[name["decompression_bomb"]].startswith("decompression bomb")
    assert reasons[name["truncated_png"]].startswith("truncated or corrupt")
    for kind in BAD_KINDS:
        assert any(name[kind] in line for line in report.problems())


def test_odd_but_valid_files_are_read(messy) -> None:  # type: ignore[no-untyped-def]
    root, files, report = messy
    unreadable = {entry.file for entry in report.unreadable}
    assert not unreadable & {files[kind].relative_to(root).as_posix() for kind in ODD_KINDS}
    assert report.counts == {"all": {"circle": 10 + len(ODD_KINDS), "square": 10}}
    assert {"RGB", "CMYK", "I;16", "P", "RGBA", "L", "LA"} <= set(report.modes)
    assert not report.is_clean


def test_in_process_and_worker_processes_agree(messy) -> None:  # type: ignore[no-untyped-def]
    root, _, report = messy
    assert audit(str(root), workers=0, quiet=True).to_dict() == report.to_dict()


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> AuditReport:
    """Split folders with an exact leak, a near leak, a duplicate in train and imbalance."""
    root = make_pets_folder(tmp_path_factory.mktemp("planted") / "data", split=True)
    shutil.copy(root / "train/cat/cat_005.png", root / "val/cat/leaked.png")
    brighter = np.asarray(Image.open(root / "train/dog/dog_006.png"), dtype=np.int16) + 8
    Image.fromarray(np.clip(brighter, 0, 255).astype(np.uint8)).save(
        root / "val/dog/dog_006_edited.jpg", quality=90
    )
    shutil.copy(root / "train/dog/dog_002.png", root / "train/dog/dog_002 copy.png")
    for index in range(100, 124):  # cat: 6 + 24 = 30 training images, dog: 6 + 1 copy = 7
        Image.fromarray(class_image(0, 48, seed=index)).save(root / f"train/cat/extra_{index}.png")
    return audit(str(root), workers=2, quiet=True)


def test_counts_per_class_and_split(planted: AuditReport) -> None:
    assert planted.counts == {"train": {"cat": 30, "dog": 7}, "val": {"cat": 3, "dog": 3}}
    assert not planted.automatic_split and not planted.unreadable


def test_exact_copies_across_splits_are_leakage(planted: AuditReport) -> None:
    leak = next(group for group in planted.exact_duplicates if group.leaks)
    assert set(leak.files) == {"train/cat/cat_005.png", "val/cat/leaked.png"}
    assert set(leak.splits) == {"train", "val"}
    lines = [line for line in planted.problems() if line.startswith("leakage")]
    assert any("train/cat/cat_005.png" in line and "val/cat/leaked.png" in line for line in lines)


def test_exact_copies_within_a_split_are_duplicates(planted: AuditReport) -> None:
    assert sorted(map(sorted, files_of(planted, "exact_duplicates"))) == [
        ["train/cat/cat_005.png", "val/cat/leaked.png"],
        ["train/dog/dog_002 copy.png", "train/dog/dog_002.png"],
    ]
    within = next(group for group in planted.exact_duplicates if not group.leaks)
    assert within.splits == ["train", "train"]
    assert any(line.startswith("exact duplicates: train/dog/") for line in planted.problems())


def test_an_edited_copy_across_splits_is_a_near_leak(planted: AuditReport) -> None:
    # Only the brightened, re-encoded copy: not the exact copies, not the other pictures.
    assert files_of(planted, "near_duplicates") == [
        {"train/dog/dog_006.png", "val/dog/dog_006_edited.jpg"}
    ]
    (pair,) = planted.near_duplicates
    assert pair.leaks and pair.distance <= planted.max_distance
    assert any("dog_006_edited.jpg" in line for line in planted.problems() if "leakage" in line)


def test_imbalance_suggests_weights_favouring_the_small_class(planted: AuditReport) -> None:
    assert planted.imbalance_ratio == pytest.approx(30 / 7)
    weights = planted.class_weights
    assert weights["dog"] > 1 > weights["cat"]
    assert weights == {"cat": round(2 * 7 / 37, 3), "dog": round(2 * 30 / 37, 3)}
    line = next(line for line in planted.problems() if line.startswith("imbalance"))
    assert "cat" in line and "dog" in line and str(weights["dog"]) in line


def test_json_report_is_plain_data(planted: AuditReport) -> None:
    data = json.loads(json.dumps(planted.to_dict()))
    assert data["is_clean"] is False and data["problems"] == planted.problems()
    assert sum(group["leaks"] for group in data["exact_duplicates"]) == 1


def test_a_class_in_one_split_only_is_missing_from_the_other(tmp_path: Path) -> None:
    root = make_pets_folder(tmp_path / "data", split=True)
    shutil.copytree(make_pets_folder(tmp_path / "birds", ("bird",)) / "bird", root / "train/bird")
    report = audit(str(root), workers=0, quiet=True)
    assert report.missing == {"val": ["bird"]}
    assert report.counts["train"]["bird"] == 8 and report.counts["val"]["bird"] == 0
    line = next(line for line in report.problems() if line.startswith("missing classes"))
    assert "bird" in line and "val" in line


def test_a_class_only_in_val_is_missing_from_train(tmp_path: Path) -> None:
    root = make_pets_folder(tmp_path / "data", split=True)
    shutil.copytree(make_pets_folder(tmp_path / "birds", ("bird",)) / "bird", root / "val/bird")
    try:
        report = audit(str(root), workers=0, quiet=True)
    except UserError as error:  # sources that refuse a class missing from train say so
        assert "bird" in str(error)
        return
    assert report.missing == {"train": ["bird"]}
    assert any("bird" in line and "cannot be learned" in line for line in report.problems())


def test_a_clean_folder_is_clean(tmp_path: Path) -> None:
    for split in (False, True):
        root = make_pets_folder(tmp_path / f"data{split}", ("a", "b", "c"), split=split)
        report = audit(str(root), workers=0, quiet=True)
        assert report.problems() == [] and report.is_clean
        assert report.imbalance_ratio == 1 and set(report.class_weights.values()) == {1.0}
        assert report.modes == {"RGB": 24} and report.sizes["width"]["median"] == 48


def test_tiny_images_are_a_problem(tmp_path: Path) -> None:
    root = make_pets_folder(tmp_path / "data")
    Image.fromarray(class_image(0, 20, seed=99)).save(root / "cat" / "thumb.png")
    report = audit(str(root), workers=0, quiet=True)
    assert [(t.file, t.width, t.height) for t in report.tiny_images] == [("cat/thumb.png", 20, 20)]
    assert report.problems() == ["tiny images: cat/thumb.png (20x20, a side under 32 px)"]


def test_duplicates_in_an_automatic_split_are_said_to_leak(tmp_path: Path) -> None:
    root = make_pets_folder(tmp_path / "data")
    shutil.copy(root / "cat/cat_001.png", root / "cat/again.png")
    report = audit(str(root), workers=0, quiet=True)
    assert report.automatic_split and list(report.counts) == ["all"]
    assert files_of(report, "exact_duplicates") == [{"cat/cat_001.png", "cat/again.png"}]
    (line,) = report.problems()
    assert line.startswith("exact duplicates") and "automatic train/val split" in line


def test_bundled_mnist_is_audited_from_memory() -> None:
    report = audit("mnist5k", quiet=True)
    assert sum(report.counts["all"].values()) == 5000
    assert report.counts["all"]["7"] == 500 and not report.unreadable
    assert report.modes == {"L": 5000} and report.sizes["width"]["max"] == 28
    assert len(report.tiny_images) == 5000  # 28 px digits are under the 32 px default
    # Hash collisions between different handwritten digits are confirmed away, not reported.
    assert report.near_duplicates == [] and report.exact_duplicates == []


@pytest.mark.parametrize(
    ("source", "settings", "message"),
    [
        ("/no/such/folder", {}, "no such data folder"),
        ("mnist5k", {"workers": -1}, "workers"),
        ("mnist5k", {"val_fraction": 1.5}, "val_fraction"),
    ],
)
def test_bad_input_is_a_user_error(source: str, settings: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        audit(source, quiet=True, **settings)
