"""Shared fixtures. Threads are capped so tests never oversubscribe the 2-core machine."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

# Caches (decoded images, backbone features) go to a fresh folder per test session, also for
# the CLI subprocesses, which inherit the environment: no test reads another session's cache.
os.environ["TORCHGRAFT_CACHE"] = tempfile.mkdtemp(prefix="torchgraft-test-cache-")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained from-scratch cnn on a generated 3-class folder: seconds to train."""
    from torchgraft import api
    from torchgraft.testing import make_image_folder

    root = tmp_path_factory.mktemp("tiny")
    data = make_image_folder(root / "data", per_class=16, size=32)
    run = api.train(
        data,
        model="cnn",
        epochs=5,
        image_size=32,
        batch_size=8,
        runs_dir=str(root / "runs"),
        name="tiny",
        quiet=True,
    )
    return run.path
