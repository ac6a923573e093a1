"""SIGTERM stops a training as Ctrl-C does.

SLURM, Kubernetes and `timeout` send SIGTERM before they kill. While training, it raises
`Terminated`, a KeyboardInterrupt, wherever the main thread is: the same path as Ctrl-C
then keeps the last complete epoch's checkpoint and says how to resume. SIGINT is left as
it is, so a run started in the background (where SIGINT is ignored) still stops cleanly
on SIGTERM.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Terminated(KeyboardInterrupt):
    """The process was sent SIGTERM (handled like Ctrl-C's KeyboardInterrupt)."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated`; the previous handler is put back after.

    Python runs signal handlers in the main thread only, and only the main thread may set
    them: from another thread (a notebook's worker, a server) the block changes nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        # None: a handler set outside Python, which cannot be put back; the default is closest.
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(f"received signal {signal.Signals(signum).name}")
