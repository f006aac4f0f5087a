"""SIGINT/SIGTERM stop a fit at the next step boundary, so that it can save last.pt and say how to resume.

Only a flag is set in the handler; the training loop reads it after each step (a host-side check, no
device sync). A second signal exits at once: the last completed save is on disk, and a save in progress
never replaces a checkpoint until it is complete.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def handling_stops(handler):
    """`handler` for SIGINT and SIGTERM inside the block, the previous handlers back after it (main thread only:
    handlers can only be set there)."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, handler_before in previous.items():
            signal.signal(signum, handler_before)


class StopSignals:
    def __init__(self):
        self.received = 0  # the first stop signal's number, 0 while none came
        self._handling = None

    @property
    def name(self) -> str:
        return {signal.SIGINT: "interrupted (Ctrl-C)", signal.SIGTERM: "terminated (SIGTERM)"}.get(
            self.received, signal.Signals(self.received).name if self.received else ""
        )

    def __enter__(self) -> StopSignals:
        self._handling = handling_stops(self._handle)
        self._handling.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._handling.__exit__(*exc)
        self._handling = None

    def _handle(self, signum, frame) -> None:
        if self.received:
            os.write(2, f"\n{signal.Signals(signum).name} again: exiting at once\n".encode())
            os._exit(128 + signum)
        self.received = signum
