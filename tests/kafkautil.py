"""Test helpers for a real broker: produce values, read a topic back completely."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from stream.pipeline import Pipeline


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


def partitions(bootstrap: str, topic: str) -> list[int]:
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    return sorted(md.topics[topic].partitions)


def read_all(bootstrap: str, topic: str, timeout: float = 30.0, **conf: Any) -> list[Message]:
    """Every record currently on ``topic`` (all partitions, from offset 0)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-reader",
                  "enable.auto.commit": False, **conf})
    parts = partitions(bootstrap, topic)
    highs = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    out: list[Message] = []
    done = {p: highs[p] == 0 for p in parts}
    deadline = time.monotonic() + timeout
    while not all(done.values()) and time.monotonic() < deadline:
        for m in c.consume(10000, 0.5):
            if m.error():
                continue
            out.append(m)
            if m.offset() >= highs[m.partition()] - 1:
                done[m.partition()] = True
    c.close()
    assert all(done.values()), f"timed out reading {topic}: {done}"
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
