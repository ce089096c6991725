"""Sensor records as they come, on the real broker: Zeek (zeek-kafka plugin, plain and
``tag_json``), Suricata EVE flow and goflow2 JSON, consumed with ``--input-schema`` and
``--tenant-from const:acme`` by models whose features use ``fill()`` and ``onehot()``.

Every record is scored (none dead-lettered for its unset fields: Zeek omits them for
scans and refused connections), the model is the one trained by ``stream train`` on the
same schema, and ``stream score`` gives the consumer's scores.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from stream.cli import main
from stream.config import Settings
from stream.consumer import service
from stream.kafka.embedded import EmbeddedBroker
from tests.kafkautil import produce, read_all, run_until

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data"

CASES = {
    "zeek": ("zeek_conn_kafka.jsonl", [
        "ld=log1p(fill(connection_duration, 0))",
        "lb=log1p(fill(bytes_transferred, 0))",
        "lp=log1p(fill(packet_count, 0))",
        'st=onehot(conn_state, ["S0", "SF", "REJ"])',
        "port=freq(dst_port)",
    ]),
    "zeek-tagged": ("zeek_conn_kafka_tagged.jsonl", [
        "ld=log1p(fill(connection_duration, 0))",
        "lb=log1p(fill(bytes_transferred, 0))",
        'st=onehot(conn_state, ["S0", "SF", "REJ"])',
        'svc=onehot(fill(service, "none"))',
    ]),
    "suricata": ("suricata_eve_flow.jsonl", [
        "lb=log1p(fill(bytes_transferred, 0))",
        "lp=log1p(fill(packet_count, 0))",
        "age=fill(connection_duration, 0)",
        'st=onehot(fill(flow.state, "none"), ["new", "established", "closed"])',
        'pr=onehot(protocol, ["TCP", "UDP"])',
    ]),
    "goflow2": ("goflow2.jsonl", [
        "lb=log1p(bytes_transferred)",
        "lp=log1p(packet_count)",
        "d=fill(connection_duration, 0)",
        'pr=onehot(protocol, ["TCP", "UDP", "ICMP"])',
    ]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_sensor_records_as_they_come_are_all_scored(
    case: str, broker: EmbeddedBroker, tracking_uri: str, unique: str, tmp_path: Path
) -> None:
    file, features = CASES[case]
    schema = "zeek" if case.startswith("zeek") else case
    path = DATA / file
    base = f"sensor_{case.replace('-', '_')}_" + os.urandom(2).hex()
    common = ["--input-schema", schema, "--model-name", base, "--tracking-uri", tracking_uri]
    r = CliRunner().invoke(main, [
        "train", "--input", str(path), "--format", "jsonl", *common, "--min-records", "5",
        "--promote", "--json", *[a for f in features for a in ("--feature", f)],
    ])
    assert r.exit_code == 0, r.output
    trained = orjson.loads(r.stdout.strip().splitlines()[-1])
    assert trained["skipped"] == {}, "training left records out"

    values = [line for line in path.read_bytes().splitlines() if line.strip()]
    s = Settings(
        bootstrap_servers=broker.bootstrap, input_topic=f"in-{unique}",
        alert_topic=f"alerts-{unique}", dlq_topic=f"dlq-{unique}", group_id=f"g-{unique}",
        tracking_uri=tracking_uri, model_name=base, session_timeout_ms=6000,
        batch_max_wait_ms=100, min_level="low", input_schema=schema,
        tenant_from="const:acme",
    )
    broker.create_topics([s.input_topic, s.alert_topic, s.dlq_topic])
    n = produce(broker.bootstrap, s.input_topic, values)
    pipeline = service.build(s)
    run_until(pipeline, n)
    alerts = [orjson.loads(m.value()) for m in read_all(broker.bootstrap, s.alert_topic)]
    dead = read_all(broker.bootstrap, s.dlq_topic)
    assert [dict(m.headers())["reason"] for m in dead] == []
    assert len(alerts) == n
    assert {a["tenant_id"] for a in alerts} == {"acme"}
    assert {(a["model"]["name"], a["model"]["version"]) for a in alerts} == {
        (base, trained["version"])}
    # The original records pass through in their own form.
    assert sorted(orjson.dumps(a["event"]) for a in alerts) == sorted(
        orjson.dumps(orjson.loads(v)) for v in values)

    out = tmp_path / "alerts.jsonl"
    r = CliRunner().invoke(main, [
        "score", str(path), "--format", "jsonl", "-o", str(out), "--min-level", "low",
        "--tenant-from", "const:acme", *common,
    ])
    assert r.exit_code == 0, r.output
    offline = sorted((orjson.dumps(a["event"]), a["anomaly_score"])
                     for a in map(orjson.loads, out.read_bytes().splitlines()))
    stream = sorted((orjson.dumps(a["event"]), a["anomaly_score"]) for a in alerts)
    assert [e for e, _ in offline] == [e for e, _ in stream]
    assert max(abs(a - b) for (_, a), (_, b) in zip(offline, stream, strict=True)) <= 1e-9


def test_goflow2_protobuf_on_the_broker_scores_as_its_json(
    broker: EmbeddedBroker, tracking_uri: str, unique: str, tmp_path: Path
) -> None:
    """goflow2 -format=bin: each Kafka record one length-prefixed FlowMessage (the bytes of
    tests/data/goflow2.pb, message by message); consumed with --input-schema goflow2-pb by
    a model trained on the same flows' JSON, every record scores as `stream score` scores
    the JSON."""
    from stream.ingest.goflow2pb import delimited

    file, features = CASES["goflow2"]
    base = "sensor_gpb_" + os.urandom(2).hex()
    common = ["--model-name", base, "--tracking-uri", tracking_uri]
    r = CliRunner().invoke(main, [
        "train", "--input", str(DATA / file), "--input-schema", "goflow2", *common,
        "--min-records", "5", "--promote", *[a for f in features for a in ("--feature", f)],
    ])
    assert r.exit_code == 0, r.output
    data = (DATA / "goflow2.pb").read_bytes()
    values, at = [], 0
    for _k, body, _reason in delimited(data):
        assert body is not None
        end = data.index(body, at) + len(body)
        values.append(data[at:end])  # the prefix goflow2 writes, then the message
        at = end
    assert b"".join(values) == data and len(values) == 17
    s = Settings(
        bootstrap_servers=broker.bootstrap, input_topic=f"in-{unique}",
        alert_topic=f"alerts-{unique}", dlq_topic=f"dlq-{unique}", group_id=f"g-{unique}",
        tracking_uri=tracking_uri, model_name=base, session_timeout_ms=6000,
        batch_max_wait_ms=100, min_level="low", input_schema="goflow2-pb",
        tenant_from="const:acme",
    )
    broker.create_topics([s.input_topic, s.alert_topic, s.dlq_topic])
    n = produce(broker.bootstrap, s.input_topic, [*values, b"\x0f\xff\xff"])
    pipeline = service.build(s)
    run_until(pipeline, n)
    alerts = [orjson.loads(m.value()) for m in read_all(broker.bootstrap, s.alert_topic)]
    dead = read_all(broker.bootstrap, s.dlq_topic)
    assert [dict(m.headers())["reason"] for m in dead] == [b"malformed_protobuf"]
    assert dead[0].value() == b"\x0f\xff\xff"  # the original bytes, as every dead letter

    out = tmp_path / "alerts.jsonl"
    r = CliRunner().invoke(main, ["score", str(DATA / file), "-o", str(out), "--min-level",
                                  "low", "--tenant-from", "const:acme", "--input-schema",
                                  "goflow2", *common])
    assert r.exit_code == 0, r.output
    offline = sorted(a["anomaly_score"] for a in map(orjson.loads, out.read_bytes().splitlines()))
    stream = sorted(a["anomaly_score"] for a in alerts)
    assert len(stream) == 17 and stream == offline
