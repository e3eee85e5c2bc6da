"""SIGTERM and SIGINT as an exception, so a cancelled run (a CI job stopped, Ctrl-C) unwinds like any failure:
its run is recorded `failed` ("interrupted by SIGTERM"), its locks are released and temporary files removed.

Without this, SIGTERM ends Python at once: no `finally` runs and the run would stay `running`.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from mlci.errors import MlciError


class Interrupted(MlciError):
    """The process got SIGTERM or SIGINT; exits 128 + the signal number, as a shell reports it."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def _raise(signum: int, _frame: FrameType | None) -> None:
    # Once: a second signal during the unwinding must not cut the cleanup short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Interrupted(signum)


@contextmanager
def interruptible() -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT raise Interrupted (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
