"""The window state's changelog: a compacted topic that makes windows survive restarts.

Each committed batch writes, for every input partition it touched, one record per
entity whose window state changed (a tombstone for one evicted) and one per tenant
whose event-time clock moved (its newest event time in the partition: lateness and
the TTL are measured per tenant), to the same partition number of the changelog
topic (default ``GROUP.state``). An entity is one key of one ``by`` (the record
key is ``src_ip>dst_ip\x1e<tenant>\x1f<a>><b>``), and its record holds every
window keyed that way, in the binary form of :mod:`stream.state.codec`.
The records are produced with the batch's alerts, so in exactly-once mode they
are inside its transaction.

Every record carries the input offset its batch commits (header
``stream.offset``). Restoring a partition reads its changelog from the start
and keeps, per key, the last record whose offset is at most the group's
committed offset for that input partition: records of a batch that never
committed (an aborted transaction, or an at-least-once crash between produce
and commit) are left out, so the restored state is exactly the state after the
last committed batch, and the events after it are scored again on top of it.
That check is also what makes this correct on a broker that hands aborted
transactional records to read_committed readers (the embedded broker does).

Records of the earlier form (one JSON record per window and key, keyed by the
window's signature) still restore; the first commit after that writes the key in
the binary form and a tombstone for the old record, so compaction removes it.

Known limit: with compaction, a newer record of an uncommitted batch can hide an
older committed one of the same key once the broker compacts; the key then
restores from nothing. It needs a crash between produce and commit and a
compaction before the restart.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from stream.delivery.inflight import Record
from stream.features.windows import load_state  # validates a record of the earlier form
from stream.kafka.clients import consumer_config, headers_of, new_consumer
from stream.state import codec as state_codec
from stream.state.store import NOTES, WindowStore

log = logging.getLogger(__name__)

OFFSET_HEADER: Final = "stream.offset"
#: Key of the record holding the earlier form's one event-time clock per partition (no entity
#: key starts so); a tenant's clock is keyed ``WATERMARK_KEY + b"\x1f" + tenant``.
WATERMARK_KEY: Final = b"\x00watermark"
_CLOCK_PREFIX: Final = WATERMARK_KEY + b"\x1f"
_SEP: Final = "\x1e"  # between the slot table's name (its key fields) and the entity key
RESTORE_TIMEOUT_S: Final = 60.0


def records(store: WindowStore, topic: str, next_offsets: dict[int, int]) -> list[Record]:
    """Changelog records of the state changes since the last call, for these partitions."""
    out: list[Record] = []
    for p, nxt in next_offsets.items():
        changed, gone = store.take_changes(p)
        clocks = store.clocks.take(p)
        if p not in store.scopes:
            continue
        headers = [(OFFSET_HEADER, str(nxt).encode())]
        for (name, key), value in changed.items():
            out.append((topic, value, f"{name}{_SEP}{key}".encode(), headers, p))
        for name, key in gone:
            out.append((topic, None, f"{name}{_SEP}{key}".encode(), headers, p))
        for tenant, mark in clocks.items():
            out.append((topic, orjson.dumps(mark), _CLOCK_PREFIX + tenant.encode(), headers, p))
    return out


def restore(
    store: WindowStore,
    settings: Any,
    partition: int,
    committed: int,
) -> int:
    """Rebuild ``partition``'s state from the changelog up to input offset ``committed``.

    Returns the number of keys restored (one record each). ``committed`` < 0 (nothing
    committed yet) restores nothing: the partition starts from its beginning.
    """
    topic = settings.changelog_topic
    if committed < 0:
        store.restore(partition, [], {})
        return 0
    # The input consumer's configuration (the user's properties, with the settings they
    # must agree with: a max.poll.interval.ms below librdkafka's default session timeout
    # refused to create a restore consumer built from the properties alone).
    conf = consumer_config(settings)
    conf.update(
        {
            "group.id": f"{settings.group_id}.restore",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    c = new_consumer(conf)
    try:
        # Only "is it empty": some brokers (the embedded one) answer this with the last
        # batch's base offset + 1, so the end is the fetch's own end of partition.
        low, high = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        latest: dict[bytes, bytes | None] = {}
        if high > low:
            c.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
            deadline = time.monotonic() + RESTORE_TIMEOUT_S
            done = False
            while not done:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"restoring {topic}[{partition}] took over {RESTORE_TIMEOUT_S:.0f} s"
                    )
                for m in c.consume(10000, 0.5):
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            done = True
                            continue
                        raise KafkaException(err)
                    if _offset(headers_of(m)) > committed:
                        continue  # a batch that never committed
                    key = m.key()
                    if key is not None:  # every record this tool writes has its key
                        latest[key] = m.value()
    finally:
        c.close()
    base = float("-inf")
    marks: dict[str, float] = {}
    items = []
    bad = 0
    for key, value in latest.items():
        if value is None:
            continue
        try:
            if key == WATERMARK_KEY or key.startswith(_CLOCK_PREFIX):
                mark = orjson.loads(value)
                mark = float("-inf") if mark is None else float(mark)
                if key == WATERMARK_KEY:
                    base = mark
                else:
                    marks[key[len(_CLOCK_PREFIX):].decode()] = mark
                continue
            name, _, entity = key.decode().partition(_SEP)
            # A record that does not load is skipped, not fatal.
            if name == NOTES:  # a note (an entity's risk episode): JSON its owner reads
                orjson.loads(value)
                items.append((name, entity, value))
            elif state_codec.is_blob(value):
                state_codec.split(value)
                items.append((name, entity, value))
            else:  # the earlier form: one window's state as JSON, keyed by its signature
                dumped = orjson.loads(value)
                load_state(dumped)
                items.append((name, entity, dumped))
        except (ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError):
            bad += 1
            continue
    if bad:
        log.warning("%s[%d]: %d changelog records do not load: those entities start empty",
                    topic, partition, bad)
    store.restore(partition, items, marks, base)
    return len(items)


def _offset(headers: list[tuple[str, bytes | None]]) -> int:
    for k, v in headers:
        if k == OFFSET_HEADER and v is not None:
            return int(v)
    return -1  # written by no batch we know: treat as committed
