"""Running the `graft` command in a subprocess, as a user does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

GRAFT = [sys.executable, "-m", "torchgraft"]


def graft(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}  # OMP_NUM_THREADS as tests/conftest.py set it
    return subprocess.run(
        [*GRAFT, *args], capture_output=True, text=True, cwd=cwd, timeout=900, env=env
    )
