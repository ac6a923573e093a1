"""A run reloaded in a fresh process predicts exactly what the training process predicted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from torchgraft import api
from torchgraft.testing import class_image

PREDICT_IN_NEW_PROCESS = """
import json, sys
import numpy as np
from torchgraft import api
images = np.load(sys.argv[2])
print(json.dumps(api.predictor(sys.argv[1]).predict_proba(list(images)).tolist()))
"""


def test_fresh_process_gives_identical_predictions(tiny_run: Path, tmp_path: Path) -> None:
    images = np.stack([class_image(label % 3, 32, seed=label) for label in range(6)])
    np.save(tmp_path / "images.npy", images)
    here = api.predictor(tiny_run).predict_proba(list(images))
    result = subprocess.run(
        [sys.executable, "-c", PREDICT_IN_NEW_PROCESS, str(tiny_run), str(tmp_path / "images.npy")],
        capture_output=True,
        text=True,
        check=True,
    )
    there = np.array(json.loads(result.stdout), dtype=np.float32)
    np.testing.assert_array_equal(here, there)
