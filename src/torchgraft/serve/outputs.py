"""Writing predictions to a file: preds.csv (one row per image) or preds.json (one record each).

The suffix picks the format. Writes are atomic, like everything else torchgraft writes.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path

from torchgraft.artifact import atomic_write_bytes
from torchgraft.errors import UserError
from torchgraft.serve.predictor import Prediction

OUTPUT_FORMATS = (".csv", ".json")


def check_output_path(path: str | Path) -> Path:
    """The output file, refused before any work when its suffix names no known format."""
    path = Path(path)
    if path.suffix.lower() not in OUTPUT_FORMATS:
        raise UserError(
            f"cannot write predictions to {path}: the file name must end in .csv or .json "
            "(for example --output preds.csv)"
        )
    if path.is_dir():
        raise UserError(f"--output {path} is a folder: name a file such as {path / 'preds.csv'}")
    return path


def write_predictions(predictions: Sequence[Prediction], path: str | Path) -> Path:
    """Write one row (CSV) or record (JSON) per prediction; returns the path written."""
    path = check_output_path(path)
    if path.suffix.lower() == ".csv":
        text = predictions_csv(predictions)
    else:
        text = json.dumps([p.to_dict() for p in predictions], indent=2) + "\n"
    atomic_write_bytes(path, text.encode())
    return path


def predictions_csv(predictions: Sequence[Prediction]) -> str:
    """source, then class/display name/probability for each rank, then the unfamiliar score
    and flag, then error (each empty if none)."""
    ranks = max((len(p.top_k) for p in predictions), default=0)
    header = ["source"]
    for rank in range(1, ranks + 1):
        header += [f"class_name_{rank}", f"display_name_{rank}", f"probability_{rank}"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*header, "unfamiliar", "is_unfamiliar", "error"])
    for prediction in predictions:
        cells: list[str] = [prediction.source]
        for score in prediction.top_k:
            cells += [score.class_name, score.display_name, f"{score.probability:.6f}"]
        cells += [""] * (len(header) - len(cells))
        flag = prediction.is_unfamiliar
        unfamiliar = "" if prediction.unfamiliar is None else f"{prediction.unfamiliar:.6f}"
        writer.writerow([*cells, unfamiliar, "" if flag is None else str(flag).lower(),
                         prediction.error])  # fmt: skip
    return buffer.getvalue()
