import csv
import json
import os
import shutil
from pathlib import Path

import pytest

from torchgraft import api
from torchgraft.data import load_data
from torchgraft.data.label_fix import write_fixed_labels
from torchgraft.data.sources import DataSplits
from torchgraft.errors import UserError
from torchgraft.testing import file_hashes, make_image_folder


def resolved(splits: DataSplits, split: str) -> list[tuple[str, str]]:
    """(resolved file, class) of each image of a split, in order: what training gets."""
    images = getattr(splits, split)
    return [
        (os.path.realpath(path), splits.class_names[label])
        for path, label in zip(images.images, images.labels, strict=True)
    ]


def rows_of(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Class folders a, b, c of 5 images each: an automatic split."""
    return make_image_folder(tmp_path / "data", ("a", "b", "c"), per_class=5, size=16)


def test_paths_are_relative_to_the_csv_and_the_corrections_replace_the_labels(
    folder: Path, tmp_path: Path
) -> None:
    before = file_hashes(folder)
    splits = load_data(str(folder))
    target = tmp_path / "out" / "fixed.csv"
    fixed = write_fixed_labels(splits, {"a/a_001.png": "b", "c/c_004.png": "a"}, target)
    assert (fixed.images, fixed.corrected, fixed.split_column) == (15, 2, True)
    rows = rows_of(target)
    assert rows[0] == {"path": "../data/a/a_000.png", "label": "a", "split": "train"}
    labels = {row["path"]: row["label"] for row in rows}
    assert labels["../data/a/a_001.png"] == "b" and labels["../data/c/c_004.png"] == "a"
    again = load_data(str(target))
    trained = dict(resolved(again, "train") + resolved(again, "val"))
    assert trained[os.path.realpath(folder / "a/a_001.png")] == "b"
    assert sum(label == "b" for label in trained.values()) == 6
    assert file_hashes(folder) == before  # nothing moved, renamed or deleted


def test_an_automatic_split_is_written_so_training_keeps_the_same_val_images(
    folder: Path, tmp_path: Path
) -> None:
    splits = load_data(str(folder), val_fraction=0.4, seed=3)
    target = tmp_path / "fixed.csv"
    write_fixed_labels(splits, {"a/a_001.png": "b", "b/b_002.png": "c"}, target)
    again = load_data(str(target), val_fraction=0.4, seed=3)
    for split in ("train", "val"):
        assert [name for name, _ in resolved(again, split)] == [
            name for name, _ in resolved(splits, split)
        ]
    # Why the column: the same rows without it draw other val images from the new labels.
    without = tmp_path / "no-split.csv"
    lines = target.read_text().splitlines()
    without.write_text("".join(line.rsplit(",", 1)[0] + "\n" for line in lines))
    drawn = load_data(str(without), val_fraction=0.4, seed=3)
    assert {n for n, _ in resolved(drawn, "val")} != {n for n, _ in resolved(splits, "val")}


def test_split_folders_keep_their_splits_and_no_val_means_no_split_column(
    tmp_path: Path,
) -> None:
    split_data = make_image_folder(tmp_path / "split", ("a", "b"), per_class=4, split=True)
    write_fixed_labels(load_data(str(split_data)), {"val/a/a_000.png": "b"}, tmp_path / "s.csv")
    rows = {row["path"]: (row["label"], row["split"]) for row in rows_of(tmp_path / "s.csv")}
    assert rows["split/val/a/a_000.png"] == ("b", "val")
    assert rows["split/train/a/a_001.png"] == ("a", "train")
    assert [split for _, split in rows.values()].count("val") == 2
    classes = make_image_folder(tmp_path / "classes", ("a", "b"), per_class=4)
    fixed = write_fixed_labels(load_data(str(classes), val_fraction=0.0), {}, tmp_path / "n.csv")
    assert not fixed.split_column
    assert (tmp_path / "n.csv").read_text().splitlines()[0] == "path,label"


def test_a_label_file_with_a_split_column_keeps_it_and_json_lines_become_csv(
    folder: Path, tmp_path: Path
) -> None:
    names = sorted(path.relative_to(tmp_path).as_posix() for path in folder.rglob("*.png"))
    lines = [
        json.dumps({"path": name, "label": Path(name).parent.name, "split": split})
        for name, split in zip(names, ["val", "train", "train"] * 5, strict=True)
    ]
    (tmp_path / "labels.jsonl").write_text("\n".join(lines))
    splits = load_data(str(tmp_path / "labels.jsonl"))
    target = tmp_path / "sub" / "fixed.csv"
    fixed = write_fixed_labels(splits, {"data/b/b_000.png": "a"}, target)
    assert fixed.corrected == 1
    again = load_data(str(target))
    for split in ("train", "val"):
        expected = [
            (name, "a" if name.endswith("b_000.png") else label)
            for name, label in resolved(splits, split)
        ]
        assert resolved(again, split) == expected


def test_odd_file_names_round_trip_through_the_csv_reader(folder: Path, tmp_path: Path) -> None:
    odd = ["café, noir.png", 'say "cheese".png', "two\nlines.png", "return\r.png", " space.png"]
    for name in odd:
        shutil.copy(folder / "a/a_000.png", folder / "b" / name)
    splits = load_data(str(folder))
    target = tmp_path / "fixed.csv"
    write_fixed_labels(splits, {"b/café, noir.png": "c"}, target)
    again = load_data(str(target))
    assert sorted(resolved(again, "train") + resolved(again, "val")) == sorted(
        (name, "c" if name.endswith("café, noir.png") else label)
        for name, label in resolved(splits, "train") + resolved(splits, "val")
    )


def test_a_csv_folder_under_a_symlink_still_reaches_the_images(
    folder: Path, tmp_path: Path
) -> None:
    (tmp_path / "elsewhere" / "deep").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere" / "deep")
    splits = load_data(str(folder))
    target = tmp_path / "link" / "fixed.csv"  # "../data" from here is elsewhere/data
    write_fixed_labels(splits, {}, target)
    again = load_data(str(target))
    assert resolved(again, "train") == resolved(splits, "train")
    assert all(Path(path).is_file() for path in again.train.images)


def test_an_existing_file_is_never_overwritten(folder: Path, tmp_path: Path) -> None:
    target = tmp_path / "fixed.csv"
    target.write_text("mine\n")
    (tmp_path / "fixed-2.csv").write_text("mine too\n")
    with pytest.raises(UserError, match=r"fixed\.csv: the file exists.*--fix .*fixed-3\.csv"):
        write_fixed_labels(load_data(str(folder)), {}, target)
    assert target.read_text() == "mine\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data", "fixed-2.csv", "fixed.csv"]


@pytest.mark.parametrize(
    ("name", "message"),
    [("fixed.txt", "name ending in .csv"), ("fixed.csv", "bundled set of in-memory images")],
)
def test_a_bundled_set_or_a_name_that_is_not_csv_is_refused(
    tmp_path: Path, name: str, message: str
) -> None:
    with pytest.raises(UserError, match=message):
        write_fixed_labels(load_data("digits"), {}, tmp_path / name)
    assert not (tmp_path / name).exists()


def test_a_name_that_is_not_utf8_is_refused_before_writing(folder: Path, tmp_path: Path) -> None:
    shutil.copy(folder / "a/a_000.png", folder / "a" / os.fsdecode(b"caf\xe9.png"))
    with pytest.raises(UserError, match=r"1 file name\(s\) are not UTF-8 .*a/caf\\xe9\.png"):
        write_fixed_labels(load_data(str(folder)), {}, tmp_path / "fixed.csv")
    assert not (tmp_path / "fixed.csv").exists()


def test_a_correction_of_a_file_not_in_the_data_is_refused(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"1 corrected file\(s\) are not in .*e\.g\. a/nope\.png"):
        write_fixed_labels(load_data(str(folder)), {"a/nope.png": "b"}, tmp_path / "fixed.csv")
    assert not (tmp_path / "fixed.csv").exists()


def test_doctor_refuses_fix_without_deep_before_auditing(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"--fix .*fixed\.csv needs --deep"):
        api.doctor(folder, fix=tmp_path / "fixed.csv", quiet=True)
    (tmp_path / "fixed.csv").write_text("mine\n")
    with pytest.raises(UserError, match="the file exists"):
        api.doctor(folder, deep=True, fix=tmp_path / "fixed.csv", quiet=True)
