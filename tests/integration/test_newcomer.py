"""What a newcomer following the README met: defaults that mislead, messages that say too
little or too much, workflow steps that were missing. Each case with its message and
exit code (the issue's points 3 to 6; tenant isolation, stalls and models not loaded
have their own files: test_tenant_isolation, test_progress, test_redrive).

The part that needs a real broker, registry or child process; the rest, and what
it all means, is in ``tests/unit/test_newcomer.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import orjson
import pytest
from click.testing import CliRunner
from confluent_kafka import Producer

from stream import registry
from stream.cli import main
from stream.generate import generate_flows, training_flows, write_jsonl
from stream.kafka.embedded import EmbeddedBroker
from tests import faultutil as fu
from tests.unit.test_newcomer import DATA

# ---- the registry a command uses ------------------------------------------------------------








# ---- stream broker ------------------------------------------------------------------------






# ---- stream alerts ------------------------------------------------------------------------


def _alert(i: int, tenant: str, level: str, **event: str) -> bytes:
    return orjson.dumps({"alert_id": f"flows/0/{i}", "tenant_id": tenant,
                         "threat_level": level, "anomaly_score": -0.1,
                         "model": {"name": "m", "version": "1"},
                         "detected_at": "2026-01-01T00:00:00Z",
                         "event": {"src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", **event}})


def test_alerts_reads_the_whole_topic_and_prints_data_as_text(
    broker: EmbeddedBroker, unique: str
) -> None:
    topic = f"alerts-{unique}"
    broker.create_topics([topic], partitions=3)
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(413):
        p.produce(topic, _alert(i, ("acme", "globex")[i % 2], ("medium", "high")[i % 3 == 0]))
    # A field that rich would read as markup, and one with a terminal escape.
    p.produce(topic, _alert(413, "acme", "high", src_ip="[/x]", dst_ip="\x1b[2J"))
    assert p.flush(30) == 0
    base = ["alerts", "--topic", topic, "--bootstrap-servers", broker.bootstrap]
    r = CliRunner().invoke(main, [*base, "--summary", "--json"])
    assert r.exit_code == 0, r.output
    totals = orjson.loads(r.stdout.strip().splitlines()[-1])
    assert sum(sum(v.values()) for v in totals.values()) == 414  # not an arbitrary tail
    r = CliRunner().invoke(main, base)
    assert r.exit_code == 0, r.output
    assert "414 alerts" in r.output
    assert "[/x] -> \\x1b[2J" in r.output and "\x1b[2J" not in r.output


def test_alerts_renders_the_incident_topic_one_row_per_incident(
    broker: EmbeddedBroker, unique: str
) -> None:
    topic = f"incidents-{unique}"
    broker.create_topics([topic], partitions=1)
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for n, status in ((1, "open"), (5, "open"), (9, "closed")):  # three states of one incident
        p.produce(topic, orjson.dumps({
            "incident_id": "abc123def456aa", "tenant_id": "acme", "status": status,
            "entity": {"field": "src_ip", "value": "10.1.0.66"},
            "first_seen": "2026-01-01T00:00:00Z", "last_seen": f"2026-01-01T00:00:0{n}Z",
            "alerts": n, "threat_level": "high", "min_anomaly_score": -0.25,
            "top_features": [{"feature": "src_ports", "alerts": n}], "alert_ids": []}),
            key=b"abc123def456aa")
    assert p.flush(30) == 0
    r = CliRunner().invoke(main, ["alerts", "--topic", topic, "--bootstrap-servers",
                                  broker.bootstrap], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "None" not in r.output and "? -> ?" not in r.output
    assert "entity" in r.output and "1 incidents" in r.output
    row = next(line for line in r.output.splitlines() if "abc123def456" in line)
    assert "src_ip=10.1.0.66" in row and "closed" in row and "src_ports x9" in row


def test_alerts_renders_entity_alerts_highest_risk_first(
    broker: EmbeddedBroker, unique: str
) -> None:
    topic = f"entities-{unique}"
    broker.create_topics([topic], partitions=1)
    p = Producer({"bootstrap.servers": broker.bootstrap})
    records = [("10.1.0.66", "raised", 13.5, "high"), ("10.1.0.9", "raised", 30.0, "critical"),
               ("10.1.0.66", "updated", 16.25, "medium")]
    for ip, status, risk, level in records:  # two states of .66, one of .9
        key = f"acme/src_ip={ip}"
        p.produce(topic, orjson.dumps({
            "entity_alert_id": key, "tenant_id": "acme", "by": "src_ip", "entity": ip,
            "status": status, "risk": risk, "threshold": 12.0, "alert_id": "flows/0/7",
            "threat_level": level, "event_time": 1767225600.0, "detected_at": "x"}),
            key=key.encode())
    assert p.flush(30) == 0
    r = CliRunner().invoke(main, ["alerts", "--topic", topic, "--bootstrap-servers",
                                  broker.bootstrap], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "2 entity alerts" in r.output and "risk" in r.output
    rows = [line for line in r.output.splitlines() if "src_ip=" in line]
    assert len(rows) == 2  # the latest state of each entity
    assert "src_ip=10.1.0.9" in rows[0] and "30.00" in rows[0]  # highest risk first
    assert "src_ip=10.1.0.66" in rows[1] and "16.25" in rows[1] and "updated" in rows[1]
    assert "2026-01-01T00:00:00+00:00" in rows[0]
    # stream alerts --entities reads the entity alert topic the consumers write.
    r = CliRunner().invoke(main, ["alerts", "--entities", "--entity-alert-topic", topic,
                                  "--bootstrap-servers", broker.bootstrap],
                           env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert [line for line in r.output.splitlines() if "src_ip=" in line] == rows
    r = CliRunner().invoke(main, ["alerts", "--entities", "--bootstrap-servers",
                                  broker.bootstrap])
    assert r.exit_code == 2 and "--entities reads --entity-alert-topic" in r.output


# ---- stream feedback add ---------------------------------------------------------------------


def test_feedback_add_writes_a_verdict_stream_feedback_reads(
    broker: EmbeddedBroker, unique: str
) -> None:
    alerts, fb = f"alerts-{unique}", f"feedback-{unique}"
    broker.create_topics([alerts, fb], partitions=1)
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(3):
        p.produce(alerts, _alert(i, "acme", "high"))
    assert p.flush(30) == 0
    base = ["feedback", "--bootstrap-servers", broker.bootstrap, "--alert-topic", alerts,
            "--feedback-topic", fb]
    r = CliRunner().invoke(main, [*base, "add", "--alert-id", "flows/0/1", "--verdict",
                                  "false_positive", "--note", "backup job"])
    assert r.exit_code == 0, r.output
    assert f"false_positive on flows/0/1: written to {fb}[0]@0" in r.output
    r = CliRunner().invoke(main, [*base, "--json"])
    report = orjson.loads(r.stdout.strip().splitlines()[-1])
    assert report["per_tenant"]["acme"]["false_positive"] == 1
    assert report["per_tenant"]["acme"]["precision"] == 0.0
    r = CliRunner().invoke(main, [*base, "add", "--verdict", "benign"])
    assert r.exit_code == 2 and "exactly one of --alert-id and --incident-id" in r.output


# ---- --where, train --map -------------------------------------------------------------------






@pytest.mark.integration
def test_score_suricata_flows_only_with_where(tracking_uri: str, tmp_path: Path) -> None:
    base = "eve_" + os.urandom(3).hex()
    eve = DATA / "suricata_eve_flow.jsonl"
    r = CliRunner().invoke(main, [
        "train", "--input", str(eve), "--input-schema", "suricata", "--tenant", "acme",
        "--model-name", base, "--tracking-uri", tracking_uri, "--min-records", "5",
        "--feature", "lb=log1p(fill(bytes_transferred, 0))", "--where", 'event_type == "flow"',
        "--promote"])
    assert r.exit_code == 0, r.output
    assert "--where left out 2 records" in r.output
    r = CliRunner().invoke(main, [
        "score", str(eve), "--input-schema", "suricata", "--tenant", "acme", "--model-name",
        base, "--tracking-uri", tracking_uri, "--min-level", "low", "-o",
        str(tmp_path / "a.jsonl"), "--where", 'event_type == "flow"'])
    assert r.exit_code == 0, r.output
    assert "scored 16" in r.output and "dead letters 0" in r.output
    assert "left out by --where 2" in r.output
    r = CliRunner().invoke(main, ["score", str(eve), "--where", "event_type = flow",
                                  "--tracking-uri", tracking_uri])
    assert r.exit_code == 2 and "Invalid value for --where: cannot read it" in r.output, r.output


@pytest.mark.integration
def test_train_maps_fields_as_score_does(tracking_uri: str, tmp_path: Path) -> None:
    path = tmp_path / "flows.csv"
    flows = training_flows("acme", 400, seed=4)
    path.write_text("tenant,bytes,pkts,secs\n" + "".join(
        f"acme,{f['bytes_transferred']},{f['packet_count']},{f['connection_duration']}\n"
        for f in flows))
    base = "map_" + os.urandom(3).hex()
    maps = ["--map", "bytes_transferred=bytes", "--map", "packet_count=pkts",
            "--map", "connection_duration=secs"]
    r = CliRunner().invoke(main, ["train", "--input", str(path), *maps, "--tenant", "acme",
                                  "--model-name", base, "--tracking-uri", tracking_uri,
                                  "--features", "bytes_transferred,packet_count,"
                                  "connection_duration", "--n-estimators", "20", "--promote"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["score", str(path), *maps, "--tenant", "acme",
                                  "--model-name", base, "--tracking-uri", tracking_uri,
                                  "-o", str(tmp_path / "a.jsonl")])
    assert r.exit_code == 0 and "scored 400" in r.output, r.output


# ---- score and evaluate say what they could not do -------------------------------------------


@pytest.mark.integration
def test_score_names_the_missing_field_and_how_to_give_a_tenant(
    tracking_uri: str, tmp_path: Path
) -> None:
    model = fu.shared_model(tracking_uri)
    reg = ["--model-name", model, "--tracking-uri", tracking_uri]
    flows = list(generate_flows(300, ("acme",), seed=5))
    for f in flows:
        del f["connection_duration"]
    partial = tmp_path / "partial.jsonl"
    write_jsonl(partial, flows)
    r = CliRunner().invoke(main, ["score", str(partial), "-o", str(tmp_path / "a"), *reg])
    assert r.exit_code == 1
    # The feature that could not be computed, by name (here a plain field of that name).
    assert "missing_feature: feature 'connection_duration': missing_feature x300" in r.output
    assert r.output.strip().splitlines()[-1].endswith(
        "missing_feature 300 (feature 'connection_duration': missing_feature)"), r.output
    for f in flows:
        del f["tenant_id"]
        f["connection_duration"] = 1.0
    untenanted = tmp_path / "zeekish.jsonl"
    write_jsonl(untenanted, flows)
    r = CliRunner().invoke(main, ["score", str(untenanted), "-o", str(tmp_path / "b"), *reg])
    assert r.exit_code == 1
    last = r.output.strip().splitlines()[-1]
    assert "invalid_tenant 300" in last and "--tenant-from const:NAME" in last, last


@pytest.mark.integration
def test_evaluate_refuses_a_label_field_no_record_has(tracking_uri: str, tmp_path: Path) -> None:
    model = fu.shared_model(tracking_uri)
    path = tmp_path / "f.jsonl"
    write_jsonl(path, generate_flows(300, ("acme",), seed=6))
    r = CliRunner().invoke(main, ["evaluate", str(path), "--label-field", "nosuchlabel",
                                  "--model-name", model, "--tracking-uri", tracking_uri])
    assert r.exit_code == 2, r.output
    assert "no scored record has a field 'nosuchlabel'" in r.output


@pytest.mark.integration
def test_thresholds_that_rest_on_a_handful_of_records_are_said(
    tracking_uri: str, tmp_path: Path
) -> None:
    path = tmp_path / "short.jsonl"
    write_jsonl(path, generate_flows(2000, ("acme",), seed=7, attack_rate=0.0))
    r = CliRunner().invoke(main, ["train", "--input", str(path), "--tenant", "acme",
                                  "--model-name", "budget_" + os.urandom(3).hex(),
                                  "--tracking-uri", tracking_uri, "--n-estimators", "20",
                                  "--alert-budget", "50"])
    assert r.exit_code == 0, r.output
    warnings = [line for line in r.output.splitlines() if line.startswith("warning: ")]
    assert any("rest on the" in w for w in warnings), r.output
    assert any("--alert-budget is per hour, and the training records span" in w
               for w in warnings), r.output


@pytest.mark.integration
def test_drift_compares_each_tenant_with_its_own_training_traffic(tracking_uri: str) -> None:
    """A global model trained on three tenants: each tenant's own traffic replayed shows
    no drift (compared with the mix, which no tenant looks like, it did: PSI ~2-4)."""
    from stream.ops.drift import Drift
    from stream.scoring.baseline import Baseline

    base = "mix_" + os.urandom(3).hex()
    flows = list(generate_flows(9000, ("acme", "globex", "initech"), seed=8, attack_rate=0.0))
    registry.train(flows, model_name=base, uri=tracking_uri, n_estimators=20)
    model = registry.load_version(base, "1", uri=tracking_uri)
    b = model.baseline
    assert isinstance(b, Baseline) and set(b.by_tenant) == {"acme", "globex", "initech"}
    for t in ("acme", "globex", "initech"):
        rows = [f for f in flows if f["tenant_id"] == t]
        X = np.array([[f[c] for c in model.features] for f in rows], dtype=np.float64)
        own, mix = Drift(b, 2 * len(rows), t), Drift(b, 2 * len(rows), "someone-else")
        assert own.add(X, model.score(X), 0) and mix.add(X, model.score(X), 0)
        assert own.psi_score is not None and own.psi_score < 0.05, (t, own.psi_score)
        assert mix.psi_score is not None and mix.psi_score > 0.25, (t, mix.psi_score)
