"""Progress for long work: a live bar on a terminal or in a notebook, a readable log elsewhere,
and the run's own log file.

Without a terminal (CI, nohup, `> train.log`) a bar's redraws would each become a line of the
log: hundreds per epoch. There a bar is silent when it starts and ends (the epoch's summary
line says what it did) and writes one whole line every LOG_EVERY_S seconds on long work.
`quiet=True`, and TQDM_DISABLE=1 in the environment, turn progress off altogether.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tqdm import std

T = TypeVar("T")

LOG_EVERY_S = 30.0


class LogLines(std.tqdm):
    """A tqdm bar for logs: one whole line at most every LOG_EVERY_S seconds, none on close."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._last_line = time.monotonic()  # before super(): tqdm displays once on creation
        # mininterval=0: tqdm offers every update to display(), which keeps the time itself.
        kwargs.update(mininterval=0, leave=False)
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        now = time.monotonic()
        if msg is not None or now - self._last_line < LOG_EVERY_S:
            return False  # tqdm's clearing on close, or too soon after the last line
        self._last_line = now
        self.fp.write(str(self).strip() + "\n")
        self.fp.flush()
        return True


def progress(iterable: Iterable[T] | None = None, *, quiet: bool = False, **kwargs: Any) -> Any:
    """A tqdm bar over `iterable` (or a manual one with `total=`), drawn as described above."""
    kwargs.setdefault("leave", False)
    disable = quiet or _disabled_by_environment()
    return _bar_class()(iterable, disable=disable, **kwargs)


def _bar_class() -> type[std.tqdm]:
    """A widget in a Jupyter kernel, a redrawn line on a terminal, LogLines elsewhere.

    All three are std.tqdm underneath. Not tqdm.auto: its asyncio class calls iter() on the
    iterable when the bar is made, so a shuffling DataLoader drew its order twice an epoch
    and a run trained differently in a terminal than in a log file, seed for seed.
    """
    if "ipykernel" in sys.modules:
        try:
            from tqdm.notebook import tqdm as notebook_bar

            return notebook_bar
        except ImportError:  # no ipywidgets: plain text, as on a terminal
            return std.tqdm
    if _interactive():
        return std.tqdm
    return LogLines


def _interactive() -> bool:
    """A terminal: bars are redrawn in place."""
    return sys.stderr is not None and sys.stderr.isatty()


def _disabled_by_environment() -> bool:
    # tqdm reads TQDM_DISABLE only for arguments left unset, and `disable` is always set here.
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no")


@contextmanager
def logging_to(path: Path, enabled: bool = True) -> Iterator[None]:
    """Copy torchgraft's log messages, with timestamps, to `path` (appended: a resumed run
    adds to its log) while the block runs: what the terminal showed, without the bars."""
    if not enabled:  # under torchrun, rank 0 keeps the log
        yield
        return
    # backslashreplace: a file name that is not UTF-8 cannot stop the log.
    handler = logging.FileHandler(path, mode="a", encoding="utf-8", errors="backslashreplace")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    package_logger = logging.getLogger("torchgraft")
    package_logger.addHandler(handler)
    try:
        yield
    finally:
        package_logger.removeHandler(handler)
        handler.close()
