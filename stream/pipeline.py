"""The consume -> score -> produce -> commit loop and its delivery modes.

One iteration handles one micro-batch:

1. Consume up to ``batch_size`` messages or until ``batch_max_wait_ms`` passes.
2. Score the batch (``batch.process_batch``): every message ends as an alert,
   a below-threshold score, or a dead-letter record with a reason.
3. Produce the alerts (keyed by tenant) and the dead-letter records, and wait
   until the broker has acknowledged every one of them.
4. At-least-once: commit the batch's offsets synchronously. Exactly-once: the
   records were produced inside one transaction; the batch's offsets join it
   (``send_offsets_to_transaction``) and it is committed.
5. Report metrics; between batches the model table may swap in new versions.

Failure: nothing of the batch is committed. At-least-once rewinds its
partitions to the batch's first offsets (the batch is scored again, same alert
ids). Exactly-once aborts the transaction and rewinds to the group's committed
offsets, as the librdkafka transactions example does.

Backpressure: while the producer cannot take or deliver the batch's records
(local queue full, or acknowledgements outstanding for over ``PAUSE_AFTER_S``,
e.g. the alert topic is unavailable), every assigned partition is paused and
the consumer keeps being polled, so group membership survives
``max.poll.interval.ms`` while nothing new is fetched or buffered. Partitions
resume once the batch is settled. librdkafka drops what it prefetched for a
paused partition and fetches again from the application's position on resume;
anything a poll returns anyway is kept for the next batch, never dropped.

Producer trouble: a batch whose records the broker refuses (at-least-once:
the producer's id is fenced) gets a new producer before it is redone.
Exactly-once replaces its transactional producer (same transactional.id, whose
``init_transactions`` fences the old one and aborts its transaction) when a
call never returns, when aborting keeps failing, or, between transactions,
after it lost a broker connection: each was seen on Tansu or librdkafka after a
network cut, and each otherwise stalls the consumer for good.

Rebalances: callbacks run only inside consumer polls. Between batches nothing
is in flight. During a paused wait a batch is; a revocation then finishes it
(delivered and committed, or its transaction committed) before the partitions
are released, so the next owner starts exactly after it. Lost partitions
(session expired) cannot be committed any more: the batch is abandoned (its
transaction aborted) and the next owner starts from the committed offsets.
"""

from __future__ import annotations

import contextlib
import enum
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
from stream.heap import HeapFreezer
from stream.models import ModelTable
from stream.scoring import LEVEL_CODES

log = logging.getLogger(__name__)

#: Acknowledgements outstanding this long without progress: the producer is not draining.
PAUSE_AFTER_S = 1.0
#: How long a revocation may take to finish the batch in flight before it is given up.
REVOKE_FINISH_S = 30.0
#: Timeout of one transactional API call; retriable failures are retried up to TXN_RETRY_S.
TXN_CALL_S = 5.0
TXN_RETRY_S = 60.0
#: Extra wait beyond a transactional call's own timeout before it counts as stuck.
TXN_GRACE_S = 5.0
#: How long aborting may fail before the producer is replaced (which aborts by fencing):
#: one attempt, since a replacement waits for the broker just as well as a retry does.
ABORT_RETRY_S = TXN_CALL_S
#: How long the group's committed offsets are asked for after an abort before giving up.
COMMITTED_RETRY_S = 60.0


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
    pauses: int = 0  # times the partitions were paused for backpressure
    paused_seconds: float = 0.0
    settled_on_revoke: int = 0  # batches finished inside a revocation callback
    held: int = 0  # messages a poll returned while paused, kept for the next batch
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


class _State(enum.Enum):
    OPEN = "open"  # records being produced or acknowledged
    SETTLING = "settling"  # all acknowledged; committing
    DONE = "done"  # committed
    FAILED = "failed"  # nothing committed (transaction aborted); to be rewound


Record = tuple[str, bytes | None, Any, Any]  # topic, value, key, headers


@dataclass(eq=False)
class _Batch:
    """One batch between consume and commit: its records and how far they got."""

    msgs: list[Message]
    outcome: BatchOutcome
    partitions: np.ndarray
    offsets: np.ndarray
    records: list[Record]
    first: dict[int, int]  # partition -> first offset in the batch
    next: dict[int, int]  # partition -> last offset + 1 (what gets committed)
    acks: _Deliveries = field(default_factory=_Deliveries)
    produced: int = 0
    in_txn: bool = False  # exactly-once: this batch's transaction has begun
    state: _State = _State.OPEN
    error: str = ""


class _Call:
    """A blocking client call on a daemon thread, so that waiting for it can time out.

    A daemon thread, unlike an executor's worker, does not hold up interpreter exit when
    the call never returns.
    """

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._fn, self._args = fn, args
        threading.Thread(target=self._run, daemon=True, name="kafka-call").start()

    def _run(self) -> None:
        try:
            self._fn(*self._args)
        except BaseException as e:
            self._error = e
        finally:
            self._fn, self._args = None, ()  # do not keep the client alive
            self._done.set()

    def wait(self, timeout: float) -> bool:
        """True once the call returned (re-raising its exception), False if still running."""
        if not self._done.wait(timeout):
            return False
        if self._error is not None:
            raise self._error
        return True


#: Delivery errors meaning the broker no longer accepts the producer's id and epoch.
_PRODUCER_IDENTITY_ERRORS = frozenset(
    {
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.INVALID_PRODUCER_ID_MAPPING,
    }
)


def _kafka_error(e: BaseException) -> KafkaError | None:
    err = e.args[0] if isinstance(e, KafkaException) and e.args else None
    return err if isinstance(err, KafkaError) else None


def _fatal(e: BaseException) -> bool:
    err = _kafka_error(e)
    return err is not None and err.fatal()


def _retriable(e: BaseException) -> bool:
    err = _kafka_error(e)
    return err is not None and err.retriable()


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
        # Rebound, never mutated in place, so other threads can read it (``assignment``).
        self._assignment: frozenset[tuple[str, int]] = frozenset()
        self._paused: set[tuple[str, int]] = set()
        self._paused_since = 0.0
        self._held: list[Message] = []
        self._batch: _Batch | None = None
        self._in_callback = False  # no consumer poll may nest inside a rebalance callback
        self._txn_open = False
        self._failures_in_row = 0
        self._last_lag = 0.0
        self.heap = HeapFreezer(lambda: table.changes)
        self._last_shadow_log = 0.0
        self.consumer = kafka_clients.make_consumer(
            settings, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        self._tid = kafka_clients.transactional_id(settings) if self.exactly_once else None
        self._link_broken = False  # exactly-once: the producer lost a broker connection
        # Producers are (re)built from these; tests point them at a proxy to cut the alert side.
        self.producer_settings = settings
        self.producer = kafka_clients.make_producer(
            settings, transactional_id=self._tid, error_cb=self._producer_error
        )
        self._stuck: list[Any] = []  # producers a transactional call never returned from
        self._producer_unusable = ""  # why the producer must be replaced before next use
        if self.exactly_once:
            # Fences an older producer with the same transactional.id and aborts what it
            # left open, so its half-written batch never counts as committed.
            self.producer.init_transactions(30)

    @property
    def assignment(self) -> frozenset[tuple[str, int]]:
        """The (topic, partition) pairs this consumer owns; safe to read from any thread.

        confluent-kafka serialises calls on one consumer: another thread calling
        ``consumer.assignment()`` waits for a gap between the loop's polls, which a
        busy loop may not leave for minutes.
        """
        return self._assignment

    # ---- rebalance ----------------------------------------------------------------

    def _on_assign(self, c: Any, parts: list[TopicPartition]) -> None:
        self._assignment = self._assignment | {(p.topic, p.partition) for p in parts}
        if self._paused and parts:
            # Backpressure in progress: new partitions must not start fetching either.
            # Assign them here (the client then skips its own assign) so they can be paused.
            c.incremental_assign(parts)
            c.pause(parts)
            self._paused |= {(p.topic, p.partition) for p in parts}
        self._update_ready()

    def _on_revoke(self, _c: Any, parts: list[TopicPartition]) -> None:
        batch = self._batch
        if batch is not None and batch.state is _State.OPEN:
            # The next owner starts from the committed offsets: settle the batch first.
            log.info("revocation with a batch in flight: finishing it before release")
            self._in_callback = True
            try:
                self._settle(batch, deadline=time.monotonic() + REVOKE_FINISH_S)
            finally:
                self._in_callback = False
            if batch.state is _State.DONE:
                self.stats.settled_on_revoke += 1
        self._forget(parts)

    def _on_lost(self, _c: Any, parts: list[TopicPartition]) -> None:
        batch = self._batch
        if batch is not None and batch.state is _State.OPEN:
            # The group has moved on: these offsets can no longer be committed by us.
            batch.error = "partitions lost (session expired or fenced)"
            self._in_callback = True
            try:
                self._fail(batch, deadline=time.monotonic() + REVOKE_FINISH_S)
            finally:
                self._in_callback = False
        self._forget(parts)

    def _forget(self, parts: list[TopicPartition]) -> None:
        gone = {(p.topic, p.partition) for p in parts}
        paused = self._paused & gone
        if paused:
            # librdkafka keeps a partition's pause across unassign and assign: one paused
            # now would come back paused after the next rebalance and never be read.
            self.consumer.resume([TopicPartition(t, p) for t, p in paused])
        self._assignment = self._assignment - gone
        self._paused -= gone
        self._held = [m for m in self._held if (m.topic(), m.partition()) not in gone]
        if self.metrics is not None:
            for topic, partition in gone:
                self.metrics.remove_lag(topic, partition)
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
                # Between batches: no record of a batch is alive, the best time to collect.
                self.heap.maybe_freeze()
                if self._held:
                    msgs, self._held = self._held, []
                else:
                    msgs = self.consumer.consume(s.batch_size, timeout)
                self.producer.poll(0)
                if not msgs:
                    self._update_ready()
                    # Idle is when a drained backlog's lag must drop to zero on the gauge.
                    self._maybe_report_lag()
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
        batch = self._new_batch(msgs, outcome, partitions, offsets)
        self._batch = batch
        try:
            self._settle(batch, deadline=None)
        finally:
            self._batch = None
            # Resume before any seek: a seek must be the last word on the fetch position.
            self._resume()
        if batch.state is _State.DONE:
            self._failures_in_row = 0
            self._account(msgs, outcome, time.perf_counter() - t0)
            return
        self.stats.delivery_failures += 1
        self._failures_in_row += 1
        if self.metrics is not None:
            self.metrics.record_delivery_failures(max(1, batch.acks.failed))
        log.error(
            "batch of %d not delivered (%s); rewinding to reprocess it", len(msgs), batch.error
        )
        err = batch.acks.first_error
        if not self.exactly_once and err is not None and (
            err.fatal() or err.code() in _PRODUCER_IDENTITY_ERRORS
        ):
            self._renew_producer(err)
        self._rewind(batch)
        self._backoff(min(5.0, 0.5 * self._failures_in_row))

    def _new_batch(
        self,
        msgs: list[Message],
        outcome: BatchOutcome,
        partitions: np.ndarray,
        offsets: np.ndarray,
    ) -> _Batch:
        first: dict[int, int] = {}
        nxt: dict[int, int] = {}
        for p in np.unique(partitions).tolist():
            sel = offsets[partitions == p]
            first[p] = int(sel.min())
            nxt[p] = int(sel.max()) + 1
        return _Batch(
            msgs, outcome, partitions, offsets, self._records(msgs, outcome), first, nxt
        )

    def _records(self, msgs: list[Message], outcome: BatchOutcome) -> list[Record]:
        s = self.s
        tenants = outcome.decoded.tenants
        out: list[Record] = [
            (s.alert_topic, value, tenants[i], None)
            for i, value in zip(outcome.alert_rows.tolist(), outcome.alerts, strict=True)
        ]
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
            out.append((s.dlq_topic, m.value(), m.key(), headers))
        if s.shadow_topic and outcome.shadow:
            for r in outcome.shadow:
                out.append((s.shadow_topic, orjson.dumps(r.__dict__), r.tenant, None))
        return out

    # ---- settling a batch -------------------------------------------------------------

    def _settle(self, batch: _Batch, *, deadline: float | None) -> None:
        """Deliver and commit ``batch`` (state DONE), or give it up (state FAILED).

        Reentrant: a revocation during the paused wait settles the same batch from
        inside the callback; the outer call then finds it settled.
        """
        if batch.state is not _State.OPEN:
            return
        error = ""
        try:
            if self.exactly_once and not batch.in_txn:
                if self._producer_unusable or self._link_broken:
                    self._replace_producer()
                if self._txn_open:
                    # Left open by a failed abort: it holds a rewound batch's records.
                    self._abort(deadline)
                    if self._txn_open:
                        raise DeliveryError("the previous transaction could not be aborted")
                self.producer.begin_transaction()
                self._txn_open = batch.in_txn = True
            self._drive(batch, deadline)
            if batch.state is not _State.OPEN:
                return  # settled by a rebalance callback meanwhile
            batch.state = _State.SETTLING
            if batch.acks.failed:
                raise DeliveryError(
                    f"{batch.acks.failed} records failed: {batch.acks.first_error}"
                )
            offsets = [TopicPartition(self.s.input_topic, p, o) for p, o in batch.next.items()]
            if self.exactly_once:
                if self._link_broken:
                    # See _replace_producer: do not trust this producer with the offsets.
                    raise DeliveryError("the producer lost its broker connection")
                meta = self.consumer.consumer_group_metadata()
                self._txn_call("send_offsets_to_transaction", deadline, offsets, meta)
                self._txn_call("commit_transaction", deadline)
                self._txn_open = False
            else:
                done = self.consumer.commit(offsets=offsets, asynchronous=False) or []
                bad = [tp for tp in done if tp.error is not None]
                if bad:
                    raise KafkaException(bad[0].error)
            batch.state = _State.DONE
        except (DeliveryError, KafkaException) as e:
            if _fatal(e):
                raise
            error = str(e)
        if error:
            # Outside the except block: its traceback would keep the old producer alive
            # through _fail, and an old producer must be gone before a new one starts.
            batch.error = batch.error or error
            self._fail(batch, deadline=deadline)

    def _drive(self, batch: _Batch, deadline: float | None) -> None:
        """Produce the batch's remaining records and wait until each one is acknowledged.

        Every record resolves within ``message.timeout.ms`` (delivered or failed), so this
        ends; while it waits on a producer that does not drain, the partitions are paused.
        """
        acks = batch.acks
        progress = (-1, -1)
        last_progress = time.monotonic()
        while batch.state is _State.OPEN:
            full = self._produce_some(batch)
            if batch.produced == len(batch.records) and acks.pending == 0:
                return
            self.producer.poll(0.05)
            now = time.monotonic()
            if (batch.produced, acks.pending) != progress:
                progress = (batch.produced, acks.pending)
                last_progress = now
            if self.health is not None:
                self.health.heartbeat()
            if deadline is not None and now > deadline:
                raise DeliveryError(
                    f"{acks.pending} records unacknowledged and "
                    f"{len(batch.records) - batch.produced} not produced by the deadline"
                )
            if (full or now - last_progress > PAUSE_AFTER_S) and not self._in_callback:
                self._pause("local queue full" if full else "acknowledgements outstanding")
                self._poll_paused()

    def _produce_some(self, batch: _Batch) -> bool:
        """Produce records until the local queue is full (True) or none are left (False)."""
        p = self.producer
        cb = batch.acks
        records = batch.records
        i = batch.produced
        try:
            while i < len(records):
                topic, value, key, headers = records[i]
                p.produce(topic, value=value, key=key, headers=headers, on_delivery=cb)
                cb.pending += 1  # callbacks only run inside poll(), never before this line
                i += 1
        except BufferError:
            return True
        finally:
            batch.produced = i
        return False

    def _txn_call(
        self,
        name: str,
        deadline: float | None,
        *args: Any,
        between: Callable[[], None] | None = None,
    ) -> None:
        """One transactional API call, retried while its error is retriable.

        librdkafka can block in ``send_offsets_to_transaction`` far past its timeout once
        the group coordinator it cached has gone (seen after a network cut; librdkafka
        issues 5456 and 5511). The call therefore runs on a daemon thread; one that has not
        returned well after its timeout marks the producer stuck (``_fail`` replaces it)
        and fails the batch.
        """
        give_up = time.monotonic() + TXN_RETRY_S
        if deadline is not None:
            give_up = min(give_up, deadline)
        while True:
            call = _Call(getattr(self.producer, name), *args, TXN_CALL_S)
            try:
                returned = call.wait(TXN_CALL_S + TXN_GRACE_S)
            except KafkaException as e:
                if not _retriable(e) or time.monotonic() > give_up:
                    raise
                log.warning("%s failed, retrying: %s", name, e)
                if self.health is not None:
                    self.health.heartbeat()
                if between is not None:
                    between()
                continue
            if not returned:
                self._stuck.append(self.producer)  # destroying a handle mid-call would block
                self._producer_unusable = f"{name} did not return"
                raise DeliveryError(f"{name} did not return within {TXN_CALL_S + TXN_GRACE_S}s")
            return

    def _fail(self, batch: _Batch, *, deadline: float | None) -> None:
        """Give the batch up: nothing of it is committed (exactly-once: aborted)."""
        batch.state = _State.FAILED
        if self._txn_open and not self._producer_unusable:
            self._abort(deadline)
        if self._producer_unusable and not self._in_callback:
            self._replace_producer()

    def _abort(self, deadline: float | None) -> None:
        """Abort the open transaction; one that keeps failing marks the producer unusable.

        Needed on Tansu: after records timed out in flight, librdkafka's abort bumps the
        producer epoch through InitProducerId, which Tansu refuses ("unknown broker error")
        for ever, while a fresh producer's InitProducerId succeeds.
        """
        give_up = time.monotonic() + ABORT_RETRY_S
        if deadline is not None:
            give_up = min(give_up, deadline)
        try:
            self._txn_call("abort_transaction", give_up, between=self._keep_membership)
            self._txn_open = False
        except DeliveryError:
            return  # the call never returned: the producer is marked unusable
        except KafkaException as e:
            if _fatal(e):
                raise
            if _retriable(e):
                self._producer_unusable = f"abort_transaction keeps failing: {e}"
            else:
                # Still open: the next batch aborts it before beginning, or the broker's
                # transaction timeout ends it.
                log.error("abort_transaction failed: %s", e)

    def _replace_producer(self) -> None:
        """A new transactional producer with the same transactional.id.

        Its ``init_transactions`` fences the old producer and aborts whatever transaction
        the old one left open, so nothing of a failed batch is ever committed.

        Used when a producer is unusable (a call never returned, or aborting keeps failing)
        and, between transactions, when it lost its broker connection: librdkafka can then
        block in ``send_offsets_to_transaction`` for ever (librdkafka issues 5456, 5511),
        which a fresh producer avoids. The old producer is destroyed first: left running,
        it retries its abort with the fenced epoch, and Tansu answers that by closing the
        connection (which, through ``tansu proxy``, breaks every client of the proxy).
        """
        why = self._producer_unusable or "lost its broker connection"
        log.warning("replacing the transactional producer (%s)", why)
        t0 = time.monotonic()
        old = self.producer
        if not any(old is p for p in self._stuck):
            old.purge()  # only a failed batch's records: they are redone anyway
        self.producer = None  # type: ignore[assignment]
        del old  # the last reference: librdkafka destroys the handle here
        log.debug("old producer destroyed in %.2fs", time.monotonic() - t0)
        while True:
            self._keep_membership()
            self._link_broken = False
            self.producer = kafka_clients.make_producer(
                self.producer_settings, transactional_id=self._tid, error_cb=self._producer_error
            )
            self._txn_open = False
            try:
                self.producer.init_transactions(TXN_CALL_S)
                self._producer_unusable = ""
                return
            except KafkaException as e:
                if _fatal(e) or not _retriable(e) or self.stop_event.is_set():
                    raise
                log.warning("init_transactions failed, retrying: %s", e)
            if self.health is not None:
                self.health.heartbeat()
            # An init that timed out keeps running inside the handle; a fresh handle starts
            # clean once the broker is back (a retry on the same one was seen to hang).
            self.producer = None  # type: ignore[assignment]

    def _producer_error(self, err: KafkaError) -> None:
        """librdkafka's error callback (served inside producer.poll)."""
        if err.fatal():
            log.error("producer fatal error: %s", err)
        if err.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
            self._link_broken = self.exactly_once

    # ---- backpressure -------------------------------------------------------------------

    def _pause(self, why: str) -> None:
        parts = [TopicPartition(t, p) for t, p in self._assignment if (t, p) not in self._paused]
        if not parts:
            return
        if not self._paused:
            self.stats.pauses += 1
            self._paused_since = time.monotonic()
            log.warning(
                "producer not draining (%s): pausing %d partitions", why, len(self._assignment)
            )
        self.consumer.pause(parts)
        self._paused |= {(p.topic, p.partition) for p in parts}

    def _poll_paused(self) -> None:
        """Poll the consumer while paused: keeps the membership and serves rebalances."""
        # No wait here: the caller waits in producer.poll, where acknowledgements arrive.
        msgs = self.consumer.consume(self.s.batch_size, 0)
        good = self._drop_errors(msgs) if msgs else []
        if good:
            # Not expected (pausing purges what was prefetched); never drop them.
            log.warning("%d messages arrived while paused; kept for the next batch", len(good))
            self._held.extend(good)
            self.stats.held += len(good)

    def _renew_producer(self, err: KafkaError) -> None:
        """At-least-once: replace a producer whose id the broker no longer accepts.

        Seen on Tansu after records timed out in flight: librdkafka bumps the idempotent
        producer's epoch itself, Tansu answers PRODUCER_FENCED to every later batch, and
        without a new producer (a new producer id) nothing would ever be delivered again.
        """
        log.warning("the broker refuses this producer (%s): starting a new one", err)
        self.producer.purge()  # what it holds belongs to batches that are redone anyway
        # Dropped before the new one exists, so it sends nothing more (see _replace_producer).
        self.producer = None  # type: ignore[assignment]
        self.producer = kafka_clients.make_producer(self.producer_settings)

    def _keep_membership(self) -> None:
        """Between abort attempts: keep polling (paused), so a long outage costs no rebalance.

        Only for a batch already given up: a revocation served here cannot interfere with
        it, whereas one served during a commit could release partitions mid-commit.
        """
        if self._in_callback or self._batch is None or self._batch.state is not _State.FAILED:
            return
        self._pause("transaction cannot be aborted yet")
        self._poll_paused()

    def _resume(self) -> None:
        if not self._paused:
            return
        parts = [TopicPartition(t, p) for t, p in self._paused if (t, p) in self._assignment]
        self._paused.clear()
        if parts:
            self.consumer.resume(parts)
        waited = time.monotonic() - self._paused_since
        self.stats.paused_seconds += waited
        log.info("producer drained after %.1fs: resumed %d partitions", waited, len(parts))

    def _backoff(self, seconds: float) -> None:
        """Wait before retrying a failed batch, without letting the health probe go stale."""
        end = time.monotonic() + seconds
        while not self.stop_event.is_set() and time.monotonic() < end:
            if self.health is not None:
                self.health.heartbeat()
            self.producer.poll(min(0.2, max(0.0, end - time.monotonic())))

    # ---- rewinding --------------------------------------------------------------------

    def _rewind(self, batch: _Batch) -> None:
        """Seek the failed batch's partitions that are still ours back to where to redo it.

        At-least-once: the batch's first offsets. Exactly-once: the group's committed
        offsets, which is where the aborted transaction left them; a commit that did land
        despite an error is not done twice. A partition never committed falls back to the
        batch's first offset (what the committed position resolved to when it was read).
        """
        topic = self.s.input_topic
        targets = {p: o for p, o in batch.first.items() if (topic, p) in self._assignment}
        if self.exactly_once and targets:
            for tp in self._committed(targets):
                if tp.offset >= 0:
                    targets[tp.partition] = tp.offset
        for p, offset in targets.items():
            try:
                self.consumer.seek(TopicPartition(topic, p, offset))
            except KafkaException as e:
                log.warning("seek %s[%d] to %d failed: %s", topic, p, offset, e)
        self._held = [m for m in self._held if m.partition() not in targets]
        self.stats.rewinds += 1

    def _committed(self, targets: dict[int, int]) -> list[TopicPartition]:
        parts = [TopicPartition(self.s.input_topic, p) for p in targets]
        give_up = time.monotonic() + COMMITTED_RETRY_S
        while True:
            try:
                return self.consumer.committed(parts, timeout=TXN_CALL_S)
            except KafkaException as e:
                # Guessing could replay a committed batch: wait for the broker, or stop here.
                if _fatal(e) or time.monotonic() > give_up:
                    raise
                log.warning("reading committed offsets failed, retrying: %s", e)

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
            self._maybe_report_lag()
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

    def _maybe_report_lag(self) -> None:
        """Lag gauges, at most every 5 s (watermark reads are not free)."""
        if self.metrics is None:
            return
        now = time.monotonic()
        # The clock restarts only once a gauge was set: before assignment or the first
        # fetch there is nothing to report, and the first batch must not wait 5 s for it.
        if now - self._last_lag > 5.0 and self._report_lag():
            self._last_lag = now

    def _report_lag(self) -> bool:
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
            if self.producer is None:  # stopped while a replacement was being set up
                return
            if self._txn_open and not self._producer_unusable:
                # Only left open when an abort failed; end it rather than leave it dangling.
                with contextlib.suppress(KafkaException):
                    self.producer.abort_transaction(TXN_CALL_S)
            self.producer.flush(30)
        finally:
            with contextlib.suppress(RuntimeError):  # already closed
                self.consumer.close()
