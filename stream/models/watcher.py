"""The registry watcher: one background thread that polls the registry for new
production (and challenger) versions, backing off while it cannot be reached.

It only calls ``refresh`` (``ModelTable.refresh``: poll, then load and check off the
hot path); what a poll changes is the table's business. While the registry is
unreachable the delay doubles up to a few intervals (fewer log lines, no hammering a
server that is starting up) but never more, so changes are picked up soon after it is
back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from stream.ops.failures import brief

__all__ = ["RegistryWatcher"]

log = logging.getLogger(__name__)


class RegistryWatcher:
    """Calls ``refresh`` every ``interval`` seconds on its own thread until stopped."""

    def __init__(self, refresh: Callable[[], Any]) -> None:
        self._refresh = refresh
        self.poll_errors = 0  # consecutive failed polls (0 while the registry answers)
        self.poll_errors_total = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, interval: float) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._watch, args=(interval,), name="model-watcher", daemon=True
        )
        self._thread.start()

    def _watch(self, interval: float) -> None:
        cap = max(interval, min(30.0, 4 * interval))
        delay = interval
        while not self._stop.wait(delay):
            try:
                self._refresh()
            except Exception as e:
                self.poll_errors += 1
                self.poll_errors_total += 1
                delay = min(cap, interval * 2 ** (self.poll_errors - 1))
                log.warning(
                    "registry poll failed (%d in a row: %s); current models keep serving, "
                    "retry in %.0fs",
                    self.poll_errors,
                    brief(e),
                    delay,
                )
                continue
            if self.poll_errors:
                log.info("registry reachable again after %d failed polls", self.poll_errors)
            self.poll_errors = 0
            delay = interval

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
