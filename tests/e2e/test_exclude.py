"""`graft doctor DATA --json > issues.json`, then `graft train DATA --exclude issues.json`."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from tests.e2e.runner import graft
from torchgraft.config import config_from_dict
from torchgraft.data import load_run_splits
from torchgraft.testing import make_image_folder


@pytest.mark.slow
def test_training_leaves_out_what_doctor_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_image_folder(tmp_path / "data", ("a", "b"), per_class=8, size=16, split=True)
    shutil.copy(data / "val/a/a_000.png", data / "train/a/copy.png")  # val leaks into train
    (data / "train/b/broken.png").write_bytes(b"not a picture")
    doctor = graft("doctor", "data", "--json", "--workers", "0", cwd=tmp_path)
    assert doctor.returncode == 1, doctor.stderr  # it found problems
    (tmp_path / "issues.json").write_text(doctor.stdout)
    result = graft(
        "train", "data", "--exclude", "issues.json", "--model", "mlp", "--epochs", "1",
        "--image-size", "16", "--name", "clean", "--no-report", "--no-tensorboard",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "excluding 2 file(s) listed in" in result.stderr and "2 train, 0 val" in result.stderr
    info = json.loads((tmp_path / "runs/clean/graft.json").read_text())
    assert info["data_summary"] == {
        "train_images": 12, "val_images": 4, "skipped": 0, "excluded": 2,
    }  # fmt: skip
    with (tmp_path / "runs/clean/skipped.csv").open() as file:
        assert list(csv.DictReader(file)) == []  # broken.png was left out, not tried
    # What the run trains on, as resume and evaluation rebuild it from its config:
    monkeypatch.chdir(tmp_path)  # where DATA, recorded as given, is
    splits = load_run_splits(config_from_dict(info["config"]))
    trained = {Path(path).name for path in splits.train.images}
    assert not {"copy.png", "broken.png"} & trained and len(trained) == 12
    assert data.resolve() / "val/a/a_000.png" in {p.resolve() for p in splits.val.images}

    bad = graft("train", "data", "--exclude", "isues.json", "--name", "typo", cwd=tmp_path)
    assert bad.returncode == 2
    (line,) = bad.stderr.strip().splitlines()
    assert line.startswith("error: --exclude ") and "isues.json: no such file" in line
    assert not (tmp_path / "runs/typo").exists()
