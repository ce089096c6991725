"""End to end on the real embedded broker and a real MLflow registry (SQLite).

Three tenants (two with their own model, one served by the global model),
thousands of events with malformed ones mixed in: every input offset must end
as exactly one alert or dead-letter record, every score must equal the
registered model's own decision_function, and every alert must name the model
version that scored it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import numpy as np
import orjson
import pytest
from confluent_kafka import OFFSET_INVALID, Consumer, TopicPartition

from stream import registry
from stream.config import Settings
from stream.consumer import service
from stream.generate import generate_flows, training_flows
from stream.kafka.embedded import EmbeddedBroker
from tests.kafkautil import produce, read_all, run_until

# Real broker, registry or child processes: not part of the fast unit run.
pytestmark = pytest.mark.integration

TENANTS = ("acme", "globex", "initech")  # initech has no model of its own
FEATURES = registry.DEFAULT_FEATURES

# (raw value, expected dead-letter reason)
BAD: list[tuple[bytes, str]] = [
    (b"{not json", "malformed_json"),
    (b"[1, 2, 3]", "not_object"),
    (b'"just a string"', "not_object"),
    (b'{"bytes_transferred": 1, "packet_count": 1, "connection_duration": 1}', "invalid_tenant"),
    (b'{"tenant_id": "bad tenant!", "bytes_transferred": 1}', "invalid_tenant"),
    (b'{"tenant_id": 42, "bytes_transferred": 1}', "invalid_tenant"),
    (b'{"tenant_id": ["acme"], "bytes_transferred": 1}', "invalid_tenant"),
    (b'{"tenant_id": "acme", "packet_count": 3, "connection_duration": 1.0}', "missing_feature"),
    (
        b'{"tenant_id": "acme", "bytes_transferred": "10kB", "packet_count": 3, '
        b'"connection_duration": 1.0}',
        "non_numeric_feature",
    ),
    (
        b'{"tenant_id": "initech", "bytes_transferred": true, "packet_count": 3, '
        b'"connection_duration": 1.0}',
        "non_numeric_feature",
    ),
    # Overflowing numbers and NaN/Infinity literals are not JSON: the decoder refuses them.
    (
        b'{"tenant_id": "globex", "bytes_transferred": 1e999, "packet_count": 3, '
        b'"connection_duration": 1.0}',
        "malformed_json",
    ),
    (
        b'{"tenant_id": "globex", "bytes_transferred": NaN, "packet_count": 3, '
        b'"connection_duration": 1.0}',
        "malformed_json",
    ),
    (b"", "empty_message"),
    (b'{"tenant_id": "acme", "pad": "' + b"x" * 5000 + b'"}', "oversize"),
]


@pytest.fixture(scope="module")
def models(tracking_uri: str) -> dict[str, Any]:
    """A global model and two tenant models, trained and promoted."""
    base = "pipe_" + os.urandom(3).hex()
    mixed = [r for t in TENANTS for r in training_flows(t, 1500, seed=1)]
    out = {"base": base, "versions": {}}
    res = registry.train(mixed, model_name=base, uri=tracking_uri, do_promote=True)
    out["versions"][res.model_name] = res.version
    for t in TENANTS[:2]:
        res = registry.train(
            training_flows(t, 1500, seed=2),
            tenant=t,
            model_name=base,
            uri=tracking_uri,
            calibrate=(0.01, 0.05, 0.2),
            do_promote=True,
        )
        out["versions"][res.model_name] = res.version
    return out


def _settings(
    broker: EmbeddedBroker, unique: str, tracking_uri: str, base: str, **kw: Any
) -> Settings:
    s = Settings(
        bootstrap_servers=broker.bootstrap,
        input_topic=f"flows-{unique}",
        alert_topic=f"alerts-{unique}",
        dlq_topic=f"dlq-{unique}",
        group_id=f"g-{unique}",
        tracking_uri=tracking_uri,
        model_name=base,
        session_timeout_ms=6000,
        batch_size=1000,
        batch_max_wait_ms=100,
        **kw,
    )
    broker.create_topics([s.input_topic], partitions=3)
    broker.create_topics([s.alert_topic, s.dlq_topic], partitions=2)
    return s


def _header(m: Any, name: str) -> str:
    return dict(m.headers() or [])[name].decode()


def test_every_offset_accounted_and_scores_match_registry(
    broker: EmbeddedBroker, tracking_uri: str, models: dict[str, Any], unique: str
) -> None:
    s = _settings(
        broker, unique, tracking_uri, models["base"], min_level="low", max_message_bytes=4000
    )
    flows = list(generate_flows(4000, TENANTS, seed=11))
    values = [orjson.dumps(f) for f in flows]
    expected_reason: dict[bytes, str] = {}
    for k, (bad, reason) in enumerate(BAD):
        values.insert(300 * (k + 1), bad)
        expected_reason[bad] = reason
    n = produce(broker.bootstrap, s.input_topic, values)

    pipeline = service.build(s)
    run_until(pipeline, n)
    st = pipeline.stats
    assert st.consumed == n
    assert st.alerts + st.below_threshold + st.dead_letters == n
    assert st.below_threshold == 0  # min_level=low: every scored event is an alert

    alerts = [orjson.loads(m.value()) for m in read_all(broker.bootstrap, s.alert_topic)]
    dlq = read_all(broker.bootstrap, s.dlq_topic)
    outcomes = [(a["source"]["partition"], a["source"]["offset"]) for a in alerts]
    outcomes += [
        (int(_header(m, "source.partition")), int(_header(m, "source.offset"))) for m in dlq
    ]
    assert len(outcomes) == n, "an offset has no outcome or more than one"
    assert len(set(outcomes)) == n
    inputs = read_all(broker.bootstrap, s.input_topic)
    assert set(outcomes) == {(m.partition(), m.offset()) for m in inputs}

    # Dead letters: exactly the bad records, original bytes, with their reasons.
    assert len(dlq) == len(BAD)
    for m in dlq:
        assert _header(m, "reason") == expected_reason[m.value() or b""]
        assert _header(m, "detail")

    # Alerts: the right model per tenant, the registry's own scores, the event passed through.
    base = models["base"]
    want_model = {"acme": f"{base}_acme", "globex": f"{base}_globex", "initech": base}
    by_model: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for a in alerts:
        assert a["model"]["name"] == want_model[a["tenant_id"]]
        assert a["model"]["version"] == models["versions"][a["model"]["name"]]
        src = a["source"]
        assert a["alert_id"] == f"{s.input_topic}/{src['partition']}/{src['offset']}"
        assert a["event"]["tenant_id"] == a["tenant_id"]
        assert a["is_anomaly"] == (a["anomaly_score"] < 0)
        by_model.setdefault((a["model"]["name"], a["model"]["version"]), []).append(a)
    assert set(by_model) == {(m, v) for m, v in models["versions"].items()}
    for (name, version), rows in by_model.items():
        loaded = registry.load_version(name, version, uri=tracking_uri)
        X = np.array([[r["event"][f] for f in loaded.features] for r in rows], dtype=np.float64)
        expected = loaded.estimator.decision_function(X)
        got = np.array([r["anomaly_score"] for r in rows])
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
        levels = 3 - np.searchsorted(loaded.thresholds, expected, side="right")
        names = ["low", "medium", "high", "critical"]
        assert [r["threat_level"] for r in rows] == [names[lv] for lv in levels]
    # Every original event passes through untouched.
    originals = {f["flow_id"]: f for f in flows}
    for a in alerts:
        assert a["event"] == originals[a["event"]["flow_id"]]

    # Committed offsets cover exactly what was consumed.
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": s.group_id})
    committed = c.committed([TopicPartition(s.input_topic, p) for p in range(3)], timeout=10)
    c.close()
    ends = Counter(m.partition() for m in inputs)
    # Unkeyed input can leave a partition empty (sticky partitioner): it has no commit.
    assert {tp.partition: tp.offset for tp in committed} == {
        p: ends.get(p, OFFSET_INVALID) for p in range(3)}


def test_min_level_filters_and_counts_below_threshold(
    broker: EmbeddedBroker, tracking_uri: str, models: dict[str, Any], unique: str
) -> None:
    s = _settings(broker, unique, tracking_uri, models["base"], min_level="high")
    flows = list(generate_flows(3000, TENANTS, seed=5, attack_rate=0.05))
    n = produce(broker.bootstrap, s.input_topic, (orjson.dumps(f) for f in flows))
    pipeline = service.build(s)
    run_until(pipeline, n)
    st = pipeline.stats
    alerts = [orjson.loads(m.value()) for m in read_all(broker.bootstrap, s.alert_topic)]
    assert st.dead_letters == 0
    assert len(alerts) == st.alerts > 0
    assert st.alerts + st.below_threshold == n
    assert {a["threat_level"] for a in alerts} <= {"high", "critical"}
    assert sum(st.alerts_by.values()) == st.alerts


def test_tenant_without_model_and_no_global_goes_to_dead_letters(
    broker: EmbeddedBroker, tracking_uri: str, unique: str
) -> None:
    base = "noglobal_" + unique
    registry.train(
        training_flows("acme", 800, seed=3),
        tenant="acme",
        model_name=base,
        uri=tracking_uri,
        do_promote=True,
    )
    s = _settings(broker, unique, tracking_uri, base, min_level="low")
    flows = list(generate_flows(600, ("acme", "initech"), seed=9))
    n = produce(broker.bootstrap, s.input_topic, (orjson.dumps(f) for f in flows))
    pipeline = service.build(s)
    run_until(pipeline, n)
    dlq = read_all(broker.bootstrap, s.dlq_topic)
    initech = sum(1 for f in flows if f["tenant_id"] == "initech")
    assert len(dlq) == initech > 0
    assert {_header(m, "reason") for m in dlq} == {"no_model"}
    assert pipeline.stats.alerts == n - initech


def test_sigterm_finishes_batch_commits_and_exits_zero(
    broker: EmbeddedBroker, tracking_uri: str, models: dict[str, Any], unique: str
) -> None:
    s = _settings(broker, unique, tracking_uri, models["base"], min_level="low")
    flows = list(generate_flows(30000, TENANTS, seed=3))
    n = produce(broker.bootstrap, s.input_topic, (orjson.dumps(f) for f in flows))
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": s.bootstrap_servers,
        "STREAM_INPUT_TOPIC": s.input_topic,
        "STREAM_ALERT_TOPIC": s.alert_topic,
        "STREAM_DLQ_TOPIC": s.dlq_topic,
        "KAFKA_GROUP_ID": s.group_id,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "STREAM_MODEL_NAME": models["base"],
        "KAFKA_SESSION_TIMEOUT_MS": "6000",
        "STREAM_MIN_LEVEL": "low",
        "STREAM_BATCH_SIZE": "500",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "run"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    # Stop it mid-stream, once some alerts exist.
    deadline = time.monotonic() + 90
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "probe"})
    while time.monotonic() < deadline:
        highs = [
            c.get_watermark_offsets(TopicPartition(s.alert_topic, p), timeout=5)[1]
            for p in range(2)
        ]
        if sum(highs) > 2000:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out.decode()[-3000:]
    assert b"finishing the batch in flight" in out
    c.close()
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": s.group_id})
    committed = c.committed([TopicPartition(s.input_topic, p) for p in range(3)], timeout=10)
    c.close()
    done = sum(max(tp.offset, 0) for tp in committed)
    alerts = read_all(broker.bootstrap, s.alert_topic)
    # Everything committed has an alert, and nothing was alerted beyond what was committed.
    assert 0 < done < n
    assert len(alerts) == done
    assert len({(orjson.loads(m.value())["alert_id"]) for m in alerts}) == done


def test_cli_module_entry_point_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "stream.cli", "--help"], capture_output=True, check=True
    )
    for cmd in (b"run", b"train", b"promote", b"models", b"broker", b"demo"):
        assert cmd in out.stdout
