"""Preemption: SIGTERM or SIGINT (a cluster's notice) lets the loop finish its step, save and exit 0."""
from __future__ import annotations

import signal


class StopSignal:
    """Records SIGTERM / SIGINT so that the loop can finish its step, save and exit 0."""

    def __init__(self):
        self.received = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
