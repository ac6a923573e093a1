"""exports/test_vectors/: inputs and expected probabilities a port checks itself with; every
runtime torchgraft exports to passes them, and a broken port fails them."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from torchgraft.artifact import Run
from torchgraft.export import ExportReport, load_exported
from torchgraft.export.test_vectors import (
    TEST_VECTORS_DIR,
    VECTORS_FILE,
    check_test_vectors,
    read_test_vectors,
)


def test_the_vectors_are_plain_pngs_and_json_covering_every_class(exported: ExportReport) -> None:
    folder = exported.folder / TEST_VECTORS_DIR
    document = json.loads((folder / VECTORS_FILE).read_text())
    run = Run.load(exported.folder.parent)
    assert document["class_names"] == run.info.class_names
    assert {vector["label"] for vector in document["vectors"]} == set(run.info.class_names)
    for vector in document["vectors"]:
        image = Image.open(folder / vector["file"])
        assert image.format == "PNG" and image.size == (32, 32) and image.mode == "RGB"
        probabilities = np.array(vector["probabilities"])
        assert abs(probabilities.sum() - 1) < 1e-5
        assert vector["top1"] == run.info.class_names[int(probabilities.argmax())]
    assert "test_vectors/" in (exported.folder / "README.md").read_text()


def test_every_float_runtime_passes_the_test_vectors(exported: ExportReport) -> None:
    folder = exported.folder / TEST_VECTORS_DIR
    for name in ("model.onnx", "model.pt2", "model.ts"):
        check = check_test_vectors(load_exported(exported.folder / name), folder)
        assert check.passed, (name, check)
        assert check.vectors >= 3 and check.max_abs_diff <= check.tolerance


def test_a_port_that_forgets_a_step_fails_the_test_vectors(exported: ExportReport) -> None:
    """The vectors catch the mistakes ports make: channels in BGR order, or the
    normalisation applied twice (here: pixels scaled as if normalising outside)."""
    model = load_exported(exported.folder / "model.onnx")
    folder = exported.folder / TEST_VECTORS_DIR
    inputs, _, _ = read_test_vectors(folder)
    bgr = check_test_vectors(lambda images: model(images[:, ::-1]), folder)
    darker = check_test_vectors(lambda images: model((images * 0.5).astype(np.uint8)), folder)
    assert not bgr.passed and not darker.passed
    assert len(inputs) == bgr.vectors
