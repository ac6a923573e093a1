"""Every format against eager PyTorch on the tiny run's real validation images."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from torchgraft import api
from torchgraft.artifact import Run
from torchgraft.errors import GraftRuntimeError, UserError
from torchgraft.export import FORMATS, PARITY_FILE, ExportReport, export_run, load_exported
from torchgraft.export.aoti import require_cpp_compiler
from torchgraft.export.exporter import checked_formats
from torchgraft.export.formats import ExportFormat, resolve_formats
from torchgraft.export.images import parity_images
from torchgraft.export.model import ExportInputs
from torchgraft.export.parity import FLOAT_TOLERANCE, NOISE_FACTOR, Reference, failure_reason
from torchgraft.models import load_model
from torchgraft.testing import class_image


def eager_probabilities(run: Run, pixels: np.ndarray) -> np.ndarray:
    """The oracle, computed here from the run's classifier, not from the export code."""
    with torch.no_grad():
        logits = load_model(run).eval()(torch.from_numpy(pixels))
    return (logits / run.info.temperature).softmax(1).numpy()


IN_ALL = [spec for spec in FORMATS.values() if spec.in_all]  # timm: for timm backbones only


def test_every_format_passes_parity_and_is_recorded(exported: ExportReport) -> None:
    assert [result.format for result in exported.results] == [spec.name for spec in IN_ALL]
    recorded = json.loads((exported.folder / PARITY_FILE).read_text())
    assert recorded["passed"] and recorded["source"] == "validation split"
    for result in exported.results:
        assert result.passed, result.failure
        assert (exported.folder / result.file).stat().st_size == result.size_bytes > 0
        assert result.images > 0 and 0.0 <= result.accuracy <= 1.0
        assert recorded["formats"][result.format]["max_abs_diff"] == result.max_abs_diff
        if result.precision == "float":
            assert result.disagreements == 0 and result.max_abs_diff <= 1e-4


def test_int8_export_is_quantized(exported: ExportReport) -> None:
    import onnx

    int8 = onnx.load(str(exported.folder / "model.int8.onnx"))
    operators = {node.op_type for node in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= operators
    assert any(tensor.data_type == onnx.TensorProto.INT8 for tensor in int8.graph.initializer)
    float_size = (exported.folder / "model.onnx").stat().st_size
    assert (exported.folder / "model.int8.onnx").stat().st_size < float_size


@pytest.mark.parametrize("spec", IN_ALL, ids=[spec.name for spec in IN_ALL])
def test_loaded_export_matches_eager_at_batch_one_and_batched(
    exported: ExportReport, spec: ExportFormat
) -> None:
    run = Run.load(exported.folder.parent)
    images = parity_images(run, quiet=True)
    model = load_exported(exported.folder / spec.file_name)
    expected = eager_probabilities(run, images.pixels)
    batched = model(images.pixels)
    one_by_one = np.concatenate([model(image[None]) for image in images.pixels])
    tolerance = 1e-4 if spec.precision == "float" else 0.05
    for probabilities in (batched, one_by_one):
        assert probabilities.dtype == np.float32 and probabilities.shape == expected.shape
        np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
        np.testing.assert_allclose(probabilities, expected, atol=tolerance)
    assert model.class_names == run.info.class_names
    assert (model.image_size, model.channels) == (32, 3)


def test_calibration_temperature_is_inside_the_export(fresh_run: Run) -> None:
    run = fresh_run
    run.info.temperature = 3.0
    run.save_info()
    report = export_run(run, "onnx", quiet=True)
    pixels = parity_images(run, quiet=True).pixels
    probabilities = load_exported(report.folder / "model.onnx")(pixels)
    np.testing.assert_allclose(probabilities, eager_probabilities(run, pixels), atol=1e-5)
    run.info.temperature = 1.0  # the same logits at T=1 are sharper: T really is applied
    assert np.abs(probabilities - eager_probabilities(run, pixels)).max() > 1e-3


def test_perturbed_weights_fail_parity_and_keep_the_file(
    fresh_run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = FORMATS["onnx"]

    def broken_export(inputs: ExportInputs, path: Path) -> None:
        # A deliberately wrong export: the head's class rows rolled after the reference, so
        # every top-1 moves to another class (random noise left some unchanged: a flaky test).
        with torch.no_grad():
            for parameter in inputs.model.classifier.head.parameters():
                parameter.copy_(parameter.roll(1, dims=0))
        real.export(inputs, path)

    monkeypatch.setitem(FORMATS, "onnx", type(real)(**{**vars(real), "export": broken_export}))
    run = fresh_run
    with pytest.raises(GraftRuntimeError, match=r"onnx: \d+ of \d+ top-1 predictions differ"):
        export_run(run, ["onnx"], quiet=True)
    recorded = json.loads((run.path / "exports" / PARITY_FILE).read_text())
    assert not recorded["passed"]
    assert "differ by up to" in recorded["formats"]["onnx"]["failure"]
    assert (run.path / "exports" / "model.onnx").is_file()


def test_a_format_that_raises_is_recorded_and_the_others_still_export(
    fresh_run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_compiler(inputs: ExportInputs, path: Path) -> None:
        raise RuntimeError("no C++ compiler")  # what aoti meets on a slim server

    real = FORMATS["aoti"]
    monkeypatch.setitem(FORMATS, "aoti", type(real)(**{**vars(real), "export": no_compiler}))
    run = fresh_run
    exports = run.path / "exports"
    exports.mkdir()
    (exports / "model.pt2").write_bytes(b"an earlier package")  # must not pass for this one
    with pytest.raises(GraftRuntimeError, match=r"1 of 3 formats.*aoti: exporting to aoti"):
        export_run(run, ["onnx", "aoti", "torchscript"], quiet=True)
    recorded = json.loads((exports / PARITY_FILE).read_text())
    assert not recorded["passed"]
    assert recorded["formats"]["onnx"]["passed"] and recorded["formats"]["torchscript"]["passed"]
    failure = recorded["formats"]["aoti"]["failure"]
    assert failure == "exporting to aoti (model.pt2) failed (RuntimeError: no C++ compiler)"
    assert not (exports / "model.pt2").exists() and (exports / "model.ts").is_file()
    readme = (exports / "README.md").read_text()
    assert f"- `model.pt2`: not written: {failure}" in readme
    assert f"- `model.ts`: {FORMATS['torchscript'].description}" in readme


def test_missing_compiler_names_aoti_and_the_fix() -> None:
    from torch._inductor import config

    needs_compiler = r"aoti \(model.pt2\) needs a C\+\+ compiler.*set CXX"
    with (
        config.patch({"cpp.cxx": ("/nonexistent/g++",)}),
        pytest.raises(GraftRuntimeError, match=needs_compiler),
    ):
        require_cpp_compiler()


def test_exports_of_an_older_model_are_deleted_not_listed(fresh_run: Run) -> None:
    run = fresh_run
    export_run(run, "onnx", quiet=True)
    run.info.temperature = 2.0  # recalibrated (or resumed): model.onnx is now stale
    run.save_info()
    assert checked_formats(run) == {}  # so benchmark exports again instead of timing it
    report = export_run(run, "torchscript", quiet=True)
    assert not (report.folder / "model.onnx").exists()
    recorded = json.loads((report.folder / PARITY_FILE).read_text())
    assert set(recorded["formats"]) == {"torchscript"} and recorded["temperature"] == 2.0
    readme = (report.folder / "README.md").read_text()
    listed = [line for line in readme.splitlines() if line.startswith("- `model.")]
    assert listed == [f"- `model.ts`: {FORMATS['torchscript'].description}"]
    assert set(checked_formats(run)) == {"torchscript"}


def test_parity_file_collects_formats_exported_one_at_a_time(fresh_run: Run) -> None:
    run = fresh_run
    export_run(run, "torchscript", quiet=True)
    report = export_run(run, "onnx", quiet=True)
    recorded = json.loads((report.folder / PARITY_FILE).read_text())
    assert [result.format for result in report.results] == ["onnx"]
    assert set(recorded["formats"]) == {"onnx", "torchscript"} and recorded["passed"]
    readme = (report.folder / "README.md").read_text()
    listed = [line for line in readme.splitlines() if line.startswith("- `model.")]
    assert listed == [f"- `model.onnx`: {FORMATS['onnx'].description}",
                      f"- `model.ts`: {FORMATS['torchscript'].description}"]  # fmt: skip


def test_the_readme_of_an_onnx_export_documents_onnx_alone_and_its_example_runs(
    fresh_run: Run, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = export_run(fresh_run, "onnx", quiet=True).folder
    readme = (folder / "README.md").read_text()
    assert "`embedding`" in readme
    for absent in ("model.pt2", "model.ts", "AOTInductor", "TorchScript", "signatures.json"):
        assert absent not in readme, absent
    # The Python example, as written, on a JPEG in the exports folder.
    (example,) = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    Image.fromarray(class_image(2, 48, seed=5)).save(folder / "image.jpg")
    monkeypatch.chdir(folder)
    exec(compile(example, "exports/README.md", "exec"), {})
    (expected,) = api.predict(fresh_run, folder / "image.jpg", engine="eager")
    assert capsys.readouterr().out.strip() == expected.display_name == "triangle"


def test_readme_states_the_input_contract(exported: ExportReport) -> None:
    readme = (exported.folder / "README.md").read_text()
    for fact in ("uint8", "(N, 3, 32, 32)", "**crop**", "onnxruntime.InferenceSession",
                 "AOTIModelPackageLoader", "ImageOps.fit(image, (32, 32)", "legacy",
                 "are **code**", "signatures.json", "torchgraft source repository"):  # fmt: skip
        assert fact in readme, fact


def test_unknown_format_is_refused_with_a_suggestion() -> None:
    with pytest.raises(UserError, match="Did you mean 'onnx-int8'"):
        resolve_formats(["onnx-int9"])
    with pytest.raises(UserError, match="no export format"):
        resolve_formats([])
    assert [spec.name for spec in resolve_formats(["aoti", "onnx", "aoti"])] == ["onnx", "aoti"]
    assert "timm" not in [spec.name for spec in resolve_formats("all")]  # asked for by name


def numbers(disagreements: int, max_abs_diff: float, accuracy_drop: float) -> dict[str, Any]:
    return {"images": 100, "disagreements": disagreements, "max_abs_diff": max_abs_diff,
            "accuracy": 0.9 - accuracy_drop, "eager_accuracy": 0.9}  # fmt: skip


def test_parity_rules() -> None:
    assert failure_reason("float", numbers(0, 5e-5, 0.0), 1e-4) == ""
    assert "1 of 100" in failure_reason("float", numbers(1, 5e-5, 0.0), 1e-4)
    assert "up to 2.00e-04 (allowed: 0 and 1.0e-04)" in failure_reason(
        "float", numbers(0, 2e-4, 0.0), 1e-4
    )
    assert failure_reason("float", numbers(0, 2e-4, 0.0), 1e-3) == ""
    assert failure_reason("int8", numbers(2, 0.3, 0.01), 1e-4) == ""  # 2% flips, 1 point lost
    # as accurate as float, but 3 of 100 answers changed (flips that cancel out): refused
    assert "changed 3 of 100 top-1" in failure_reason("int8", numbers(3, 0.3, 0.0), 1e-4)
    assert "lost 1.50%" in failure_reason("int8", numbers(0, 0.0, 0.015), 1e-4)


def test_float_tolerance_follows_eager_float32_error(exported: ExportReport) -> None:
    # The tiny cnn is numerically tame: the fixed 1e-4 applies, as in the issue.
    assert exported.eager_float32_error < 1e-5 and exported.float_tolerance == FLOAT_TOLERANCE
    reference = Reference(np.zeros((1, 2)), np.zeros(1), float32_error=3e-4)
    assert reference.float_tolerance == pytest.approx(NOISE_FACTOR * 3e-4)
    # Eager rounding below 1e-4 never loosens the 1e-4 (10 x 2e-5 would be 2e-4).
    reference = Reference(np.zeros((1, 2)), np.zeros(1), float32_error=2e-5)
    assert reference.float_tolerance == FLOAT_TOLERANCE
