"""Training on a folder full of broken and odd files: nothing crashes, nothing is lost."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from tests.e2e.runner import graft
from torchgraft.testing import BAD_KINDS, ODD_KINDS, make_messy_folder


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
