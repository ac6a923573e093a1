"""`graft doctor` end to end, in subprocesses, as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.unit.data.test_audit import make_pets_folder
from torchgraft.testing import BAD_KINDS, ODD_KINDS, make_messy_folder


def doctor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "torchgraft", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"},
    )


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
