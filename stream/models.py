"""The tenant -> loaded model table: fallback, lazy loading, LRU bound, hot reload.

One owner (``ModelTable``) holds every loaded model. The consumer thread asks
it to resolve the distinct tenants of a batch once per batch, so each batch is
scored entirely by one version per model; the watcher thread polls the
registry, loads and checks new versions off the hot path, and swaps them in
under the table's lock. A swap is therefore visible from the next batch on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from stream import registry
from stream.events import DecodedBatch
from stream.registry import LoadedModel, ModelLoadError, RegistryView

log = logging.getLogger(__name__)

Loader = Callable[[str, str], LoadedModel]
Poller = Callable[[], RegistryView]


@dataclass
class SwapEvent:
    """A change of the version serving a model, for logs, metrics and tests."""

    model: str
    from_version: str | None
    to_version: str | None
    load_seconds: float
    at: float = field(default_factory=time.time)


class ModelTable:
    """Which loaded model scores which tenant, and the registry watcher that keeps it current."""

    def __init__(
        self,
        base_name: str,
        *,
        poller: Poller,
        loader: Loader,
        cache_size: int = 256,
        canary_size: int = 64,
        on_swap: Callable[[SwapEvent], None] | None = None,
        on_failure: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.base_name = base_name
        self._poller = poller
        self._loader = loader
        self.cache_size = max(1, cache_size)
        self._lock = threading.Lock()
        self._view = RegistryView()
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._challengers: dict[str, LoadedModel] = {}
        # Versions that failed their checks: (name, version) -> (next retry time, backoff)
        self._failed: dict[tuple[str, str], tuple[float, float]] = {}
        self._canary: deque[bytes] = deque(maxlen=canary_size)
        self._on_swap = on_swap
        self._on_failure = on_failure
        self.swaps: list[SwapEvent] = []
        self.failures: list[tuple[str, str, str]] = []
        self.polls = 0
        self.poll_errors = 0
        self.last_poll_requests = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="model-load")

    # ---- routing (consumer thread) -------------------------------------------------

    def tenant_model_name(self, tenant: str) -> str:
        return registry.registered_name(self.base_name, tenant)

    def resolve(self, tenants: Sequence[str]) -> list[LoadedModel | None]:
        """The model serving each tenant: its own production model, else the global one.

        Tenant models not yet in memory load now, concurrently (first sight of a
        tenant); one that fails to load falls back to the global model.
        """
        view = self._view
        wanted = {
            t: (name if name in view.production else self.base_name)
            for t in tenants
            for name in (self.tenant_model_name(t),)
        }
        missing = [
            n for n in set(wanted.values()) if n in view.production and n not in self._loaded
        ]
        if missing:
            self._load_many([(n, view.production[n]) for n in missing])
        out: list[LoadedModel | None] = []
        with self._lock:
            for t in tenants:
                name = wanted[t]
                model = self._loaded.get(name)
                if model is None and name != self.base_name:
                    model = self._loaded.get(self.base_name)
                elif model is not None:
                    self._loaded.move_to_end(name)
                out.append(model)
            self._evict()
        return out

    def challenger_for(self, model: LoadedModel) -> LoadedModel | None:
        return self._challengers.get(model.name)

    def remember(self, values: Iterable[bytes]) -> None:
        """Keep a few recent valid events as the canary batch for new versions."""
        self._canary.extend(values)

    def loaded(self) -> dict[str, str]:
        with self._lock:
            return {n: m.version for n, m in self._loaded.items()}

    @property
    def view(self) -> RegistryView:
        return self._view

    def has_global(self) -> bool:
        return self.base_name in self._loaded

    # ---- loading and checks ----------------------------------------------------------

    def _check(self, model: LoadedModel) -> None:
        """A new version must score the canary batch (recent real events) to finite numbers."""
        canary = list(self._canary)
        if canary:
            batch = DecodedBatch(canary)
            rows = np.flatnonzero(batch.reason == 0)
            X, good = batch.matrix(rows, model.features)
            if len(good) == 0:
                reasons = sorted(set(batch.detail.values()))[:3]
                raise ModelLoadError(
                    f"models:/{model.name}/{model.version}: none of {len(canary)} recent events "
                    f"has its features {list(model.features)} ({'; '.join(reasons)})"
                )
        else:
            X = np.zeros((4, len(model.features)))
        try:
            scores = model.score(X)
        except Exception as e:
            raise ModelLoadError(
                f"models:/{model.name}/{model.version}: canary scoring failed: {e}"
            ) from e
        if not np.all(np.isfinite(scores)):
            raise ModelLoadError(
                f"models:/{model.name}/{model.version}: canary scores are not finite"
            )

    def _load_checked(self, name: str, version: str) -> LoadedModel | None:
        key = (name, version)
        retry = self._failed.get(key)
        if retry is not None and retry[0] > time.monotonic():
            return None
        try:
            model = self._loader(name, version)
            self._check(model)
        except Exception as e:
            backoff = min(300.0, (retry[1] * 2) if retry else 5.0)
            self._failed[key] = (time.monotonic() + backoff, backoff)
            reason = str(e)
            self.failures.append((name, version, reason))
            log.error(
                "model %s v%s not served (retry in %.0fs): %s", name, version, backoff, reason
            )
            if self._on_failure:
                self._on_failure(name, version, reason)
            return None
        self._failed.pop(key, None)
        return model

    def _load_many(self, items: list[tuple[str, str]]) -> None:
        results = list(self._pool.map(lambda nv: self._load_checked(*nv), items))
        with self._lock:
            for model in results:
                if model is not None:
                    self._install(model)

    def _install(self, model: LoadedModel) -> None:
        old = self._loaded.get(model.name)
        self._loaded[model.name] = model
        self._loaded.move_to_end(model.name)
        event = SwapEvent(
            model.name, old.version if old else None, model.version, model.load_seconds
        )
        self.swaps.append(event)
        if old is None:
            log.info("model %s v%s loaded in %.2fs", model.name, model.version, model.load_seconds)
        else:
            log.info(
                "model %s swapped v%s -> v%s (load %.2fs)",
                model.name,
                old.version,
                model.version,
                model.load_seconds,
            )
        if self._on_swap:
            self._on_swap(event)

    def _evict(self) -> None:
        # The global model is never evicted: every unknown tenant needs it.
        while len(self._loaded) > self.cache_size:
            for name in self._loaded:
                if name != self.base_name:
                    del self._loaded[name]
                    break
            else:
                break

    # ---- the watcher ------------------------------------------------------------------

    def refresh(self) -> RegistryView:
        """Poll the registry once and apply what changed. Raises if the registry is down."""
        view = self._poller()
        self.polls += 1
        self.last_poll_requests = view.requests
        self._view = view
        with self._lock:
            loaded = {n: m.version for n, m in self._loaded.items()}
        to_load: list[tuple[str, str]] = []
        for name, version in loaded.items():
            target = view.production.get(name)
            if target is None:
                with self._lock:
                    gone = self._loaded.pop(name, None)
                if gone is not None:
                    event = SwapEvent(name, gone.version, None, 0.0)
                    self.swaps.append(event)
                    log.info(
                        "model %s v%s no longer production: its tenant falls back to %s",
                        name,
                        gone.version,
                        self.base_name,
                    )
                    if self._on_swap:
                        self._on_swap(event)
            elif target != version:
                to_load.append((name, target))
        if self.base_name in view.production and self.base_name not in loaded:
            to_load.append((self.base_name, view.production[self.base_name]))
        if to_load:
            self._load_many(to_load)
        self._refresh_challengers(view)
        return view

    def _refresh_challengers(self, view: RegistryView) -> None:
        with self._lock:
            served = set(self._loaded)
        current = {n: m.version for n, m in self._challengers.items()}
        wanted = {n: v for n, v in view.challenger.items() if n in served}
        for name in set(current) - set(wanted):
            self._challengers.pop(name, None)
        for name, version in wanted.items():
            if current.get(name) == version:
                continue
            model = self._load_checked(name, version)
            if model is not None:
                self._challengers[name] = model
                log.info("shadow scoring %s v%s beside production", name, version)

    def start(self, interval: float) -> None:
        """Start the background watcher (polls every ``interval`` seconds)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._watch, args=(interval,), name="model-watcher", daemon=True
        )
        self._thread.start()

    def _watch(self, interval: float) -> None:
        backoff = interval
        while not self._stop.wait(backoff):
            try:
                self.refresh()
                backoff = interval
            except Exception as e:
                self.poll_errors += 1
                backoff = min(max(interval, 1.0) * 2 ** min(self.poll_errors, 5), 60.0)
                log.warning(
                    "registry poll failed (%s); current models keep serving, retry in %.0fs",
                    str(e).splitlines()[0][:200],
                    backoff,
                )
            else:
                self.poll_errors = 0

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._pool.shutdown(wait=False, cancel_futures=True)
