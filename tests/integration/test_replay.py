"""Pacing, pump and the producer of stream.tools.replay, and one replay of every format into a
broker.

The part that needs a real broker, registry or child process; the rest, and what
it all means, is in ``tests/unit/tools/test_replay.py``.
"""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stream.generate import generate_flows, write_jsonl
from stream.tools.replay import Pacing, replay
from tests.unit.ingest.test_files import CONN_JSON, CONN_LOG

# --------------------------------------------------------------------------- pump and pacing




























# --------------------------------------------------------------------------- real broker


def _write_all_formats(tmp_path: Path, flows: list[dict]) -> dict[str, Path]:
    paths = {"jsonl": tmp_path / "flows.jsonl", "jsonl-gz": tmp_path / "flows.jsonl.gz"}
    write_jsonl(paths["jsonl"], flows)
    write_jsonl(paths["jsonl-gz"], flows)
    paths["csv"] = tmp_path / "flows.csv"
    with paths["csv"].open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(flows[0]))
        writer.writeheader()
        writer.writerows(flows)
    paths["parquet"] = tmp_path / "flows.parquet"
    pq.write_table(pa.Table.from_pylist(flows), paths["parquet"])
    paths["zeek"] = tmp_path / "conn.log"
    shutil.copy(CONN_LOG, paths["zeek"])
    paths["zeek-json"] = tmp_path / "conn.json"
    shutil.copy(CONN_JSON, paths["zeek-json"])
    return paths


def _read_topic(bootstrap: str, topic: str, expected: int) -> list[tuple[bytes | None, dict]]:
    """Every message of partition 0; the fetch high watermark proves none is left unread."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"check-{topic}", "enable.auto.commit": False}
    )
    try:
        partition = TopicPartition(topic, 0, 0)
        consumer.assign([partition])
        out: list[tuple[bytes | None, dict]] = []
        deadline = time.monotonic() + 20
        while len(out) < expected and time.monotonic() < deadline:
            # consume() waits for the full count or the timeout: ask for just what is left.
            batch = consumer.consume(expected - len(out), 1.0)
            out += [(m.key(), orjson.loads(m.value())) for m in batch if m.error() is None]
        # The watermark that came with the fetches, not a fresh ListOffsets query: this
        # broker answers ListOffsets(latest) with the last batch's base offset + 1.
        _, high = consumer.get_watermark_offsets(partition, cached=True)
        assert high == expected, f"{topic} holds {high} messages, expected {expected}"
        return out
    finally:
        consumer.close()


@pytest.mark.integration
def test_replay_every_format_into_a_real_broker(tmp_path: Path) -> None:
    from stream.kafka.embedded import EmbeddedBroker

    flows = list(generate_flows(40, seed=11, attack_rate=0.1))
    paths = _write_all_formats(tmp_path, flows)
    with EmbeddedBroker() as broker:
        topics = {name: f"flows-{name}" for name in paths}
        broker.create_topics([*topics.values()], partitions=1)
        results = {}
        for name, path in paths.items():
            zeek = name.startswith("zeek")
            summary = replay(
                [path],
                bootstrap=broker.bootstrap,
                topic=topics[name],
                pacing=Pacing.unlimited(),
                tenant="acme" if zeek else None,
                progress=name == "jsonl",  # exercise the progress bar once
            )
            expected = 6 if zeek else len(flows)
            assert summary.sent == expected, name
            assert summary.rejected == [] and summary.delivery_failures == 0, name
            assert summary.rate > 0
            results[name] = _read_topic(broker.bootstrap, topics[name], expected)

        # Backpressure: a producer queue of 20 messages must slow the replay, not drop records.
        many = tmp_path / "many.jsonl"
        write_jsonl(many, generate_flows(2_000, seed=2))
        broker.create_topics(["flows-backpressure", "flows-paced"], partitions=1)
        summary = replay(
            [many],
            bootstrap=broker.bootstrap,
            topic="flows-backpressure",
            pacing=Pacing.unlimited(),
            progress=False,
            producer_config={"queue.buffering.max.messages": "20", "linger.ms": "0"},
        )
        assert (summary.sent, summary.delivery_failures) == (2_000, 0)
        assert summary.queue_full_waits > 0
        assert len(_read_topic(broker.bootstrap, "flows-backpressure", 2_000)) == 2_000

        # Pacing with the producer's poll as the idle wait: conn.log spans 2.432 s of capture.
        summary = replay(
            [paths["zeek"]],
            bootstrap=broker.bootstrap,
            topic="flows-paced",
            pacing=Pacing.at_speed(10.0),
            progress=False,
        )
        # Never early; a little late is the flush (and a busy machine).
        assert 0.2432 <= summary.elapsed_s < 0.35

    for name in ("jsonl", "jsonl-gz", "csv", "parquet"):
        got = results[name]
        assert [v for _, v in got] == flows, name
        assert [k for k, _ in got] == [f["tenant_id"].encode() for f in flows], name
    for name in ("zeek", "zeek-json"):
        got = results[name]
        assert len(got) == 6
        assert {k for k, _ in got} == {b"acme"}
        first = got[0][1]
        assert first["tenant_id"] == "acme"
        assert first["bytes_transferred"] == 1520 + 48211
        assert first["packet_count"] == 64
        assert first["src_ip"] == "10.0.0.5" and first["dst_port"] == 443
        assert "bytes_transferred" not in got[2][1]
    assert [v for _, v in results["zeek"]] == [v for _, v in results["zeek-json"]]
