"""Test helpers for a real broker: produce values, read a topic back completely."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from stream.consumer.loop import Pipeline


def produce(bootstrap: str, topic: str, values: Iterable[bytes], key: bytes | None = None) -> int:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    n = 0
    for v in values:
        while True:
            try:
                p.produce(topic, v, key=key)
                break
            except BufferError:
                p.poll(0.1)
        n += 1
    assert p.flush(30) == 0, "producer did not deliver everything"
    return n


def partitions(bootstrap: str, topic: str, **conf: Any) -> list[int]:
    md = AdminClient({"bootstrap.servers": bootstrap, **conf}).list_topics(topic, timeout=10)
    return sorted(md.topics[topic].partitions)


def read_all(bootstrap: str, topic: str, timeout: float = 30.0, **conf: Any) -> list[Message]:
    """Every record currently on ``topic`` (all partitions, from offset 0).

    Tansu answers an uncached high-watermark query with the last record
    *batch's* base offset + 1, so the end of each partition is taken from the
    watermark that arrives with fetched data (``cached=True``) instead.
    """
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-reader",
                  "enable.auto.commit": False, **conf})
    parts = partitions(bootstrap, topic, **{k: v for k, v in conf.items()
                                            if k.startswith(("security.", "ssl.", "sasl."))})
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    out: list[Message] = []
    next_offset = dict.fromkeys(parts, 0)
    deadline = time.monotonic() + timeout
    idle_rounds = 0
    while time.monotonic() < deadline:
        msgs = c.consume(10000, 0.5)
        for m in msgs:
            if m.error():
                continue
            out.append(m)
            next_offset[m.partition()] = m.offset() + 1
        if msgs:
            idle_rounds = 0
            continue
        idle_rounds += 1
        highs = {p: c.get_watermark_offsets(TopicPartition(topic, p), cached=True)[1]
                 for p in parts}
        # A partition not fetched from yet reports a negative watermark: give it idle rounds.
        unknown = any(h < 0 for h in highs.values())
        # The fetch position counts too: a transactional topic ends in a commit marker,
        # which takes an offset but is never handed out.
        at = {tp.partition: tp.offset for tp in c.position(
            [TopicPartition(topic, p) for p in parts])}
        if (all(highs[p] <= max(next_offset[p], at.get(p, 0)) for p in parts)
                and idle_rounds >= (4 if unknown else 1)):
            break
    else:
        raise AssertionError(f"timed out reading {topic}")
    c.close()
    return out


def run_until(pipeline: Pipeline, consumed: int, timeout: float = 120.0) -> threading.Thread:
    """Run ``pipeline`` in a thread until it has consumed ``consumed`` records, then stop it."""
    t = threading.Thread(target=pipeline.run, daemon=True)
    t.start()
    deadline = time.monotonic() + timeout
    while pipeline.stats.consumed < consumed and time.monotonic() < deadline:
        time.sleep(0.1)
    pipeline.stop_event.set()
    t.join(timeout=30)
    pipeline.table.stop()
    assert not t.is_alive(), "pipeline did not stop"
    return t
