"""The consume -> score -> produce -> commit loop and its delivery modes.

One iteration handles one micro-batch:

1. Consume up to ``batch_size`` messages or until ``batch_max_wait_ms`` passes.
2. Score the batch (``batch.process_batch``): every message ends as an alert,
   a below-threshold score, or a dead-letter record with a reason.
3. Produce the alerts (keyed by tenant) and the dead-letter records.
4. At-least-once: wait until every record of the batch is acknowledged, then
   commit the batch's offsets synchronously. If any record failed, nothing is
   committed and the batch's partitions are rewound to the batch's first
   offsets, so the batch is processed again (same alert ids).
   Exactly-once: steps 3-4 happen inside one producer transaction that also
   carries the consumed offsets (``send_offsets_to_transaction``); on failure
   the transaction is aborted and the partitions rewound.
5. Report metrics; between batches the model table may swap in new versions.

Because a batch is finished (delivered and committed) before the next
``consume`` call, and rebalance callbacks only run inside ``consume``, a
revoked partition never has a batch in flight.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from stream import kafka as kafka_clients
from stream.batch import BatchOutcome, ShadowResult, process_batch
from stream.config import Settings
from stream.events import REASONS
from stream.models import ModelTable
from stream.scoring import LEVEL_CODES

log = logging.getLogger(__name__)


@dataclass
class RunStats:
    """Running totals of one consumer process (also what the demo summarises)."""

    consumed: int = 0
    scored: int = 0
    alerts: int = 0
    below_threshold: int = 0
    dead_letters: int = 0
    batches: int = 0
    delivery_failures: int = 0
    rewinds: int = 0
    alerts_by: Counter[tuple[str, str]] = field(default_factory=Counter)
    dead_by: Counter[str] = field(default_factory=Counter)
    batch_ends: list[float] = field(default_factory=list)
    shadow: dict[str, list[float]] = field(default_factory=dict)  # tenant -> [rows, agree, diff]


class DeliveryError(RuntimeError):
    """Some records of a batch were not acknowledged by the broker."""


class _Deliveries:
    """Counts acknowledgements of one batch's records."""

    def __init__(self) -> None:
        self.pending = 0
        self.failed = 0
        self.first_error: KafkaError | None = None

    def __call__(self, err: KafkaError | None, _msg: Message) -> None:
        self.pending -= 1
        if err is not None:
            self.failed += 1
            self.first_error = self.first_error or err


class Pipeline:
    """A running consumer: Kafka clients, the model table, and the loop."""

    def __init__(
        self,
        settings: Settings,
        table: ModelTable,
        *,
        metrics: Any | None = None,
        health: Any | None = None,
        on_batch: Callable[[BatchOutcome], None] | None = None,
    ) -> None:
        self.s = settings
        self.table = table
        self.metrics = metrics
        self.health = health
        self.on_batch = on_batch
        self.stats = RunStats()
        self.min_level = LEVEL_CODES[settings.min_level]
        self.exactly_once = settings.delivery == "exactly-once"
        self.stop_event = threading.Event()
        self._assignment: set[tuple[str, int]] = set()
        self._last_lag = 0.0
        self._last_shadow_log = 0.0
        self.consumer = kafka_clients.make_consumer(
            settings, on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        self.producer = kafka_clients.make_producer(settings, transactional=self.exactly_once)
        if self.exactly_once:
            self.producer.init_transactions(30)

    # ---- rebalance ----------------------------------------------------------------

    def _on_assign(self, _c: Any, parts: list[TopicPartition]) -> None:
        self._assignment |= {(p.topic, p.partition) for p in parts}
        self._update_ready()

    def _on_revoke(self, _c: Any, parts: list[TopicPartition]) -> None:
        self._assignment -= {(p.topic, p.partition) for p in parts}
        self._update_ready()

    def _update_ready(self) -> None:
        if self.health is None:
            return
        if not self._assignment:
            self.health.set_ready(False, "no partitions assigned")
        elif not self.table.has_global() and not self.table.loaded():
            self.health.set_ready(False, "no model loaded")
        else:
            self.health.set_ready(True)

    # ---- the loop -------------------------------------------------------------------

    def run(self) -> RunStats:
        """Process batches until ``stop_event`` is set; finish the batch in flight, then close."""
        s = self.s
        timeout = s.batch_max_wait_ms / 1000.0
        try:
            while not self.stop_event.is_set():
                if self.health is not None:
                    self.health.heartbeat()
                msgs = self.consumer.consume(s.batch_size, timeout)
                self.producer.poll(0)
                if not msgs:
                    self._update_ready()
                    continue
                msgs = self._drop_errors(msgs)
                if msgs:
                    self._handle(msgs)
        finally:
            self.close()
        return self.stats

    def _drop_errors(self, msgs: list[Message]) -> list[Message]:
        good = []
        for m in msgs:
            err = m.error()
            if err is None:
                good.append(m)
            elif err.code() == KafkaError._PARTITION_EOF:
                continue
            elif err.fatal():
                raise KafkaException(err)
            else:
                log.warning("consumer error: %s", err)
        return good

    def _handle(self, msgs: list[Message]) -> None:
        t0 = time.perf_counter()
        s = self.s
        values = [m.value() for m in msgs]
        partitions = np.fromiter((m.partition() for m in msgs), dtype=np.int64, count=len(msgs))
        offsets = np.fromiter((m.offset() for m in msgs), dtype=np.int64, count=len(msgs))
        outcome = process_batch(
            values,
            self.table.resolve,
            topic=s.input_topic,
            partitions=partitions,
            offsets=offsets,
            min_level=self.min_level,
            max_bytes=s.max_message_bytes,
            challenger=self.table.challenger_for,
        )
        try:
            if self.exactly_once:
                self._deliver_transactional(msgs, outcome, partitions, offsets)
            else:
                self._deliver(msgs, outcome)
                self._commit(partitions, offsets)
        except (DeliveryError, KafkaException) as e:
            self.stats.delivery_failures += 1
            if self.metrics is not None:
                self.metrics.record_delivery_failures(1)
            log.error("batch of %d not delivered (%s); rewinding to reprocess it", len(msgs), e)
            self._rewind(partitions, offsets)
            time.sleep(min(5.0, 0.5 * self.stats.delivery_failures))
            return
        self._account(msgs, outcome, time.perf_counter() - t0)

    def _produce(
        self, topic: str, value: bytes | None, key: Any, headers: Any, cb: _Deliveries
    ) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers, on_delivery=cb)
                cb.pending += 1
                return
            except BufferError:
                # Backpressure: the local queue is full; wait for the broker instead of dropping.
                self.producer.poll(0.1)
                if self.health is not None:
                    self.health.heartbeat()

    def _produce_outcome(self, msgs: list[Message], outcome: BatchOutcome, cb: _Deliveries) -> None:
        s = self.s
        tenants = outcome.decoded.tenants
        for i, value in zip(outcome.alert_rows.tolist(), outcome.alerts, strict=True):
            self._produce(s.alert_topic, value, tenants[i], None, cb)
        detail = outcome.decoded.detail
        reason = outcome.decoded.reason
        for i in outcome.rejected_rows.tolist():
            m = msgs[i]
            headers = [
                ("reason", REASONS[int(reason[i])].encode()),
                ("detail", detail.get(i, "").encode()),
                ("source.topic", m.topic().encode()),
                ("source.partition", str(m.partition()).encode()),
                ("source.offset", str(m.offset()).encode()),
            ]
            self._produce(s.dlq_topic, m.value(), m.key(), headers, cb)
        if s.shadow_topic and outcome.shadow:
            for r in outcome.shadow:
                self._produce(s.shadow_topic, orjson.dumps(r.__dict__), r.tenant, None, cb)

    def _deliver(self, msgs: list[Message], outcome: BatchOutcome) -> None:
        cb = _Deliveries()
        self._produce_outcome(msgs, outcome, cb)
        deadline = time.monotonic() + 120
        while cb.pending > 0:
            self.producer.flush(1.0)
            if self.health is not None:
                self.health.heartbeat()
            if time.monotonic() > deadline:
                raise DeliveryError(f"{cb.pending} records unacknowledged after 120s")
        if cb.failed:
            raise DeliveryError(f"{cb.failed} records failed: {cb.first_error}")

    def _commit(self, partitions: np.ndarray, offsets: np.ndarray) -> None:
        self.consumer.commit(offsets=self._next_offsets(partitions, offsets), asynchronous=False)

    def _next_offsets(self, partitions: np.ndarray, offsets: np.ndarray) -> list[TopicPartition]:
        topic = self.s.input_topic
        out = []
        for p in np.unique(partitions).tolist():
            out.append(TopicPartition(topic, p, int(offsets[partitions == p].max()) + 1))
        return out

    def _deliver_transactional(
        self,
        msgs: list[Message],
        outcome: BatchOutcome,
        partitions: np.ndarray,
        offsets: np.ndarray,
    ) -> None:
        cb = _Deliveries()
        p = self.producer
        p.begin_transaction()
        try:
            self._produce_outcome(msgs, outcome, cb)
            p.send_offsets_to_transaction(
                self._next_offsets(partitions, offsets), self.consumer.consumer_group_metadata(), 60
            )
            p.commit_transaction(120)
        except KafkaException as e:
            err = e.args[0] if e.args else None
            if isinstance(err, KafkaError) and err.fatal():
                raise
            try:
                p.abort_transaction(60)
            except KafkaException as abort_err:
                log.error("abort_transaction failed: %s", abort_err)
            raise
        if cb.failed:  # cannot happen after a successful commit, but never assume
            raise DeliveryError(f"{cb.failed} records failed: {cb.first_error}")

    def _rewind(self, partitions: np.ndarray, offsets: np.ndarray) -> None:
        topic = self.s.input_topic
        for p in np.unique(partitions).tolist():
            if (topic, p) not in self._assignment:
                continue  # revoked meanwhile: the new owner starts from the committed offset
            first = int(offsets[partitions == p].min())
            try:
                self.consumer.seek(TopicPartition(topic, p, first))
            except KafkaException as e:
                log.warning("seek %s[%d] to %d failed: %s", topic, p, first, e)
        self.stats.rewinds += 1

    def _account(self, msgs: list[Message], outcome: BatchOutcome, seconds: float) -> None:
        st = self.stats
        n_alerts = len(outcome.alerts)
        scored = outcome.scored
        dead = outcome.n - scored
        st.consumed += outcome.n
        st.scored += scored
        st.alerts += n_alerts
        st.below_threshold += scored - n_alerts
        st.dead_letters += dead
        st.batches += 1
        st.batch_ends.append(time.time())
        alert_counts = outcome.alert_counts()
        st.alerts_by.update(alert_counts)
        reasons = outcome.reason_counts() if dead else Counter()
        st.dead_by.update(reasons)
        good = np.flatnonzero(outcome.levels >= 0)
        if len(good):
            step = max(1, len(good) // 8)
            self.table.remember([outcome.decoded.values[i] for i in good[::step][:8].tolist()])  # type: ignore[misc]
        self._record_shadow(outcome.shadow)
        if reasons:
            log.warning("dead-lettered %d of %d records: %s", dead, outcome.n, dict(reasons))
        m = self.metrics
        if m is not None:
            m.record_batch(consumed=outcome.n, scored=scored, seconds=seconds)
            m.record_alerts(alert_counts)
            if reasons:
                m.record_dead_letters(reasons)
            ts = np.fromiter(
                (msg.timestamp()[1] for msg in msgs), dtype=np.float64, count=len(msgs)
            )
            ts = ts[ts > 0]
            if len(ts):
                m.observe_event_age(time.time() - ts / 1000.0)
            now = time.monotonic()
            if now - self._last_lag > 5.0:
                self._last_lag = now
                self._report_lag()
        if self.on_batch is not None:
            self.on_batch(outcome)

    def _record_shadow(self, results: list[ShadowResult]) -> None:
        if not results:
            return
        for r in results:
            acc = self.stats.shadow.setdefault(r.tenant, [0.0, 0.0, 0.0])
            acc[0] += r.rows
            acc[1] += r.agree
            acc[2] += r.score_diff_sum
            if self.metrics is not None and acc[0]:
                self.metrics.record_shadow(r.tenant, acc[1] / acc[0], acc[2] / acc[0])
        now = time.monotonic()
        if now - self._last_shadow_log > 30.0:
            self._last_shadow_log = now
            for tenant, rep in sorted(self.shadow_summary().items()):
                log.info(
                    "shadow %s: %d rows, level agreement %.1f%%, mean score diff %+.4f",
                    tenant,
                    rep["rows"],
                    100 * rep["agreement"],
                    rep["mean_score_diff"],
                )

    def _report_lag(self) -> None:
        try:
            assignment = self.consumer.assignment()
            positions = self.consumer.position(assignment)
        except KafkaException:
            return
        for tp in positions:
            try:
                _low, high = self.consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if tp.offset >= 0 and high >= 0:
                self.metrics.set_lag(tp.topic, tp.partition, max(0, high - tp.offset))

    def shadow_summary(self) -> dict[str, dict[str, float]]:
        return {
            t: {
                "rows": a[0],
                "agreement": a[1] / a[0] if a[0] else 0.0,
                "mean_score_diff": a[2] / a[0] if a[0] else 0.0,
            }
            for t, a in self.stats.shadow.items()
        }

    def close(self) -> None:
        """Flush what is queued and leave the group (offsets were committed per batch)."""
        try:
            self.producer.flush(30)
        finally:
            with contextlib.suppress(RuntimeError):  # already closed
                self.consumer.close()
