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
from torchgraft.export.aoti import export_aoti
from torchgraft.export.images import parity_images
from torchgraft.export.model import METADATA_PREFIX, ExportInputs, ProbabilityModel

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


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """graft_classify, built once for the tests here."""
    return build_example(tmp_path_factory.mktemp("cpp") / "build")


def classify(program: Path, model: Path, image: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(program), str(model), str(image)], capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_cpp_example_prints_the_same_top1_as_python(
    tiny_run: Path, tmp_path: Path, program: Path
) -> None:
    (tmp_path / "run").mkdir()
    for name in (RUN_FILE, WEIGHTS_FILE):
        shutil.copy2(tiny_run / name, tmp_path / "run" / name)
    run = Run.load(tmp_path / "run")
    model = api.export(run, "aoti", quiet=True).folder / "model.pt2"

    # Validation images at the training size, as exports/README.md says to write them.
    # The C++ program reads PPM; Python reads the same pixels as PNG (PPM is not among the
    # formats torchgraft decodes by default).
    images = []
    for index, pixels in enumerate(parity_images(run, quiet=True).pixels[:4]):
        images.append(tmp_path / f"image{index}.ppm")
        Image.fromarray(pixels.transpose(1, 2, 0)).save(images[-1])
        Image.fromarray(pixels.transpose(1, 2, 0)).save(images[-1].with_suffix(".png"))
    expected = api.predict(run, [str(path.with_suffix(".png")) for path in images], top_k=1)
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


class GreyProbe(torch.nn.Module):
    """A 1-channel "classifier" whose top-1 class is the value of the first pixel it gets."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        value = images.flatten(1)[:, :1].float()
        return -((torch.arange(256, dtype=torch.float32) - value) ** 2)


@pytest.mark.slow
def test_colour_image_for_a_grey_model_is_converted_as_pillow_does(
    tmp_path: Path, program: Path
) -> None:
    metadata = {
        "image_size": "1",
        "channels": "1",
        "display_names": "\n".join(map(str, range(256))),
    }
    inputs = ExportInputs(
        model=ProbabilityModel(GreyProbe(), temperature=1.0).eval(),
        example=torch.zeros((2, 1, 1, 1), dtype=torch.uint8),
        metadata={METADATA_PREFIX + key: value for key, value in metadata.items()},
        calibration_images=lambda: np.zeros((0, 1, 1, 1), dtype=np.uint8),
    )
    model = tmp_path / "probe.pt2"
    export_aoti(inputs, model)
    # Pure red: a plain mean gives 85, ITU-R 601 luma 76. The others are where rounding
    # 0.299 R + 0.587 G + 0.114 B in float32 misses Pillow's fixed-point result by one.
    for colour in ((255, 0, 0), (92, 224, 136), (17, 179, 196), (176, 30, 169)):
        image = Image.new("RGB", (1, 1), colour)
        image.save(tmp_path / "colour.ppm")
        expected = image.convert("L").getpixel((0, 0))  # what Python's decoding feeds the model
        result = classify(program, model, tmp_path / "colour.ppm")
        assert result.returncode == 0, result.stderr
        assert TOP1.search(result.stdout).group(1) == str(expected), colour  # type: ignore[union-attr]
