"""A run's config.yaml reproduces it, and --print-config shows that config without training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.e2e.runner import graft
from torchgraft.testing import make_image_folder


def recorded_config(run: Path) -> dict[str, object]:
    return json.loads((run / "graft.json").read_text())["config"]


@pytest.mark.slow
def test_config_yaml_trains_the_same_run_again_and_print_config_shows_it(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "shapes", per_class=8, size=32)
    runs = tmp_path / "runs"
    flags = ["--model", "cnn", "--epochs", "1", "--image-size", "32", "--batch-size", "8",
             "--lr", "0.02", "--augment", "light", "--no-tensorboard", "--no-report",
             "--runs-dir", str(runs), "--quiet"]  # fmt: skip
    printed = graft("train", str(data), *flags, "--print-config")
    assert printed.returncode == 0, printed.stderr
    assert not runs.exists()  # printing trains nothing

    first = graft("train", str(data), *flags)
    assert first.returncode == 0, first.stderr
    first_run = runs / "cnn-shapes"
    assert yaml.safe_load(printed.stdout) == recorded_config(first_run)
    assert yaml.safe_load((first_run / "config.yaml").read_text()) == recorded_config(first_run)

    again = graft("train", "--config", str(first_run / "config.yaml"))
    assert again.returncode == 0, again.stderr
    assert recorded_config(runs / "cnn-shapes-2") == recorded_config(first_run)
