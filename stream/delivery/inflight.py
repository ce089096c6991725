"""One batch between consume and commit, the delivery interface, and its typed failures.

A ``Batch`` carries the records to produce (alerts, dead letters, shadow reports),
the offsets to commit, the acknowledgement count and its state:
``OPEN`` (being produced or acknowledged) -> ``SETTLING`` (all acknowledged,
committing) -> ``DONE`` (committed) or ``FAILED`` (nothing committed; to be rewound).
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from confluent_kafka import KafkaError, KafkaException, Message

from stream.errors import StreamError

# topic, value, key, headers[, partition]: a changelog record names its partition.
Record = tuple[str, bytes | None, Any, Any] | tuple[str, bytes | None, Any, Any, int]


class DeliveryError(StreamError, RuntimeError):
    """Some records of a batch were not acknowledged, or its commit did not go through."""


class ProducerStuck(DeliveryError):
    """A producer call never returned: the producer must be replaced before its next use."""


class BatchState(enum.Enum):
    OPEN = "open"  # records being produced or acknowledged
    SETTLING = "settling"  # all acknowledged; committing
    DONE = "done"  # committed
    FAILED = "failed"  # nothing committed (transaction aborted); to be rewound


class Acks:
    """Counts acknowledgements of one batch's records (librdkafka's delivery callback),
    and the failures by topic and error."""

    def __init__(self) -> None:
        self.pending = 0
        self.failed = 0
        self.first_error: KafkaError | None = None
        self.failures: Counter[tuple[str, int]] = Counter()  # (topic, error code) -> records
        self.errors: dict[int, KafkaError] = {}

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        self.pending -= 1
        if err is not None:
            self.failure(msg.topic() or "?", err)

    def failure(self, topic: str, err: KafkaError) -> None:
        self.failed += 1
        self.first_error = self.first_error or err
        self.failures[(topic, err.code())] += 1
        self.errors.setdefault(err.code(), err)


@dataclass(eq=False)
class Batch:
    """One batch between consume and commit: its records and how far they got."""

    records: list[Record]
    first: dict[int, int]  # partition -> first offset in the batch
    next: dict[int, int]  # partition -> last offset + 1 (what gets committed)
    acks: Acks = field(default_factory=Acks)
    produced: int = 0
    in_txn: bool = False  # exactly-once: this batch's transaction has begun
    state: BatchState = BatchState.OPEN
    error: str = ""

    @classmethod
    def of(cls, records: list[Record], partitions: np.ndarray, offsets: np.ndarray) -> Batch:
        first: dict[int, int] = {}
        nxt: dict[int, int] = {}
        for p in np.unique(partitions).tolist():
            sel = offsets[partitions == p]
            first[p] = int(sel.min())
            nxt[p] = int(sel.max()) + 1
        return cls(records, first, nxt)

    @property
    def is_open(self) -> bool:
        return self.state is BatchState.OPEN


class Waiter(Protocol):
    """What settling may do while it waits on a producer that does not drain.

    Outside rebalance callbacks this is the consumer's backpressure (pause every
    partition, keep polling so the membership survives); inside one it is
    ``InCallback``, because no consumer poll may nest inside a rebalance callback.
    """

    may_poll: bool

    def stalled(self, why: str) -> None: ...


class InCallback:
    """The waiter inside a rebalance callback: never polls, never pauses."""

    may_poll = False

    def stalled(self, why: str) -> None:
        return None


class Delivery(Protocol):
    """One delivery mode: see the package docstring."""

    producer: Any

    def settle(self, batch: Batch, waiter: Waiter, deadline: float | None) -> None: ...

    def abandon(self, batch: Batch, waiter: Waiter, deadline: float | None) -> None: ...

    def after_failure(self, batch: Batch) -> None: ...

    def rewind_targets(self, batch: Batch, owned: set[int]) -> dict[int, int]: ...

    def poll(self, timeout: float) -> None: ...

    def close(self) -> None: ...


#: Delivery errors meaning the broker no longer accepts the producer's id and epoch.
PRODUCER_IDENTITY_ERRORS = frozenset(
    {
        KafkaError.PRODUCER_FENCED,
        KafkaError.INVALID_PRODUCER_EPOCH,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.INVALID_PRODUCER_ID_MAPPING,
    }
)


_MISSING = frozenset({KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC,
                      KafkaError._UNKNOWN_PARTITION})
_DENIED = frozenset({KafkaError.TOPIC_AUTHORIZATION_FAILED,
                     KafkaError.CLUSTER_AUTHORIZATION_FAILED,
                     KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
                     KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._AUTHENTICATION})
_TIMEOUTS = frozenset({KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT,
                       KafkaError.REQUEST_TIMED_OUT, KafkaError._TIMED_OUT_QUEUE})


def failure_cause(batch: Batch, topics: Callable[[], set[str] | None]) -> str:
    """Why a batch was not delivered, in words: per topic, what the broker said.

    ``topics`` lists the broker's topics (None when it does not answer): asked only when
    records timed out, to tell a missing topic (a broker that does not auto-create it)
    or an unreachable broker from a slow one.
    """
    acks = batch.acks
    if not acks.failures:
        return batch.error or "unknown"
    known: set[str] | None = None
    asked = False
    parts = []
    for (topic, code), n in acks.failures.most_common(3):
        err = acks.errors[code]
        if code in _MISSING:
            why = (f"topic {topic!r} does not exist (create it, or start with "
                   "--create-topics)")
        elif code in _DENIED:
            why = f"not authorised to write to topic {topic!r} ({err.str()})"
        elif code == KafkaError.MSG_SIZE_TOO_LARGE:
            why = f"records larger than topic {topic!r} or the broker accepts"
        elif code in PRODUCER_IDENTITY_ERRORS or err.fatal():
            why = (f"the broker refuses the producer ({err.str()}): it restarted, or the "
                   "producer's state expired; a new producer is started")
        elif code in _TIMEOUTS:
            if not asked:
                known, asked = topics(), True
            if known is None:
                why = "no acknowledgement: the broker does not answer"
            elif topic not in known:
                why = (f"no acknowledgement: topic {topic!r} does not exist (create it, or "
                       "start with --create-topics)")
            else:
                why = f"no acknowledgement from the broker for topic {topic!r} in time"
        else:
            why = f"{err.str()} (topic {topic!r})"
        parts.append(f"{n} records failed: {why}")
    return "; ".join(parts)


def kafka_error(e: BaseException) -> KafkaError | None:
    err = e.args[0] if isinstance(e, KafkaException) and e.args else None
    return err if isinstance(err, KafkaError) else None


def fatal(e: BaseException) -> bool:
    err = kafka_error(e)
    return err is not None and err.fatal()


def retriable(e: BaseException) -> bool:
    err = kafka_error(e)
    return err is not None and err.retriable()
