"""Backpressure: pause the input while the producer cannot take or deliver a batch.

While a batch's records cannot be produced (local queue full) or are not being
acknowledged (for over a second, e.g. the alert topic is unavailable), every
assigned partition is paused and the consumer keeps being polled: nothing new is
fetched or buffered, and the group membership survives ``max.poll.interval.ms``.
Partitions resume once the batch is settled. librdkafka drops what it prefetched
for a paused partition and fetches again from the application's position on
resume; anything a poll returns anyway is held for the next batch, never dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from confluent_kafka import Consumer, Message, TopicPartition

from stream.kafka.clients import usable_messages
from stream.ops.accounting import RunStats

log = logging.getLogger(__name__)

Part = tuple[str, int]

#: Seconds between two WARNING lines about pausing.
QUIET_S = 60.0


class Backpressure:
    """The paused partitions and the messages held while paused; the waiter of ``settle``."""

    #: Settling may poll the consumer through this waiter (it is not a rebalance callback).
    may_poll = True

    def __init__(
        self,
        consumer: Consumer,
        assignment: Callable[[], frozenset[Part]],
        *,
        batch_size: int,
        stats: RunStats,
        on_wait: Callable[[str, float], None] = lambda why, seconds: None,
    ) -> None:
        self.consumer = consumer
        # Told, at every wait, why and for how long the input has been paused.
        self._on_wait = on_wait
        self._assignment = assignment
        self._batch_size = batch_size
        self._stats = stats  # pauses, paused_seconds, held
        self.paused: set[Part] = set()
        self._since = 0.0
        self._held: list[Message] = []
        # A pause is said at WARNING once per QUIET_S (batch after batch failing would
        # otherwise repeat it; why they fail is said once, by accounting.Progress).
        self._said = -QUIET_S
        self._loud = False

    # ---- the waiter -------------------------------------------------------------------

    def stalled(self, why: str) -> None:
        """Pause every assigned partition (once) and poll the consumer without waiting."""
        self._pause(why)
        self._on_wait(why, time.monotonic() - self._since)
        # No wait here: the caller waits in producer.poll, where acknowledgements arrive.
        msgs = self.consumer.consume(self._batch_size, 0)
        good = usable_messages(msgs) if msgs else []
        if good:
            # Not expected (pausing purges what was prefetched); never drop them.
            log.warning("%d messages arrived while paused; kept for the next batch", len(good))
            self._held.extend(good)
            self._stats.held += len(good)

    def _pause(self, why: str) -> None:
        owned = self._assignment()
        parts = [TopicPartition(t, p) for t, p in owned if (t, p) not in self.paused]
        if not parts:
            return
        if not self.paused:
            self._stats.pauses += 1
            self._since = time.monotonic()
            self._loud = self._since - self._said >= QUIET_S
            if self._loud:
                self._said = self._since
            log.log(logging.WARNING if self._loud else logging.DEBUG,
                    "producer not draining (%s): pausing %d partitions", why, len(owned))
        self.consumer.pause(parts)
        self.paused |= {(p.topic, p.partition) for p in parts}

    def resume(self) -> None:
        """After a batch settled: resume what was paused."""
        if not self.paused:
            return
        owned = self._assignment()
        parts = [TopicPartition(t, p) for t, p in self.paused if (t, p) in owned]
        self.paused.clear()
        if parts:
            self.consumer.resume(parts)
        waited = time.monotonic() - self._since
        self._stats.paused_seconds += waited
        log.log(logging.INFO if self._loud else logging.DEBUG,
                "producer drained after %.1fs: resumed %d partitions", waited, len(parts))

    # ---- held messages ------------------------------------------------------------------

    def take_held(self) -> list[Message]:
        msgs, self._held = self._held, []
        return msgs

    def drop_held(self, topic: str, partitions: Iterable[int]) -> None:
        """A rewound partition is fetched again from its new position: its held messages go."""
        gone = set(partitions)
        self._held = [m for m in self._held if not (m.topic() == topic and m.partition() in gone)]

    # ---- rebalances -------------------------------------------------------------------

    def on_assign(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        """Backpressure in progress: newly assigned partitions must not start fetching either.

        They are assigned here (the client then skips its own assign) so they can be paused.
        """
        if self.paused and parts:
            consumer.incremental_assign(parts)
            consumer.pause(parts)
            self.paused |= {(p.topic, p.partition) for p in parts}

    def forget(self, gone: set[Part]) -> None:
        """Partitions revoked or lost: not paused any more, their held messages dropped."""
        paused = self.paused & gone
        if paused:
            # librdkafka keeps a partition's pause across unassign and assign: one paused
            # now would come back paused after the next rebalance and never be read.
            self.consumer.resume([TopicPartition(t, p) for t, p in paused])
        self.paused -= gone
        self._held = [m for m in self._held if (m.topic(), m.partition()) not in gone]
