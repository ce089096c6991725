"""Readers, mappings and pacing of stream.replay, and one replay of every format into a broker."""

from __future__ import annotations

import csv
import gzip
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stream.generate import generate_flows, write_jsonl
from stream.replay import (
    ZEEK_MAPPING,
    FieldMapping,
    MappingError,
    Pacing,
    ReplayError,
    count_records,
    detect_format,
    iter_records,
    parse_mapping,
    pump,
    read_csv,
    read_jsonl,
    read_parquet,
    read_records,
    read_zeek,
    replay,
)

DATA = Path(__file__).parent / "data"
CONN_LOG = DATA / "conn.log"
CONN_JSON = DATA / "conn.json"

BROKEN_JSONL = b"\n".join(
    [
        b'{"tenant_id": "acme", "bytes_transferred": 10}',  # 1
        b"",  # 2: blank, skipped silently
        b'{"tenant_id": "acme", "bytes_transferred": ',  # 3: truncated
        b"[1, 2, 3]",  # 4: not an object
        b'"just a string"',  # 5: not an object
        b'{"tenant_id": "globex", "bytes_transferred": 20}',  # 6
        b"{oops}",  # 7: malformed
        b'{"tenant_id": "initech"}',  # 8
    ]
)


def _good(rows: list) -> list[tuple[int, dict]]:
    return [(n, r) for n, r, reason in rows if r is not None]


def _bad(rows: list) -> list[tuple[int, str]]:
    return [(n, reason) for n, r, reason in rows if r is None]


# --------------------------------------------------------------------------- JSONL


@pytest.mark.parametrize("name", ["in.jsonl", "in.jsonl.gz"])
def test_jsonl_reader_reports_broken_lines_with_numbers(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(gzip.compress(BROKEN_JSONL) if name.endswith(".gz") else BROKEN_JSONL)
    rows = list(read_jsonl(path))
    assert _good(rows) == [
        (1, {"tenant_id": "acme", "bytes_transferred": 10}),
        (6, {"tenant_id": "globex", "bytes_transferred": 20}),
        (8, {"tenant_id": "initech"}),
    ]
    bad = dict(_bad(rows))
    assert sorted(bad) == [3, 4, 5, 7]
    assert bad[3].startswith("malformed JSON")
    assert bad[4] == "expected a JSON object, got an array"
    assert bad[5] == "expected a JSON object, got a string"
    assert detect_format(path) == "jsonl"


def test_truncated_gzip_keeps_the_lines_before_the_cut(tmp_path: Path) -> None:
    path = tmp_path / "cut.jsonl.gz"
    whole = gzip.compress(b"".join(b'{"i": %d}\n' % i for i in range(2_000)))
    path.write_bytes(whole[: len(whole) // 2])
    rows = list(read_records(path))
    good, bad = _good(rows), _bad(rows)
    assert 0 < len(good) < 2_000
    assert [r["i"] for _, r in good] == list(range(len(good)))
    assert len(bad) == 1 and bad[0][1].startswith("cannot read further")


def test_gzip_is_recognised_by_content_not_name(tmp_path: Path) -> None:
    path = tmp_path / "capture.bin"
    path.write_bytes(gzip.compress(b'{"a": 1}\n{"a": 2}\n'))
    assert detect_format(path) == "jsonl"
    assert [r for _, r, _ in read_records(path)] == [{"a": 1}, {"a": 2}]


# --------------------------------------------------------------------------- CSV

CSV_TEXT = (
    "tenant_id,bytes_transferred,connection_duration,src_ip,note\n"  # 1
    "acme,1200,0.5,10.0.0.1,plain\n"  # 2
    "globex,-7,1e3,10.0.0.2,\n"  # 3: empty cell -> field absent
    "initech,12,3\n"  # 4: too few columns
    '"acme",007,.25,10.0.0.3,"two\nlines"\n'  # 5-6: quoted newline
    "\n"  # 7: blank
    "acme,1,2,10.0.0.4,x,extra\n"  # 8: too many columns
    "acme,1.2.3,nan,::1,ok\n"  # 9: not numbers
)


@pytest.mark.parametrize("name", ["in.csv", "in.csv.gz"])
def test_csv_reader_converts_numbers_and_reports_bad_rows(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    data = CSV_TEXT.encode()
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    assert detect_format(path) == "csv"
    rows = list(read_csv(path))
    good = _good(rows)
    assert good[0] == (
        2,
        {
            "tenant_id": "acme",
            "bytes_transferred": 1200,
            "connection_duration": 0.5,
            "src_ip": "10.0.0.1",
            "note": "plain",
        },
    )
    assert good[1] == (
        3,
        {
            "tenant_id": "globex",
            "bytes_transferred": -7,
            "connection_duration": 1000.0,
            "src_ip": "10.0.0.2",
        },
    )
    assert good[2][0] == 5
    assert good[2][1]["bytes_transferred"] == 7
    assert good[2][1]["connection_duration"] == 0.25
    assert good[2][1]["note"] == "two\nlines"
    assert good[3] == (
        9,
        {
            "tenant_id": "acme",
            "bytes_transferred": "1.2.3",
            "connection_duration": "nan",
            "src_ip": "::1",
            "note": "ok",
        },
    )
    assert type(good[0][1]["bytes_transferred"]) is int
    assert _bad(rows) == [(4, "expected 5 columns, got 3"), (8, "expected 5 columns, got 6")]


# --------------------------------------------------------------------------- Parquet


def test_parquet_reader_rows_nulls_and_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "flows.parquet"
    table = pa.table(
        {
            "tenant_id": ["acme", "globex", None],
            "bytes_transferred": [100, None, 300],
            "connection_duration": [0.5, 1.5, 2.5],
            "ts": pa.array(
                [datetime(2024, 1, 1, 0, 0, i) for i in range(3)], type=pa.timestamp("us")
            ),
        }
    )
    pq.write_table(table, path)
    assert detect_format(path) == "parquet"
    rows = list(read_parquet(path, batch_size=2))
    assert rows == [
        (
            1,
            {
                "tenant_id": "acme",
                "bytes_transferred": 100,
                "connection_duration": 0.5,
                "ts": "2024-01-01T00:00:00Z",
            },
            None,
        ),
        (
            2,
            {"tenant_id": "globex", "connection_duration": 1.5, "ts": "2024-01-01T00:00:01Z"},
            None,
        ),
        (
            3,
            {"bytes_transferred": 300, "connection_duration": 2.5, "ts": "2024-01-01T00:00:02Z"},
            None,
        ),
    ]
    assert count_records(path) == 3


def test_unreadable_parquet_is_one_rejection(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not really parquet")
    rows = list(read_records(path))
    assert len(rows) == 1
    assert rows[0][0] == 0 and rows[0][1] is None
    assert "Parquet" in rows[0][2]


# --------------------------------------------------------------------------- Zeek


def test_zeek_tsv_reader_types_unset_and_empty() -> None:
    assert detect_format(CONN_LOG) == "zeek"
    rows = list(read_zeek(CONN_LOG))
    assert _bad(rows) == []
    good = _good(rows)
    # Eight header lines precede the first connection.
    assert [n for n, _ in good] == [9, 10, 11, 12, 13, 14]
    first = good[0][1]
    assert first["ts"] == 1709287200.123456
    assert first["id.orig_h"] == "10.0.0.5"
    assert first["id.resp_p"] == 443 and type(first["id.resp_p"]) is int
    assert first["duration"] == pytest.approx(1.204118)
    assert first["local_orig"] is True and first["local_resp"] is False
    assert first["tunnel_parents"] == []  # (empty) set
    s0 = good[2][1]  # an S0 connection: service, duration and byte counts unset
    assert "duration" not in s0 and "orig_bytes" not in s0 and "service" not in s0
    assert good[5][1]["tunnel_parents"] == ["Cabc", "Cdef"]


def test_zeek_mapping_renames_and_sums() -> None:
    records = _good(list(iter_records(CONN_LOG)))
    first = records[0][1]
    assert first["src_ip"] == "10.0.0.5"
    assert first["dst_ip"] == "203.0.113.34"
    assert first["src_port"] == 49152 and first["dst_port"] == 443
    assert first["protocol"] == "tcp"
    assert first["timestamp"] == 1709287200.123456
    assert first["flow_id"] == "CHhAvVGS1DHFjwGM9"
    assert first["connection_duration"] == pytest.approx(1.204118)
    assert first["bytes_transferred"] == 1520 + 48211
    assert first["packet_count"] == 24 + 40
    # Renamed sources are gone; fields without a rule pass through.
    assert not {"id.orig_h", "orig_bytes", "resp_bytes", "ts", "uid", "duration"} & set(first)
    assert first["conn_state"] == "SF" and first["history"] == "ShADadFf"
    s0 = records[2][1]
    assert "bytes_transferred" not in s0  # both parts unset
    assert "connection_duration" not in s0
    assert s0["packet_count"] == 1  # 1 + 0
    one_sided = records[3][1]
    assert one_sided["bytes_transferred"] == 412  # resp_bytes unset counts as 0
    assert one_sided["packet_count"] == 6


def test_zeek_json_form_maps_to_the_same_records() -> None:
    assert detect_format(CONN_JSON) == "zeek-json"
    tsv = [r for _, r in _good(list(iter_records(CONN_LOG)))]
    js = [r for _, r in _good(list(iter_records(CONN_JSON)))]
    assert js == tsv


def test_zeek_tsv_broken_lines(tmp_path: Path) -> None:
    lines = CONN_LOG.read_text().splitlines()
    header, data = lines[:8], lines[8:14]
    broken = [
        data[0],  # 1
        "one\ttwo",  # 2: wrong field count
        data[1].replace("\t53\t", "\tfifty-three\t", 1),  # 3: port that is not a number
        data[2],  # 4
    ]
    path = tmp_path / "conn.log"
    path.write_text("\n".join(["10.0.0.1\tno header yet", *header, *broken]) + "\n")
    rows = list(read_zeek(path))
    assert _bad(rows) == [
        (1, "data line before the #fields header"),
        (11, "expected 21 fields, got 2"),
        (12, "field 'id.resp_p': cannot read 'fifty-three' as port"),
    ]
    assert [n for n, _ in _good(rows)] == [10, 13]


def test_zeek_tsv_is_detected_without_a_telling_name(tmp_path: Path) -> None:
    path = tmp_path / "capture.txt.gz"
    path.write_bytes(gzip.compress(CONN_LOG.read_bytes()))
    assert detect_format(path) == "zeek"
    assert len(_good(list(iter_records(path)))) == 6


def test_fmt_overrides_detection(tmp_path: Path) -> None:
    path = tmp_path / "rows.dat"
    path.write_text('{"orig_bytes": 5, "resp_bytes": 6}\n')
    assert detect_format(path) == "zeek-json"
    assert _good(list(iter_records(path))) == [(1, {"bytes_transferred": 11})]
    # Read as plain JSONL: no Zeek renaming.
    assert _good(list(iter_records(path, fmt="jsonl"))) == [(1, {"orig_bytes": 5, "resp_bytes": 6})]
    with pytest.raises(ValueError, match="unknown format"):
        list(iter_records(path, fmt="xml"))


# --------------------------------------------------------------------------- mapping


def test_parse_mapping_sums_and_unset_parts() -> None:
    m = parse_mapping(["bytes_transferred=up+down", "connection_duration=dur", "tenant_id=org"])
    assert m.apply({"up": 3, "down": 4.5, "dur": 2, "org": "acme", "keep": "x"}) == {
        "keep": "x",
        "bytes_transferred": 7.5,
        "connection_duration": 2,
        "tenant_id": "acme",
    }
    assert m.apply({"up": 3})["bytes_transferred"] == 3
    assert m.apply({"down": None, "up": "5"})["bytes_transferred"] == 5
    assert "bytes_transferred" not in m.apply({"other": 1})
    assert "connection_duration" not in m.apply({"dur": None})


def test_mapping_reads_the_original_record() -> None:
    swap = parse_mapping(["a=b", "b=a"])
    assert swap.apply({"a": 1, "b": 2}) == {"a": 2, "b": 1}


@pytest.mark.parametrize("spec", ["novalue", "=a", "x=", "x=a+", "x=+b"])
def test_parse_mapping_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(MappingError, match="bad mapping"):
        parse_mapping([spec])


def test_non_numeric_sum_rejects_the_line_and_tenant_overrides(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(
        '{"up": 1, "down": 2, "tenant_id": "old"}\n{"up": "lots", "down": 2}\n{"up": 4}\n'
    )
    rows = list(iter_records(path, mapping=parse_mapping(["total=up+down"]), tenant="acme"))
    assert _good(rows) == [
        (1, {"tenant_id": "acme", "total": 3}),
        (3, {"tenant_id": "acme", "total": 4}),
    ]
    assert _bad(rows) == [(2, "cannot add field 'up': 'lots' is not a number")]


def test_user_mapping_applies_after_zeek_mapping() -> None:
    extra = parse_mapping(["bytes=bytes_transferred"])
    first = _good(list(iter_records(CONN_LOG, mapping=extra)))[0][1]
    assert first["bytes"] == 1520 + 48211 and "bytes_transferred" not in first
    assert isinstance(ZEEK_MAPPING, FieldMapping) and len(ZEEK_MAPPING.rules) == 10


# --------------------------------------------------------------------------- pump and pacing


class Recorder:
    """A ``send`` that remembers what it got and when."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.messages: list[tuple[bytes | None, dict]] = []

    def __call__(self, key: bytes | None, value: bytes) -> None:
        self.times.append(time.monotonic())
        self.messages.append((key, orjson.loads(value)))


def _rows(records: list[dict]) -> list[tuple[int, dict, None]]:
    return [(i + 1, r, None) for i, r in enumerate(records)]


def test_pump_keys_by_tenant_and_collects_rejections(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(BROKEN_JSONL)
    rec = Recorder()
    sent, rejected = pump([(str(path), iter_records(path))], rec, pacing=Pacing.unlimited())
    assert sent == 3
    assert [k for k, _ in rec.messages] == [b"acme", b"globex", b"initech"]
    assert rec.messages[1][1] == {"tenant_id": "globex", "bytes_transferred": 20}
    assert [(p, n) for p, n, _ in rejected] == [
        (str(path), 3),
        (str(path), 4),
        (str(path), 5),
        (str(path), 7),
    ]


def test_pump_strict_stops_at_first_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(BROKEN_JSONL)
    rec = Recorder()
    with pytest.raises(ReplayError) as info:
        pump([(str(path), iter_records(path))], rec, pacing=Pacing.unlimited(), strict=True)
    assert str(info.value).startswith(f"{path}:3: malformed JSON")
    assert info.value.line_no == 3
    assert len(rec.messages) == 1


def test_records_without_tenant_have_no_key() -> None:
    rec = Recorder()
    pump([("mem", _rows([{"a": 1}]))], rec, pacing=Pacing.unlimited())
    assert rec.messages == [(None, {"a": 1})]


def _timed(check: Callable[[], None], attempts: int = 3) -> None:
    """Run a timing check up to ``attempts`` times.

    A busy machine can delay one wake-up by tens of ms; a pacing bug fails every attempt.
    """
    for attempt in range(attempts):
        try:
            check()
            return
        except AssertionError:
            if attempt == attempts - 1:
                raise


def _send_times(records: list[dict], pacing: Pacing, **kwargs: Any) -> np.ndarray:
    """Seconds from the first send to each send."""
    rec = Recorder()
    pump([("mem", _rows(records))], rec, pacing=pacing, **kwargs)
    return np.array(rec.times) - rec.times[0]


@pytest.mark.parametrize("stamp", ["iso", "epoch"])
def test_speed_keeps_recorded_gaps_divided_by_factor(stamp: str) -> None:
    t0 = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)
    times = [t0 + timedelta(seconds=0.2 * i) for i in range(6)]
    records = [
        {"timestamp": t.isoformat().replace("+00:00", "Z") if stamp == "iso" else t.timestamp()}
        for t in times
    ]

    def check() -> None:
        gaps = np.diff(_send_times(records, Pacing.at_speed(2.0)))
        assert len(gaps) == 5
        # 0.2 s recorded at 2x: 0.1 s, each gap within 10%.
        assert np.all(np.abs(gaps - 0.1) < 0.01), gaps

    _timed(check)


def test_speed_uses_the_named_timestamp_field_and_skips_missing_ones() -> None:
    records = [{"ts": 100.0}, {"ts": 100.3}, {"note": "no time"}, {"ts": 100.6}]

    def check() -> None:
        offsets = _send_times(records, Pacing.at_speed(3.0), timestamp_field="ts")
        assert offsets[1] == pytest.approx(0.1, abs=0.01)
        assert offsets[2] == pytest.approx(0.1, abs=0.01)  # no timestamp: sent right away
        assert offsets[3] == pytest.approx(0.2, abs=0.01)

    _timed(check)


def test_rate_does_not_drift() -> None:
    records = [{"i": i} for i in range(301)]

    def check() -> None:
        offsets = _send_times(records, Pacing.at_rate(1000.0))
        # 300 intervals of 1 ms: any per-event oversleep would add up to far more than 10 ms.
        assert offsets[-1] == pytest.approx(0.3, abs=0.01)

    _timed(check)


def test_pacing_validation() -> None:
    with pytest.raises(ValueError):
        Pacing("rate", 0)
    with pytest.raises(ValueError):
        Pacing("speed", None)
    with pytest.raises(ValueError):
        Pacing("warp", 1.0)  # type: ignore[arg-type]
    assert str(Pacing.at_rate(500)) == "500 events/s"


def test_count_records_for_progress(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    write_jsonl(path, generate_flows(25))
    assert count_records(path) == 25
    assert count_records(CONN_LOG) == 6
    gz = tmp_path / "a.jsonl.gz"
    write_jsonl(gz, generate_flows(25))
    assert count_records(gz) is None


def test_undeliverable_messages_are_counted(tmp_path: Path) -> None:
    from stream.embedded import free_port

    path = tmp_path / "in.jsonl"
    write_jsonl(path, generate_flows(5))
    # Nothing listens there; messages expire after 300 ms and must show up as failures.
    summary = replay(
        [path],
        bootstrap=f"127.0.0.1:{free_port()}",
        pacing=Pacing.unlimited(),
        progress=False,
        producer_config={"message.timeout.ms": "300", "log_level": "0"},
    )
    assert summary.sent == 5
    assert summary.delivery_failures == 5
    assert summary.delivered == 0


def test_missing_file_is_a_replay_error(tmp_path: Path) -> None:
    with pytest.raises(ReplayError, match="no such file"):
        replay([tmp_path / "nope.jsonl"], bootstrap="127.0.0.1:1", pacing=Pacing.unlimited())


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


def test_replay_every_format_into_a_real_broker(tmp_path: Path) -> None:
    from stream.embedded import EmbeddedBroker

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
