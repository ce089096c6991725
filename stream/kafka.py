"""Kafka client construction (consumer, producer, admin) and rebalance callbacks.

Every client starts from ``Settings.kafka_common()`` so pass-through
librdkafka properties (SASL, SSL, ...) reach all of them. Secrets in those
properties are never logged: ``redacted`` masks them.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from stream.config import Settings

log = logging.getLogger(__name__)

_SECRET_HINTS = ("password", "secret", "key", "token", "credential")


def redacted(conf: dict[str, Any]) -> dict[str, Any]:
    """A copy of a client config safe to log."""
    return {
        k: ("***" if any(h in k.lower() for h in _SECRET_HINTS) else v) for k, v in conf.items()
    }


def consumer_config(settings: Settings) -> dict[str, Any]:
    conf = {
        "group.id": settings.group_id,
        "enable.auto.commit": False,
        # Offsets are committed explicitly after delivery, never stored implicitly.
        "enable.auto.offset.store": False,
        "auto.offset.reset": settings.auto_offset_reset,
        "session.timeout.ms": settings.session_timeout_ms,
        "partition.assignment.strategy": "cooperative-sticky",
        "isolation.level": "read_committed",
        "fetch.max.bytes": max(52428800, settings.max_message_bytes * 2),
        "max.partition.fetch.bytes": max(1048576, settings.max_message_bytes + 1024),
        "queued.min.messages": max(100000, settings.batch_size * 4),
    }
    conf.update(settings.kafka_common())
    return conf


def producer_config(settings: Settings, *, transactional_id: str | None = None) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "queue.buffering.max.messages": max(100000, settings.batch_size * 4),
        # Dead-letter records carry the original bytes, which may be up to the input limit.
        "message.max.bytes": max(1_000_000, settings.max_message_bytes + 65536),
        "message.timeout.ms": 60000,
    }
    if transactional_id:
        conf["transactional.id"] = transactional_id
        conf["transaction.timeout.ms"] = 60000
    conf.update(settings.kafka_common())
    return conf


def make_consumer(
    settings: Settings,
    on_assign: Callable[[Consumer, list[TopicPartition]], None] | None = None,
    on_revoke: Callable[[Consumer, list[TopicPartition]], None] | None = None,
) -> Consumer:
    conf = consumer_config(settings)
    log.debug("consumer config %s", redacted(conf))
    consumer = Consumer(conf)

    def assigned(c: Consumer, parts: list[TopicPartition]) -> None:
        log.info("partitions assigned: %s", _fmt(parts))
        if on_assign:
            on_assign(c, parts)

    def revoked(c: Consumer, parts: list[TopicPartition]) -> None:
        log.info("partitions revoked: %s", _fmt(parts))
        if on_revoke:
            on_revoke(c, parts)

    def lost(c: Consumer, parts: list[TopicPartition]) -> None:
        log.warning("partitions lost: %s", _fmt(parts))
        if on_revoke:
            on_revoke(c, parts)

    consumer.subscribe([settings.input_topic], on_assign=assigned, on_revoke=revoked, on_lost=lost)
    return consumer


def make_producer(settings: Settings, *, transactional: bool = False) -> Producer:
    tid = f"stream-{settings.group_id}-{uuid.uuid4().hex[:12]}" if transactional else None
    conf = producer_config(settings, transactional_id=tid)
    log.debug("producer config %s", redacted(conf))
    return Producer(conf)


def _fmt(parts: list[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in parts) or "(none)"
