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
    """A generated folder whose images are all distinct pictures (a clean folder), large
    enough for the default model's 224 px input (tiny is under a quarter of it)."""
    return make_image_folder(root, classes, per_class, size=64, split=split)


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
    assert within.splits == ["train", "train"] and within.spans == ["train"]
    # One split, one label: the image only weighs double, a note rather than a problem.
    assert not any("dog_002" in line for line in planted.problems())
    notes = planted.to_dict()["notes"]
    assert any(line.startswith("exact duplicates: train/dog/dog_002") for line in notes)


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
    report = audit(str(root), workers=0, quiet=True)  # reported, not refused: audit lists all
    assert report.missing == {"train": ["bird"]}
    assert report.counts["train"]["bird"] == 0 and report.counts["val"]["bird"] == 8
    assert any("bird" in line and "cannot be learned" in line for line in report.problems())


def test_a_clean_folder_is_clean(tmp_path: Path) -> None:
    for split in (False, True):
        root = make_pets_folder(tmp_path / f"data{split}", ("a", "b", "c"), split=split)
        report = audit(str(root), workers=0, quiet=True)
        assert report.problems() == [] and report.is_clean
        assert report.imbalance_ratio == 1 and set(report.class_weights.values()) == {1.0}
        assert report.modes == {"RGB": 24} and report.sizes["width"]["median"] == 64


def test_tiny_images_are_a_problem(tmp_path: Path) -> None:
    root = make_pets_folder(tmp_path / "data")
    Image.fromarray(class_image(0, 20, seed=99)).save(root / "cat" / "thumb.png")
    report = audit(str(root), workers=0, quiet=True)
    assert (report.model, report.image_size, report.min_size) == ("efficientnet_lite0", 224, 56)
    assert [(t.file, t.width, t.height) for t in report.tiny_images] == [("cat/thumb.png", 20, 20)]
    assert report.problems() == [
        "tiny images: cat/thumb.png (20x20, a side under 56 px for the 224 px input of "
        "efficientnet_lite0)"
    ]


def test_tiny_is_judged_against_the_models_input_size(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "digits", ("one", "two"), per_class=4, size=28)
    for_mlp = audit(str(root), workers=0, quiet=True, model="mlp")
    assert (for_mlp.image_size, for_mlp.min_size) == (28, 7)
    assert for_mlp.tiny_images == [] and for_mlp.is_clean
    for_backbone = audit(str(root), workers=0, quiet=True)
    assert len(for_backbone.tiny_images) == 8 and not for_backbone.is_clean
    at_56 = audit(str(root), workers=0, quiet=True, image_size=56)
    assert at_56.tiny_images == [] and at_56.is_clean  # 28 px upscaled twice is fine


def test_duplicates_in_an_automatic_split_are_a_problem_where_they_leak(tmp_path: Path) -> None:
    root = make_pets_folder(tmp_path / "data")
    shutil.copy(root / "cat/cat_001.png", root / "cat/again.png")
    outcomes = set()
    for seed in range(8):  # seeds that put the copies on one side, and on both
        report = audit(str(root), workers=0, quiet=True, seed=seed)
        assert report.automatic_split and list(report.counts) == ["all"]
        assert files_of(report, "exact_duplicates") == [{"cat/cat_001.png", "cat/again.png"}]
        (group,) = report.exact_duplicates
        (line,) = [
            line for line in report.to_dict()["notes"] + report.problems() if "again" in line
        ]
        assert line.startswith("exact duplicates") and "automatic train/val split" in line
        assert (line in report.problems()) == group.leaks and report.is_clean != group.leaks
        outcomes.add(group.leaks)
    assert outcomes == {True, False}


def noisy_copies(source: Path, folder: Path) -> list[str]:
    """Brightened, re-encoded and resized copies of one picture: near duplicates of it."""
    picture = np.asarray(Image.open(source), dtype=np.int16)
    brighter = Image.fromarray(np.clip(picture + 10, 0, 255).astype(np.uint8))
    brighter.save(folder / "brighter.png")
    Image.open(source).save(folder / "reencoded.jpg", quality=85)
    Image.open(source).resize((56, 56)).save(folder / "smaller.png")
    return [f"{folder.name}/{name}" for name in ("brighter.png", "reencoded.jpg", "smaller.png")]


def test_near_duplicates_are_reported_as_one_group(tmp_path: Path) -> None:
    root = make_pets_folder(tmp_path / "data")
    copies = noisy_copies(root / "dog/dog_003.png", root / "dog")
    report = audit(str(root), workers=0, quiet=True, seed=3)
    (group,) = report.near_duplicates  # four pictures: one group, not six pairs
    assert sorted(group.files) == sorted(["dog/dog_003.png", *copies])
    assert 0 <= group.distance <= report.max_distance
    assert set(group.spans) <= {"train", "val"} and len(group.splits) == 4
    lines = [line for line in report.findings() if line.category == "near duplicates"]
    assert len(lines) == 1 and all(name in lines[0].detail for name in copies)


def test_blank_images_are_a_finding_and_no_duplicates_of_each_other(tmp_path: Path) -> None:
    root = make_pets_folder(tmp_path / "data")
    rng = np.random.default_rng(0)
    for index, size in enumerate((5, 12, 40, 64, 200)):
        Image.new("L", (size, size), 30 * index).save(root / "cat" / f"blank_{index}.png")
    faint = np.clip(128 + rng.normal(0, 0.4, (64, 64, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(faint).save(root / "dog" / "faint.png")  # noise under a grey level
    Image.new("RGB", (64, 64), (200, 0, 0)).save(root / "dog" / "red.png")
    shutil.copy(root / "cat" / "blank_3.png", root / "dog" / "blank_copy.png")
    report = audit(str(root), workers=0, quiet=True)
    blank = {image.file for image in report.blank_images}
    assert blank == {
        *(f"cat/blank_{index}.png" for index in range(5)),
        "dog/faint.png", "dog/red.png", "dog/blank_copy.png",
    }  # fmt: skip
    assert all(image.spread < 1 for image in report.blank_images)
    assert report.near_duplicates == [] and report.exact_duplicates == []
    problems = [line for line in report.problems() if line.startswith("blank images")]
    assert len(problems) == 8 and "blank or constant" in problems[0]
    assert report.counts["all"]["cat"] == 13  # still readable, still counted


def test_a_lab_tiff_is_read_for_every_model(tmp_path: Path) -> None:
    root = make_pets_folder(tmp_path / "data")
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[..., 0] = 90
    pixels[16:48, 16:48] = (230, 30, 240)  # a light, blue-ish square (signed a*, b*)
    Image.frombytes("LAB", (64, 64), pixels.tobytes()).save(root / "cat" / "lab.tif")
    for model in ("mlp", "efficientnet_lite0"):
        report = audit(str(root), workers=0, quiet=True, model=model)
        assert report.unreadable == [] and report.modes["LAB"] == 1
        assert report.counts["all"]["cat"] == 9


def test_a_label_file_naming_a_missing_file_lists_it_as_unreadable(tmp_path: Path) -> None:
    make_pets_folder(tmp_path / "imgs")
    rows = [
        f"{path.relative_to(tmp_path).as_posix()},{path.parent.name}"
        for path in sorted((tmp_path / "imgs").rglob("*.png"))
    ]
    (tmp_path / "labels.csv").write_text("\n".join(["path,label", *rows, "imgs/dog/gone.png,dog"]))
    report = audit(str(tmp_path / "labels.csv"), workers=0, quiet=True)
    (entry,) = report.unreadable
    assert entry.file == "imgs/dog/gone.png" and entry.class_name == "dog"
    assert entry.reason.startswith("cannot open") and not report.is_clean


def test_bundled_mnist_is_audited_from_memory() -> None:
    report = audit("mnist5k", quiet=True)
    assert sum(report.counts["all"].values()) == 5000
    assert report.counts["all"]["7"] == 500 and not report.unreadable
    assert report.modes == {"L": 5000} and report.sizes["width"]["max"] == 28
    # Trained at 64 px by the default backbone (as `graft train mnist5k`): 28 px is fine.
    assert report.image_size == 64 and report.tiny_images == []
    # Hash collisions between different handwritten digits are confirmed away, not reported.
    assert report.near_duplicates == [] and report.exact_duplicates == []
    assert report.blank_images == [] and report.is_clean


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


def test_the_image_size_bound_is_trainings_own(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from torchgraft.config import DataConfig

    (field,) = (f for f in dataclasses.fields(DataConfig) if f.name == "image_size")
    monkeypatch.setattr(field, "metadata", {**field.metadata, "minimum": 16})
    with pytest.raises(UserError, match="image_size must be at least 16 pixels, got 12"):
        audit("mnist5k", workers=0, quiet=True, image_size=12)
