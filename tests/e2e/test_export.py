"""`graft export` and `graft benchmark` end to end, in subprocesses, as a user runs them."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from tests.e2e.runner import graft
from torchgraft.artifact import RUN_FILE, WEIGHTS_FILE
from torchgraft.export import ExportReport


def copy_run(run: Path, destination: Path) -> Path:
    """graft.json and the weights only: the shared tiny run's folder stays untouched."""
    destination.mkdir()
    for name in (RUN_FILE, WEIGHTS_FILE):
        shutil.copy2(run / name, destination / name)
    return destination


@pytest.mark.slow
def test_export_all_checks_parity_then_benchmark_times_it(tiny_run: Path, tmp_path: Path) -> None:
    run = copy_run(tiny_run, tmp_path / "run")
    result = graft("export", "--run", str(run), "--all", "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    exports = run / "exports"
    files = {"onnx": "model.onnx", "aoti": "model.pt2", "torchscript": "model.ts",
             "onnx-int8": "model.int8.onnx"}  # fmt: skip
    for name, file_name in files.items():
        assert (exports / file_name).is_file()
        assert re.search(rf"^{name}\s+{re.escape(file_name)}\s+100\.00%", result.stdout, re.M)
    parity = json.loads((exports / "parity.json").read_text())
    assert parity["passed"] and len(parity["formats"]) == 4
    assert "uint8" in (exports / "README.md").read_text()

    timed = graft("benchmark", "--run", str(run), "--batch-size", "4", "--seconds", "0.1", "-q")
    assert timed.returncode == 0, timed.stderr[-3000:]
    for engine in ("eager", "onnxruntime", "aoti"):
        for batch in (1, 4):
            assert re.search(rf"^{engine}\s+{batch}\s+\d+\.\d", timed.stdout, re.M), timed.stdout


@pytest.mark.slow
def test_export_usage_errors_exit_2(tiny_run: Path, tmp_path: Path) -> None:
    run = copy_run(tiny_run, tmp_path / "run")
    neither = graft("export", "--run", str(run))
    assert neither.returncode == 2 and "--format NAME" in neither.stderr
    typo = graft("export", "--run", str(run), "--format", "onx")
    assert typo.returncode == 2 and "Did you mean 'onnx'?" in typo.stderr
    missing = graft("export", "--run", str(tmp_path / "nothing"), "--all")
    assert missing.returncode == 2 and "graft.json is missing" in missing.stderr
    assert not (run / "exports").exists()


@pytest.mark.slow
def test_export_all_without_a_compiler_still_exports_and_records_the_rest(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = copy_run(tiny_run, tmp_path / "run")
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))  # aoti's compiler, as on a slim server
    result = graft("export", "--run", str(run), "--all", "--quiet")
    assert result.returncode == 1, result.stderr[-3000:]
    assert (
        "aoti (model.pt2) needs a C++ compiler" in result.stderr
        and "Traceback" not in result.stderr
    )
    exports = run / "exports"
    parity = json.loads((exports / "parity.json").read_text())
    assert {name: entry["passed"] for name, entry in parity["formats"].items()} == {
        "onnx": True, "aoti": False, "torchscript": True, "onnx-int8": True
    }  # fmt: skip
    assert not (exports / "model.pt2").exists()
    for file_name in ("model.onnx", "model.ts", "model.int8.onnx", "README.md"):
        assert (exports / file_name).is_file(), file_name


@pytest.fixture(scope="module")
def lite0_export(tmp_path_factory: pytest.TempPathFactory) -> ExportReport:
    """The bundled pretrained EfficientNet-Lite0 with a grafted 10-class head trained for one
    epoch on features (digits at 64 px), exported once to the float formats checked here."""
    from torchgraft import api
    from torchgraft.export import export_run

    run = api.train("digits", model="efficientnet_lite0", image_size=64, freeze_epochs=1,
                    epochs=0, runs_dir=str(tmp_path_factory.mktemp("lite0")), name="lite0",
                    report=False, quiet=True)  # fmt: skip
    return export_run(run, ["onnx", "torchscript"], quiet=True)


@pytest.mark.slow
def test_float_exports_of_the_real_backbone_give_eager_answers(lite0_export: ExportReport) -> None:
    """Depthwise convolutions, folded batch norms and ReLU6 of a real pretrained network,
    not only a tiny cnn: each file's probabilities against the run's classifier in PyTorch."""
    import numpy as np
    import torch

    from torchgraft.artifact import Run
    from torchgraft.export import load_exported
    from torchgraft.export.images import parity_images
    from torchgraft.models import load_model

    run = Run.load(lite0_export.folder.parent)
    images = parity_images(run, quiet=True)
    assert len(images.labels) > 300  # digits' validation split: a 2% bound means something
    with torch.no_grad():
        logits = load_model(run).eval()(torch.from_numpy(images.pixels))
    expected = (logits / run.info.temperature).softmax(1).numpy()
    assert (expected.argmax(1) == images.labels).mean() > 0.6  # the head learned something
    for file_name in ("model.onnx", "model.ts"):
        probabilities = load_exported(lite0_export.folder / file_name)(images.pixels)
        assert (probabilities.argmax(1) == expected.argmax(1)).all(), file_name
        assert np.abs(probabilities - expected).max() <= lite0_export.float_tolerance, file_name
