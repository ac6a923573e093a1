"""The `graft` command end to end, in subprocesses, as a user runs it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.runner import graft
from torchgraft.testing import file_hashes


def test_help_explains_every_option() -> None:
    assert "train" in graft("--help").stdout and "predict" in graft("--help").stdout
    train_help = graft("train", "--help").stdout
    for flag in (
        "--model",
        "--weights",
        "--epochs",
        "--freeze-epochs",
        "--lr",
        "--batch-size",
        "--image-size",
        "--resize",
        "--augment",
        "--val-fraction",
        "--class-names",
        "--seed",
        "--device",
        "--name",
        "--runs-dir",
        "--config",
        "--quiet",
    ):
        # The line that defines the option (`-q, --quiet` has its short form first).
        line = next(
            line for line in train_help.splitlines() if re.match(rf"\s+(-\w, )?{flag}\b", line)
        )
        assert len(line.split(flag, 1)[1].strip()) > 10, f"{flag} has no explanation"
    predict_help = graft("predict", "--help").stdout
    for flag in ("--run", "--top-k", "--class-names", "--device"):
        assert flag in predict_help


@pytest.mark.parametrize(
    "args",
    [
        ("train", "/no/such/dir"),
        ("predict", "x.jpg", "--run", "/no/such/run"),
        ("train", "mnist5k", "--model", "resnet5O"),
        ("train", "mnist5k", "--resize", "crpo"),
        ("train", "--resume", "runs/x", "--overwrite"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_traceback(args: tuple[str, ...]) -> None:
    result = graft(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: ")


def test_console_script_and_python_dash_m_are_the_same_cli() -> None:
    console_script = Path(sys.executable).parent / "graft"
    result = subprocess.run([str(console_script), "models"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout == graft("models").stdout
    assert result.stdout.split()[0] == "cnn"


def test_train_with_a_config_file_then_predict(tmp_path: Path) -> None:
    from torchgraft.testing import make_image_folder

    data = make_image_folder(tmp_path / "shapes", per_class=16, size=32)
    (tmp_path / "run.yaml").write_text(
        "model:\n  name: cnn\n"
        "train:\n  epochs: 1\n  lr: 0.01\n"
        "data:\n  image_size: 32\n  batch_size: 8\n"
    )
    names = tmp_path / "cat_to_name.json"
    names.write_text(json.dumps({"circle": "Round thing"}))
    result = graft(
        "train",
        str(data),
        "--config",
        "run.yaml",
        "--epochs",
        "5",
        "--name",
        "shapes",
        "--class-names",
        str(names),
        "--quiet",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    run = tmp_path / "runs" / "shapes"
    info = json.loads((run / "graft.json").read_text())
    assert info["config"]["train"]["epochs"] == 5  # the flag beat the file
    assert info["config"]["train"]["lr"] == 0.01  # the file beat the default
    assert (run / "model.safetensors").is_file()

    image = next((data / "circle").iterdir())
    shown = graft("predict", str(image), "--run", str(run), "--top-k", "2", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.strip().splitlines()
    assert lines[0] == str(image) and len(lines) == 3
    assert re.match(r"\s+1\. Round thing \(circle\)\s+\d+\.\d+%", lines[1])


@pytest.mark.slow
def test_mlp_from_scratch_reaches_90_percent_on_mnist5k(tmp_path: Path) -> None:
    result = graft("train", "mnist5k", "--model", "mlp", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    accuracy = float(re.search(r"validation accuracy (\d+\.\d+)%", result.stdout).group(1))  # type: ignore[union-attr]
    assert accuracy >= 90.0


def test_lr_find_writes_its_plot_in_its_own_folder(tmp_path: Path) -> None:
    found = graft("lr-find", "digits", "--model", "cnn", "--name", "sweep", "--quiet", cwd=tmp_path)
    assert found.returncode == 0, found.stderr
    suggestion = float(re.search(r"suggested learning rate: (\S+)", found.stdout).group(1))  # type: ignore[union-attr]
    figures = tmp_path / "runs" / "lr-find" / "sweep" / "figures"
    assert (figures / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 1e-7 < suggestion < 1.0
    assert "use it: graft train digits --model cnn --lr " in found.stdout


def test_lr_auto_trains_at_the_suggestion(tmp_path: Path) -> None:
    trained = graft("train", "digits", "--model", "cnn", "--lr", "auto", "--epochs", "2",
                    "--name", "auto", "--quiet", cwd=tmp_path)  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    info = json.loads((tmp_path / "runs" / "auto" / "graft.json").read_text())
    assert info["config"]["train"]["lr"] == info["metrics"]["lr_find_suggestion"]
    assert (tmp_path / "runs" / "auto" / "figures" / "lr_find.png").is_file()


def test_evaluate_writes_metrics_and_calibrates_predictions(copied_run: Path) -> None:
    # training left these too: remove them, so only evaluate can have written them
    (copied_run / "metrics.json").unlink()
    (copied_run / "figures" / "confusion_matrix.png").unlink()
    result = graft("evaluate", "--run", str(copied_run), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "precision" in result.stdout and "calibration: ECE" in result.stdout
    assert re.search(r"unfamiliar inputs: score above \d\.\d{4} \(the 0.99 quantile", result.stdout)
    report = json.loads((copied_run / "metrics.json").read_text())
    info = json.loads((copied_run / "graft.json").read_text())
    assert report["temperature"] == info["temperature"] > 0
    assert (
        report["metrics"]["confusion"]
        and (copied_run / "figures" / "confusion_matrix.png").is_file()
    )
    assert sum(sum(row) for row in report["metrics"]["confusion"]) == report["images"]


def test_evaluate_runs_on_the_device_it_is_given(
    copied_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_cpu = graft("evaluate", "--run", str(copied_run), "--device", "cpu", "--quiet")
    assert on_cpu.returncode == 0, on_cpu.stderr
    assert "on cpu, fp32" in on_cpu.stdout
    report = json.loads((copied_run / "metrics.json").read_text())
    assert (report["device"], report["precision"]) == ("cpu", "fp32")
    # asked for a GPU it lacks: refused, not run elsewhere (no GPU is visible, on any machine)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    on_gpu = graft("evaluate", "--run", str(copied_run), "--device", "cuda", "--quiet")
    assert on_gpu.returncode == 2 and "cuda: torch sees no CUDA device" in on_gpu.stderr
    assert json.loads((copied_run / "metrics.json").read_text()) == report  # nothing written


@pytest.mark.gpu
def test_evaluate_on_cuda_gives_the_cpu_answers(copied_run: Path) -> None:
    reports = {}
    for device in ("cpu", "cuda"):
        result = graft("evaluate", "--run", str(copied_run), "--device", device, "--quiet")
        assert result.returncode == 0, result.stderr
        reports[device] = json.loads((copied_run / "metrics.json").read_text())
    assert reports["cuda"]["device"].startswith("cuda")
    assert reports["cuda"]["images"] == reports["cpu"]["images"]
    # bf16/fp16 autocast may move a probability, not the answers on a well-separated tiny set
    assert reports["cuda"]["metrics"]["confusion"] == reports["cpu"]["metrics"]["confusion"]


@pytest.mark.gpu
def test_predict_on_cuda_gives_the_cpu_answers(tiny_run: Path, tmp_path: Path) -> None:
    from PIL import Image

    from torchgraft.testing import class_image

    for index in range(6):
        Image.fromarray(class_image(index % 3, 32, seed=index)).save(tmp_path / f"{index}.png")
    records = {}
    for device in ("cpu", "cuda"):
        result = graft("predict", "*.png", "--run", str(tiny_run), "--device", device,
                       "--output", f"{device}.json", cwd=tmp_path)  # fmt: skip
        assert result.returncode == 0, result.stderr
        records[device] = json.loads((tmp_path / f"{device}.json").read_text())
    assert [r["class_name"] for r in records["cuda"]] == [r["class_name"] for r in records["cpu"]]
    for on_gpu, on_cpu in zip(records["cuda"], records["cpu"], strict=True):
        assert on_gpu["probability"] == pytest.approx(on_cpu["probability"], abs=0.02)


def test_training_twice_under_one_name_leaves_the_first_run_intact(tmp_path: Path) -> None:
    from torchgraft.testing import make_image_folder

    data = make_image_folder(tmp_path / "data", per_class=6, size=16)
    train = ("train", str(data), "--model", "mlp", "--epochs", "1", "--name", "x",
             "--no-report", "--quiet")  # fmt: skip
    assert graft(*train, cwd=tmp_path).returncode == 0
    run = tmp_path / "runs" / "x"
    before = file_hashes(run)
    assert "model.safetensors" in before and "checkpoints/last.json" in before

    again = graft(*train, "--epochs", "2", cwd=tmp_path)
    assert again.returncode == 2
    assert file_hashes(run) == before
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["x"]
    message = again.stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in again.stderr
    assert "--resume runs/x" in message and "--name" in message and "--overwrite" in message

    replaced = graft(*train, "--epochs", "2", "--overwrite", cwd=tmp_path)
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads((run / "graft.json").read_text())["config"]["train"]["epochs"] == 2
