"""Fills the console's store from the topics: alerts, incidents, entity alerts and drift.

One thread, one consumer (no group: partitions assigned, read from the beginning on a
blank store and from the end it reached on a kept one is not tracked; re-reading is
harmless, records are upserts), committed records only. Each record is read in its
native form (ECS and OCSF incidents and entity alerts carry theirs whole); a record
that is not JSON, or not a dict, is counted and skipped: the console shows what it
can, never stops on what it cannot.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from stream.console.store import ConsoleStore
from stream.kafka.clients import new_consumer, value_of
from stream.tools.subscribe import is_entity_alert, is_incident, native

log = logging.getLogger(__name__)

__all__ = ["Follower"]


class Follower:
    """Reads ``topics`` into ``store`` on a thread of its own until ``stop``."""

    def __init__(self, store: ConsoleStore, conf: dict[str, Any], topics: list[str]) -> None:
        self.store, self.conf, self.topics = store, conf, [t for t in topics if t]
        self.read = 0
        self.skipped = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="console-follower",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _assign(self, c: Any) -> set[str]:
        parts = []
        found = set()
        meta = c.list_topics(timeout=5)
        for t in self.topics:
            tm = meta.topics.get(t)
            if tm is None or tm.error is not None:
                continue
            found.add(t)
            parts += [TopicPartition(t, p, OFFSET_BEGINNING) for p in tm.partitions]
        c.assign(parts)
        return found

    def _run(self) -> None:
        c = new_consumer({**self.conf, "group.id": "stream-console",
                          "enable.auto.commit": False, "isolation.level": "read_committed",
                          "auto.offset.reset": "earliest"})
        try:
            assigned: set[str] = set()
            pruned = time.monotonic()
            while not self._stop.is_set():
                if assigned != set(self.topics):
                    try:
                        assigned = self._assign(c)
                    except Exception as e:  # the broker is away: try again in a while
                        log.warning("console: cannot read the topics yet (%s)", e)
                        self._stop.wait(2.0)
                        continue
                if time.monotonic() - pruned > 60.0:
                    self.store.prune()
                    pruned = time.monotonic()
                for m in c.consume(500, 0.5):
                    err = m.error()
                    if err is not None:
                        if err.code() != KafkaError._PARTITION_EOF:
                            log.debug("console: %s", err)
                        continue
                    self.add(value_of(m))
                if assigned != set(self.topics):
                    self._stop.wait(1.0)  # a topic not created yet: look again soon
        finally:
            c.close()

    def add(self, value: bytes | None) -> None:
        """One record of any of the topics, into the store."""
        try:
            rec = native(orjson.loads(value or b""))
        except orjson.JSONDecodeError:
            rec = None
        if not isinstance(rec, dict):
            self.skipped += 1
            return
        self.read += 1
        if rec.get("type") == "drift":
            self.store.add_drift(rec)
        elif is_entity_alert(rec):
            self.store.add_entity_alert(rec)
        elif is_incident(rec):
            self.store.add_incident(rec)
        elif "alert_id" in rec:
            self.store.add_alert(rec)
        else:
            self.skipped += 1
