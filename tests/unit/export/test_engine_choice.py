"""Which engine predicts by default: the run's parity-checked ONNX export on a CPU, with the
same answers and unfamiliar scores as eager PyTorch; eager PyTorch whenever that export
would give less (stale, no embedding, no onnxruntime)."""

from __future__ import annotations

import importlib.util
import io
import logging

import numpy as np
import pytest
from PIL import Image
from skimage.data import chelsea

from torchgraft import api
from torchgraft.artifact import Run
from torchgraft.export import EXPORTS_DIR, ExportReport, export_run
from torchgraft.export.exporter import export_inputs
from torchgraft.export.onnx_format import export_onnx
from torchgraft.testing import class_image


def images() -> list[np.ndarray]:
    """Shapes like the training images, and a photo unlike any of them."""
    return [class_image(index % 3, 32, seed=index) for index in range(5)] + [chelsea()]


def test_auto_predicts_with_the_checked_onnx_export_as_eager_does(exported: ExportReport) -> None:
    run = Run.load(exported.folder.parent)
    default, eager = api.predictor(run), api.predictor(run, engine="eager")
    assert (default.engine, eager.engine) == ("onnx", "eager")
    records, probabilities = default.predict_with_probabilities(images())
    eager_records, eager_probabilities = eager.predict_with_probabilities(images())
    np.testing.assert_allclose(probabilities, eager_probabilities, atol=1e-5)
    for record, eager_record in zip(records, eager_records, strict=True):
        assert record.unfamiliar == pytest.approx(eager_record.unfamiliar, abs=1e-5)
        assert record.is_unfamiliar == eager_record.is_unfamiliar
    assert records[-1].is_unfamiliar  # the photo: the export's embedding flags it too


def test_auto_is_eager_on_a_run_without_a_current_onnx_export(fresh_run: Run) -> None:
    assert api.predictor(fresh_run).engine == "eager"  # nothing exported
    export_run(fresh_run, "onnx", quiet=True)
    assert api.predictor(fresh_run).engine == "onnx"
    fresh_run.info.temperature = 2.0  # recalibrated: model.onnx computes something else now
    fresh_run.save_info()
    assert api.predictor(fresh_run).engine == "eager"


def test_auto_is_eager_when_the_onnx_export_lacks_the_embedding(
    fresh_run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    """An export made before model.onnx had the embedding output still parity-checks, but
    would lose the unfamiliar scores: eager keeps them, and the log says how to fix it."""
    export_run(fresh_run, "onnx", quiet=True)
    path = fresh_run.path / EXPORTS_DIR / "model.onnx"
    export_onnx(export_inputs(fresh_run, quiet=True), path, embedding=False)  # as it was
    with caplog.at_level(logging.INFO, logger="torchgraft.serve.predictor"):
        predictor = api.predictor(fresh_run)
    assert predictor.engine == "eager"
    assert "no embedding output" in caplog.text and "--format onnx" in caplog.text
    (record,) = predictor.predict(images()[-1:])
    assert record.is_unfamiliar
    named = api.predictor(fresh_run, engine="onnx")  # asked for by name: used, without scores
    assert named.engine == "onnx" and named.predict(images()[-1:])[0].unfamiliar is None


def test_auto_is_eager_where_onnxruntime_is_not_installed(
    exported: ExportReport, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "onnxruntime" else real_find_spec(name, *args),
    )
    assert api.predictor(Run.load(exported.folder.parent)).engine == "eager"


def test_the_server_answers_with_the_onnx_export_by_default(exported: ExportReport) -> None:
    from fastapi.testclient import TestClient

    from torchgraft.serve.app import create_app

    run_path = exported.folder.parent
    buffer = io.BytesIO()
    Image.fromarray(chelsea()).save(buffer, format="PNG")
    with TestClient(create_app(run_path, device="cpu")) as client:
        assert client.get("/health").json()["engine"] == "onnx"
        answer = client.post(
            "/predict", content=buffer.getvalue(), headers={"content-type": "image/png"}
        ).json()
    assert answer["is_unfamiliar"] is True
