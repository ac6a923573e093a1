"""preds.csv and preds.json: one row or record per image, the suffix picks the format."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from torchgraft.errors import UserError
from torchgraft.serve.outputs import write_predictions
from torchgraft.serve.predictor import ClassScore, Prediction

FIRST = [ClassScore("1", "pink primrose", 0.75), ClassScore("2", "daisy", 0.25)]
RECORDS = [
    Prediction("a.png", FIRST, unfamiliar=0.5, unfamiliar_threshold=0.25),
    Prediction("b.png", [], "truncated or corrupt (image file is truncated)"),
    Prediction('c,"odd".png', [ClassScore("2", "daisy", 0.5), ClassScore("1", "pink", 0.5)]),
]


def test_csv_has_one_row_per_image_with_ranked_columns(tmp_path: Path) -> None:
    path = write_predictions(RECORDS, tmp_path / "out" / "preds.csv")
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == [
        "source", "class_name_1", "display_name_1", "probability_1",
        "class_name_2", "display_name_2", "probability_2", "unfamiliar", "is_unfamiliar", "error",
    ]  # fmt: skip
    assert [row["source"] for row in rows] == ["a.png", "b.png", 'c,"odd".png']
    assert rows[0]["display_name_1"] == "pink primrose" and float(rows[0]["probability_2"]) == 0.25
    assert rows[1]["class_name_1"] == "" and rows[1]["error"].startswith("truncated")
    assert rows[2]["class_name_1"] == "2" and rows[2]["error"] == ""
    assert (rows[0]["unfamiliar"], rows[0]["is_unfamiliar"]) == ("0.500000", "true")
    assert rows[2]["unfamiliar"] == rows[2]["is_unfamiliar"] == ""  # no score: empty


def test_json_has_one_record_per_image(tmp_path: Path) -> None:
    records = json.loads(write_predictions(RECORDS, tmp_path / "preds.JSON").read_text())
    assert [r["source"] for r in records] == ["a.png", "b.png", 'c,"odd".png']
    assert records[0]["class_name"] == "1" and records[0]["probability"] == 0.75
    assert records[0]["top_k"][1] == {
        "class_name": "2",
        "display_name": "daisy",
        "probability": 0.25,
    }
    assert records[1]["top_k"] == [] and records[1]["error"]
    assert (records[0]["unfamiliar"], records[0]["is_unfamiliar"]) == (0.5, True)
    assert records[0]["unfamiliar_threshold"] == 0.25
    assert records[2]["unfamiliar"] is records[2]["is_unfamiliar"] is None


@pytest.mark.parametrize("name", ["preds.txt", "preds", "preds.csv.gz"])
def test_other_suffixes_are_a_user_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(UserError, match=r"must end in \.csv or \.json"):
        write_predictions(RECORDS, tmp_path / name)
    assert not (tmp_path / name).exists()
