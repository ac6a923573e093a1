import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from torchgraft.config import config_from_dict, load_train_config, to_dict
from torchgraft.data import load_data, load_run_splits
from torchgraft.data.audit import audit
from torchgraft.data.exclude import apply_exclusions, read_exclusions
from torchgraft.data.sources import DataSplits, LabeledImages
from torchgraft.errors import UserError
from torchgraft.testing import make_image_folder


def names_in(splits: DataSplits, split: str) -> set[str]:
    """The split's files, named as doctor names them (relative to the data folder)."""
    root = Path(splits.source)
    return {Path(path).relative_to(root).as_posix() for path in getattr(splits, split).images}


def write_json(path: Path, report: dict[str, Any]) -> Path:
    path.write_text(json.dumps(report))
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """train/ and val/ folders: a/a_000.png and b/b_000.png in val, 3 per class in train."""
    return make_image_folder(tmp_path / "data", ("a", "b"), per_class=4, size=16, split=True)


def test_a_doctor_report_drops_the_unreadable_file_and_the_train_copy_of_a_leak(
    folder: Path, tmp_path: Path
) -> None:
    shutil.copy(folder / "val/a/a_000.png", folder / "train/a/copy.png")  # val leaks into train
    (folder / "train/b/broken.png").write_bytes(b"not a picture")
    report = audit(str(folder), workers=0, quiet=True).to_dict()
    issues = write_json(tmp_path / "issues.json", report)
    splits = apply_exclusions(load_data(str(folder)), issues)
    assert names_in(splits, "val") == {"val/a/a_000.png", "val/b/b_000.png"}  # val copy kept
    assert names_in(splits, "train") == {
        f"train/{c}/{c}_00{i}.png" for c in "ab" for i in (1, 2, 3)
    }
    assert splits.excluded == 2


def test_every_listed_kind_is_dropped_but_tiny_images_are_not(tmp_path: Path) -> None:
    report = {
        "unreadable": [{"file": "a/bad.png", "split": "train", "class_name": "a", "reason": "x"}],
        "blank_images": [{"file": "a/blank.png", "split": "train"}],
        "label_issues": [{"file": "b/cat.png", "given": "b", "suggested": "a", "confidence": 0.9}],
        "outliers": [{"file": "b/odd.png", "score": 3.2}],
        "tiny_images": [{"file": "a/small.png", "width": 4, "height": 4}],
        "exact_duplicates": [{"files": ["a/1.png", "a/2.png", "a/3.png"],
                              "splits": ["train"] * 3}],
        "near_duplicates": [{"files": ["b/1.png", "b/2.png"], "splits": ["train", "val"]}],
        "semantic_duplicates": [
            {"files": ["c/1.png", "c/2.png"], "splits": ["train", "train"], "similarity": 0.99},
            {"files": ["d/1.png", "d/2.png"], "splits": ["train", "val"], "similarity": 0.99},
        ],
    }  # fmt: skip
    dropped = read_exclusions(write_json(tmp_path / "issues.json", report))
    assert dropped == {
        "a/bad.png", "a/blank.png", "b/cat.png", "b/odd.png",
        "a/2.png", "a/3.png",  # one split: the first copy kept
        "b/1.png",  # across splits: the val copy kept
        "d/1.png",  # a semantic copy across splits: the val one kept
    }  # fmt: skip  # c/*: semantic copies within one split are left alone


@pytest.mark.parametrize(
    ("groups", "dropped"),
    [
        # The same pair in two orders: kept per group, each would drop the other's copy.
        ({"exact_duplicates": [["x.png", "y.png"]], "near_duplicates": [["y.png", "x.png"]]},
         {"y.png"}),
        # x = y exactly, and y looks like the test image z: x too is a copy of z.
        ({"exact_duplicates": [["x.png", "y.png"]], "semantic_duplicates": [["y.png", "z.png"]]},
         {"x.png", "y.png"}),
    ],
)  # fmt: skip
def test_groups_that_share_a_file_keep_one_copy_in_all(
    tmp_path: Path, groups: dict[str, list[list[str]]], dropped: set[str]
) -> None:
    split = {"x.png": "train", "y.png": "train", "z.png": "test"}
    report = {
        key: [{"files": files, "splits": [split[f] for f in files]} for files in lists]
        for key, lists in groups.items()
    }
    assert read_exclusions(write_json(tmp_path / "issues.json", report)) == dropped


def test_a_copy_dropped_for_another_reason_is_not_the_one_kept(tmp_path: Path) -> None:
    report = {
        "label_issues": [{"file": "val/b/1.png", "given": "b", "suggested": "a"}],
        "exact_duplicates": [{"files": ["train/a/1.png", "val/b/1.png"],
                              "splits": ["train", "val"]}],
    }  # fmt: skip
    dropped = read_exclusions(write_json(tmp_path / "issues.json", report))
    assert dropped == {"val/b/1.png"}  # the mislabelled val copy goes; the train copy stays


@pytest.mark.parametrize(
    "text",
    [
        "file,reason\ntrain/a/a_001.png,blurry\ntrain/b/b_001.png,blurry\n",
        "reason,Path\nblurry,train/a/a_001.png\nblurry,train/b/b_001.png\n",
        "train/a/a_001.png\ntrain/b/b_001.png\n",  # no header
        "name,reason\r\ntrain/a/a_001.png,x\r\n\r\ntrain/b/b_001.png,y\r\n",  # first column
        "\ufefffile\ntrain/a/a_001.png\ntrain/b/b_001.png\n",  # Excel's byte-order mark
    ],
)
def test_a_csv_names_its_files(folder: Path, tmp_path: Path, text: str) -> None:
    listed = tmp_path / "drop.csv"
    listed.write_text(text, encoding="utf-8")
    splits = apply_exclusions(load_data(str(folder)), listed)
    assert not {"train/a/a_001.png", "train/b/b_001.png"} & names_in(splits, "train")
    assert splits.excluded == 2 and len(splits.train) == 4


def test_absolute_names_match_and_absent_ones_are_one_warning(
    folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    listed = tmp_path / "drop.csv"
    gone = ["train/a/gone.png", "train/b/gone.png"]
    listed.write_text("\n".join([str(folder / "train/a/a_001.png"), "./val/b/b_000.png", *gone]))
    with caplog.at_level(logging.INFO, logger="torchgraft.data.exclude"):
        splits = apply_exclusions(load_data(str(folder)), listed)
    assert "train/a/a_001.png" not in names_in(splits, "train")
    assert names_in(splits, "val") == {"val/a/a_000.png"}
    assert "excluding 2 file(s) listed in" in caplog.text and "1 train, 1 val" in caplog.text
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "2 file(s) listed in" in warning and "not in the data" in warning
    assert "train/a/gone.png" in warning


def test_the_fingerprint_follows_the_exclusion(folder: Path, tmp_path: Path) -> None:
    whole = load_data(str(folder))
    listed = tmp_path / "drop.csv"
    listed.write_text("train/a/a_001.png\n")
    fewer = apply_exclusions(whole, listed)
    listed.write_text("train/a/a_002.png\n")
    other = apply_exclusions(whole, listed)
    assert len({whole.fingerprint(), fewer.fingerprint(), other.fingerprint()}) == 3


def test_the_config_keeps_an_absolute_path_that_a_resume_elsewhere_finds(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "drop.csv").write_text("file\ntrain/a/a_001.png\n")
    monkeypatch.chdir(tmp_path)
    config = load_train_config(overrides={"data.source": str(folder), "data.exclude": "drop.csv"})
    assert config.data.exclude == str(tmp_path / "drop.csv")
    monkeypatch.chdir(folder)  # as `graft train --resume` run from another directory
    splits = load_run_splits(config_from_dict(to_dict(config)))
    assert "train/a/a_001.png" not in names_in(splits, "train") and splits.excluded == 1
    assert (
        load_run_splits(load_train_config(overrides={"data.source": str(folder)})).excluded is None
    )


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.json", None, "no such file; write one with `graft doctor DATA --json"),
        ("issues.txt", "a.png\n", r"expected a doctor report \(\.json\) or a CSV \(\.csv\)"),
        ("issues.json", "", "the file is empty"),
        ("issues.json", "{'unreadable': []", "not valid JSON"),
        ("issues.json", '["a.png"]', "not a graft doctor report"),
        ("issues.json", '{"source": "data"}', "not a graft doctor report"),
        ("issues.json", '{"unreadable": [{"path": "a.png"}]}', r"unreadable\[0\] names no 'file'"),
        ("issues.json", '{"near_duplicates": [{"files": "a.png"}]}', "has no list of 'files'"),
        ("drop.csv", "file,reason\n,blurry\n", "names no files"),
        ("drop.csv", b"caf\xe9.png\n", "not UTF-8 text"),
    ],
)
def test_a_bad_list_is_a_user_error_naming_it(
    tmp_path: Path, name: str, content: str | bytes | None, message: str
) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=message) as error:
        read_exclusions(path)
    assert str(path) in str(error.value)


def test_a_clean_report_leaves_the_data_as_it_is(folder: Path, tmp_path: Path) -> None:
    report = audit(str(folder), workers=0, quiet=True).to_dict()
    splits = apply_exclusions(load_data(str(folder)), write_json(tmp_path / "ok.json", report))
    assert len(splits.train) == 6 and len(splits.val) == 2 and splits.excluded == 0


def test_excluding_every_val_image_is_refused(folder: Path, tmp_path: Path) -> None:
    listed = tmp_path / "drop.csv"
    listed.write_text("val/a/a_000.png\nval/b/b_000.png\n")
    with pytest.raises(UserError, match="leaves no images in the val split"):
        apply_exclusions(load_data(str(folder)), listed)


def test_bundled_sets_have_no_files_to_exclude(tmp_path: Path) -> None:
    listed = tmp_path / "drop.csv"
    listed.write_text("a.png\n")
    images = LabeledImages(np.zeros((2, 8, 8), np.uint8), np.array([0, 1]))
    digits = DataSplits("digits", ["0", "1"], images, images, channels=1)  # as load_data's
    with pytest.raises(UserError, match="digits is a bundled set of in-memory images"):
        apply_exclusions(digits, listed)


def test_a_name_that_is_not_utf8_matches_as_doctor_writes_it(folder: Path, tmp_path: Path) -> None:
    latin = folder / "train" / "a" / os.fsdecode(b"caf\xe9.png")  # Latin-1, as old cameras
    shutil.copy(folder / "train/a/a_001.png", latin)
    report = {"unreadable": [{"file": "train/a/caf\\xe9.png", "split": "train"}]}
    splits = apply_exclusions(load_data(str(folder)), write_json(tmp_path / "issues.json", report))
    assert latin not in splits.train.images and splits.excluded == 1
