"""The end of a fit, after its last step: a stop signal there cannot wait for a step boundary.

`StopRaises` makes SIGINT/SIGTERM raise `Stopped` at once (e.g. inside the final test evaluation), so that the
trainer can leave last.pt as the state `trainer.resume=auto` finishes and say so; metrics.json, which marks a
run finished, is written atomically.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from cnnlab.engine.signals import STOP_SIGNALS


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Stopped(Exception):
    def __init__(self, signum: int):
        self.signum = signum


class StopRaises:
    """SIGINT/SIGTERM raise Stopped at once (the test evaluation has no step boundary to stop at)."""

    def __enter__(self):
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self.previous[signum] = signal.signal(signum, self._raise)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    @staticmethod
    def _raise(signum, frame):
        raise Stopped(signum)
