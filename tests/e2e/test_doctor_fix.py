"""`graft doctor DATA --deep --fix fixed.csv`, then `graft train fixed.csv`."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import pytest

from tests.e2e.runner import graft
from torchgraft.config import config_from_dict
from torchgraft.data import load_run_splits
from torchgraft.testing import file_hashes, make_image_folder

# Files moved into a wrong class folder. Each generated class has its own colour, so a
# circle among the squares is an unmistakable mistake.
MOVED = [("circle/circle_003.png", "square"), ("triangle/triangle_005.png", "circle")]


@pytest.mark.slow
def test_the_fixed_label_file_relabels_the_moved_files_and_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_image_folder(tmp_path / "data", per_class=12, size=32)
    planted = {}  # its path in fixed.csv -> its true class
    for file, wrong in MOVED:
        (data / file).rename(data / wrong / Path(file).name)
        planted[f"data/{wrong}/{Path(file).name}"] = Path(file).parent.name
    before = file_hashes(data)
    refused = graft("doctor", "data", "--fix", "fixed.csv", cwd=tmp_path)
    assert refused.returncode == 2 and "needs --deep" in refused.stderr

    doctor = graft("doctor", "data", "--deep", "--fix", "fixed.csv", "--quiet", cwd=tmp_path)
    assert doctor.returncode == 1, doctor.stderr  # label issues are problems
    with (tmp_path / "fixed.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    labels = {row["path"]: row["label"] for row in rows}
    assert len(rows) == 36 and planted.items() <= labels.items(), doctor.stdout
    corrected = sum(label != Path(path).parent.name for path, label in labels.items())
    wrote = f"wrote {corrected} corrected labels to fixed.csv; train with: graft train fixed.csv"
    assert wrote in doctor.stdout
    assert file_hashes(data) == before  # nothing moved, renamed or deleted

    again = graft("doctor", "data", "--deep", "--fix", "fixed.csv", cwd=tmp_path)
    assert again.returncode == 2 and "fixed.csv: the file exists" in again.stderr
    assert "fixed-2.csv" in again.stderr and "Traceback" not in again.stderr

    result = graft(
        "train", "fixed.csv", "--model", "mlp", "--epochs", "1", "--image-size", "16",
        "--name", "fixed", "--no-report", "--no-tensorboard", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    info = json.loads((tmp_path / "runs/fixed/graft.json").read_text())
    monkeypatch.chdir(tmp_path)  # where fixed.csv, recorded as given, is
    splits = load_run_splits(config_from_dict(info["config"]))
    for split in ("train", "val"):
        trained = getattr(splits, split).labels
        assert Counter(info["class_names"][label] for label in trained) == Counter(
            row["label"] for row in rows if row["split"] == split
        )
        assert info["data_summary"][f"{split}_images"] == len(trained)
