"""The consume -> score -> produce -> commit loop and the rebalance callbacks.

One iteration handles one micro-batch:

1. Consume up to ``batch_size`` messages or until ``batch_max_wait_ms`` passes.
2. Score the batch (``batch.process_batch``): every message ends as an alert,
   a below-threshold score, or a dead-letter record with a reason.
3. Settle it (``stream.delivery``): produce its records, wait for every
   acknowledgement, commit its offsets (at-least-once: synchronously;
   exactly-once: inside the batch's transaction).
4. Account for it (``stream.ops.accounting``); between batches the model table may
   swap in new versions.

A batch that fails is not committed: its partitions are rewound (to the
batch's first offsets, or exactly-once to the group's committed offsets) and it
is redone after a short, growing wait. So is a batch some of whose tenants'
models should serve but are not loaded (still loading, failed, registry down):
it is not scored at all and waits; nothing of it is dead-lettered for that.
``accounting.Progress`` says why while no batch commits (WARNING, /readyz 503
after ``--stall-after`` seconds, at once while waiting for models, and the
stalled time in ``stream_stalled_seconds_total``).

Rebalances: callbacks run only inside consumer polls. Between batches nothing
is in flight. During a paused wait (``stream.consumer.backpressure``) a batch is; a
revocation then finishes it (delivered and committed) before the partitions are
released, so the next owner starts exactly after it. Lost partitions (session
expired) can no longer be committed: the batch is abandoned and the next owner
starts from the committed offsets.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

import numpy as np
from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from stream.config import Settings
from stream.consumer.backpressure import Backpressure
from stream.consumer.batch import BatchOutcome, process_batch
from stream.consumer.drift_out import DriftOut
from stream.consumer.heap import HeapFreezer
from stream.consumer.suppressions import RuleFollower
from stream.delivery import Batch, BatchState, InCallback, make_delivery
from stream.delivery.inflight import Record, failure_cause
from stream.ingest.where import Where
from stream.kafka import clients as kafka_clients
from stream.models.table import ModelTable
from stream.ops.accounting import (
    Accounting,
    HealthSink,
    MetricsSink,
    NullHealth,
    NullMetrics,
    Progress,
    RunStats,
)
from stream.outcomes.dedup import dedup_of
from stream.outcomes.formats import format_alerts
from stream.outcomes.reasons import FORMAT_ERROR, REASONS
from stream.outcomes.records import LEVEL_CODES, dead_letter, dlq_value_limit
from stream.outcomes.risk import risk_of
from stream.outcomes.suppress import RuleSet
from stream.state.keeper import StateKeeper, StateUnavailable

log = logging.getLogger(__name__)

#: How long a revocation may take to finish the batch in flight before it is given up.
REVOKE_FINISH_S = 30.0


class RetryDelay:
    """The wait before a failed batch is redone: 0.5 s more per failure in a row, up to 5 s."""

    def __init__(self, step: float = 0.5, cap: float = 5.0) -> None:
        self.step, self.cap = step, cap
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        return min(self.cap, self.step * self.failures)

    def reset(self) -> None:
        self.failures = 0


class Pipeline:
    """A running consumer: Kafka clients, the model table, and the loop."""

    def __init__(
        self,
        settings: Settings,
        table: ModelTable,
        *,
        metrics: MetricsSink | None = None,
        health: HealthSink | None = None,
        on_batch: Callable[[BatchOutcome], None] | None = None,
    ) -> None:
        self.s = settings
        self.table = table
        self.health: HealthSink = health or NullHealth()
        self._probe = health is not None  # readiness is worked out only for a real probe
        self.min_level = LEVEL_CODES[settings.min_level]
        # A dead letter's value, key and headers stay within what the producer may send.
        self._dlq_limit = dlq_value_limit(settings)
        self.where = Where.parse(settings.where) if settings.where else None
        self.risk = risk_of(settings)
        self.dedup = dedup_of(settings)
        # Suppression rule ids applied, per partition and (None) to the incidents.
        self._rules_applied: dict[int | None, frozenset[str]] = {}
        self.tenant_from = settings.tenant_source
        self.stop_event = threading.Event()
        # Rebound, never mutated in place, so other threads can read it (``assignment``).
        self._assignment: frozenset[tuple[str, int]] = frozenset()
        self._joined = False  # the group join finished once (an assignment, maybe empty)
        self._batch: Batch | None = None
        self.retry = RetryDelay()
        self.heap = HeapFreezer(lambda: table.changes)
        self.consumer = kafka_clients.make_consumer(
            settings, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        # Drift snapshots for the console, when --drift-topic names where.
        self.drift_out = DriftOut(settings) if settings.drift_topic else None
        self.accounting = Accounting(
            remember=table.remember,
            metrics=metrics or NullMetrics(),
            consumer=self.consumer,
            on_batch=on_batch,
            drift_window=settings.drift_window,
            drift_warn=settings.drift_psi_warn,
            drift_out=self.drift_out.publish if self.drift_out is not None else None,
        )
        self.backpressure = Backpressure(
            self.consumer,
            lambda: self._assignment,
            batch_size=settings.batch_size,
            stats=self.accounting.stats,
            on_wait=self._producer_waits,
        )
        self.progress = Progress(settings.stall_after, self.accounting.metrics)
        self.keeper = StateKeeper(settings, self.consumer)
        # The suppression rules in force, followed on a thread of their own.
        self.suppressions = RuleFollower(settings) if settings.suppression_topic else None
        if self.suppressions is not None:
            self.suppressions.start()
        self.delivery = make_delivery(
            settings, self.consumer, heartbeat=self.health.heartbeat,
            stopping=self.stop_event.is_set, on_wait=self._producer_waits,
        )

    @property
    def stats(self) -> RunStats:
        return self.accounting.stats

    @property
    def assignment(self) -> frozenset[tuple[str, int]]:
        """The (topic, partition) pairs this consumer owns; safe to read from any thread.

        confluent-kafka serialises calls on one consumer: another thread calling
        ``consumer.assignment()`` waits for a gap between the loop's polls, which a
        busy loop may not leave for minutes.
        """
        return self._assignment

    def shadow_summary(self) -> dict[str, dict[str, float]]:
        return self.accounting.shadow_summary()

    # ---- the loop -------------------------------------------------------------------

    def run(self) -> RunStats:
        """Process batches until ``stop_event`` is set; finish the batch in flight, then close."""
        size, wait = self.s.batch_size, self.s.batch_max_wait_ms / 1000.0
        try:
            while not self.stop_event.is_set():
                self.health.heartbeat()
                # Between batches: no record of a batch is alive, the best time to collect.
                self.heap.maybe_freeze()
                msgs = self.backpressure.take_held() or self.consumer.consume(size, wait)
                self.delivery.poll(0)
                self.progress.tick()
                if not msgs:
                    self.progress.idle()
                    self._update_ready()
                    self.accounting.report_lag()  # a drained backlog must read zero
                    continue
                msgs = kafka_clients.usable_messages(msgs)
                if msgs:
                    self._handle(msgs)
        finally:
            self.close()
        return self.stats

    def _handle(self, msgs: list[Message]) -> None:
        t0 = time.perf_counter()
        values = [m.value() for m in msgs]
        partitions = np.fromiter((m.partition() for m in msgs), dtype=np.int64, count=len(msgs))
        offsets = np.fromiter((m.offset() for m in msgs), dtype=np.int64, count=len(msgs))
        rules = self.suppressions
        if rules is not None and not rules.caught_up.is_set():
            # No alert a rule covers may go out before the rules are known.
            self._not_now(f"suppression rules not read yet from {rules.topic}", partitions,
                          offsets)
            return
        closing, applied = self._closing(rules, partitions)
        try:
            self.keeper.ready(np.unique(partitions).tolist())
            outcome = process_batch(
                values,
                self.table.resolve,
                topic=self.s.input_topic,
                partitions=partitions,
                offsets=offsets,
                min_level=self.min_level,
                max_bytes=self.s.max_message_bytes,
                challenger=self.table.challenger_for,
                schema=self.s.input_schema,
                tenant_field=(
                    self.tenant_from.name if self.tenant_from.kind == "field" else "tenant_id"
                ),
                tenants=self._tenants(msgs),
                store=self.keeper.store,
                incidents=self.keeper.incidents,
                where=self.where,
                risk=self.risk,
                rules=rules.rules if rules is not None else None,
                emit_suppressed=self.s.emit_suppressed,
                dedup=self.dedup,
                closing=closing,
            )
        except StateUnavailable as e:
            # The windows could not be restored: nothing of the batch happened yet.
            self._not_now(f"window state not restored ({e}); the batch is redone",
                          partitions, offsets)
            return
        if outcome.waiting:
            # Some tenants' models should score it but are not loaded: nothing happened yet.
            waiting = ", ".join(map(str, outcome.waiting[:3]))
            more = len(outcome.waiting) - 3
            self._not_now(
                f"models not loaded from the registry at {self.table.where}: {waiting}"
                f"{f' and {more} more' if more > 0 else ''}; the batch waits for them "
                "(nothing is dead-lettered for it)", partitions, offsets, at_once=True)
            return
        batch = Batch.of(self._records(msgs, outcome), partitions, offsets)
        # Incidents and window state changes travel with the batch (its transaction).
        batch.records.extend(self.keeper.records(outcome, batch))
        self._batch = batch
        try:
            self.delivery.settle(batch, self.backpressure, deadline=None)
        finally:
            self._batch = None
            # Resume before any seek: a seek must be the last word on the fetch position.
            self.backpressure.resume()
        if batch.state is BatchState.DONE:
            self.retry.reset()
            self.keeper.committed()
            self._rules_applied.update(applied)
            self.progress.committed()
            self.accounting.batch_done(msgs, outcome, time.perf_counter() - t0)
            self.accounting.window_state(self.keeper.store)
            self._update_ready()
            return
        # Back to the committed state: incidents as they were, windows restored on next use.
        self.keeper.failed(batch.first)
        self.accounting.batch_failed(batch.acks.failed)
        cause = failure_cause(batch, self._broker_topics)
        log.debug("batch of %d not delivered (%s); rewinding to redo it", len(msgs), cause)
        self.progress.blocked(f"batches not delivered: {cause}")
        self.delivery.after_failure(batch)
        self._rewind(batch)
        self._update_ready()
        self._backoff(self.retry.next())

    def _closing(self, follower: RuleFollower | None, partitions: np.ndarray
                 ) -> tuple[RuleSet | None, dict[int | None, frozenset[str]]]:
        """The rules added since this consumer last committed a batch of these partitions
        (None: the incidents'), which close what they cover with this batch; and what is
        applied once it commits. A partition first seen takes the rules as they are: what
        they cover was suppressed as it came."""
        if follower is None:
            return None, {}
        rules = follower.rules
        ids = frozenset(rules.rules)
        seen = self._rules_applied
        applied: dict[int | None, frozenset[str]] = {None: ids}
        new: set[str] = set(ids - seen[None]) if None in seen else set()
        for p in np.unique(partitions).tolist():
            applied[p] = ids
            if p in seen:
                new |= ids - seen[p]
            else:
                seen[p] = ids
        if None not in seen:
            seen[None] = ids
        if not new:
            return None, applied
        return RuleSet([rules.rules[i] for i in sorted(new)]), applied

    def _not_now(self, cause: str, partitions: np.ndarray, offsets: np.ndarray,
                 at_once: bool = False) -> None:
        """A batch that could not even be scored: rewound and redone after a wait."""
        self.progress.blocked(cause, at_once=at_once)
        failed = Batch.of([], partitions, offsets)
        failed.state = BatchState.FAILED
        self.keeper.failed(failed.first)
        self._rewind(failed)
        self._update_ready()
        self._backoff(self.retry.next())

    def _producer_waits(self, why: str, seconds: float) -> None:
        """A wait for the broker inside a batch (records not acknowledged, a producer that
        cannot start): once it has lasted ``--stall-after``, say so, readiness too, before
        librdkafka gives up."""
        if seconds >= self.s.stall_after:
            self.progress.blocked(f"waiting for the broker: {why}")
            self._update_ready()

    def _broker_topics(self) -> set[str] | None:
        """The broker's topics (None when it does not answer): to name a failure's cause."""
        try:
            return set(self.consumer.list_topics(timeout=5).topics)
        except KafkaException:
            return None

    def _tenants(self, msgs: list[Message]) -> list[object] | None:
        """Tenants from the message key, a header or a constant (``--tenant-from``); None
        when they come from a field of the event (the decoder reads it)."""
        src = self.tenant_from
        if src.kind == "field":
            return None
        if src.kind == "const":
            return [src.name] * len(msgs)
        if src.kind == "key":
            return [_text(m.key()) for m in msgs]
        return [_header(kafka_clients.headers_of(m), src.name) for m in msgs]

    def _records(self, msgs: list[Message], outcome: BatchOutcome) -> list[Record]:
        """Alerts (keyed by tenant), dead letters (original bytes and key), shadow reports."""
        s = self.s
        tenants = outcome.decoded.tenants
        rows = outcome.alert_rows.tolist()
        alerts, failed = format_alerts(s.alert_format, outcome.alerts, rows, outcome.source)
        if failed:  # those events are dead letters, their alerts never written
            outcome.unalert(failed, FORMAT_ERROR)
        out: list[Record] = [
            (s.alert_topic, value, tenants[i], None)
            for i, value in zip(rows, alerts, strict=True) if value is not None
        ]
        detail, reason = outcome.decoded.detail, outcome.decoded.reason
        for i in outcome.rejected_rows.tolist():
            m = msgs[i]
            value, key, headers = dead_letter(
                REASONS[int(reason[i])], detail.get(i, ""), m, self._dlq_limit)
            out.append((s.dlq_topic, value, key, headers))
        if s.shadow_topic:
            for r in outcome.shadow:
                out.append((s.shadow_topic, r.encode(), r.tenant, None))
        return out

    def _rewind(self, batch: Batch) -> None:
        """Seek the failed batch's partitions that are still ours back to where to redo it."""
        topic = self.s.input_topic
        owned = {p for t, p in self._assignment if t == topic}
        targets = self.delivery.rewind_targets(batch, owned)
        for p, offset in targets.items():
            try:
                self.consumer.seek(TopicPartition(topic, p, offset))
            except KafkaException as e:
                log.warning("seek %s[%d] to %d failed: %s", topic, p, offset, e)
        self.backpressure.drop_held(topic, targets)
        self.accounting.stats.rewinds += 1

    def _backoff(self, seconds: float) -> None:
        """Wait before retrying a failed batch, without letting the health probe go stale."""
        end = time.monotonic() + seconds
        while not self.stop_event.is_set() and time.monotonic() < end:
            self.health.heartbeat()
            self.delivery.poll(min(0.2, max(0.0, end - time.monotonic())))

    # ---- rebalance callbacks ------------------------------------------------------------

    def _on_assign(self, c: Consumer, parts: list[TopicPartition]) -> None:
        self._joined = True
        self._assignment = self._assignment | {(p.topic, p.partition) for p in parts}
        self.backpressure.on_assign(c, parts)
        self._update_ready()

    def _on_revoke(self, _c: Consumer, parts: list[TopicPartition]) -> None:
        batch = self._batch
        if batch is not None and batch.is_open:
            # The next owner starts from the committed offsets: settle the batch first.
            log.info("revocation with a batch in flight: finishing it before release")
            self.delivery.settle(batch, InCallback(), time.monotonic() + REVOKE_FINISH_S)
            if batch.state is BatchState.DONE:
                self.accounting.stats.settled_on_revoke += 1
        self._forget(parts)

    def _on_lost(self, _c: Consumer, parts: list[TopicPartition]) -> None:
        batch = self._batch
        if batch is not None and batch.is_open:
            # The group has moved on: these offsets can no longer be committed by us.
            batch.error = "partitions lost (session expired or fenced)"
            self.delivery.abandon(batch, InCallback(), time.monotonic() + REVOKE_FINISH_S)
        self._forget(parts)

    def _forget(self, parts: list[TopicPartition]) -> None:
        gone = {(p.topic, p.partition) for p in parts}
        # Whatever held the batch up is the next owner's to meet now.
        self.progress.clear()
        self.backpressure.forget(gone)
        self._assignment = self._assignment - gone
        for topic, partition in gone:
            self.accounting.forget_partition(topic, partition)
            if topic == self.s.input_topic:
                self.keeper.forget(partition)
        self._update_ready()

    def _update_ready(self) -> None:
        if not self._probe:
            return
        stalled = self.progress.stalled
        if not self._assignment:
            self.health.set_ready(False, "no partitions assigned")
        elif stalled:
            self.health.set_ready(False, stalled)
        elif not self.table.any_loaded():
            self.health.set_ready(False, "no model loaded")
        else:
            self.health.set_ready(True)

    def close(self) -> None:
        """Deliver what is queued and leave the group (offsets were committed per batch)."""
        try:
            if self.suppressions is not None:
                self.suppressions.stop()
            self.accounting.close()
            if self.drift_out is not None:
                self.drift_out.close()
            self.delivery.close()
        finally:
            with contextlib.suppress(RuntimeError):  # already closed
                self._finish_join(min(10.0, self.s.session_timeout_ms / 1000.0))
                self.consumer.close()

    def _finish_join(self, timeout: float) -> None:
        """Before leaving a group this consumer may still be joining, let the join finish.

        The consumer subscribes before the registry is asked (service.build), so it
        can be closed in the middle of its first join. The embedded broker (Tansu)
        then never completes the group's next join (seen here: the next member got
        no partitions in 40 s), while leaving after the join works. Records fetched
        meanwhile are dropped unprocessed: their offsets are not committed.
        """
        deadline = time.monotonic() + timeout
        while not self._joined and time.monotonic() < deadline:
            self.consumer.poll(0.1)


def _text(raw: bytes | None) -> str | None:
    """A key or header as text, None when absent or not UTF-8 (then ``invalid_tenant``)."""
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _header(headers: list[tuple[str, bytes | None]], name: str) -> str | None:
    """The tenant header's text; None (``invalid_tenant``) when it is missing or given more
    than once: which of two tenants a sender meant is not ours to pick."""
    found: bytes | None = None
    seen = False
    for key, value in headers:
        if key == name:
            if seen:
                return None
            found, seen = value, True
    return _text(found) if seen else None
