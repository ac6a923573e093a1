"""load_exported: one call for every format, and clear errors for wrong input."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from torchgraft.errors import UserError
from torchgraft.export import ExportReport, load_exported


def test_missing_and_foreign_files_are_refused(exported: ExportReport, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="graft export"):
        load_exported(tmp_path / "model.onnx")
    (tmp_path / "model.pkl").write_bytes(b"")
    with pytest.raises(UserError, match=r"\.onnx, \.pt2 or \.ts"):
        load_exported(tmp_path / "model.pkl")


@pytest.mark.parametrize("file_name", ["model.onnx", "model.pt2", "model.ts"])
def test_wrong_images_are_refused_and_empty_batches_answered(
    exported: ExportReport, file_name: str
) -> None:
    model = load_exported(exported.folder / file_name)
    with pytest.raises(UserError, match=r"uint8 images of shape \(N, 3, 32, 32\)"):
        model(np.zeros((1, 3, 32, 32), dtype=np.float32))
    with pytest.raises(UserError, match="resize to the training size"):
        model(np.zeros((1, 3, 64, 64), dtype=np.uint8))
    assert model(np.zeros((0, 3, 32, 32), dtype=np.uint8)).shape == (0, 3)


def test_a_missing_engine_is_named_not_blamed_on_the_file(
    exported: ExportReport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(
        UserError, match=r"onnxruntime is not installed \(pip install onnxruntime\)"
    ):
        load_exported(exported.folder / "model.onnx")
