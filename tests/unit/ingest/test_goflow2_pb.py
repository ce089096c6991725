"""goflow2's protobuf (-format=bin): the same flows as its JSON, the same records and the
same scores; a record that is not a FlowMessage is a dead letter with its own reason.

tests/data/goflow2.pb holds the flows of tests/data/goflow2.jsonl as goflow2's file
transport writes them with -format=bin (tests/data/make_goflow2_pb.py wrote it).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from stream.consumer.batch import process_batch
from stream.ingest.files import detect_format, load_records
from stream.ingest.goflow2pb import delimited, record
from stream.outcomes import reasons
from stream.registry import LoadedModel
from stream.scoring.thresholds import DEFAULT_THRESHOLDS

DATA = Path(__file__).resolve().parents[2] / "data"
FEATURES = ("bytes_transferred", "packet_count", "connection_duration", "dst_port")


def _maker() -> Any:
    spec = importlib.util.spec_from_file_location("make_goflow2_pb", DATA / "make_goflow2_pb.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _json_records() -> list[dict[str, Any]]:
    return [json.loads(x) for x in (DATA / "goflow2.jsonl").read_text().splitlines()]


def test_the_fixture_is_what_its_script_writes() -> None:
    maker = _maker()
    assert (DATA / "goflow2.pb").read_bytes() == b"".join(map(maker.message, _json_records()))


def test_protobuf_records_are_the_json_records() -> None:
    assert detect_format(DATA / "goflow2.pb") == "goflow2-pb"
    loaded = load_records(DATA / "goflow2.pb")
    assert loaded.format == "goflow2-pb" and not loaded.unreadable
    js = _json_records()
    assert len(loaded.records) == len(js) == 17
    for pb, j in zip(loaded.records, js, strict=True):
        assert {k: pb[k] for k in j} == j
        # What the JSON fixture left out is goflow2's rendering of a zero.
        assert pb["vlan_id"] == 0 and pb["next_hop"] == ""
    icmp = [r for r in loaded.records if r["proto"] in ("ICMP", "ICMPv6")]
    assert icmp and all(r["src_port"] == 0 and r["dst_port"] == 0 for r in icmp)


def test_a_cut_stream_and_junk_are_reasons_not_crashes(tmp_path: Path) -> None:
    data = (DATA / "goflow2.pb").read_bytes()
    cut = tmp_path / "cut.pb"
    cut.write_bytes(data[:-5])
    loaded = load_records(cut)
    assert len(loaded.records) == 16
    (bad,) = loaded.unreadable
    assert bad.line == 17 and "cut short" in bad.reason
    # A message whose bytes are not a FlowMessage (a wire type 7 tag).
    with pytest.raises(ValueError, match="not a goflow2 FlowMessage"):
        record(b"\x0f\xff\xff")
    # A length no goflow2 message has is refused before anything is read.
    ((k, body, reason),) = delimited(b"\xff\xff\xff\x7f" + b"x" * 10)
    assert k == 1 and body is None and "more than" in (reason or "")


def _model() -> LoadedModel:
    class Linear:
        def decision_function(self, X: np.ndarray) -> np.ndarray:
            return 0.3 - 1e-7 * X[:, 0] - 1e-4 * X[:, 3]

    return LoadedModel("g", "1", FEATURES, np.asarray(DEFAULT_THRESHOLDS), Linear())


def _score(values: list[bytes | None], schema: str) -> Any:
    n = len(values)
    return process_batch(values, lambda ts: [_model() for _ in ts], topic="flows",
                         partitions=np.zeros(n, dtype=np.int64),
                         offsets=np.arange(n, dtype=np.int64), schema=schema,
                         tenants=["acme"] * n, min_level=0)


def test_kafka_records_score_as_their_json_and_junk_is_dead_lettered() -> None:
    maker = _maker()
    js = _json_records()
    pb_values: list[bytes | None] = [maker.message(r) for r in js]
    pb_values += [b"\x0f\xff\xff", None]
    json_values: list[bytes | None] = [orjson.dumps(r) for r in js]
    via_pb = _score(pb_values, "goflow2-pb")
    via_json = _score(json_values, "goflow2")
    assert np.isfinite(via_json.scores).all()
    assert via_pb.scores[:17].tolist() == via_json.scores.tolist()
    assert via_pb.levels[:17].tolist() == via_json.levels.tolist()
    assert via_pb.decoded.reason[17] == reasons.MALFORMED_PROTOBUF
    assert "not a goflow2 FlowMessage" in via_pb.decoded.detail[17]
    assert via_pb.decoded.reason[18] == reasons.EMPTY




def test_replay_sends_a_pb_file_as_goflow2_sends_it() -> None:
    """``stream replay`` of a .pb file produces each message as goflow2's Kafka transport
    would (the bytes of the file, message by message); other files go as JSON."""
    from stream.ingest.files import iter_records
    from stream.ingest.goflow2pb import encode
    from stream.tools.replay import Pacing, _encoder, pump

    pb = DATA / "goflow2.pb"
    assert _encoder([pb], None) is encode and _encoder([DATA / "goflow2.jsonl"], None) is \
        orjson.dumps
    sent: list[bytes] = []
    n, rejected = pump([(str(pb), iter_records(pb, raw=True))],
                       lambda _key, value: sent.append(value), pacing=Pacing.unlimited(),
                       encode=encode)
    assert (n, rejected) == (17, [])
    assert b"".join(sent) == pb.read_bytes()
    assert [record(v) for v in sent] == load_records(pb).records
