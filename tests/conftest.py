"""Shared fixtures. Threads are capped so tests never oversubscribe the 2-core machine."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from torchgraft.testing import file_hashes

# Each test process (several under pytest-xdist's `-n`), and every CLI subprocess it starts
# (they inherit OMP_NUM_THREADS), gets its share of the cores, at most 2.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // WORKERS))
os.environ["OMP_NUM_THREADS"] = str(THREADS)
torch.set_num_threads(THREADS)

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


@pytest.fixture
def copied_run(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the shared tiny run, for a test that evaluates, exports or explains
    into it: the shared run is read-only (see `SharedRuns`)."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


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


# GPU tests (`@pytest.mark.gpu`) need a CUDA device. Without one, a plain run skips them with
# the reason, so the summary line counts them and -ra says why (this works in xdist workers,
# where a deselection would not reach the summary); a run that asks for them (`-m gpu`, `make
# test-gpu`) fails them instead, so a GPU job on a machine that lost its GPU is never green.
GPU_NOT_RUN = "gpu test not run: no CUDA device (make test-gpu on a GPU machine)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available() or "gpu" in (config.option.markexpr or ""):
        return
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(pytest.mark.skip(reason=GPU_NOT_RUN))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") and not torch.cuda.is_available():
        pytest.fail("a gpu test on a machine where torch sees no CUDA device", pytrace=False)


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


# Shared runs are read-only. A session- or module-scoped fixture that hands out a run directory
# (a folder with graft.json, a Run, an ExportReport, or a tuple holding one) is registered here
# when it is created. After every test the run's files are compared with what they were (size,
# mtime, inode: cheap), and a test that changed one errors at teardown, naming the files; at the
# end of the session every shared run is hashed again and any changed file fails the session.


class SharedRuns:
    def __init__(self) -> None:
        self.hashes: dict[Path, tuple[str, dict[str, str]]] = {}
        self.stats: dict[Path, dict[str, tuple[int, int, int]]] = {}

    def add(self, folder: Path, fixture: str) -> None:
        if folder not in self.hashes:
            self.hashes[folder] = (fixture, file_hashes(folder))
            self.stats[folder] = file_stats(folder)

    def changed_since_last_look(self) -> dict[Path, list[str]]:
        changed = {}
        for folder, before in self.stats.items():
            now = file_stats(folder)
            if now != before:
                changed[folder] = differences(before, now)
                self.stats[folder] = now  # blame the next change on the test that makes it
        return changed

    def changed_since_created(self) -> dict[str, list[str]]:
        return {
            f"{fixture} ({folder})": differences(before, file_hashes(folder))
            for folder, (fixture, before) in self.hashes.items()
            if file_hashes(folder) != before
        }


def file_stats(folder: Path) -> dict[str, tuple[int, int, int]]:
    return {
        str(path.relative_to(folder)): (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and (stat := path.stat())
    }


def differences(before: dict[str, object], after: dict[str, object]) -> list[str]:
    return sorted(
        [
            f"{name} (changed)"
            for name in before.keys() & after.keys()
            if before[name] != after[name]
        ]
        + [f"{name} (added)" for name in after.keys() - before.keys()]
        + [f"{name} (removed)" for name in before.keys() - after.keys()]
    )


SHARED_RUNS = SharedRuns()


def run_folders(value: object, depth: int = 0) -> Iterator[Path]:
    """The run directories a fixture value hands out."""
    if depth > 2:
        return
    if isinstance(value, Path):
        if (value / "graft.json").is_file():
            yield value
    elif isinstance(value, tuple | list):
        for item in value:
            yield from run_folders(item, depth + 1)
    elif isinstance(value, dict):
        for item in value.values():
            yield from run_folders(item, depth + 1)
    else:
        for attribute in ("path", "folder"):  # Run.path; ExportReport.folder is run/exports
            found = getattr(value, attribute, None)
            if isinstance(found, Path):
                yield from run_folders(found if attribute == "path" else found.parent, depth + 1)


class SharedRunRegistrar:
    """A plugin, not a conftest hook: pytest asks a session-scoped fixture's setup hooks of the
    session node, which does not see the hooks in tests/conftest.py."""

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef: pytest.FixtureDef[object]) -> Iterator[object]:
        value = yield
        if fixturedef.scope in ("session", "package", "module"):
            for folder in run_folders(value):
                SHARED_RUNS.add(folder, fixturedef.argname)
        return value


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(SharedRunRegistrar(), "torchgraft-shared-runs")


@pytest.fixture(autouse=True)
def _shared_runs_stay_unchanged() -> Iterator[None]:
    SHARED_RUNS.changed_since_last_look()  # changes made while shared fixtures were set up
    yield
    changed = SHARED_RUNS.changed_since_last_look()
    if changed:
        listing = "; ".join(f"{folder}: {', '.join(files)}" for folder, files in changed.items())
        pytest.fail(
            f"this test wrote into a shared run (copy it first, e.g. the copied_run fixture): "
            f"{listing}",
            pytrace=False,
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    changed = SHARED_RUNS.changed_since_created()
    if changed:
        session.config.stash[SHARED_RUNS_CHANGED] = changed
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


SHARED_RUNS_CHANGED = pytest.StashKey[dict[str, list[str]]]()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    changed = config.stash.get(SHARED_RUNS_CHANGED, {})
    if changed:
        terminalreporter.section("shared runs changed during the session", red=True, bold=True)
        for fixture, files in changed.items():
            terminalreporter.write_line(f"{fixture}: {', '.join(files)}", red=True)
