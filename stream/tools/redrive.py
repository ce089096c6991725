"""``stream dead-letters --redrive``: dead letters of chosen reasons back to their input topic.

A record is dead-lettered with its original value, key and headers, followed by
the dead-letter headers (``reason``, ``detail``, ``source.*``:
``stream.outcomes.records.dead_letter_headers``). Redriving sends the value, the key and
the original headers back to the topic it came from (``source.topic``, or
``--to``), with one more header, ``stream.redriven``, naming the dead letter it
comes from. Records whose cause has gone (``no_model`` once the model is there,
say) are then scored like any other event.

The reader is a consumer group of its own (``--group``, default
``stream-redrive``) that commits after each produced chunk is acknowledged, so
a second run continues after the last record the first one sent instead of
sending everything again (at least once: a crash between produce and commit
sends a chunk twice).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message, TopicPartition

from stream.kafka.clients import as_headers, headers_of, new_consumer, new_producer, position
from stream.outcomes.records import TRUNCATED

log = logging.getLogger(__name__)

#: The headers a dead letter carries after the original ones (outcomes.dead_letter_headers).
DEAD_LETTER_HEADERS = ("reason", "detail", "source.topic", "source.partition", "source.offset")
REDRIVEN = "stream.redriven"
CHUNK = 1000


@dataclass
class RedriveSummary:
    sent: Counter[str] = field(default_factory=Counter)  # by reason
    skipped: Counter[str] = field(default_factory=Counter)  # other reasons, by reason
    failed: int = 0


def original(m: Message) -> tuple[str | None, str, list[tuple[str, bytes | None]]]:
    """(source topic, reason, the original headers) of a dead-letter record."""
    headers = headers_of(m)
    tail = headers[-len(DEAD_LETTER_HEADERS):]
    if [k for k, _v in tail] == list(DEAD_LETTER_HEADERS):
        ours = dict(tail)
        headers = headers[:-len(DEAD_LETTER_HEADERS)]
    else:  # written before dead letters kept the original headers, or not by us
        ours = dict(headers)
        headers = [(k, v) for k, v in headers if k not in DEAD_LETTER_HEADERS]
    topic = ours.get("source.topic")
    reason = ours.get("reason") or b"?"
    return (topic.decode("utf-8", "replace") if topic else None,
            reason.decode("utf-8", "replace"), headers)


def redrive(conf: dict[str, Any], dlq_topic: str, reasons: Sequence[str], *,
            group: str = "stream-redrive", to: str | None = None,
            should_stop: Callable[[], bool] = lambda: False) -> RedriveSummary:
    """Send the dead letters of ``reasons`` on ``dlq_topic`` not redriven yet back (to
    their source topic, or ``to``); returns what was sent and skipped."""
    summary = RedriveSummary()
    wanted = set(reasons)
    c = new_consumer({**conf, "group.id": group, "enable.auto.commit": False,
                      "auto.offset.reset": "earliest", "isolation.level": "read_committed",
                      "enable.partition.eof": True})
    p = new_producer({**conf, "enable.idempotence": True, "acks": "all"})
    failures: list[KafkaError] = []

    def acked(err: KafkaError | None, _m: Message) -> None:
        if err is not None:
            failures.append(err)

    try:
        md = c.list_topics(dlq_topic, timeout=10)
        if dlq_topic not in md.topics or md.topics[dlq_topic].error is not None:
            raise RuntimeError(f"dead-letter topic {dlq_topic!r} does not exist")
        parts = sorted(md.topics[dlq_topic].partitions)
        c.assign([TopicPartition(dlq_topic, q) for q in parts])
        # Each partition from the group's committed offset (the start the first time).
        committed = c.committed([TopicPartition(dlq_topic, q) for q in parts], timeout=10)
        for tp in committed:
            if tp.offset >= 0:
                c.seek(tp)
        at_end: set[int] = set()
        while len(at_end) < len(parts) and not should_stop():
            msgs = c.consume(CHUNK, 1.0)
            positions: dict[int, int] = {}
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        at_end.add(position(m)[0])
                        continue
                    raise RuntimeError(f"reading {dlq_topic}: {err.str()}")
                partition, offset = position(m)
                at_end.discard(partition)
                positions[partition] = offset + 1
                source, reason, headers = original(m)
                if reason not in wanted:
                    summary.skipped[reason] += 1
                    continue
                if any(k.startswith("stream.original.") or k == TRUNCATED for k, _v in headers):
                    # Cut to fit the dead-letter topic: not the event any more.
                    summary.skipped[f"{reason} (cut to fit)"] += 1
                    continue
                target = to or source
                if not target:
                    summary.skipped["(no source topic)"] += 1
                    continue
                headers.append((REDRIVEN, f"{m.topic()}/{partition}/{offset}".encode()))
                while True:
                    try:
                        p.produce(target, m.value(), m.key(), headers=as_headers(headers),
                                  on_delivery=acked)
                        break
                    except BufferError:
                        p.poll(0.1)
                summary.sent[reason] += 1
            if positions:
                left = p.flush(30)
                if left or failures:
                    summary.failed = left + len(failures)
                    raise RuntimeError(
                        f"{summary.failed} records were not acknowledged"
                        + (f" ({failures[0].str()})" if failures else "")
                        + ": nothing after the last committed chunk counts as redriven")
                c.commit(offsets=[TopicPartition(dlq_topic, q, o) for q, o in positions.items()],
                         asynchronous=False)
    finally:
        p.flush(5)
        c.close()
    return summary
