"""SIGTERM during training raises like Ctrl-C, and only while training."""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

import pytest

from torchgraft.train.signals import Terminated, sigterm_as_interrupt


def test_sigterm_interrupts_like_ctrl_c_and_the_old_handler_comes_back() -> None:
    heard: list[int] = []

    def earlier(signum: int, frame: FrameType | None) -> None:
        heard.append(signum)

    previous = signal.signal(signal.SIGTERM, earlier)
    try:
        with pytest.raises(KeyboardInterrupt) as raised, sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
        assert isinstance(raised.value, Terminated) and heard == []
        assert signal.getsignal(signal.SIGTERM) is earlier
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):
            pass
        assert heard == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_outside_the_main_thread_no_handler_is_touched() -> None:
    before = signal.getsignal(signal.SIGTERM)
    seen: list[object] = []

    def train_in_a_thread() -> None:
        with sigterm_as_interrupt():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=train_in_a_thread)
    thread.start()
    thread.join()
    assert seen == [before]
