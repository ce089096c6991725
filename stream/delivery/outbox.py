"""Producing one batch's records and waiting until the broker has acknowledged each.

Shared by both delivery modes. Every record resolves within
``message.timeout.ms`` (delivered or failed), so ``send`` ends; while the
producer does not drain (local queue full, or no acknowledgement for
``PAUSE_AFTER_S``) it tells the waiter, which pauses the input partitions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaException

from stream.delivery.inflight import Batch, DeliveryError, Waiter, kafka_error

#: Acknowledgements outstanding this long without progress: the producer is not draining.
PAUSE_AFTER_S = 1.0
#: Asked to stop, a batch whose acknowledgements stall this long is given up (not
#: committed: its events are redone from their offsets by the next owner).
STOP_GRACE_S = 0.5


def send(
    producer: Any,
    batch: Batch,
    waiter: Waiter,
    deadline: float | None,
    heartbeat: Callable[[], None],
    stopping: Callable[[], bool] = lambda: False,
) -> None:
    """Produce the batch's remaining records and wait until each one is acknowledged.

    Returns early when the batch was settled meanwhile (by a rebalance callback
    served inside the waiter's poll). Once ``stopping()`` (SIGINT/SIGTERM), a producer
    that makes no progress for ``STOP_GRACE_S`` fails the batch at once, rather than
    holding the shutdown for ``message.timeout.ms``.
    """
    acks = batch.acks
    progress = (-1, -1)
    last_progress = time.monotonic()
    while batch.is_open:
        full = _produce_some(producer, batch)
        if batch.produced == len(batch.records) and acks.pending == 0:
            return
        producer.poll(0.05)
        now = time.monotonic()
        if (batch.produced, acks.pending) != progress:
            progress = (batch.produced, acks.pending)
            last_progress = now
        heartbeat()
        if stopping() and now - last_progress > STOP_GRACE_S:
            raise DeliveryError(
                f"stopping with {acks.pending} records unacknowledged and "
                f"{len(batch.records) - batch.produced} not produced: the batch is not "
                "committed (its events are redone from their offsets)"
            )
        if deadline is not None and now > deadline:
            raise DeliveryError(
                f"{acks.pending} records unacknowledged and "
                f"{len(batch.records) - batch.produced} not produced by the deadline"
            )
        if full or now - last_progress > PAUSE_AFTER_S:
            waiter.stalled("local queue full" if full else "acknowledgements outstanding")


#: ``partition`` for the producer's partitioner (librdkafka's RD_KAFKA_PARTITION_UA).
_ANY_PARTITION = -1


def _produce_some(producer: Any, batch: Batch) -> bool:
    """Produce records until the local queue is full (True) or none are left (False)."""
    produce = producer.produce
    cb = batch.acks
    records = batch.records
    start = i = batch.produced
    n = len(records)
    try:
        while i < n:
            rec = records[i]
            if len(rec) == 4:
                if rec[3] is None:
                    # An alert: positional arguments (topic, value, key, partition,
                    # on_delivery) cost ~0.9 us less per record than keywords (bench: CPU
                    # per event with every event emitted).
                    produce(rec[0], rec[1], rec[2], _ANY_PARTITION, cb)
                else:
                    topic, value, key, headers = rec
                    produce(topic, value=value, key=key, headers=headers, on_delivery=cb)
            else:  # a changelog record names its partition: the input partition's number
                topic, value, key, headers, part = rec
                produce(topic, value=value, key=key, headers=headers, partition=part,
                        on_delivery=cb)
            i += 1
    except BufferError:
        return True
    except KafkaException as e:
        # produce() itself refused (a topic the producer knows is missing, a fatal
        # producer): counted as that record's failure, so the cause names its topic.
        err = kafka_error(e)
        if err is None:
            raise
        cb.failure(records[i][0], err)
        if err.fatal():
            raise  # the delivery replaces the producer
        raise DeliveryError(f"produce refused: {err.str()}") from None
    finally:
        # Counted once for the records produced: delivery callbacks only run inside
        # poll(), never during this loop.
        cb.pending += i - start
        batch.produced = i
    return False
