"""Exactly-once delivery: a batch's records and its consumed offsets are one transaction.

Settling a batch:

0. Before a new transaction: a producer known to be unusable (a call that never
   returned, an abort that kept failing) or one that lost a broker connection is
   replaced by a new one with the same ``transactional.id`` (its
   ``init_transactions`` fences the old one and aborts what it left open); a
   transaction left open by a failed abort is aborted.
1. ``begin_transaction``.
2. Produce every record of the batch and wait until each is acknowledged;
   while the producer does not drain, the waiter pauses the input partitions.
3. If any record failed, or the producer lost its broker connection meanwhile,
   the batch fails.
4. ``send_offsets_to_transaction``: the batch's next offsets join the transaction.
5. ``commit_transaction``.

Each transactional call runs on a daemon thread and is waited for with a
timeout: librdkafka can block in ``send_offsets_to_transaction`` far past its
own timeout once the group coordinator it cached has gone (seen after a network
cut; librdkafka issues 5456 and 5511). A call that does not return raises
``ProducerStuck``: the batch fails and the producer is replaced.

A failed batch's transaction is aborted (a producer whose abort keeps failing, or
that hit a fatal error, is replaced, which aborts by fencing) and its partitions
are rewound to the group's committed offsets, as the librdkafka transactions
example does; a commit that did land despite an error is therefore not done twice.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from stream.config import Settings
from stream.delivery import outbox
from stream.delivery.at_least_once import SHUTDOWN_FLUSH_S
from stream.delivery.inflight import (
    Batch,
    BatchState,
    DeliveryError,
    ProducerStuck,
    Waiter,
    fatal,
    retriable,
)
from stream.kafka import clients as kafka_clients

log = logging.getLogger(__name__)

#: Timeout of one transactional API call; retriable failures are retried up to TXN_RETRY_S.
TXN_CALL_S = 5.0
TXN_RETRY_S = 60.0
#: Extra wait beyond a transactional call's own timeout before it counts as stuck.
TXN_GRACE_S = 5.0
#: How long aborting may fail before the producer is replaced (which aborts by fencing):
#: one attempt, since a replacement waits for the broker just as well as a retry does.
ABORT_RETRY_S = TXN_CALL_S
#: While the group's committed offsets cannot be read after an abort (they are asked for
#: until they can), the failure is logged once per this many seconds.
COMMITTED_RETRY_S = 60.0


class _Call:
    """A blocking client call on a daemon thread, so that waiting for it can time out.

    A daemon thread, unlike an executor's worker, does not hold up interpreter exit when
    the call never returns. It holds the client until the call returns, so a stuck
    client is never destroyed (which would block) by the thread that gave it up.
    """

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._fn: Callable[..., Any] | None = fn
        self._args = args
        threading.Thread(target=self._run, daemon=True, name="kafka-call").start()

    def _run(self) -> None:
        try:
            assert self._fn is not None
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


class Transactional:
    """One transactional producer per consumer instance; see the module docstring.

    What is known about the current producer: ``_txn_open`` (a transaction has begun
    and not ended), ``_link_broken`` (librdkafka reported a lost broker connection),
    ``_unusable`` (why it must be replaced before its next use) and ``_stuck`` (a call
    on it never returned, so it must not be purged).
    """

    def __init__(
        self,
        settings: Settings,
        consumer: Any,
        *,
        heartbeat: Callable[[], None] = lambda: None,
        stopping: Callable[[], bool] = lambda: False,
        on_wait: Callable[[str, float], None] = lambda why, seconds: None,
    ) -> None:
        self.s = settings
        self.consumer = consumer
        self.heartbeat = heartbeat
        self.stopping = stopping
        self.on_wait = on_wait
        self.transactional_id = kafka_clients.transactional_id(settings)
        self._txn_open = False
        self._link_broken = False
        self._unusable = ""
        self._stuck = False
        # Producers are (re)built from these; tests point them at a proxy to cut the alert side.
        self.producer_settings = settings
        self.producer = self.new_producer()
        # Fences an older producer with the same transactional.id and aborts what it
        # left open, so its half-written batch never counts as committed.
        self.producer.init_transactions(30)

    def new_producer(self) -> Any:
        return kafka_clients.make_producer(
            self.producer_settings,
            transactional_id=self.transactional_id,
            error_cb=self._producer_error,
        )

    # ---- settling ---------------------------------------------------------------------

    def settle(self, batch: Batch, waiter: Waiter, deadline: float | None) -> None:
        if not batch.is_open:
            return
        error = ""
        try:
            if not batch.in_txn:
                # 0. Replace a producer that must not be trusted; end a transaction left open.
                if self._unusable or self._link_broken:
                    self._replace_producer(between=lambda: None)
                if self._txn_open:
                    # Left open by a failed abort: it holds a rewound batch's records.
                    self._abort(deadline, between=lambda: None)
                    if self._txn_open:
                        raise DeliveryError("the previous transaction could not be aborted")
                # 1. Begin the transaction.
                self.producer.begin_transaction()
                self._txn_open = batch.in_txn = True
            # 2. Produce every record and wait for each acknowledgement.
            outbox.send(self.producer, batch, waiter, deadline, self.heartbeat, self.stopping)
            if not batch.is_open:
                return  # settled by a rebalance callback meanwhile
            batch.state = BatchState.SETTLING
            # 3. Any record failed, or the connection broke: nothing is committed.
            if batch.acks.failed:
                raise DeliveryError(
                    f"{batch.acks.failed} records failed: {batch.acks.first_error}"
                )
            if self._link_broken:
                # See _replace_producer: do not trust this producer with the offsets.
                raise DeliveryError("the producer lost its broker connection")
            # 4. The batch's offsets join the transaction.
            offsets = [TopicPartition(self.s.input_topic, p, o) for p, o in batch.next.items()]
            meta = self.consumer.consumer_group_metadata()
            self._txn_call("send_offsets_to_transaction", deadline, offsets, meta)
            # 5. Commit.
            self._txn_call("commit_transaction", deadline)
            self._txn_open = False
            batch.state = BatchState.DONE
        except (DeliveryError, KafkaException) as e:
            if fatal(e):
                # A fenced producer, or one whose state the broker lost (UNKNOWN_PRODUCER_ID
                # after a restart): it can no longer abort; a new one fences it instead.
                self._unusable = f"fatal producer error: {e}"
            error = str(e)
        if error:
            # Outside the except block: its traceback would keep the old producer alive
            # through _fail, and an old producer must be gone before a new one starts.
            batch.error = batch.error or error
            self._fail(batch, waiter, deadline)

    def abandon(self, batch: Batch, waiter: Waiter, deadline: float | None) -> None:
        self._fail(batch, waiter, deadline)

    def after_failure(self, batch: Batch) -> None:
        return None  # repairs happen in _fail and before the next transaction

    def rewind_targets(self, batch: Batch, owned: set[int]) -> dict[int, int]:
        """The group's committed offsets, which is where the aborted transaction left them.

        A partition never committed falls back to the batch's first offset (what the
        committed position resolved to when it was read).
        """
        targets = {p: o for p, o in batch.first.items() if p in owned}
        if targets:
            for tp in self._committed(targets):
                if tp.offset >= 0:
                    targets[tp.partition] = tp.offset
        return targets

    def _fail(self, batch: Batch, waiter: Waiter, deadline: float | None) -> None:
        """Give the batch up: nothing of it is committed (its transaction is aborted)."""
        batch.state = BatchState.FAILED

        def keep_membership() -> None:
            # Between abort attempts, keep polling (paused) so a long outage costs no
            # rebalance. Safe only for a batch already given up: a revocation served here
            # cannot interfere with it, whereas one served during a commit could.
            waiter.stalled("transaction cannot be aborted yet")

        if self._txn_open and not self._unusable:
            self._abort(deadline, between=keep_membership)
        if self._unusable and waiter.may_poll:
            self._replace_producer(between=keep_membership)

    def _committed(self, targets: dict[int, int]) -> list[TopicPartition]:
        """The group's committed offsets; asked until the broker answers (or the process
        stops): guessing could replay a committed batch or skip one."""
        parts = [TopicPartition(self.s.input_topic, p) for p in targets]
        said = time.monotonic()
        while True:
            try:
                return self.consumer.committed(parts, timeout=TXN_CALL_S)
            except KafkaException as e:
                if fatal(e) or self.stopping():
                    raise
                if time.monotonic() >= said:
                    log.warning("reading the committed offsets failed, retrying: %s", e)
                    said = time.monotonic() + COMMITTED_RETRY_S
                self.heartbeat()

    # ---- transactional calls ----------------------------------------------------------

    def _txn_call(
        self,
        name: str,
        deadline: float | None,
        *args: Any,
        between: Callable[[], None] | None = None,
    ) -> None:
        """One transactional API call, retried while its error is retriable.

        Raises ``ProducerStuck`` (and marks the producer unusable) when the call has not
        returned well after its own timeout.
        """
        give_up = time.monotonic() + TXN_RETRY_S
        if deadline is not None:
            give_up = min(give_up, deadline)
        while True:
            call = _Call(getattr(self.producer, name), *args, TXN_CALL_S)
            try:
                returned = call.wait(TXN_CALL_S + TXN_GRACE_S)
            except KafkaException as e:
                if not retriable(e) or time.monotonic() > give_up:
                    raise
                log.warning("%s failed, retrying: %s", name, e)
                self.heartbeat()
                if between is not None:
                    between()
                continue
            if not returned:
                self._stuck = True  # destroying or purging a handle mid-call would block
                self._unusable = f"{name} did not return"
                raise ProducerStuck(f"{name} did not return within {TXN_CALL_S + TXN_GRACE_S}s")
            return

    def _abort(self, deadline: float | None, *, between: Callable[[], None]) -> None:
        """Abort the open transaction; one that keeps failing marks the producer unusable.

        Needed on Tansu: after records timed out in flight, librdkafka's abort bumps the
        producer epoch through InitProducerId, which Tansu refuses ("unknown broker error")
        for ever, while a fresh producer's InitProducerId succeeds.
        """
        give_up = time.monotonic() + ABORT_RETRY_S
        if deadline is not None:
            give_up = min(give_up, deadline)
        try:
            self._txn_call("abort_transaction", give_up, between=between)
            self._txn_open = False
        except ProducerStuck:
            return  # the producer is marked unusable; replacing it aborts by fencing
        except KafkaException as e:
            if fatal(e) or retriable(e):
                # Replacing the producer aborts by fencing.
                self._unusable = f"abort_transaction keeps failing: {e}"
            else:
                # Still open: the next batch aborts it before beginning, or the broker's
                # transaction timeout ends it.
                log.error("abort_transaction failed: %s", e)

    def _replace_producer(self, *, between: Callable[[], None]) -> None:
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
        why = self._unusable or "lost its broker connection"
        log.warning("replacing the transactional producer (%s)", why)
        t0 = time.monotonic()
        old = self.producer
        if not self._stuck:
            with contextlib.suppress(KafkaException):  # a fatal producer may refuse
                old.purge()  # only a failed batch's records: they are redone anyway
        self._stuck = False
        self.producer = None
        del old  # the last reference (unless a stuck call's thread holds it): destroyed here
        log.debug("old producer destroyed in %.2fs", time.monotonic() - t0)
        while True:
            between()
            self._link_broken = False
            self.producer = self.new_producer()
            self._txn_open = False
            try:
                self.producer.init_transactions(TXN_CALL_S)
                self._unusable = ""
                return
            except KafkaException as e:
                if self.stopping():
                    raise
                # Even an error librdkafka calls final (an authorisation refused) may be
                # mended meanwhile: the consumer waits and says why (stream.ops.accounting).
                log.debug("init_transactions failed, retrying: %s", e)
                self.on_wait(f"a new transactional producer cannot start: {e}",
                             time.monotonic() - t0)
                time.sleep(0 if retriable(e) else 1.0)
            self.heartbeat()
            # An init that timed out keeps running inside the handle; a fresh handle starts
            # clean once the broker is back (a retry on the same one was seen to hang).
            self.producer = None

    def _producer_error(self, err: KafkaError) -> None:
        """librdkafka's error callback (served inside producer.poll)."""
        if err.fatal():
            log.error("producer fatal error: %s", err)
        if err.code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
            self._link_broken = True

    # ---- the rest ---------------------------------------------------------------------

    def poll(self, timeout: float) -> None:
        self.producer.poll(timeout)

    def close(self) -> None:
        """End a transaction a failed abort left open, then deliver what is queued."""
        if self.producer is None:  # stopped while a replacement was being set up
            return
        if self._txn_open and not self._unusable:
            with contextlib.suppress(KafkaException):
                self.producer.abort_transaction(TXN_CALL_S)
        # Queued records belong to a transaction not committed: redone anyway.
        self.producer.flush(SHUTDOWN_FLUSH_S)
