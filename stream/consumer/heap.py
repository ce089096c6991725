"""Keeps Python's full garbage collections off the latency path.

A full (generation 2) collection walks every tracked object. With MLflow,
scikit-learn and pandas imported and the models loaded that is the bulk of the
heap, and under a steady 68k events/s each one took 230-260 ms, about every
2 s: most of the p99 latency (see the benchmark's row 6). Almost all of those
objects live as long as the process, so once the process settles they are moved
to the permanent generation (``gc.freeze``) and later collections walk only what
was made since (a full pass then took 1-3 ms).

When the set of loaded models changes, the new model's objects are frozen too,
at a batch boundary. Frozen objects are still freed by reference counting (a
replaced model goes as soon as nothing uses it); only reference cycles among
them wait, so a full collection of everything runs once a ``full_every`` window
in which models changed.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class HeapFreezer:
    """Freezes the long-lived heap at batch boundaries after the model set changed."""

    def __init__(self, changes: Callable[[], int], *, full_every: float = 600.0) -> None:
        self._changes = changes
        self._seen: int | None = None
        self.full_every = full_every
        self._last_full = time.monotonic()
        self._dirty_since_full = False
        self.freezes = 0

    def maybe_freeze(self) -> bool:
        """Call between batches; returns True when it froze (a collection ran)."""
        n = self._changes()
        now = time.monotonic()
        changed = n != self._seen
        full = self._seen is None or (
            self._dirty_since_full and now - self._last_full > self.full_every
        )
        if not changed and not full:
            return False
        t0 = time.perf_counter()
        if full:
            # Everything, cycles among frozen objects included: the first time, then rarely.
            gc.unfreeze()
            self._last_full = now
            self._dirty_since_full = False
        else:
            self._dirty_since_full = True
        gc.collect()
        gc.freeze()
        self._seen = n
        self.freezes += 1
        log.debug(
            "heap frozen (%s collection %.1f ms, %d objects frozen)",
            "full" if full else "young",
            1e3 * (time.perf_counter() - t0),
            gc.get_freeze_count(),
        )
        return True
