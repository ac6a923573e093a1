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
# The export signing secret too: tests never write to ~/.config or trust a real user's key.
os.environ["TORCHGRAFT_SECRET_FILE"] = str(
    Path(tempfile.mkdtemp(prefix="torchgraft-test-secret-")) / "secret"
)


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


@pytest.fixture(scope="session")
def imagenet_model() -> torch.nn.Module:
    """EfficientNet-Lite0 with the bundled ImageNet weights, classifier included (224 px)."""
    from torchgraft.models import create_classifier
    from torchgraft.models.bundled import efficientnet_lite0_weights
    from torchgraft.models.registry import IMAGENET_MEAN, IMAGENET_STD

    model = create_classifier("efficientnet_lite0", 1000, channels=3, image_size=224,
                              mean=IMAGENET_MEAN, std=IMAGENET_STD, pretrained=True)  # fmt: skip
    # The grafted head is re-initialised; put the bundled ImageNet classifier back.
    model.net.load_state_dict(efficientnet_lite0_weights())
    return model.eval()


CHROMIUM = Path("/usr/bin/chromium")
# Debian's Chromium in a container: no sandbox, no GPU, and nothing that reaches the network.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():  # type: ignore[no-untyped-def]
    """Headless Chromium driven by playwright; the browser is Debian's, never a download.

    Module-scoped: playwright's sync API keeps an asyncio loop running in this thread while
    it is open, and later tests that start their own loop (anyio.run) must not see it.
    """
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `apt-get update && apt-get install -y chromium`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):  # type: ignore[no-untyped-def]
    """A fresh page that records console errors and page errors in `page.errors`."""
    context = browser.new_context()
    new_page = context.new_page()
    errors: list[str] = []
    new_page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    new_page.on("pageerror", lambda error: errors.append(str(error)))
    new_page.errors = errors
    yield new_page
    context.close()
