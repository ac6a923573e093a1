"""`graft predict` on folders and globs, with --output, as a user runs it."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from tests.e2e.runner import graft
from torchgraft.testing import class_image

pytestmark = pytest.mark.slow


def test_a_folder_with_a_broken_file_goes_to_preds_csv(tiny_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    for index, path in enumerate(["b.png", "a.png", "more/c.png"]):
        Image.fromarray(class_image(index, 32, seed=index)).save(folder / path)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    result = graft("predict", "photos", "--run", str(tiny_run), "--top-k", "2",
                   "--output", "preds.csv", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "wrote 4 predictions to preds.csv"
    assert "1 of 4 images could not be read" in result.stderr
    rows = list(csv.DictReader((tmp_path / "preds.csv").open()))
    assert [row["source"] for row in rows] == [
        "photos/a.png", "photos/b.png", "photos/broken.jpg", "photos/more/c.png",
    ]  # fmt: skip
    assert [row["class_name_1"] for row in rows] == ["square", "circle", "", "triangle"]
    assert rows[2]["error"] and "probability_2" in rows[0]


def test_the_pytorch_challenge_usage_and_json_output(tiny_run: Path, tmp_path: Path) -> None:
    image = tmp_path / "flower.jpg"
    Image.fromarray(class_image(0, 32, seed=3)).save(image)
    names = tmp_path / "cat_to_name.json"
    names.write_text(json.dumps({"circle": "round thing", "square": "box"}))
    shown = graft("predict", "flower.jpg", "--run", str(tiny_run), "--top-k", "5",
                  "--class-names", "cat_to_name.json", cwd=tmp_path)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.strip().splitlines()
    assert lines[0] == "flower.jpg" and len(lines) == 4  # top-5 of 3 classes shows 3
    assert re.match(r"\s+1\. round thing \(circle\)\s+\d+\.\d+%", lines[1])

    written = graft("predict", "*.jpg", "--run", str(tiny_run), "--output", "out/preds.json",
                    cwd=tmp_path)  # fmt: skip
    assert written.returncode == 0, written.stderr
    (record,) = json.loads((tmp_path / "out" / "preds.json").read_text())
    assert record["source"] == "flower.jpg" and record["class_name"] == "circle"
    assert len(record["top_k"]) == 3 and record["error"] == ""


def test_a_photo_given_to_the_shape_classifier_is_marked_unfamiliar(
    tiny_run: Path, tmp_path: Path
) -> None:
    from skimage.data import chelsea

    Image.fromarray(chelsea()).save(tmp_path / "cat.png")
    Image.fromarray(class_image(0, 32, seed=3)).save(tmp_path / "shape.png")
    shown = graft("predict", "cat.png", "shape.png", "--run", str(tiny_run), "--top-k", "1",
                  cwd=tmp_path)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.strip().splitlines()
    assert lines[0] == "cat.png" and lines[3] == "shape.png" and len(lines) == 5
    assert re.match(r"\s+unfamiliar input, unlike the training images \(score \d\.\d+ > ", lines[1])


def test_an_unknown_output_suffix_exits_2_before_predicting(tiny_run: Path, tmp_path: Path) -> None:
    Image.fromarray(class_image(0, 32)).save(tmp_path / "x.png")
    result = graft("predict", "*.png", "--run", str(tiny_run), "--output", "preds.txt",
                   cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and "must end in .csv or .json" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "preds.txt").exists()


@pytest.mark.parametrize("device", ["gpu", "cuda"])
def test_a_device_this_machine_lacks_exits_2_with_one_line(
    tiny_run: Path, tmp_path: Path, device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU visible, also on a GPU machine
    Image.fromarray(class_image(0, 32)).save(tmp_path / "x.png")
    result = graft("predict", "x.png", "--run", str(tiny_run), "--device", device, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line
    assert result.stderr.startswith(f"error: {'device ' if device == 'gpu' else ''}")
    assert "cpu" in result.stderr and "Traceback" not in result.stderr
