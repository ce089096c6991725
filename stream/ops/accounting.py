"""What the consumer reports about its batches: running totals, metrics, shadow results, lag.

The loop hands every settled batch to ``Accounting.batch_done`` and every failed one
to ``batch_failed``; nothing here touches a record. Metrics and the health probe
are behind small protocols with null objects, so the loop never asks whether they
are configured. Every collection that lives as long as the process is bounded.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from confluent_kafka import Consumer, KafkaException, Message

from stream.ops.drift import DriftWatch
from stream.ops.logs import BurstLog

if TYPE_CHECKING:  # what the consumer hands over (ops sits below the consumer)
    from stream.consumer.batch import BatchOutcome, ShadowResult


class _StoreStats(Protocol):
    late: int
    evicted_ttl: int
    evicted_cap: int


class StateSize(Protocol):
    """What the metrics read of the window state (``stream.state.store.WindowStore``)."""

    @property
    def stats(self) -> _StoreStats: ...
    @property
    def scopes(self) -> Mapping[int, object]: ...
    @property
    def entities(self) -> int: ...
    def bytes(self) -> int: ...

log = logging.getLogger(__name__)

#: Batch end times kept for latency and gap measurements (about 6 hours at 5 batches/s).
BATCH_ENDS_KEPT = 100_000
#: Distinct tenants the running totals and shadow reports keep apart; later ones are
#: counted under OTHER_TENANT (the metrics have their own, smaller label cap).
MAX_TENANTS = 10_000
OTHER_TENANT = "_other"
#: The per-tenant counters' label for rows whose tenant is missing or invalid.
INVALID_TENANT_LABEL = "_invalid"
#: Seconds between consumer-lag reads (watermark reads are not free).
LAG_EVERY_S = 5.0
#: Seconds between shadow-scoring summaries in the log.
SHADOW_LOG_EVERY_S = 30.0
#: Recent valid events handed to the model table per batch, as its canary.
CANARY_PER_BATCH = 8


class MetricsSink(Protocol):
    """What the consumer reports to ``stream.ops.metrics.Metrics`` (or to ``NullMetrics``).

    ``enabled``: False for a sink that drops every report, so that the work of
    preparing some (per-tenant counts, event ages, lag asked of the broker) is skipped.
    """

    enabled: bool

    def record_batch(self, *, consumed: int, scored: int, seconds: float) -> None: ...
    def record_alerts(self, counts: Mapping[tuple[str, str], int]) -> None: ...
    def record_dead_letters(self, counts: Mapping[str, int]) -> None: ...
    def record_suppressed(self, counts: Mapping[str, int]) -> None: ...
    def record_deduplicated(self, n: int) -> None: ...
    def record_tenants(
        self, consumed: Mapping[str, int], dead: Mapping[tuple[str, str], int]
    ) -> None: ...
    def observe_event_age(self, ages_seconds: np.ndarray) -> None: ...
    def set_lag(self, topic: str, partition: int, lag: int) -> None: ...
    def remove_lag(self, topic: str, partition: int) -> None: ...
    def record_shadow(self, tenant: str, agreement: float, mean_score_diff: float) -> None: ...
    def record_delivery_failures(self, n: int) -> None: ...
    def record_stalled(self, seconds: float) -> None: ...
    def record_state(
        self, *, entities: int, nbytes: int, evicted_ttl: int, evicted_cap: int, late: int
    ) -> None: ...
    def record_drift(
        self, tenant: str, values: Mapping[str, float], alert_rate: float
    ) -> None: ...


class HealthSink(Protocol):
    """The liveness and readiness probe (``stream.ops.metrics.HealthServer`` or ``NullHealth``)."""

    def heartbeat(self) -> None: ...
    def set_ready(self, ready: bool, reason: str = "") -> None: ...


class NullMetrics:
    """Metrics switched off: every report is dropped."""

    enabled = False

    def record_batch(self, *, consumed: int, scored: int, seconds: float) -> None: ...
    def record_alerts(self, counts: Mapping[tuple[str, str], int]) -> None: ...
    def record_dead_letters(self, counts: Mapping[str, int]) -> None: ...
    def record_suppressed(self, counts: Mapping[str, int]) -> None: ...
    def record_deduplicated(self, n: int) -> None: ...
    def record_tenants(
        self, consumed: Mapping[str, int], dead: Mapping[tuple[str, str], int]
    ) -> None: ...
    def observe_event_age(self, ages_seconds: np.ndarray) -> None: ...
    def set_lag(self, topic: str, partition: int, lag: int) -> None: ...
    def remove_lag(self, topic: str, partition: int) -> None: ...
    def record_shadow(self, tenant: str, agreement: float, mean_score_diff: float) -> None: ...
    def record_delivery_failures(self, n: int) -> None: ...
    def record_stalled(self, seconds: float) -> None: ...
    def record_state(
        self, *, entities: int, nbytes: int, evicted_ttl: int, evicted_cap: int, late: int
    ) -> None: ...
    def record_drift(
        self, tenant: str, values: Mapping[str, float], alert_rate: float
    ) -> None: ...


class NullHealth:
    """No probe server: heartbeats and readiness go nowhere."""

    def heartbeat(self) -> None: ...
    def set_ready(self, ready: bool, reason: str = "") -> None: ...


#: How late events are reported, by tenant (the log line and ``stream score``'s summary).
LATE_WHAT = (
    "late (older than their tenant's newest event on the partition by more than "
    "--lateness: scored against the windows, which they do not change; replaying older "
    "traffic? give it its own --group-id, or its own tenant)"
)


class Progress:
    """Whether the consumer makes progress, and if not, why: what /readyz and the log say.

    Progress is a committed batch (or a poll with nothing to do). ``blocked(cause)`` notes
    why a batch could not be finished (not delivered, models not loaded, window state not
    restored); once ``stall_after`` seconds have passed since the last progress, the
    consumer is *stalled*:
    ``stalled`` gives the cause (readiness turns 503 with it), the time counts in
    ``stream_stalled_seconds_total``, and the cause is logged at WARNING when it first
    shows or changes, then at growing intervals (30 s doubling to 5 min) while it lasts.
    ``at_once`` stalls without the grace (nothing of the input can be scored).
    ``committed`` ends it, with one INFO line; so does ``clear`` (the partitions of the
    stuck batch went to another member).
    """

    def __init__(self, stall_after: float, metrics: MetricsSink,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_after = stall_after
        self.metrics = metrics
        self.clock = clock
        # When the stuck batch began (the last commit, or the last poll that found nothing
        # to do, before the first unresolved failure); None while all is well.
        self.since: float | None = None
        self._last_progress = clock()
        self.cause = ""
        self._at_once = False
        self._counted = 0.0  # up to when the stalled time was counted
        self._logged = ""  # the cause last logged
        self._next_log = 0.0
        self._gap = 30.0

    def idle(self) -> None:
        """A poll found nothing to do (and nothing is stuck): as good as progress."""
        if self.since is None:
            self._last_progress = self.clock()

    def blocked(self, cause: str, *, at_once: bool = False) -> None:
        now = self.clock()
        if self.since is None:
            self.since = self._last_progress
            self._counted = max(now if at_once else self.since + self.stall_after,
                                self.since)
        self.cause = cause
        self._at_once = self._at_once or at_once
        if cause != self._logged or now >= self._next_log:
            if cause != self._logged:
                self._gap = 30.0
            stuck = now - self.since
            log.warning("no progress%s: %s", f" for {stuck:.0f} s" if stuck >= 1 else "", cause)
            self._logged = cause
            self._next_log = now + self._gap
            self._gap = min(self._gap * 2, 300.0)
        self.tick()

    @property
    def stalled(self) -> str | None:
        """The cause, once no batch committed for ``stall_after`` s since it (else None)."""
        if self.since is None:
            return None
        stuck = self.clock() - self.since
        if not self._at_once and stuck < self.stall_after:
            return None
        return f"no batch committed for {stuck:.0f} s: {self.cause}"

    def tick(self) -> None:
        """Count the stalled time up to now (called from the loop)."""
        if self.since is None:
            return
        now = self.clock()
        if now > self._counted:
            self.metrics.record_stalled(now - self._counted)
            self._counted = now

    def committed(self) -> None:
        self._last_progress = self.clock()
        if self.since is None:
            return
        self.tick()
        log.info("progress again after %.0f s (it was: %s)", self.clock() - self.since,
                 self.cause)
        self.clear()

    def clear(self) -> None:
        self.since = None
        self._last_progress = self.clock()
        self.cause = self._logged = ""
        self._at_once = False


class _CappedCounter(Counter[Any]):
    """A Counter whose keys past ``limit`` distinct ones are folded by ``fold``."""

    def __init__(self, limit: int, fold: Callable[[Any], Any]) -> None:
        super().__init__()
        self._limit = limit
        self._fold = fold

    def add(self, counts: Mapping[Any, int]) -> None:
        for key, n in counts.items():
            if key not in self and len(self) >= self._limit:
                key = self._fold(key)
            self[key] += n


def _fold_tenant_level(key: tuple[str, str]) -> tuple[str, str]:
    return (OTHER_TENANT, key[1])


@dataclass
class RunStats:
    """Running totals of one consumer process (also what the demo summarises)."""

    consumed: int = 0
    scored: int = 0
    alerts: int = 0
    below_threshold: int = 0
    dead_letters: int = 0
    suppressed: int = 0  # alerts a suppression rule matched (published only if marked)
    deduplicated: int = 0  # alerts an earlier one stood for (--dedup-window): unpublished
    batches: int = 0
    delivery_failures: int = 0
    rewinds: int = 0
    filtered: int = 0  # records --where left out (not events: skipped, not dead letters)
    pauses: int = 0  # times the partitions were paused for backpressure
    paused_seconds: float = 0.0
    settled_on_revoke: int = 0  # batches finished inside a revocation callback
    held: int = 0  # messages a poll returned while paused, kept for the next batch
    alerts_by: _CappedCounter = field(
        default_factory=lambda: _CappedCounter(4 * MAX_TENANTS, _fold_tenant_level)
    )
    dead_by: Counter[str] = field(default_factory=Counter)  # reasons: a fixed, small set
    batch_ends: deque[float] = field(default_factory=lambda: deque(maxlen=BATCH_ENDS_KEPT))
    # tenant -> [rows, agree, score diff sum]
    shadow: dict[str, list[float]] = field(default_factory=dict)


def _tenant_counts(outcome: BatchOutcome) -> tuple[Counter[str], Counter[tuple[str, str]]]:
    """Events per tenant, and dead letters per (tenant, reason), of one batch."""
    from stream.outcomes.reasons import FILTERED, INVALID_TENANT, REASONS

    # A row without a valid tenant is counted under "_invalid", which takes no label slot.
    reason = outcome.decoded.reason
    tenants = list(outcome.decoded.tenants)
    for i in np.flatnonzero(reason == INVALID_TENANT).tolist():
        tenants[i] = INVALID_TENANT_LABEL
    consumed = Counter(t or INVALID_TENANT_LABEL for t in tenants)
    dead: Counter[tuple[str, str]] = Counter()
    for i in np.flatnonzero(reason).tolist():
        if reason[i] != FILTERED:
            dead[(tenants[i] or INVALID_TENANT_LABEL, REASONS[int(reason[i])])] += 1
    return consumed, dead


class Accounting:
    """Totals, metrics, the model table's canary, shadow summaries and consumer lag."""

    def __init__(
        self,
        *,
        remember: Callable[[list[str], list[Any]], None],
        metrics: MetricsSink,
        consumer: Consumer,
        on_batch: Callable[[BatchOutcome], None] | None = None,
        drift_window: int = 10_000,
        drift_warn: float = 0.25,
        drift_out: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.stats = RunStats()
        self.drift = DriftWatch(metrics, drift_window, drift_warn, publish=drift_out)
        self._remember = remember
        self.metrics = metrics
        self.consumer = consumer
        self.on_batch = on_batch
        self._reports_lag = metrics.enabled
        self._last_lag = 0.0
        self._last_shadow_log = 0.0
        self.dead_letter_log = BurstLog(log, "dead-lettered")
        self.late_log = BurstLog(log, LATE_WHAT)

    def window_state(self, store: StateSize) -> None:
        """Window state size, evictions and late events (a ``WindowStore``)."""
        st = store.stats
        if not store.scopes and not st.late:
            return
        self.metrics.record_state(
            entities=store.entities, nbytes=store.bytes(), evicted_ttl=st.evicted_ttl,
            evicted_cap=st.evicted_cap, late=st.late,
        )

    def batch_done(self, msgs: list[Message], outcome: BatchOutcome, seconds: float) -> None:
        """A batch was delivered and committed."""
        st = self.stats
        n_alerts = len(outcome.alerts)
        n_suppressed = len(outcome.suppressed)
        # Suppressed alerts published marked are among the alerts; the others are not.
        hidden = (0 if outcome.suppressed_emitted else n_suppressed) + outcome.deduplicated
        scored = outcome.scored
        filtered = outcome.filtered
        dead = outcome.n - scored - filtered
        st.filtered += filtered
        st.consumed += outcome.n
        st.scored += scored
        st.alerts += n_alerts
        st.below_threshold += scored - n_alerts - hidden
        st.suppressed += n_suppressed
        st.deduplicated += outcome.deduplicated
        st.dead_letters += dead
        st.batches += 1
        st.batch_ends.append(time.time())
        alert_counts = outcome.alert_counts()
        st.alerts_by.add(alert_counts)
        reasons = outcome.reason_counts() if dead else Counter()
        st.dead_by.update(reasons)
        self._canary(outcome)
        self._record_shadow(outcome.shadow)
        self.drift.add(outcome)
        if outcome.decoded.late_by:
            self.late_log.add(outcome.decoded.late_by, outcome.n)
        if reasons:
            # Once when it starts, then one summary per interval: a steady trickle of bad
            # records must not write a line per batch (the counts are in the metrics).
            self.dead_letter_log.add(reasons, outcome.n)
        m = self.metrics
        m.record_batch(consumed=outcome.n, scored=scored, seconds=seconds)
        m.record_alerts(alert_counts)
        if reasons:
            m.record_dead_letters(reasons)
        if n_suppressed:
            m.record_suppressed(Counter(outcome.suppressed.values()))
        if outcome.deduplicated:
            m.record_deduplicated(outcome.deduplicated)
        if self._reports_lag:  # a real metrics sink: per-tenant counts are worth a pass
            m.record_tenants(*_tenant_counts(outcome))
            ts = np.fromiter(
                (msg.timestamp()[1] for msg in msgs), dtype=np.float64, count=len(msgs)
            )
            ts = ts[ts > 0]
            if len(ts):
                m.observe_event_age(time.time() - ts / 1000.0)
            self.report_lag()
        if self.on_batch is not None:
            self.on_batch(outcome)

    def batch_failed(self, failed_records: int) -> None:
        self.stats.delivery_failures += 1
        self.metrics.record_delivery_failures(max(1, failed_records))

    def _canary(self, outcome: BatchOutcome) -> None:
        """A few recent valid events, already decoded, for the model table's load checks."""
        good = np.flatnonzero(outcome.levels >= 0)
        if not len(good):
            return
        step = max(1, len(good) // CANARY_PER_BATCH)
        rows = good[::step][:CANARY_PER_BATCH].tolist()
        decoded = outcome.decoded
        self._remember([decoded.tenants[i] for i in rows], [decoded.doc(i) for i in rows])

    def _record_shadow(self, results: list[ShadowResult]) -> None:
        if not results:
            return
        shadow = self.stats.shadow
        for r in results:
            tenant = r.tenant if r.tenant in shadow or len(shadow) < MAX_TENANTS else OTHER_TENANT
            acc = shadow.setdefault(tenant, [0.0, 0.0, 0.0])
            acc[0] += r.rows
            acc[1] += r.agree
            acc[2] += r.score_diff_sum
            if acc[0]:
                self.metrics.record_shadow(tenant, acc[1] / acc[0], acc[2] / acc[0])
        now = time.monotonic()
        if now - self._last_shadow_log > SHADOW_LOG_EVERY_S:
            self._last_shadow_log = now
            for tenant, rep in sorted(self.shadow_summary().items()):
                log.info(
                    "shadow %s: %d rows, level agreement %.1f%%, mean score diff %+.4f",
                    tenant,
                    rep["rows"],
                    100 * rep["agreement"],
                    rep["mean_score_diff"],
                )

    def shadow_summary(self) -> dict[str, dict[str, float]]:
        return {
            t: {
                "rows": a[0],
                "agreement": a[1] / a[0] if a[0] else 0.0,
                "mean_score_diff": a[2] / a[0] if a[0] else 0.0,
            }
            for t, a in self.stats.shadow.items()
        }

    # ---- lag ----------------------------------------------------------------------------

    def report_lag(self) -> None:
        """Lag gauges, at most every ``LAG_EVERY_S`` (also while idle: a drained backlog
        must read zero)."""
        if not self._reports_lag:
            return
        now = time.monotonic()
        # The clock restarts only once a gauge was set: before assignment or the first
        # fetch there is nothing to report, and the first batch must not wait 5 s for it.
        if now - self._last_lag > LAG_EVERY_S and self._read_lag():
            self._last_lag = now

    def _read_lag(self) -> bool:
        try:
            assignment = self.consumer.assignment()
            positions = self.consumer.position(assignment)
        except KafkaException:
            return False
        reported = False
        for tp in positions:
            try:
                _low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if tp.offset >= 0 and high >= 0:
                self.metrics.set_lag(tp.topic, tp.partition, max(0, high - tp.offset))
                reported = True
        return reported

    def forget_partition(self, topic: str, partition: int) -> None:
        self.metrics.remove_lag(topic, partition)

    def close(self) -> None:
        self.dead_letter_log.flush()
        self.late_log.flush()
