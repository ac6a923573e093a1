"""examples/cpp: build it against the torch wheel and classify as Python does."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchgraft import api
from torchgraft.artifact import RUN_FILE, WEIGHTS_FILE, Run
from torchgraft.export.images import parity_images

EXAMPLE = Path(__file__).parents[2] / "examples" / "cpp"
TOP1 = re.compile(r"^top-1: (.*) \((\d\.\d{6})\)$", re.M)


def build_example(build: Path) -> Path:
    for tool in ("cmake", "ninja"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: apt-get install cmake ninja-build g++")
    prefix = f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"
    configure = ["cmake", "-S", str(EXAMPLE), "-B", str(build), "-G", "Ninja", prefix,
                 "-DCMAKE_BUILD_TYPE=Release"]  # fmt: skip
    for command in (configure, ["cmake", "--build", str(build), "-j", "2"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return build / "graft_classify"


def classify(program: Path, model: Path, image: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(program), str(model), str(image)], capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_cpp_example_prints_the_same_top1_as_python(tiny_run: Path, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    for name in (RUN_FILE, WEIGHTS_FILE):
        shutil.copy2(tiny_run / name, tmp_path / "run" / name)
    run = Run.load(tmp_path / "run")
    model = api.export(run, "aoti", quiet=True).folder / "model.pt2"
    program = build_example(tmp_path / "build")

    # Validation images at the training size, as exports/README.md says to write them.
    images = []
    for index, pixels in enumerate(parity_images(run, quiet=True).pixels[:4]):
        images.append(tmp_path / f"image{index}.ppm")
        Image.fromarray(pixels.transpose(1, 2, 0)).save(images[-1])
    expected = api.predict(run, [str(path) for path in images], top_k=1)
    for path, prediction in zip(images, expected, strict=True):
        result = classify(program, model, path)
        assert result.returncode == 0, result.stderr
        name, probability = TOP1.search(result.stdout).groups()  # type: ignore[union-attr]
        assert name == prediction.display_name
        assert float(probability) == pytest.approx(prediction.probability, abs=1e-4)

    # A grey image of another size still classifies, with a note that it was stretched.
    grey = tmp_path / "grey.pgm"
    Image.fromarray(np.full((40, 50), 200, dtype=np.uint8)).save(grey)
    result = classify(program, model, grey)
    assert result.returncode == 0 and TOP1.search(result.stdout), result.stderr
    assert "stretching the 50x40 image to 32x32" in result.stderr
    broken = tmp_path / "broken.ppm"
    broken.write_bytes(b"P6\n32 32\n255\n" + bytes(10))
    result = classify(program, model, broken)
    assert result.returncode == 1 and "is truncated" in result.stderr
