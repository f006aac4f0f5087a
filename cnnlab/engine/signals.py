"""SIGINT/SIGTERM stop a fit at the next step boundary, so that it can save last.pt and say how to resume.

Only a flag is set in the handler; the training loop reads it after each step (a host-side check, no
device sync). A second signal exits at once: the last completed save is on disk, and a save in progress
never replaces a checkpoint until it is complete.
"""

from __future__ import annotations

import os
import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    def __init__(self):
        self.received = 0  # the first stop signal's number, 0 while none came
        self._previous: dict = {}

    @property
    def name(self) -> str:
        return {signal.SIGINT: "interrupted (Ctrl-C)", signal.SIGTERM: "terminated (SIGTERM)"}.get(
            self.received, signal.Signals(self.received).name if self.received else ""
        )

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.received:
            os.write(2, f"\n{signal.Signals(signum).name} again: exiting at once\n".encode())
            os._exit(128 + signum)
        self.received = signum
