"""No code from a run folder runs unless asked: model.pt2 and model.ts load only when this
user's graft export signed them, or when named as the engine; parity.json vouches for
nothing. A run folder from elsewhere is planted here with real exports, a parity.json that
matches its weights, and forged signatures."""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from tests.unit.test_artifact import hostile_checkpoint
from torchgraft import api
from torchgraft.artifact import Run
from torchgraft.errors import UserError
from torchgraft.export import PARITY_FILE, ExportReport, benchmark_run, export_run, load_exported
from torchgraft.export.signatures import (
    SECRET_ENV,
    SIGNATURES_FILE,
    file_signature,
    read_secret,
    secret_path,
    sign_files,
    signed_here,
)
from torchgraft.serve.app import create_app
from torchgraft.serve.predictor import Predictor
from torchgraft.testing import class_image

CODE_FILES = ("model.pt2", "model.ts")


def test_graft_export_signs_every_code_file_it_writes(exported: ExportReport) -> None:
    signatures = json.loads((exported.folder / SIGNATURES_FILE).read_text())
    assert sorted(signatures) == ["model.pt2", "model.ts"]  # ONNX is data: nothing to prove
    assert all(signed_here(exported.folder / name) for name in signatures)
    assert os.stat(secret_path()).st_mode & 0o777 == 0o600  # made on first export


def test_a_changed_byte_or_another_users_secret_breaks_the_signature(
    exported: ExportReport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("model.ts", SIGNATURES_FILE):
        shutil.copy2(exported.folder / name, tmp_path / name)
    copy = tmp_path / "model.ts"
    assert signed_here(copy)  # the signature follows the bytes, not the folder
    monkeypatch.setenv(SECRET_ENV, str(tmp_path / "someone-else" / "secret"))
    assert not signed_here(copy)  # another user has no secret yet, or another one
    monkeypatch.undo()
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 1
    copy.write_bytes(bytes(data))
    assert not signed_here(copy)


def plant_run(fresh: Run, exported: ExportReport, code: Callable[[Path], None]) -> Run:
    """`fresh` (the same weights as `exported`) with a real model.onnx, the given code files,
    a parity.json that vouches for all of them, and signatures made with another secret."""
    folder = fresh.path / "exports"
    folder.mkdir()
    for name in ("model.onnx", PARITY_FILE):
        shutil.copy2(exported.folder / name, folder / name)
    for name in CODE_FILES:
        code(folder / name)
    forged = {name: file_signature(folder / name, b"not this user's secret") for name in CODE_FILES}
    (folder / SIGNATURES_FILE).write_text(json.dumps(forged))
    return fresh


def record_code_loads(monkeypatch: pytest.MonkeyPatch, canary: Path) -> None:
    """Every load of a .pt2 or .ts file creates a file named after the loader in the folder
    `canary`, then loads as usual."""
    canary.mkdir()
    for owner, name in ((torch.jit, "load"), (torch._inductor, "aoti_load_package")):
        real = getattr(owner, name)

        def loading(
            *args: Any, _real: Callable[..., Any] = real, _name: str = name, **kwargs: Any
        ) -> Any:
            (canary / _name).touch()
            return _real(*args, **kwargs)

        monkeypatch.setattr(owner, name, loading)


def png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(class_image(1, 32, seed=3)).save(buffer, format="PNG")
    return buffer.getvalue()


def predict_and_serve(run: Run) -> None:
    """What graft predict and graft serve do by default, on `run`."""
    assert api.predict(run, png())[0].ok
    with TestClient(create_app(run, device="cpu")) as client:
        answer = client.post("/predict", content=png(), headers={"content-type": "image/png"})
        assert answer.status_code == 200


def test_planted_exports_with_a_forged_parity_json_are_never_loaded(
    exported: ExportReport, fresh_run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = exported.folder
    run = plant_run(fresh_run, exported, lambda path: shutil.copy2(real / path.name, path))
    loaded = tmp_path / "loaded"
    record_code_loads(monkeypatch, loaded)
    report = benchmark_run(run, batch_sizes=(1,), seconds=0.05, quiet=True)
    assert [timing.engine for timing in report.timings] == ["eager", "onnxruntime"]
    assert sorted(report.not_timed) == ["aoti", "torchscript"]
    assert "--engine aoti" in report.not_timed["aoti"]
    predict_and_serve(run)
    for name in CODE_FILES:
        with pytest.raises(UserError, match="no signature made on this machine vouches"):
            load_exported(run.path / "exports" / name)
    assert not any(loaded.iterdir())
    # The control: named as the engines, the same files load (so the canary would show it).
    timed = benchmark_run(run, (1,), seconds=0.05, quiet=True, engines=["torchscript", "aoti"])
    assert {"torchscript", "aoti"} <= {timing.engine for timing in timed.timings}
    assert sorted(path.name for path in loaded.iterdir()) == ["aoti_load_package", "load"]


def test_a_named_export_engine_predicts_as_eager_pytorch(exported: ExportReport) -> None:
    run = Run.load(exported.folder.parent)
    (eager_record,), eager = api.predict(run, png(), top_k=3, engine="eager", probabilities=True)
    assert eager_record.unfamiliar is not None
    for engine in ("onnx", "aoti", "torchscript"):
        (record,), probabilities = api.predict(
            run, png(), top_k=3, engine=engine, probabilities=True
        )
        np.testing.assert_allclose(probabilities, eager, atol=1e-4)
        if engine == "onnx":  # its second output is the embedding: the same score
            assert record.unfamiliar == pytest.approx(eager_record.unfamiliar, abs=1e-5)
        else:  # probabilities only
            assert record.unfamiliar is record.is_unfamiliar is None
    with TestClient(create_app(Predictor.from_run(run, "cpu", engine="onnx"))) as client:
        assert client.get("/health").json()["engine"] == "onnx"
        answer = client.post("/predict", content=png(), headers={"content-type": "image/png"})
        assert answer.json()["probability"] == pytest.approx(float(eager.max()), abs=1e-4)
    with pytest.raises(UserError, match=r"unknown engine 'onxx'.*Did you mean 'onnx'"):
        api.predict(run, png(), engine="onxx")


def test_hostile_pickles_planted_as_exports_never_run(
    exported: ExportReport, fresh_run: Run, tmp_path: Path
) -> None:
    canary = tmp_path / "canary"
    run = plant_run(fresh_run, exported, lambda path: hostile_checkpoint(path, canary).touch())
    report = benchmark_run(run, batch_sizes=(1,), seconds=0.05, quiet=True)
    assert sorted(report.not_timed) == ["aoti", "torchscript"]
    predict_and_serve(run)
    for engine in ("aoti", "torchscript"):  # even asked for by name: refused, not run
        refused = r"cannot load .*model\.(pt2|ts) \(RuntimeError.*export it again"
        with pytest.raises(UserError, match=refused):
            api.predict(run, png(), engine=engine)
    assert not canary.exists()


def test_without_a_writable_home_exports_are_kept_and_code_stays_unsigned(
    fresh_run: Run,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    not_a_folder = tmp_path / "home-is-a-file"
    not_a_folder.write_text("")  # the secret's folder cannot be made, even as root
    monkeypatch.setenv(SECRET_ENV, str(not_a_folder / "torchgraft" / "secret"))
    report = export_run(fresh_run, ["onnx", "torchscript"], quiet=True)
    assert report.passed and (report.folder / PARITY_FILE).is_file()
    assert (report.folder / "README.md").is_file()
    assert not signed_here(report.folder / "model.ts")
    assert "model.ts not signed: it will load only when asked for by name" in caplog.text
    onnx = load_exported(report.folder / "model.onnx")  # data: loads unsigned
    assert onnx(np.zeros((1, onnx.channels, onnx.image_size, onnx.image_size), np.uint8)).size


@pytest.mark.parametrize("text", ["", "not hex at all"])
def test_an_empty_or_damaged_secret_says_to_delete_it(
    text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "secret"
    secret.write_text(text)
    monkeypatch.setenv(SECRET_ENV, str(secret))
    with pytest.raises(UserError, match=r"secret .*secret is (empty|not hex): delete it"):
        read_secret(create=True)
    assert secret.read_text() == text  # never replaced behind the user's back


def test_exports_started_together_make_one_complete_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, str(tmp_path / "config" / "secret"))
    with ThreadPoolExecutor(max_workers=8) as pool:
        secrets = list(pool.map(lambda _: read_secret(create=True), range(16)))
    assert secrets[0] is not None and len(secrets[0]) == 32
    assert set(secrets) == {secrets[0]}
    assert [path.name for path in (tmp_path / "config").iterdir()] == ["secret"]  # no temp left


@pytest.mark.parametrize("forged", ["é" * 64, "0" * 63, 7])
def test_a_forged_signature_of_any_shape_is_refused_without_a_crash(
    forged: object, exported: ExportReport, tmp_path: Path
) -> None:
    shutil.copy2(exported.folder / "model.ts", tmp_path / "model.ts")
    (tmp_path / SIGNATURES_FILE).write_text(json.dumps({"model.ts": forged}))
    assert not signed_here(tmp_path / "model.ts")


def test_a_signature_written_meanwhile_by_another_export_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another export signs model.pt2 while this one hashes model.ts: both signatures stay."""
    for name in ("model.ts", "model.pt2"):
        (tmp_path / name).write_bytes(name.encode())
    real_signature = file_signature

    def hash_while_another_export_signs(path: Path, secret: bytes) -> str:
        other = {"model.pt2": real_signature(tmp_path / "model.pt2", secret)}
        (tmp_path / SIGNATURES_FILE).write_text(json.dumps(other))
        return real_signature(path, secret)

    monkeypatch.setattr(
        "torchgraft.export.signatures.file_signature", hash_while_another_export_signs
    )
    sign_files(tmp_path, ["model.ts"])
    monkeypatch.undo()
    assert signed_here(tmp_path / "model.ts") and signed_here(tmp_path / "model.pt2")
