"""Suppression rules end to end, on the real embedded broker and a real registry: rules
written by ``stream suppress`` are followed by a running consumer, in force within one
reload interval, counted per rule, expired on command, and a malformed rule record is
dead-lettered with its own reason."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from stream import registry
from stream.cli import main
from stream.config import Settings
from stream.consumer import service
from stream.generate import generate_flows, training_flows
from stream.kafka.embedded import EmbeddedBroker
from tests.kafkautil import produce, read_all

pytestmark = pytest.mark.integration

ROUND = 1500


def _events(seed: int, service_name: str) -> list[bytes]:
    """Flows with attacks among them; every other one carries ``service``."""
    out = []
    for k, e in enumerate(generate_flows(ROUND, ("acme",), seed=seed, attack_rate=0.2)):
        if k % 2 == 0:
            e = {**e, "service": service_name}
        out.append(orjson.dumps(e))
    return out


def _suppress(s: Settings, *args: str) -> str:
    r = CliRunner().invoke(main, ["suppress", "--bootstrap-servers", s.bootstrap_servers,
                                  "--suppression-topic", s.suppression_topic,
                                  "--dlq-topic", s.dlq_topic, *args])
    assert r.exit_code == 0, r.output
    return r.stdout


def _wait(cond: Any, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)
    return time.monotonic() - t0


def test_rules_written_by_stream_suppress_apply_to_a_running_consumer(
        broker: EmbeddedBroker, tracking_uri: str, unique: str, tmp_path: Path) -> None:
    base = "supp_" + os.urandom(3).hex()
    registry.train(training_flows("acme", 2000, seed=3), model_name=base, uri=tracking_uri,
                   do_promote=True)
    s = Settings(
        bootstrap_servers=broker.bootstrap, input_topic=f"flows-{unique}",
        alert_topic=f"alerts-{unique}", dlq_topic=f"dlq-{unique}", group_id=f"g-{unique}",
        tracking_uri=tracking_uri, model_name=base, session_timeout_ms=6000,
        batch_size=500, batch_max_wait_ms=100, reload_interval=2.0,
        suppression_topic=f"supp-{unique}", risk_by="",
    )
    broker.create_topics([s.input_topic, s.alert_topic, s.dlq_topic], partitions=1)
    # Refused before anything is written: a bad block, and a rule with no criterion.
    bad = CliRunner().invoke(main, ["suppress", "--bootstrap-servers", s.bootstrap_servers,
                                    "--suppression-topic", s.suppression_topic, "add",
                                    "--dst", "10.0.0.0/40", "--reason", "r", "--author", "a"])
    assert bad.exit_code == 2 and "not an address or CIDR block" in bad.output
    everything = CliRunner().invoke(main, ["suppress", "--bootstrap-servers",
                                           s.bootstrap_servers, "--suppression-topic",
                                           s.suppression_topic, "add", "--tenant", "acme",
                                           "--reason", "r", "--author", "a"])
    assert everything.exit_code == 2 and "--force" in everything.output
    _suppress(s, "add", "--id", "backup", "--field", "service=backup",
              "--reason", "nightly backup", "--author", "ana")
    # Written straight to the topic: not a rule, dead-lettered by the consumer.
    produce(s.bootstrap_servers, s.suppression_topic, [b'{"id": "x", "src": "nowhere"}'],
            key=b"x")

    pipeline = service.build(s)
    follower = pipeline.suppressions
    assert follower is not None
    thread = threading.Thread(target=pipeline.run, daemon=True)
    thread.start()
    try:
        # Round 1: the backup's alerts are suppressed, the others go out.
        produce(s.bootstrap_servers, s.input_topic, _events(1, "backup"))
        _wait(lambda: pipeline.stats.consumed >= ROUND, 120, "round 1")
        first = pipeline.stats.suppressed
        assert first > 0 and pipeline.stats.alerts > 0

        # Round 2: a rule added while it runs is in force within the reload interval.
        t0 = time.monotonic()
        _suppress(s, "add", "--id", "web", "--field", "service=web", "--reason",
                  "load balancer checks", "--author", "ana", "--expires", "1d")
        took = _wait(lambda: "web" in follower.rules.rules, s.reload_interval, "the new rule")
        assert time.monotonic() - t0 <= s.reload_interval + 5 and took <= s.reload_interval
        produce(s.bootstrap_servers, s.input_topic, _events(2, "web"))
        _wait(lambda: pipeline.stats.consumed >= 2 * ROUND, 120, "round 2")
        second = pipeline.stats.suppressed - first
        assert second > 0

        # Round 3: the backup rule expired: its alerts go out again.
        _suppress(s, "expire", "backup")
        _wait(lambda: not follower.rules.rules["backup"].active(time.time()),
              s.reload_interval, "the expiry")
        produce(s.bootstrap_servers, s.input_topic, _events(3, "backup"))
        _wait(lambda: pipeline.stats.consumed >= 3 * ROUND, 120, "round 3")
    finally:
        pipeline.stop_event.set()
        thread.join(timeout=30)
        pipeline.table.stop()
    assert not thread.is_alive()

    alerts = [orjson.loads(m.value()) for m in read_all(s.bootstrap_servers, s.alert_topic)]
    by_round: dict[int, list[dict[str, Any]]] = {1: [], 2: [], 3: []}
    for a in alerts:
        by_round[a["source"]["offset"] // ROUND + 1].append(a["event"])
    assert not [e for e in by_round[1] if e.get("service") == "backup"]
    assert [e for e in by_round[1] if "service" not in e]
    assert not [e for e in by_round[2] if e.get("service") == "web"]
    assert [e for e in by_round[3] if e.get("service") == "backup"], "expired: alerts again"
    assert pipeline.stats.suppressed == first + second
    assert len(alerts) + pipeline.stats.suppressed + pipeline.stats.below_threshold == 3 * ROUND

    dead = read_all(s.bootstrap_servers, s.dlq_topic)
    reasons = [dict(m.headers() or [])["reason"] for m in dead]
    assert reasons == [b"malformed_rule"]

    listed = _suppress(s, "list", "--all", "--json")
    rules = {d["id"]: d for d in map(orjson.loads, listed.splitlines())}
    assert rules["web"]["active"] and not rules["backup"]["active"]
    assert rules["backup"]["fields"] == {"service": "backup"}
    # stream score applies the same rules to a recording of round 2: web's alerts are
    # suppressed there too, the expired backup rule suppresses nothing.
    rules_file = tmp_path / "rules.jsonl"
    rules_file.write_text(listed)
    recording = tmp_path / "round2.jsonl"
    recording.write_bytes(b"\n".join(_events(2, "web")) + b"\n")
    out = tmp_path / "alerts.jsonl"
    r = CliRunner().invoke(main, ["score", str(recording), "--tracking-uri", tracking_uri,
                                  "--model-name", base, "--suppressions", str(rules_file),
                                  "-o", str(out), "--risk-by", ""])
    assert r.exit_code == 0, r.output
    offline = [orjson.loads(line)["event"] for line in out.read_bytes().splitlines()]
    assert offline and not [e for e in offline if e.get("service") == "web"]
    assert sorted(map(orjson.dumps, offline)) == sorted(map(orjson.dumps, by_round[2]))

    _suppress(s, "remove", "web")
    assert "no rules in force" in _suppress(s, "list")


def test_a_rule_added_while_running_closes_the_incident_and_entity_alert_it_covers(
        broker: EmbeddedBroker, tracking_uri: str, unique: str) -> None:
    """The issue's "closes the matching open incident": the busiest alerting host of a
    first round has an open incident (and an entity alert); a rule on its address added
    while the consumer runs closes both with the next batch, each record naming the
    rule, and its later alerts are suppressed."""
    base = "suppc_" + os.urandom(3).hex()
    registry.train(training_flows("acme", 2000, seed=3), model_name=base, uri=tracking_uri,
                   do_promote=True)
    s = Settings(
        bootstrap_servers=broker.bootstrap, input_topic=f"flows-{unique}",
        alert_topic=f"alerts-{unique}", dlq_topic=f"dlq-{unique}", group_id=f"g-{unique}",
        tracking_uri=tracking_uri, model_name=base, session_timeout_ms=6000,
        batch_size=500, batch_max_wait_ms=100, reload_interval=2.0,
        suppression_topic=f"supp-{unique}", incident_topic=f"inc-{unique}",
        incident_idle=3600.0, incident_window=3600.0, entity_alert_topic=f"ent-{unique}",
    )
    broker.create_topics([s.input_topic, s.alert_topic, s.dlq_topic], partitions=1)
    pipeline = service.build(s)
    follower = pipeline.suppressions
    assert follower is not None
    thread = threading.Thread(target=pipeline.run, daemon=True)
    thread.start()
    try:
        produce(s.bootstrap_servers, s.input_topic, _events(1, "web"))
        _wait(lambda: pipeline.stats.consumed >= ROUND, 120, "round 1")
        incidents = [orjson.loads(m.value()) for m in read_all(s.bootstrap_servers,
                                                               s.incident_topic)]
        latest = {i["incident_id"]: i for i in incidents}
        busiest = max((i for i in latest.values() if i["status"] == "open"),
                      key=lambda i: i["alerts"])
        host = busiest["entity"]["value"]
        entity_key = f"acme/src_ip={host}"
        had_entity_alert = any(m.key() == entity_key.encode()
                               for m in read_all(s.bootstrap_servers, s.entity_alert_topic))
        _suppress(s, "add", "--id", "known-host", "--src", f"{host}/32",
                  "--reason", "a scanner we run", "--author", "ana")
        _wait(lambda: "known-host" in follower.rules.rules, s.reload_interval + 5, "the rule")
        produce(s.bootstrap_servers, s.input_topic, _events(2, "web")[:200])
        _wait(lambda: pipeline.stats.consumed >= ROUND + 200, 120, "round 2")
    finally:
        pipeline.stop_event.set()
        thread.join(timeout=30)
        pipeline.table.stop()
    records = [orjson.loads(m.value()) for m in read_all(s.bootstrap_servers, s.incident_topic)]
    mine = [r for r in records if r["incident_id"] == busiest["incident_id"]]
    assert mine[-1]["status"] == "closed" and mine[-1]["closed_by"] == "known-host"
    assert mine[-1]["alerts"] == busiest["alerts"]
    entity = [orjson.loads(m.value()) for m in read_all(s.bootstrap_servers,
                                                        s.entity_alert_topic)
              if m.key() == entity_key.encode()]
    if had_entity_alert:
        assert entity[-1]["status"] == "closed" and entity[-1]["closed_by"] == "known-host"
    alerts = [orjson.loads(m.value()) for m in read_all(s.bootstrap_servers, s.alert_topic)]
    assert not [a for a in alerts if a["source"]["offset"] >= ROUND
                and a["event"]["src_ip"] == host]
    print(f"\nrule added while running: incident of {host} ({busiest['alerts']} alerts) "
          f"closed by it; entity alert {'closed' if had_entity_alert else 'none'}")
