"""Prometheus metrics of the consumer and the HTTP server exposing /metrics, /healthz, /readyz.

The pipeline calls ``Metrics`` methods once per batch or event of interest (never per
flow event); ``HealthServer`` serves the scrape and the liveness/readiness probes from
a daemon thread on one port.

Label cardinality is bounded whatever the number of tenants: ``tenant`` and ``model``
labels are given to the first ``max_tenant_labels`` distinct values a process sees
(100 by default) and every later one is counted under ``_other``; ``reason`` takes
the pipeline's fixed dead-letter codes (capped at 32 in case of a bug), ``level`` the
four threat levels, and ``partition`` the input topic's partitions. With 1,000
tenants a process therefore exports at most 101 x 4 alert series, not 4,000.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import threading
import time
from collections import Counter as _Tally
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.core import HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

log = logging.getLogger(__name__)

#: Label value shared by every tenant (or model, or reason) past the cardinality cap.
OTHER = "_other"
#: Labels the consumer gives itself, never a tenant's own (accounting.INVALID_TENANT_LABEL).
_RESERVED = frozenset({OTHER, "_invalid"})

#: Dead-letter reasons are codes chosen by the pipeline; this cap only guards against a
#: bug that passes free text (an exception message) as the reason.
MAX_REASON_LABELS = 32

BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 20000)
BATCH_SECONDS_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
EVENT_AGE_BUCKETS: tuple[float, ...] = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
    3600.0,
)
MODEL_LOAD_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _LabelCap:
    """Admits the first ``limit`` distinct values as labels; later ones become ``OTHER``.

    First-come rather than top-k because a label must never change meaning once a
    series exists: a tenant that got its own series keeps it for the process lifetime.
    """

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"label limit must be >= 0, got {limit}")
        self._limit = limit
        self._admitted: set[str] = set()
        self._lock = threading.Lock()

    def admitted(self, value: str) -> bool:
        """True if ``value`` has a label of its own (never admits it)."""
        return value in self._admitted

    def __call__(self, value: str) -> str:
        # Lock-free fast path: the common case is a tenant already admitted, and set
        # membership is safe to read while another thread adds under the lock.
        if value in self._admitted:
            return value
        with self._lock:
            if value in self._admitted:
                return value
            if len(self._admitted) < self._limit:
                self._admitted.add(value)
                return value
        return OTHER


def _count_capped(counter: Counter, cap: _LabelCap, counts: Mapping[str, int]) -> None:
    """Add ``counts`` to a one-label counter, labels past the cap folded into one."""
    merged: _Tally[str] = _Tally()
    for label, n in counts.items():
        merged[cap(label)] += n
    for label, n in merged.items():
        counter.labels(label).inc(n)


class VectorHistogram(Collector):
    """A histogram fed whole numpy arrays at once.

    ``prometheus_client.Histogram.observe`` walks the buckets in Python for every value,
    which costs milliseconds per 10k-event batch; here one ``searchsorted`` + ``bincount``
    does the whole array. Exposition is identical to a plain histogram (same ``le``
    labels, cumulative counts, ``_sum`` and ``_count``).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry | None = None,
    ) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.name = name
        self.documentation = documentation
        self._bounds = np.asarray(bounds, dtype=np.float64)
        self._counts = np.zeros(len(bounds), dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def observe_many(self, values: np.ndarray | Sequence[float]) -> None:
        """Add every value of ``values``; NaN (an event without a usable timestamp) is skipped."""
        arr = np.asarray(values, dtype=np.float64).ravel()
        arr = arr[~np.isnan(arr)]
        if arr.size == 0:
            return
        # side="left" finds the first bound >= v, i.e. Prometheus' inclusive ``le``.
        idx = np.searchsorted(self._bounds, arr, side="left")
        counts = np.bincount(idx, minlength=self._bounds.size)
        total = float(arr.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            cumulative = np.cumsum(self._counts)
            total = self._sum
        family = HistogramMetricFamily(
            self.name,
            self.documentation,
            buckets=[
                (floatToGoString(b), float(c))
                for b, c in zip(self._bounds.tolist(), cumulative.tolist(), strict=True)
            ],
            sum_value=total,
        )
        yield family

    def describe(self) -> Iterable[Metric]:
        # Lets the registry detect a duplicate name at register() time.
        yield HistogramMetricFamily(self.name, self.documentation)


class Metrics:
    """Every metric the consumer exports, registered on one ``CollectorRegistry``.

    Each instance gets a fresh registry unless one is passed, so tests (and several
    consumers in one process) never collide on the global default registry.
    """

    enabled = True  # accounting.MetricsSink: reports are worth preparing

    def __init__(
        self, registry: CollectorRegistry | None = None, max_tenant_labels: int = 100
    ) -> None:
        # A ``_created`` sample beside every counter and histogram series would double the
        # series count (one per tenant and level) for a timestamp nothing here uses. The
        # switch is process-wide, which suits a consumer process that owns its metrics.
        disable_created_metrics()
        self.registry = registry if registry is not None else CollectorRegistry()
        self._tenant_cap = _LabelCap(max_tenant_labels)
        # Its own cap: tenants that only send dead letters must not crowd alert labels out.
        self._count_cap = _LabelCap(max_tenant_labels)
        # Model names embed the tenant, so they need the same bound as tenants.
        self._model_cap = _LabelCap(max_tenant_labels)
        self._reason_cap = _LabelCap(MAX_REASON_LABELS)
        r = self.registry

        self.events_consumed = Counter(
            "stream_events_consumed", "Flow events read from the input topic.", registry=r
        )
        self.events_scored = Counter(
            "stream_events_scored", "Flow events scored by a model.", registry=r
        )
        self.batch_size = Histogram(
            "stream_batch_size",
            "Events per micro-batch.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "stream_batch_seconds",
            "Wall time to process one micro-batch (decode, score, publish).",
            buckets=BATCH_SECONDS_BUCKETS,
            registry=r,
        )
        self.last_batch = Gauge(
            "stream_last_batch_timestamp_seconds",
            "Unix time the last micro-batch finished.",
            registry=r,
        )
        self.alerts = Counter(
            "stream_alerts", "Alerts published, by tenant and threat level.",
            ["tenant", "level"], registry=r,
        )
        self.dead_letters = Counter(
            "stream_dead_letters", "Records sent to the dead-letter topic, by reason.",
            ["reason"], registry=r,
        )
        self.suppressed = Counter(
            "stream_suppressed", "Alerts a suppression rule matched, by rule.",
            ["rule"], registry=r,
        )
        self._rule_cap = _LabelCap(MAX_REASON_LABELS)
        self.deduplicated = Counter(
            "stream_deduplicated",
            "Alerts not published because an earlier one of the same tenant, entity and "
            "leading feature stands for them (--dedup-window).",
            registry=r,
        )
        self.event_age = VectorHistogram(
            "stream_event_age_seconds",
            "Age of a flow event when scored (scoring time minus its record timestamp).",
            EVENT_AGE_BUCKETS,
            registry=r,
        )
        self.lag = Gauge(
            "stream_consumer_lag", "Messages behind the partition's high watermark.",
            ["topic", "partition"], registry=r,
        )
        self.model_version = Gauge(
            "stream_model_version", "Registry version of the model in use.", ["model"], registry=r
        )
        self.model_info = Info(
            "stream_model", "Model in use, with its version as a label.", ["model"], registry=r
        )
        self.reloads = Counter(
            "stream_model_reloads",
            "Model (re)load attempts, successful or not.",
            ["model"], registry=r,
        )
        self.reload_failures = Counter(
            "stream_model_reload_failures", "Model (re)load attempts that failed.",
            ["model"], registry=r,
        )
        self.model_load_seconds = Histogram(
            "stream_model_load_seconds",
            "Time to load a model version from the registry (successful loads).",
            buckets=MODEL_LOAD_BUCKETS,
            registry=r,
        )
        self.shadow_agreement = Gauge(
            "stream_shadow_agreement_ratio",
            "Share of events where challenger and production agree on the threat level "
            "(since the process started).",
            ["tenant"], registry=r,
        )
        self.shadow_score_diff = Gauge(
            "stream_shadow_score_diff",
            "Mean challenger score minus production score (since the process started).",
            ["tenant"], registry=r,
        )
        self.delivery_failures = Counter(
            "stream_delivery_failures",
            "Produced messages (alerts or dead letters) the broker did not acknowledge.",
            registry=r,
        )
        self.ready = Gauge(
            "stream_ready", "1 while the consumer reports ready on /readyz.", registry=r
        )
        self.stalled = Counter(
            "stream_stalled_seconds",
            "Time the consumer was stalled: input waiting and no batch committed for "
            "--stall-after seconds (a batch that cannot be delivered, models not loaded, "
            "window state not restored); /readyz names the cause meanwhile.",
            registry=r,
        )
        self.state_entities = Gauge(
            "stream_state_entities", "Entity keys held in the window state.", registry=r
        )
        self.state_bytes = Gauge(
            "stream_state_bytes", "Estimated memory of the window state.", registry=r
        )
        self.state_evictions = Counter(
            "stream_state_evictions",
            "Entities evicted from the window state, by cause (ttl or memory cap).",
            ["cause"],
            registry=r,
        )
        self.late_events = Counter(
            "stream_late_events",
            "Events older than --lateness: scored against the windows, not applied to them.",
            registry=r,
        )
        self.tenant_events = Counter(
            "stream_tenant_events_consumed",
            "Flow events read, by tenant (the first N tenants; later ones as _other).",
            ["tenant"], registry=r,
        )
        self.tenant_dead_letters = Counter(
            "stream_tenant_dead_letters",
            "Records sent to the dead-letter topic, by tenant (capped) and reason.",
            ["tenant", "reason"], registry=r,
        )
        self.drift_psi = Gauge(
            "stream_drift_psi",
            "Population stability index against the training baseline over the last "
            "--drift-window events, per tenant and input (input=score for the scores).",
            ["tenant", "input"],
            registry=r,
        )
        self.alert_rate = Gauge(
            "stream_alert_rate",
            "Share of scored events that alerted, over the same window as the drift.",
            ["tenant"],
            registry=r,
        )
        self._evicted = {"ttl": 0, "cap": 0}
        self._late = 0

    def tenant_label(self, tenant: str) -> str:
        """The ``tenant`` label value: the name for the first N tenants seen, else ``_other``."""
        return self._tenant_cap(tenant)

    def _per_tenant_label(self, tenant: str) -> str:
        # The label of missing or invalid tenants ("_invalid", which no tenant id can be
        # mistaken for: accounting gives it) takes no slot of the cap; every real tenant
        # id, whatever it starts with ("_x" is valid), goes through the cap.
        return tenant if tenant in _RESERVED else self._count_cap(tenant)

    def model_label(self, model: str) -> str:
        """The ``model`` label value, capped like tenants."""
        return self._model_cap(model)

    def record_batch(self, *, consumed: int, scored: int, seconds: float) -> None:
        self.events_consumed.inc(consumed)
        self.events_scored.inc(scored)
        self.batch_size.observe(consumed)
        self.batch_seconds.observe(seconds)
        self.last_batch.set(time.time())

    def record_alerts(self, counts: Mapping[tuple[str, str], int]) -> None:
        # Sum first: many tenants past the cap collapse onto one (_other, level) series.
        merged: _Tally[tuple[str, str]] = _Tally()
        for (tenant, level), n in counts.items():
            merged[(self.tenant_label(tenant), level)] += n
        for (tenant, level), n in merged.items():
            self.alerts.labels(tenant, level).inc(n)

    def record_dead_letters(self, counts: Mapping[str, int]) -> None:
        _count_capped(self.dead_letters, self._reason_cap, counts)

    def record_suppressed(self, counts: Mapping[str, int]) -> None:
        _count_capped(self.suppressed, self._rule_cap, counts)

    def record_deduplicated(self, n: int) -> None:
        self.deduplicated.inc(n)

    def record_tenants(
        self, consumed: Mapping[str, int], dead: Mapping[tuple[str, str], int]
    ) -> None:
        """Per-tenant counts of a batch: events read, and dead letters by reason."""
        merged: _Tally[str] = _Tally()
        for tenant, n in consumed.items():
            merged[self._per_tenant_label(tenant)] += n
        for tenant, n in merged.items():
            self.tenant_events.labels(tenant).inc(n)
        pairs: _Tally[tuple[str, str]] = _Tally()
        for (tenant, reason), n in dead.items():
            pairs[(self._per_tenant_label(tenant), self._reason_cap(reason))] += n
        for (tenant, reason), n in pairs.items():
            self.tenant_dead_letters.labels(tenant, reason).inc(n)

    def observe_event_age(self, ages_seconds: np.ndarray) -> None:
        self.event_age.observe_many(ages_seconds)

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        self.lag.labels(topic, str(partition)).set(lag)

    def remove_lag(self, topic: str, partition: int) -> None:
        """Drop a revoked partition's series so a stale lag does not linger after a rebalance."""
        with contextlib.suppress(KeyError):
            self.lag.remove(topic, str(partition))

    def set_model(self, model: str, version: str) -> None:
        label = self.model_label(model)
        try:
            numeric = float(int(version))
        except (TypeError, ValueError):
            # Registry versions are integers; anything else is still shown in the info series.
            numeric = math.nan
        self.model_version.labels(label).set(numeric)
        self.model_info.labels(label).info({"version": str(version)})

    def remove_model(self, model: str) -> None:
        """Drop a model's version series once it serves no more (demoted, tenant falls back).

        Only a model with a label of its own is dropped: the shared ``_other`` series may
        still stand for other models.
        """
        if not self._model_cap.admitted(model):
            return
        for metric in (self.model_version, self.model_info):
            with contextlib.suppress(KeyError):
                metric.remove(model)

    def record_reload(self, model: str, ok: bool, seconds: float) -> None:
        label = self.model_label(model)
        self.reloads.labels(label).inc()
        # Touch the failure series even on success so it exists at 0 and rate() works
        # from the first failure instead of missing it.
        failures = self.reload_failures.labels(label)
        if ok:
            self.model_load_seconds.observe(seconds)
        else:
            failures.inc()

    def record_shadow(self, tenant: str, agreement: float, mean_score_diff: float) -> None:
        label = self.tenant_label(tenant)
        self.shadow_agreement.labels(label).set(agreement)
        self.shadow_score_diff.labels(label).set(mean_score_diff)

    def record_delivery_failures(self, n: int) -> None:
        self.delivery_failures.inc(n)

    def record_stalled(self, seconds: float) -> None:
        self.stalled.inc(seconds)

    def record_ready(self, ready: bool) -> None:
        self.ready.set(1 if ready else 0)

    def record_drift(self, tenant: str, values: Mapping[str, float], alert_rate: float) -> None:
        label = self.tenant_label(tenant)
        for what, v in values.items():
            self.drift_psi.labels(label, what).set(v)
        self.alert_rate.labels(label).set(alert_rate)

    def record_state(
        self, *, entities: int, nbytes: int, evicted_ttl: int, evicted_cap: int, late: int
    ) -> None:
        """Window state gauges, and the store's running totals as counter increments."""
        self.state_entities.set(entities)
        self.state_bytes.set(nbytes)
        for cause, total in (("ttl", evicted_ttl), ("cap", evicted_cap)):
            if total > self._evicted[cause]:
                self.state_evictions.labels(cause).inc(total - self._evicted[cause])
                self._evicted[cause] = total
        if late > self._late:
            self.late_events.inc(late - self._late)
            self._late = late


#: Requests served at once, and waiting: a scrape and a few probes need no more, and
#: a thousand unfinished requests must not cost a thousand threads.
SERVER_THREADS = 4
SERVER_QUEUE = 16
#: Connections that have sent nothing yet, kept waiting (the oldest go first beyond it).
SERVER_IDLE = 256
#: Seconds a client may take to send its request (or to read the answer).
SERVER_TIMEOUT_S = 1.0


class _Server(ThreadingHTTPServer):
    """Requests on a small fixed pool of threads, handed over only once the client has
    sent something: a connection that sends nothing waits in a selector (at most
    ``SERVER_IDLE`` of them, each for ``SERVER_TIMEOUT_S``) and never holds a thread, so
    idle connections cannot starve a probe. Beyond the pool's queue, refused at once."""

    daemon_threads = True  # a hung scraper must not keep the process alive at exit
    request_queue_size = 128  # the listen backlog: connects beyond it would stall
    health: HealthServer

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Set before the bind: a port in use makes the base class call server_close().
        self._pool = ThreadPoolExecutor(SERVER_THREADS, thread_name_prefix="stream-health")
        self._waiting = 0
        self._count = threading.Lock()
        self._idle: dict[Any, tuple[float, Any]] = {}  # socket -> (deadline, address)
        self._idle_lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        super().__init__(*args, **kwargs)
        threading.Thread(target=self._watch_idle, name="stream-health-idle",
                         daemon=True).start()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._idle_lock:
            if len(self._idle) >= SERVER_IDLE:  # the oldest idle one makes room
                oldest = min(self._idle, key=lambda s: self._idle[s][0])
                del self._idle[oldest]
                self.shutdown_request(oldest)
            self._idle[request] = (time.monotonic() + SERVER_TIMEOUT_S, client_address)
        self._wake.set()

    def _watch_idle(self) -> None:
        import selectors

        while not self._closed:
            with self._idle_lock:
                socks = dict(self._idle)
            if not socks:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            with selectors.DefaultSelector() as sel:
                for s in socks:
                    sel.register(s, selectors.EVENT_READ)
                ready = {key.fileobj for key, _ in sel.select(0.05)}
            now = time.monotonic()
            for s, (deadline, addr) in socks.items():
                if s in ready or now >= deadline:
                    with self._idle_lock:
                        if self._idle.pop(s, None) is None:
                            continue
                    if s in ready:
                        self._dispatch(s, addr)
                    else:
                        self.shutdown_request(s)

    def _dispatch(self, request: Any, client_address: Any) -> None:
        with self._count:
            if self._waiting >= SERVER_QUEUE:
                self.shutdown_request(request)
                return
            self._waiting += 1
        self._pool.submit(self._serve, request, client_address)

    def _serve(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._count:
                self._waiting -= 1

    def server_close(self) -> None:
        super().server_close()
        self._closed = True
        self._wake.set()
        with self._idle_lock:
            for s in self._idle:
                self.shutdown_request(s)
            self._idle.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "stream-health"
    timeout = SERVER_TIMEOUT_S  # the socket's: a client that sends nothing is dropped

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, *, head: bool) -> None:
        health = self.server.health
        path = urlsplit(self.path).path
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(200, encoder(health.metrics.registry), content_type, head)
        elif path == "/healthz":
            status, text = health.liveness()
            self._send(status, text.encode(), "text/plain; charset=utf-8", head)
        elif path == "/readyz":
            status, text = health.readiness()
            self._send(status, text.encode(), "text/plain; charset=utf-8", head)
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8", head)

    def _send(self, status: int, body: bytes, content_type: str, head: bool) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        # Probes hit these endpoints every few seconds; access logs would drown real logs.
        log.debug("%s " + format, self.address_string(), *args)


class HealthServer:
    """Serves /metrics, /healthz (liveness) and /readyz (readiness) from a daemon thread."""

    def __init__(
        self,
        port: int,
        metrics: Metrics,
        *,
        host: str = "127.0.0.1",
        stale_after: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self._host = host
        self._requested_port = port
        self._stale_after = stale_after
        self._clock = clock
        # Startup counts as a heartbeat so the probe passes while the loop is starting.
        self._last_beat = clock()
        self._ready = False
        self._reason = "starting"
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        metrics.record_ready(False)

    @property
    def port(self) -> int:
        """The bound port (the OS-chosen one when 0 was requested and the server started)."""
        if self._server is not None:
            return int(self._server.server_address[1])
        return self._requested_port

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("HealthServer already started")
        server_cls = _Server6 if ":" in self._host else _Server
        server = server_cls((self._host, self._requested_port), _Handler)
        server.health = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2},
            name="stream-health", daemon=True,
        )
        self._thread.start()
        log.info("serving /metrics, /healthz, /readyz on %s:%d", self._host, self.port)

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> HealthServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def heartbeat(self) -> None:
        # A plain float assignment is atomic under the GIL; no lock on the hot path.
        self._last_beat = self._clock()

    def set_ready(self, ready: bool, reason: str = "") -> None:
        with self._lock:
            self._ready = ready
            self._reason = reason
        self.metrics.record_ready(ready)

    def liveness(self) -> tuple[int, str]:
        """(HTTP status, body) of /healthz."""
        age = self._clock() - self._last_beat
        if age < self._stale_after:
            return 200, "ok\n"
        return 503, f"stale: no heartbeat for {age:.1f}s (limit {self._stale_after:g}s)\n"

    def readiness(self) -> tuple[int, str]:
        """(HTTP status, body) of /readyz."""
        with self._lock:
            ready, reason = self._ready, self._reason
        if ready:
            return 200, "ready\n"
        return 503, f"not ready: {reason or 'unspecified'}\n"
