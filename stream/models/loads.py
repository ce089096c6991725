"""Model loads off the hot path: a pool of loader threads, one load per version at a time,
and a doubling backoff for a version that was refused.

Whoever asks for a version already loading joins that load (a batch's first-sight
tenant joins the preload of its model). A refused version waits ``first``, ``2 *
first``, ... up to ``cap`` seconds of ``clock`` (injectable, so tests move time instead
of sleeping) before it is tried again, and each refusal is kept (``failures``) for
messages and ``/readyz``. The pool shares the model table's lock: every structure here
is read and changed under it (the methods that say "caller holds the lock"), never
across a load.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field

from stream.registry import LoadedModel

#: What a load does: load, check and install one version (name, version, role); None
#: when it was refused or is no longer wanted. It calls ``LoadPool.refused`` itself.
Work = Callable[[str, str, str], LoadedModel | None]


@dataclass
class LoadFailure:
    """A version that was not served: why, when, and when it is tried again."""

    model: str
    version: str
    role: str
    reason: str
    attempt: int
    retry_in: float
    at: float = field(default_factory=time.time)


class LoadPool:
    """Loader threads with joined loads and retry backoff; see the module docstring."""

    def __init__(
        self,
        work: Work,
        lock: threading.Lock,
        *,
        workers: int = 4,
        retry_backoff: tuple[float, float] = (5.0, 120.0),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._work = work
        self._lock = lock
        self.workers = max(1, workers)
        self.retry_backoff = retry_backoff
        self.clock = clock
        # (name, version) -> (attempts, clock time of the next attempt)
        self._failed: dict[tuple[str, str], tuple[int, float]] = {}
        self._inflight: dict[tuple[str, str, str], Future[LoadedModel | None]] = {}
        self.failures: deque[LoadFailure] = deque(maxlen=200)
        self.failure_count = 0
        self._pool = ThreadPoolExecutor(max_workers=self.workers,
                                        thread_name_prefix="model-load")

    def submit(self, name: str, version: str, role: str) -> Future[LoadedModel | None]:
        """Start loading a version (or join the load already running for it)."""
        key = (name, version, role)
        with self._lock:
            fut = self._inflight.get(key)
            if fut is None:
                # The worker removes the entry under this lock, so not before it exists.
                fut = self._pool.submit(self._run, name, version, role)
                self._inflight[key] = fut
        return fut

    def _run(self, name: str, version: str, role: str) -> LoadedModel | None:
        try:
            return self._work(name, version, role)
        finally:
            with self._lock:
                self._inflight.pop((name, version, role), None)

    # ---- under the table's lock -----------------------------------------------------

    def backlog(self, wanted: Collection[tuple[str, str, str]]) -> bool:
        """Whether other loads fill every worker (caller holds the lock)."""
        return len(self._inflight.keys() - set(wanted)) >= self.workers

    def failed(self, name: str, version: str) -> bool:
        """Whether this version was refused and not loaded since (caller holds the lock)."""
        return (name, version) in self._failed

    def due(self, name: str, version: str) -> bool:
        """False while a refused version waits for its next try (caller holds the lock)."""
        failed = self._failed.get((name, version))
        return failed is None or failed[1] <= self.clock()

    def loading(self, name: str) -> bool:
        """Whether some version of ``name`` is loading (caller holds the lock)."""
        return any(k[0] == name for k in self._inflight)

    def why_refused(self, name: str, version: str) -> str | None:
        """Attempts, the wait until the next and the last reason (caller holds the lock)."""
        failed = self._failed.get((name, version))
        if failed is None:
            return None
        attempts, at = failed
        last = next((f.reason for f in reversed(self.failures)
                     if f.model == name and f.version == version), "")
        return f"load failed {attempts}x, retry in {max(0.0, at - self.clock()):.0f}s: {last}"

    def loaded(self, name: str, version: str) -> None:
        """The version loaded: its refusals are forgotten (caller holds the lock)."""
        self._failed.pop((name, version), None)

    def refused(self, name: str, version: str, role: str, reason: str) -> LoadFailure:
        """Record a refusal and schedule the next try (caller holds the lock)."""
        first, cap = self.retry_backoff
        attempts = self._failed.get((name, version), (0, 0.0))[0] + 1
        backoff = min(cap, first * 2 ** (attempts - 1))
        self._failed[(name, version)] = (attempts, self.clock() + backoff)
        failure = LoadFailure(name, version, role, reason, attempts, backoff)
        self.failures.append(failure)
        self.failure_count += 1
        return failure

    def forget_except(self, wanted: Collection[tuple[str, str]]) -> None:
        """Drop the refusals of versions nobody asks for any more (caller holds the lock)."""
        for key in [k for k in self._failed if k not in wanted]:
            del self._failed[key]

    # ---- waiting and stopping -------------------------------------------------------

    def wait(self, timeout: float) -> bool:
        """Wait until no load runs; False if some still run after ``timeout``."""
        with self._lock:
            futures = list(self._inflight.values())
        wait_futures(futures, timeout=timeout)
        with self._lock:
            return not self._inflight

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
