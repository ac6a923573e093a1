"""Training on a folder full of broken and odd files: nothing crashes, nothing is lost."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

from tests.e2e.runner import graft
from torchgraft.testing import BAD_KINDS, ODD_KINDS, make_image_folder, make_messy_folder


def test_train_skips_exactly_the_bad_files_and_uses_the_odd_ones(tmp_path: Path) -> None:
    files = make_messy_folder(tmp_path / "messy")
    total = sum(1 for p in (tmp_path / "messy").rglob("*") if p.is_file())
    result = graft(
        "train", str(tmp_path / "messy"), "--model", "cnn", "--epochs", "2", "--image-size", "32",
        "--name", "messy", "--quiet", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    run = tmp_path / "runs" / "messy"
    with (run / "skipped.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert {Path(row["path"]) for row in rows} == {files[kind] for kind in BAD_KINDS}
    assert all(row["reason"] for row in rows)
    summary = json.loads((run / "graft.json").read_text())["data_summary"]
    assert summary["train_images"] + summary["val_images"] == total - len(BAD_KINDS)
    assert summary["skipped"] == len(BAD_KINDS) and len(ODD_KINDS) >= 12
    assert f"{len(BAD_KINDS)} unreadable files skipped" in result.stderr


def excel_labels(folder: Path, extra_rows: list[str]) -> Path:
    """labels.csv as Excel saves it (a UTF-8 byte-order mark, CRLF) over generated images."""
    make_image_folder(folder / "imgs", classes=("a", "b"), per_class=6, size=16)
    rows = ["path,label,split"]
    for index, path in enumerate(sorted((folder / "imgs").rglob("*.png"))):
        rows.append(f"{path.relative_to(folder).as_posix()},{path.parent.name},"
                    f"{'val' if index % 3 == 0 else 'train'}")  # fmt: skip
    labels = folder / "labels.csv"
    labels.write_text("\r\n".join([*rows, *extra_rows]) + "\r\n", encoding="utf-8-sig")
    return labels


def test_an_excel_csv_trains_and_its_missing_file_is_skipped(tmp_path: Path) -> None:
    labels = excel_labels(tmp_path, ["imgs/b/gone.png,b,train"])
    result = graft(
        "train", str(labels), "--model", "mlp", "--epochs", "1", "--image-size", "16",
        "--name", "excel", "--no-report", "--no-tensorboard", "--quiet", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    run = tmp_path / "runs" / "excel"
    info = json.loads((run / "graft.json").read_text())
    assert info["class_names"] == ["a", "b"]
    assert info["data_summary"]["train_images"] == 8 and info["data_summary"]["val_images"] == 4
    with (run / "skipped.csv").open() as file:
        (row,) = csv.DictReader(file)
    assert row["path"].endswith("gone.png") and row["reason"].startswith("cannot open")


def test_an_empty_split_cell_stops_training_with_its_row_number(tmp_path: Path) -> None:
    labels = excel_labels(tmp_path, ["imgs/a/a_000.png,a,"])  # line 14, after 12 images
    result = graft("train", str(labels), "--model", "mlp", "--quiet", cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "labels.csv, row 14: empty 'split'" in line and "train, val or test" in line
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_file_names_that_are_not_utf8_train_and_are_listed_readably(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "data", classes=("a", "b"), per_class=6, size=16)
    good = tmp_path / "data" / "a" / os.fsdecode(b"caf\xe9.png")  # Latin-1, as old cameras
    shutil.copy(tmp_path / "data" / "a" / "a_000.png", good)
    (tmp_path / "data" / "b" / os.fsdecode(b"bad\xff.jpg")).write_bytes(b"not a picture")
    result = graft(
        "train", str(tmp_path / "data"), "--model", "mlp", "--epochs", "1", "--image-size", "16",
        "--name", "latin", "--no-report", "--no-tensorboard", "--quiet", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    run = tmp_path / "runs" / "latin"
    summary = json.loads((run / "graft.json").read_text())["data_summary"]
    assert summary["train_images"] + summary["val_images"] == 13 and summary["skipped"] == 1
    with (run / "skipped.csv").open(encoding="utf-8") as file:
        (row,) = csv.DictReader(file)
    assert row["path"].endswith("b/bad\\xff.jpg") and row["reason"].startswith("not an image")
