"""At-least-once delivery: a batch's offsets are committed only after all its records landed.

Settling a batch:

1. Produce every record of the batch (alerts, dead letters, shadow reports) and
   wait until the broker has acknowledged each one; while the producer does not
   drain, the waiter pauses the input partitions.
2. If any record failed, the batch fails: nothing of it is committed.
3. Commit the batch's next offsets synchronously; a commit error fails the batch.

A failed batch is rewound to its first offsets and scored again: a redone alert
has the same ``alert_id``, score and model version, so subscribers de-duplicate.
Before it is redone, the producer is replaced whenever records failed or the
producer itself raised (a fatal error such as UNKNOWN_PRODUCER_ID after a broker
restart, or an id the broker no longer accepts: seen on Tansu after records timed
out in flight, librdkafka bumps the idempotent producer's epoch itself and every
later batch gets PRODUCER_FENCED). A new producer costs milliseconds, whereas one
that kept its old broker state could fail every batch until the process restarts.
Only the consumer's own fatal errors (its commit) end the process.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from stream.config import Settings
from stream.delivery import outbox
from stream.delivery.inflight import Batch, BatchState, DeliveryError, Waiter, fatal
from stream.kafka import clients as kafka_clients

log = logging.getLogger(__name__)

#: What a closing producer may still take to deliver (see ``AtLeastOnce.close``).
SHUTDOWN_FLUSH_S = 1.0


class AtLeastOnce:
    """Idempotent producer; synchronous offset commits after every acknowledgement."""

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
        self.stopping = stopping  # a stalled delivery gives up once it is set
        # Producers are (re)built from these; tests point them at a proxy to cut the alert side.
        self.producer_settings = settings
        self.producer = self.new_producer()
        self._renew = ""  # why the producer must be replaced before the batch is redone

    def new_producer(self) -> Any:
        return kafka_clients.make_producer(self.producer_settings)

    def settle(self, batch: Batch, waiter: Waiter, deadline: float | None) -> None:
        if not batch.is_open:
            return
        try:
            # 1. Produce every record and wait for each acknowledgement.
            try:
                outbox.send(self.producer, batch, waiter, deadline, self.heartbeat,
                            self.stopping)
            except (KafkaException, DeliveryError) as e:  # the producer's own error
                self._renew = f"the producer failed: {e}"
                raise DeliveryError(self._renew) from None
            if not batch.is_open:
                return  # settled by a rebalance callback meanwhile
            batch.state = BatchState.SETTLING
            # 2. Any record failed: nothing is committed.
            if batch.acks.failed:
                self._renew = f"{batch.acks.failed} records failed: {batch.acks.first_error}"
                raise DeliveryError(self._renew)
            # 3. Commit the next offsets, synchronously.
            offsets = [TopicPartition(self.s.input_topic, p, o) for p, o in batch.next.items()]
            done = self.consumer.commit(offsets=offsets, asynchronous=False) or []
            bad = [tp for tp in done if tp.error is not None]
            if bad:
                raise KafkaException(bad[0].error)
            batch.state = BatchState.DONE
        except (DeliveryError, KafkaException) as e:
            if fatal(e):
                raise
            batch.error = batch.error or str(e)
            batch.state = BatchState.FAILED

    def abandon(self, batch: Batch, waiter: Waiter, deadline: float | None) -> None:
        # Nothing was committed; the records already delivered are redone by the next owner.
        batch.state = BatchState.FAILED

    def after_failure(self, batch: Batch) -> None:
        if self._renew and not self.stopping():
            self._renew_producer(self._renew)
        self._renew = ""

    def rewind_targets(self, batch: Batch, owned: set[int]) -> dict[int, int]:
        """The batch's first offsets: the batch is redone whole."""
        return {p: o for p, o in batch.first.items() if p in owned}

    def _renew_producer(self, why: str) -> None:
        log.info("a new producer for the batch to be redone (%s)", why)
        with contextlib.suppress(KafkaException):  # a producer in a fatal state may refuse
            self.producer.purge()  # what it holds belongs to batches that are redone anyway
        # Dropped before the new one exists, so it sends nothing more.
        self.producer = None
        self.producer = self.new_producer()

    def poll(self, timeout: float) -> None:
        self.producer.poll(timeout)

    def close(self) -> None:
        """Deliver what is still queued, briefly: it belongs to batches not committed.

        Offsets are committed only after every record of a batch is acknowledged,
        so whatever is queued now is redone from its offsets anyway; a producer
        that cannot deliver must not hold the shutdown (``SHUTDOWN_FLUSH_S``).
        """
        if self.producer is not None:
            self.producer.flush(SHUTDOWN_FLUSH_S)
