"""What a batch changes beyond its own records: window state and incidents, kept with commits.

The consume loop asks it to make the batch's partitions ready, hands both to the batch
and then, by the batch's fate:

0. ready: ``ready`` restores the windows of each partition not restored since it was
   assigned (or since a failed batch dropped them), from the changelog, before the
   batch is scored: the batch itself does no I/O;
1. scoring: ``store`` (the window state, ``stream.state.store``) and
   ``incidents`` (``stream.outcomes.incidents``) go to ``process_batch``, which updates them;
2. delivery: ``records`` adds the batch's incident records and its changelog
   records (``stream.state.changelog``) to what the batch produces, so they commit with
   its offsets (inside its transaction, exactly-once);
3. committed: ``committed`` makes the incident changes stand and bounds the state
   (TTL, memory cap); failed: ``failed`` forgets the incident changes and drops the
   partitions' windows, which are restored from the changelog before the batch is
   redone (or start empty with ``--state none``).

A partition's windows are restored before its first batch after it is assigned
(``ready``) and dropped when it is revoked or lost (``forget``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from typing import Protocol

from confluent_kafka import Consumer, KafkaException, TopicPartition

from stream.config import Settings
from stream.delivery.inflight import Batch, Record
from stream.errors import StreamError
from stream.kafka import clients as kafka_clients
from stream.outcomes.formats import format_entity_alert, format_incident
from stream.outcomes.incidents import Incidents
from stream.state import changelog
from stream.state.store import WindowStore

log = logging.getLogger(__name__)


class BatchRecords(Protocol):
    """What a scored batch adds beside its alerts (``stream.consumer.batch.BatchOutcome``):
    (key, value) records of its incidents and entity alerts."""

    @property
    def incident_records(self) -> Sequence[tuple[bytes, bytes]]: ...
    @property
    def entity_records(self) -> Sequence[tuple[bytes, bytes]]: ...


class StateUnavailable(StreamError, RuntimeError):
    """A partition's window state could not be restored from its changelog."""


class StateKeeper:
    """Window state and incidents of one consumer; see the module docstring."""

    def __init__(self, settings: Settings, consumer: Consumer) -> None:
        self.s = settings
        self.consumer = consumer
        durable = settings.state == "changelog"
        self.store = WindowStore(
            lateness=settings.lateness,
            ttl=settings.state_ttl,
            max_bytes=int(settings.state_max_mb * 2**20),
            track=durable,
        )
        self.incidents = (
            Incidents(by=settings.incident_by, window=settings.incident_window,
                      idle=settings.incident_idle)
            if settings.incident_topic else None
        )
        self._changelog_ready = False
        self._ready: set[int] = set()  # partitions restored since they were last dropped

    # ---- 1. before scoring --------------------------------------------------------------

    def ready(self, partitions: Iterable[int]) -> None:
        """Restore the window state of each of ``partitions`` not restored since it was
        assigned or last dropped (nothing to do without ``--state changelog``).

        Raises ``StateUnavailable`` (see ``restore``): the batch is then redone.
        """
        if not self.store.track:
            return
        for p in sorted(set(partitions) - self._ready):
            self.restore(p)
            self._ready.add(p)

    # ---- 2. delivery --------------------------------------------------------------------

    def records(self, outcome: BatchRecords, batch: Batch) -> list[Record]:
        """The batch's incident and changelog records."""
        s = self.s
        out: list[Record] = [
            (s.incident_topic, format_incident(s.alert_format, value), key, None)
            for key, value in outcome.incident_records
        ]
        if s.entity_alert_topic:
            out.extend((s.entity_alert_topic, format_entity_alert(s.alert_format, value), key,
                        None) for key, value in outcome.entity_records)
        if self.store.track:
            out.extend(changelog.records(self.store, s.changelog_topic, batch.next))
        return out

    # ---- 3. the batch's fate ------------------------------------------------------------

    def committed(self) -> None:
        if self.incidents is not None:
            self.incidents.commit()
        self.store.maintain()

    def failed(self, partitions: Iterable[int]) -> None:
        if self.incidents is not None:
            self.incidents.rollback()
        for p in partitions:
            self.forget(p)

    # ---- partitions ---------------------------------------------------------------------

    def forget(self, partition: int) -> None:
        self.store.drop(partition)
        self._ready.discard(partition)

    def restore(self, partition: int) -> None:
        """Window state of ``partition`` as of its committed offset, from the changelog.

        Raises ``StateUnavailable`` when the changelog or the committed offset cannot be
        read: the batch is then redone, never scored on empty windows.
        """
        try:
            self._restore(partition)
        except (KafkaException, RuntimeError) as e:
            raise StateUnavailable(f"{self.s.changelog_topic}[{partition}]: {e}") from e

    def _restore(self, partition: int) -> None:
        s = self.s
        if not self._changelog_ready:
            # Created on first use, with the input topic's partitions (one for one).
            kafka_clients.create_topics(
                s.kafka_common(),
                [s.changelog_topic],
                len(self.consumer.list_topics(s.input_topic, timeout=10)
                    .topics[s.input_topic].partitions),
                s.topic_replication_factor,
                config={"cleanup.policy": "compact"},
            )
            self._changelog_ready = True
        tp = self.consumer.committed([TopicPartition(s.input_topic, partition)], timeout=10)[0]
        t0 = time.perf_counter()
        n = changelog.restore(self.store, s, partition, tp.offset)
        if n:
            log.info("restored the windows of %d keys of %s[%d] in %.2f s", n, s.input_topic,
                     partition, time.perf_counter() - t0)
