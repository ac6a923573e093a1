"""`graft doctor --deep` on real digits with planted mistakes: flips, a mirrored leak, a photo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.e2e.runner import graft
from torchgraft.data import load_data

pytestmark = pytest.mark.slow

PER_CLASS = (40, 10)  # train, val images per digit


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """mnist digits as train/ and val/ class folders, with five files moved to a wrong class,
    a mirrored copy of a validation digit in train/, and a cat photo among the 3s."""
    from skimage import data as photos

    root = tmp_path_factory.mktemp("planted") / "digits"
    digits = load_data("mnist5k", val_fraction=0.0)
    rng = np.random.default_rng(0)
    files: dict[str, list[Path]] = {"train": [], "val": []}
    for label in range(10):
        indices = np.flatnonzero(digits.train.labels == label)[: sum(PER_CLASS)]
        for position, index in enumerate(indices):
            split = "train" if position < PER_CLASS[0] else "val"
            path = root / split / str(label) / f"{label}_{position:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(digits.train.images[index]).save(path)
            files[split].append(path)
    flips = set()
    for path in rng.choice(np.array(files["train"], dtype=object), 5, replace=False):
        wrong = (int(path.parent.name) + 3) % 10
        target = root / "train" / str(wrong) / path.name
        path.rename(target)
        flips.add(target.relative_to(root).as_posix())
    original = files["val"][13]
    copy = root / "train" / original.parent.name / "copy.png"
    Image.open(original).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(copy)
    Image.fromarray(photos.chelsea()).resize((64, 48)).save(root / "train" / "3" / "cat.png")
    return {
        "root": root, "flips": flips, "leak": {original.relative_to(root).as_posix(),
        copy.relative_to(root).as_posix()},
    }  # fmt: skip


@pytest.fixture(scope="module")
def deep_report(planted: dict[str, object]) -> dict:
    done = graft("doctor", str(planted["root"]), "--deep", "--json")
    assert done.returncode == 1, done.stderr  # problems found, as planted
    return json.loads(done.stdout)


def test_the_planted_flips_rank_at_the_top(deep_report: dict, planted: dict) -> None:
    ranked = [issue["file"] for issue in deep_report["label_issues"]]
    assert planted["flips"] <= set(ranked[:8]), ranked[:10]
    for issue in deep_report["label_issues"]:
        if issue["file"] in planted["flips"]:
            assert issue["suggested"] != issue["given"]
            assert issue["confidence"] > issue["given_probability"]


def test_a_mirrored_copy_across_splits_is_leakage(deep_report: dict, planted: dict) -> None:
    groups = [
        group
        for group in deep_report["semantic_duplicates"]
        if planted["leak"] <= set(group["files"])
    ]
    assert len(groups) == 1, deep_report["semantic_duplicates"]
    assert groups[0]["leaks"] and set(groups[0]["spans"]) == {"train", "val"}
    assert any(line.startswith("semantic duplicates: ") and "copy.png" in line
               for line in deep_report["problems"])  # fmt: skip


def test_a_photo_among_digits_is_an_outlier(deep_report: dict) -> None:
    assert deep_report["outliers"][0]["file"] == "train/3/cat.png"
    assert deep_report["deep"]["outlier_ratio"] > 1


def test_a_second_run_reads_the_embeddings_back(planted: dict, deep_report: dict) -> None:
    done = graft("doctor", str(planted["root"]), "--deep")
    assert done.stderr.count("embedding cache hit") == 2, done.stderr  # train and val
    top = deep_report["label_issues"][0]
    assert f"{top['file']} ({top['split']}): labelled {top['given']}" in done.stdout


def test_backbone_options_without_deep_are_refused(planted: dict) -> None:
    done = graft("doctor", str(planted["root"]), "--device", "cpu")
    assert done.returncode == 2
    assert "add --deep" in done.stderr
