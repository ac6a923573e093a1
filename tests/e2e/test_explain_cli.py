"""`graft explain` as a user runs it."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.e2e.runner import graft
from torchgraft.testing import class_image

pytestmark = pytest.mark.slow


def test_graft_explain_saves_overlays(tiny_run: Path, tmp_path: Path) -> None:
    Image.fromarray(class_image(1, 32, seed=5)).save(tmp_path / "square.png")
    result = graft("explain", str(tmp_path / "square.png"), "--run", str(tiny_run),
                   "--output-dir", str(tmp_path / "cams"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "square.png: square" in result.stdout
    assert (tmp_path / "cams" / "square.gradcam.png").is_file()


def test_graft_explain_on_a_folder_says_to_pass_files(tiny_run: Path, tmp_path: Path) -> None:
    result = graft("explain", str(tmp_path), "--run", str(tiny_run))
    assert result.returncode == 2
    assert "a folder: pass its image files" in result.stderr


def test_graft_evaluate_on_a_folder_of_unreadable_files_exits_2(
    tiny_run: Path, tmp_path: Path
) -> None:
    for name in ("circle", "square", "triangle"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "broken.png").write_bytes(b"not a png")
    result = graft("evaluate", str(tmp_path), "--run", str(tiny_run), "--quiet")
    assert result.returncode == 2, result.stderr
    assert "no readable image to evaluate" in result.stderr
    assert "Traceback" not in result.stderr
