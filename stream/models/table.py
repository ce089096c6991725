"""The tenant -> loaded model table: fallback, lazy loading, LRU bound, hot reload.

The table (``ModelTable``) routes tenants to the versions its cache holds
(``stream.models.cache``), loaded by its pool (``stream.models.loads``), checked by its
canary (``stream.models.canary``) and kept current by its watcher
(``stream.models.watcher``); one lock guards all of them. The consumer thread asks
it to resolve the distinct tenants of a batch once per batch, so each batch is
scored entirely by one version per model; the watcher thread polls the
registry, loads and checks new versions off the hot path, and swaps them in
under the table's lock. A swap is therefore visible from the next batch on.

Routing rules (what ``resolve`` returns for tenant ``T``):

- ``NAME_T`` has a production version and it is loaded: that model.
- ``NAME_T`` has a production version that is not loaded yet (first sight of
  ``T``, or evicted from the LRU): it is loaded now, concurrently with the
  batch's other new tenants, and the batch waits for it at most ``load_wait``
  seconds (not at all while earlier loads are still queued, so a burst of new
  tenants cannot stall batch after batch). A load still running after that
  finishes in the background. Until ``NAME_T`` is in, or when its load failed
  before or cannot run because the registry is down, ``T`` is served by the
  global model and the watcher loads ``NAME_T`` (retrying with backoff).
- ``NAME_T`` has no production version: the global model ``NAME``.
- Neither is loaded although one of them has a production version (its load is
  still running, failed, or cannot start while the registry is down): a
  ``NotLoaded`` naming it and why. The consumer then waits (nothing of the batch
  is committed or dead-lettered, ``/readyz`` says why); only a tenant whose model
  and the global one have no production version at all is ``None``: no model,
  its events are dead-lettered ``no_model``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any

from stream import registry
from stream.ingest.decode import valid_tenant
from stream.models.cache import ModelCache
from stream.models.canary import Canary
from stream.models.loads import LoadFailure, LoadPool
from stream.models.watcher import RegistryWatcher
from stream.ops.failures import brief, redact_uri
from stream.registry import LoadedModel, NotLoaded, RegistryView
from stream.registry.loading import apply_calibration

log = logging.getLogger(__name__)

Loader = Callable[[str, str], LoadedModel]
Poller = Callable[[], RegistryView]

PRODUCTION, CHALLENGER = "production", "challenger"
#: Tenant model names remembered as "served by the global model for now" (watcher preloads).
MAX_PENDING = 10_000


@dataclass
class SwapEvent:
    """A change of the version serving a model, for logs, metrics and tests.

    ``to_version`` None: the model lost its production version and is no longer served.
    """

    model: str
    from_version: str | None
    to_version: str | None
    load_seconds: float
    at: float = field(default_factory=time.time)


class ModelTable:
    """Which loaded model scores which tenant: the routing rules above, over its
    ``ModelCache`` of loaded versions, filled by its ``LoadPool``; its ``Canary`` checks
    new versions and its ``RegistryWatcher`` keeps it current."""

    def __init__(
        self,
        base_name: str,
        *,
        poller: Poller,
        loader: Loader,
        cache_size: int = 256,
        canary_size: int = 64,
        load_wait: float = 5.0,
        retry_backoff: tuple[float, float] = (5.0, 120.0),
        load_workers: int = 4,
        on_swap: Callable[[SwapEvent], None] | None = None,
        on_failure: Callable[[str, str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        schema: str = "native",
        uri: str = "",
    ) -> None:
        self.base_name = base_name
        # Where the versions come from, as messages may show it (the password masked).
        self.where = redact_uri(uri) if uri else "(the configured registry)"
        self._poller = poller
        self._loader = loader
        self.load_wait = load_wait
        self.schema = schema
        # One lock guards every mutable structure of the table, its cache and its pool;
        # it is only ever held for dictionary work, never across a registry call or a
        # model load.
        self._lock = threading.Lock()
        self._view = RegistryView()
        self.cache = ModelCache(base_name, cache_size)
        self.loads = LoadPool(self._load_and_install, self._lock, workers=load_workers,
                              retry_backoff=retry_backoff, clock=clock)
        # Tenant model names whose tenant is served by the global model although the
        # registry may have (or get) a production version for it: the watcher loads them.
        self._pending: OrderedDict[str, None] = OrderedDict()
        # Recent valid events as the batches decoded them, overall and per tenant.
        self.canary = Canary(canary_size, schema)
        self._registry_down = False
        self._on_swap = on_swap
        self._on_failure = on_failure
        self.swaps: deque[SwapEvent] = deque(maxlen=1000)
        self.polls = 0
        self.last_poll_requests = 0
        self.last_poll_seconds = 0.0
        self.watcher = RegistryWatcher(self.refresh)

    # ---- what the cache and the pool count, for metrics and tests --------------------

    @property
    def cache_size(self) -> int:
        return self.cache.size

    @property
    def retry_backoff(self) -> tuple[float, float]:
        """(first, cap): a refused version is retried after first, 2*first, ... up to cap."""
        return self.loads.retry_backoff

    @retry_backoff.setter
    def retry_backoff(self, value: tuple[float, float]) -> None:
        self.loads.retry_backoff = value

    @property
    def failures(self) -> deque[LoadFailure]:
        return self.loads.failures

    @property
    def failure_count(self) -> int:
        return self.loads.failure_count

    @property
    def evictions(self) -> int:
        return self.cache.evictions

    @property
    def changes(self) -> int:
        """Bumped whenever a model enters or leaves the table (heap.HeapFreezer watches it)."""
        return self.cache.changes

    # ---- routing (consumer thread) -------------------------------------------------

    def tenant_model_name(self, tenant: str) -> str:
        return registry.registered_name(self.base_name, tenant)

    def resolve(self, tenants: Sequence[str]) -> list[LoadedModel | NotLoaded | None]:
        """The model serving each tenant: its own production model, else the global one;
        ``NotLoaded`` when one of them should serve it but neither is loaded; None when
        neither has a production version."""
        base = self.base_name
        names: list[str] = []
        load_now: dict[str, str] = {}
        # Models already loaded, held for this batch: installing its first-sight models may
        # evict them from the LRU before the lookup below.
        held: dict[str, LoadedModel] = {}
        with self._lock:
            production = self._view.production
            for t in tenants:
                name = self.tenant_model_name(t)
                version = production.get(name)
                if version is None or name == base:
                    names.append(base)
                    if name != base and valid_tenant(t):
                        self._note_pending(name)
                    continue
                names.append(name)
                model = self.cache.get(name)
                if model is not None:
                    held[name] = model
                elif self._may_load_now(name, version):
                    load_now[name] = version
        fresh: dict[str, LoadedModel] = {}
        if load_now:
            fresh = self._load_now(load_now)
        out: list[LoadedModel | NotLoaded | None] = []
        with self._lock:
            fallback = self.cache.get(base)
            for name in names:
                model = self.cache.get(name) or fresh.get(name) or held.get(name)
                if model is None:
                    if name != base:
                        # Not loadable right now: the watcher takes it from here.
                        self._note_pending(name)
                    if fallback is None:
                        out.append(self._not_loaded(name, production))
                        continue
                    model = fallback
                elif name != base:
                    self.cache.touch(name)
                    self._pending.pop(name, None)
                out.append(model)
            self.cache.evict()
        return out

    def _not_loaded(self, name: str, production: dict[str, str]) -> NotLoaded | None:
        """Why neither ``name`` nor the global model serves (caller holds the lock); None
        when neither has a production version (no model at all)."""
        for wanted in (name, self.base_name):
            version = production.get(wanted)
            if version is None:
                continue
            refused = self.loads.why_refused(wanted, version)
            if self._registry_down:
                why = "the registry does not answer"
            elif refused is not None:
                why = refused
            elif self.loads.loading(wanted):
                why = "loading"
            else:
                why = "not loaded yet"
            return NotLoaded(wanted, version, why[:300])
        return None

    def challenger_for(self, model: LoadedModel) -> LoadedModel | None:
        """The version shadow-scored beside ``model`` (alias challenger / stage Staging)."""
        with self._lock:
            ch = self.cache.challengers.get(model.name)
        return ch if ch is not None and ch.version != model.version else None

    def remember(self, tenants: Sequence[str], docs: Sequence[Any]) -> None:
        """Keep a few recent valid events as the canary batch (``Canary.remember``)."""
        with self._lock:
            production = set(self._view.production)
        self.canary.remember(tenants, docs,
                             lambda t: self.tenant_model_name(t) in production)

    def loaded(self) -> dict[str, str]:
        with self._lock:
            return {n: m.version for n, m in self.cache.production.items()}

    def challengers(self) -> dict[str, str]:
        with self._lock:
            return {n: m.version for n, m in self.cache.challengers.items()}

    @property
    def view(self) -> RegistryView:
        with self._lock:
            return self._view

    def preload(self) -> int:
        """Start loading every production model the registry names, up to the cache size.

        In the background (the loader pool), so the loads overlap the consumer's
        group join instead of waiting for each tenant's first event; a first event
        that arrives meanwhile joins the load already running. Returns how many
        loads were started.
        """
        with self._lock:
            wanted = [
                (name, version) for name, version in self._view.production.items()
                if name not in self.cache and self._may_load_now(name, version)
            ][: max(0, self.cache.room())]
        for name, version in wanted:
            self.loads.submit(name, version, PRODUCTION)
        return len(wanted)

    def wait_for_loads(self, timeout: float) -> bool:
        """Wait until no model load is running; False if some still run after ``timeout``.

        Loads run on worker threads that share the GIL with scoring, so a
        measurement of warm scoring must not overlap them.
        """
        return self.loads.wait(timeout)

    @property
    def registry_reachable(self) -> bool:
        """False after a failed poll, until a poll succeeds again."""
        with self._lock:
            return not self._registry_down

    def has_global(self) -> bool:
        with self._lock:
            return self.base_name in self.cache

    def any_loaded(self) -> bool:
        with self._lock:
            return bool(self.cache.production)

    def _note_pending(self, name: str) -> None:
        # Caller holds the lock.
        self._pending[name] = None
        self._pending.move_to_end(name)
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)

    def _may_load_now(self, name: str, version: str) -> bool:
        """Whether the consumer thread may load this version itself (caller holds the lock).

        Only a plain first load: a version that already failed is retried by the
        watcher on its backoff schedule, and while the registry is down a load
        would only fail (or hang until the HTTP timeout) on the hot path. A load
        already running (a preload) is joined, not started again.
        """
        return not self._registry_down and not self.loads.failed(name, version)

    def _load_now(self, items: dict[str, str]) -> dict[str, LoadedModel]:
        """Load first-sight tenant models concurrently; wait at most ``load_wait`` seconds.

        A load still running then finishes in the background and is installed when
        done; its tenants use the global model until then.
        """
        with self._lock:
            # Other loads queued ahead (a preload of the whole registry, say): waiting
            # would mean waiting for them too. Loads of these very names are no backlog.
            backlog = self.loads.backlog(
                [(name, version, PRODUCTION) for name, version in items.items()])
        futures = {name: self.loads.submit(name, version, PRODUCTION)
                   for name, version in items.items()}
        wait_futures(list(futures.values()), timeout=0.0 if backlog else self.load_wait)
        out: dict[str, LoadedModel] = {}
        for name, fut in futures.items():
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                model = fut.result()
                if model is not None:
                    out[name] = model
            elif not fut.done():
                log.info(
                    "%s still loading: its tenant is scored by %s until it is ready",
                    name,
                    self.base_name,
                )
        return out

    # ---- loading and checks ----------------------------------------------------------

    def _tenant_of(self, name: str) -> str | None:
        prefix = self.base_name + "_"
        return name[len(prefix) :] if name.startswith(prefix) else None

    def _check(self, model: LoadedModel) -> None:
        """Refuse a version that cannot score recent real events (``Canary.check``)."""
        self.canary.check(model, self._tenant_of(model.name))

    def _load_and_install(self, name: str, version: str, role: str) -> LoadedModel | None:
        """Load, check and install one version (the pool's work, on a loader thread);
        None if it failed or is no longer wanted."""
        try:
            model = self._loader(name, version)
            self._check(model)
        except Exception as e:
            self._record_failure(name, version, role, brief(e, 300))
            return None
        with self._lock:
            self.loads.loaded(name, version)
        return self._install(model, role)

    def _record_failure(self, name: str, version: str, role: str, reason: str) -> None:
        with self._lock:
            failure = self.loads.refused(name, version, role, reason)
            attempts, backoff = failure.attempt, failure.retry_in
            current = (self.cache.challengers.get(name) if role == CHALLENGER
                       else self.cache.get(name))
        serving = (
            f"v{current.version} keeps serving"
            if current is not None
            else ("no shadow scoring" if role == CHALLENGER else f"served by {self.base_name}")
        )
        log.error(
            "%s %s v%s refused (attempt %d, %s, retry in %.0fs): %s",
            role,
            name,
            version,
            attempts,
            serving,
            backoff,
            reason,
        )
        if self._on_failure:
            self._on_failure(name, version, reason)

    def _install(self, model: LoadedModel, role: str) -> LoadedModel | None:
        """Swap a checked version in, unless the registry has moved on meanwhile."""
        name, version = model.name, model.version
        event: SwapEvent | None = None
        with self._lock:
            view = self._view
            wanted = (view.challenger if role == CHALLENGER else view.production).get(name)
            if wanted != version:
                stale = True
                old = None
            elif role == CHALLENGER:
                stale = False
                old = self.cache.put_challenger(model)
            elif (old := self.cache.get(name)) is not None and old.version == version:
                # Loaded meanwhile by the other thread: keep the one already serving.
                self.cache.touch(name)
                return old
            else:
                stale = False
                self.cache.put(model)
                self._pending.pop(name, None)
                event = SwapEvent(name, old.version if old else None, version, model.load_seconds)
                self.swaps.append(event)
        if stale:
            log.info(
                "%s %s v%s loaded but no longer wanted (registry now says %s); dropped",
                role,
                name,
                version,
                wanted,
            )
            return None
        if role == CHALLENGER:
            log.info("shadow scoring %s v%s beside production", name, version)
            return model
        how = f" (scoring with {model.served_from})" if model.served_from else ""
        if old is None:
            log.info("model %s v%s loaded in %.2fs%s", name, version, model.load_seconds, how)
        else:
            log.info(
                "model %s swapped v%s -> v%s (load %.2fs)",
                name,
                old.version,
                version,
                model.load_seconds,
            )
        if self._on_swap and event is not None:
            self._on_swap(event)
        return model

    # ---- the watcher ------------------------------------------------------------------

    def refresh(self) -> RegistryView:
        """Poll the registry once and apply what changed. Raises if the registry is down.

        Returns after every load it started has finished (swapped in or refused).
        Phases: poll; apply the new view (drop what lost production, end stale shadows,
        list the loads it asks for); load production versions; then challengers, so a
        model loaded by this very poll gets its shadow at once.
        """
        t0 = time.perf_counter()
        try:
            view = self._poller()
        except Exception:
            with self._lock:
                self._registry_down = True
            raise
        removed, jobs = self._apply_view(view, time.perf_counter() - t0)
        self._announce_removed(removed)
        if jobs:
            wait_futures([self.loads.submit(*j) for j in jobs])
        jobs = self._challenger_jobs(view)
        if jobs:
            wait_futures([self.loads.submit(*j) for j in jobs])
        return view

    def _apply_view(
        self, view: RegistryView, poll_seconds: float
    ) -> tuple[list[SwapEvent], list[tuple[str, str, str]]]:
        """Install ``view``: drop models that lost production, end stale shadow scoring,
        forget failures nobody asks for, and return the production loads now due."""
        removed: list[SwapEvent] = []
        jobs: list[tuple[str, str, str]] = []
        with self._lock:
            self._registry_down = False
            self._view = view
            self.polls += 1
            self.last_poll_requests = view.requests
            self.last_poll_seconds = poll_seconds
            for name in [n for n in self.cache.production if n not in view.production]:
                gone = self.cache.drop(name)
                event = SwapEvent(name, gone.version, None, 0.0)
                self.swaps.append(event)
                removed.append(event)
                if name != self.base_name:
                    self._note_pending(name)  # its tenant is on the global model now
            for name in list(self.cache.challengers):
                ch = self.cache.challengers[name]
                if view.challenger.get(name) != ch.version or name not in self.cache:
                    self.cache.end_challenger(name)
                    log.info("shadow scoring of %s v%s ended", name, ch.version)
            for name, model in self.cache.production.items():
                target = view.production[name]
                if target != model.version:
                    jobs.append((name, target, PRODUCTION))
                elif apply_calibration(model, view.budgets.get(name)):
                    log.info("%s v%s: entity-alert threshold %g from its calibration",
                             name, model.version, view.budgets[name]["threshold"])
            base_version = view.production.get(self.base_name)
            if base_version is not None and self.base_name not in self.cache:
                jobs.append((self.base_name, base_version, PRODUCTION))
            for name in self._pending:
                version = view.production.get(name)
                if version is not None and name not in self.cache:
                    jobs.append((name, version, PRODUCTION))
            self.loads.forget_except(set(view.production.items())
                                     | set(view.challenger.items()))
            return removed, [j for j in jobs if self.loads.due(j[0], j[1])]

    def _announce_removed(self, removed: list[SwapEvent]) -> None:
        for event in removed:
            if event.model == self.base_name:
                log.warning(
                    "global model %s v%s is no longer production: events of tenants without "
                    "their own model go to the dead-letter topic",
                    event.model,
                    event.from_version,
                )
            else:
                log.info(
                    "model %s v%s no longer production: its tenant falls back to %s",
                    event.model,
                    event.from_version,
                    self.base_name,
                )
            if self._on_swap:
                self._on_swap(event)

    def _challenger_jobs(self, view: RegistryView) -> list[tuple[str, str, str]]:
        with self._lock:
            return [
                (name, chal, CHALLENGER)
                for name, model in self.cache.production.items()
                if (chal := view.challenger.get(name)) is not None
                and chal != model.version
                and name not in self.cache.challengers
                and self.loads.due(name, chal)
            ]

    @property
    def poll_errors(self) -> int:
        """Consecutive failed polls (0 while the registry answers)."""
        return self.watcher.poll_errors

    @property
    def poll_errors_total(self) -> int:
        return self.watcher.poll_errors_total

    def start(self, interval: float) -> None:
        """Start the background watcher (polls every ``interval`` seconds)."""
        self.watcher.start(interval)

    def stop(self) -> None:
        self.watcher.stop()
        self.loads.shutdown()
