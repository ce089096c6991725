"""The suppression topic: rules written by ``stream suppress``, followed by every consumer.

A compacted topic, one record per rule keyed by its id (``stream.outcomes.suppress``);
a tombstone removes the rule. ``RuleFollower`` reads it from the beginning on a thread
of its own and then follows it, so a rule added or removed while the consumer runs is
in force from the next batch it starts after the record arrives (well within one
``--reload-interval``); the consumer waits, at start, until it has read the topic to its
end, so no alert a rule covers goes out before the rules are known. A record that is no
rule is dead-lettered (reason ``malformed_rule``) by each consumer that reads it (again
after a restart: the topic keeps it) and skipped, never fatal.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Final

import orjson
from confluent_kafka import OFFSET_BEGINNING, KafkaError, Message, TopicPartition

from stream.config import Settings
from stream.kafka.clients import (
    as_headers,
    consumer_config,
    create_topics,
    new_consumer,
    new_producer,
    position,
    produce_acknowledged,
)
from stream.outcomes.reasons import MALFORMED_RULE, REASONS
from stream.outcomes.records import dead_letter_headers
from stream.outcomes.suppress import Rule, RuleError, RuleSet

log = logging.getLogger(__name__)

#: The reason header of a malformed rule's dead letter.
MALFORMED: Final = REASONS[MALFORMED_RULE]


def ensure_topic(settings: Settings) -> None:
    """Create the suppression topic (compacted, one partition: rules are few) if missing."""
    create_topics(settings.kafka_common(), [settings.suppression_topic], 1,
                  settings.topic_replication_factor, config={"cleanup.policy": "compact"})


class RuleFollower:
    """The rules in force (``rules``), read from the topic and kept current; see above."""

    def __init__(self, settings: Settings,
                 on_change: Callable[[RuleSet], None] | None = None, *,
                 dead_letter: bool = True) -> None:
        self.s = settings
        # Consumers dead-letter what is no rule; a reader (stream suppress list) only says so.
        self.dead_letter = dead_letter
        self.topic = settings.suppression_topic
        self.rules = RuleSet()
        self.malformed = 0
        self.caught_up = threading.Event()
        self._on_change = on_change
        self._records: dict[bytes, Rule] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dlq: Any = None
        self._parts: list[int] = []
        self._at_end: set[int] = set()

    # ---- one pass (stream suppress list) and the follower thread (stream run) ----------

    def read_to_end(self, timeout: float = 30.0) -> RuleSet:
        """Read the topic to its end once; the rules then in force."""
        consumer = self._consumer()
        try:
            deadline = time.monotonic() + timeout
            while not self.caught_up.is_set():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"reading {self.topic} took over {timeout:.0f} s")
                self._round(consumer)
        finally:
            consumer.close()
            self._flush()
        return self.rules

    def start(self) -> None:
        ensure_topic(self.s)
        self._thread = threading.Thread(target=self._follow, name="suppressions", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _follow(self) -> None:
        consumer = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = self._consumer()
                self._round(consumer)
            except Exception as e:  # a broker that went away: try again, rules stay as they are
                log.warning("suppression topic %s: %s; rules stay as they are", self.topic, e)
                if consumer is not None:
                    consumer.close()
                    consumer = None
                self._stop.wait(1.0)
        if consumer is not None:
            consumer.close()
        self._flush()

    # ---- reading ----------------------------------------------------------------------

    def _consumer(self) -> Any:
        conf = consumer_config(self.s)
        conf.update({
            "group.id": f"{self.s.group_id}.suppressions-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        })
        c = new_consumer(conf)
        md = c.list_topics(self.topic, timeout=10)
        meta = md.topics.get(self.topic)
        if meta is None or meta.error is not None:
            c.close()
            raise RuntimeError(f"topic {self.topic!r} does not exist")
        self._parts = sorted(meta.partitions)
        self._at_end = set()
        c.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in self._parts])
        return c

    def _round(self, consumer: Any) -> None:
        changed = False
        for m in consumer.consume(500, 0.5):
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._at_end.add(m.partition())
                    continue
                raise RuntimeError(str(err))
            self._at_end.discard(m.partition())
            changed |= self._apply(m)
        if changed or (not self.caught_up.is_set() and self._at_end >= set(self._parts)):
            self.rules = RuleSet(self._records.values())
            if self._on_change is not None:
                self._on_change(self.rules)
        if self._at_end >= set(self._parts) and not self.caught_up.is_set():
            log.info("suppression rules: %d in force (%s)", len(self.rules), self.topic)
            self.caught_up.set()

    def _apply(self, m: Message) -> bool:
        key, value = m.key(), m.value()
        if key is not None and value is None:  # a tombstone: the rule was removed
            gone = self._records.pop(key, None)
            if gone is not None and self.caught_up.is_set():
                log.info("suppression rule %s removed", gone.id)
            return gone is not None
        try:
            rule = Rule.from_dict(orjson.loads(value or b""))
            if key != rule.id.encode():
                raise RuleError(f"rule {rule.id}: its record is keyed {key!r}, not by its id")
        except (orjson.JSONDecodeError, RuleError) as e:
            self._dead_letter(m, str(e))
            return False
        self._records[key] = rule
        if self.caught_up.is_set():
            log.info("suppression rule %s in force: %s (%s, by %s)", rule.id, rule.scope(),
                     rule.reason, rule.author)
        return True

    def _dead_letter(self, m: Message, why: str) -> None:
        self.malformed += 1
        partition, offset = position(m)
        log.warning("malformed suppression rule at %s[%d]@%d: %s: %s", self.topic, partition,
                    offset, why[:300], "dead-lettered" if self.dead_letter else "skipped")
        if not self.dead_letter:
            return
        if self._dlq is None:
            self._dlq = new_producer({**self.s.kafka_common(), "linger.ms": 20})
        self._dlq.produce(self.s.dlq_topic, m.value(), key=m.key(),
                          headers=as_headers(dead_letter_headers(
                              MALFORMED, why[:300], self.topic, partition, offset)))
        self._dlq.poll(0)

    def _flush(self) -> None:
        if self._dlq is not None:
            self._dlq.flush(10)


# ---- writing (stream suppress) ------------------------------------------------------


def write(settings: Settings, key: str, value: bytes | None) -> None:
    """One record on the suppression topic, acknowledged; RuntimeError if it is not."""
    ensure_topic(settings)
    produce_acknowledged(settings.kafka_common(), settings.suppression_topic, key.encode(),
                         value)


def add(settings: Settings, rule: Rule) -> None:
    write(settings, rule.id, orjson.dumps(rule.to_dict()))


def remove(settings: Settings, rule_id: str) -> None:
    write(settings, rule_id, None)
