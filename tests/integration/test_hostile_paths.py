"""Hostile senders and cross-tenant paths: nothing an event carries ends the process, holds
its partition back, or reaches another tenant.

The part that needs a real broker, registry or child process; the rest, and what
it all means, is in ``tests/unit/consumer/test_hostile_paths.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from confluent_kafka import Producer

from stream.cli import main
from stream.consumer import service
from stream.generate import generate_flows
from stream.kafka.embedded import EmbeddedBroker
from tests import faultutil as fu
from tests.unit.consumer.test_hostile_paths import HUGE


def _hostile(unique: str) -> tuple[list[tuple[bytes, bytes | None, list[Any]]], dict[str, str]]:
    """(value, key, headers) to send, and flow id -> what must become of it."""
    flows = list(generate_flows(300, ("acme", "globex"), seed=9, attack_rate=0.0))
    out: list[tuple[bytes, bytes | None, list[Any]]] = []
    fate: dict[str, str] = {}
    for k, f in enumerate(flows):
        odd = {0: {"bytes_transferred": 1e20}, 1: {"connection_duration": 1e300},
               2: {"src_port": -1, "dst_port": 1e10}, 3: {"packet_count": 2**64}}.get(k % 50)
        if odd:
            f = {**f, **odd}
        out.append((json.dumps(f).encode(), None, []))  # (orjson refuses 2**64 itself)
        fate[f["flow_id"]] = "alert"
    big = {"tenant_id": "acme", "flow_id": f"big-{unique}", "pad": "x" * HUGE}
    out.append((orjson.dumps(big), None, []))
    fate[big["flow_id"]] = "oversize"
    noisy = {"flow_id": f"noisy-{unique}", "bytes_transferred": 1}  # no tenant
    out.append((orjson.dumps(noisy), b"k" * 100_000,
                [(f"h{i}", b"v" * 1000) for i in range(200)]))
    fate[noisy["flow_id"]] = "invalid_tenant"
    return out, fate


def _run_one(broker: EmbeddedBroker, tracking_uri: str, model: str, fmt: str, mode: str,
             unique: str) -> dict[str, Any]:
    topics = fu.Topics(f"{unique}-{fmt}-{mode[:5]}")
    topics.create(broker, 1)
    sent, fate = _hostile(topics.unique)
    p = Producer({"bootstrap.servers": broker.bootstrap, "message.max.bytes": 3 * HUGE})
    for value, key, headers in sent:
        p.produce(topics.input, value, key, headers=headers or None)
    assert p.flush(30) == 0
    s = fu.settings(broker.bootstrap, topics, tracking_uri, model, alert_format=fmt,
                    delivery=mode, max_message_bytes=1_000_000,
                    kafka_properties=(("transactional.id", f"h-{topics.unique}"),))
    pipeline = service.build(s)
    thread = fu.start(pipeline)
    try:
        fu.wait_until(lambda: pipeline.stats.consumed >= len(sent), 90, "every record",
                      state=lambda: pipeline.stats)
        alive = thread.is_alive()
    finally:
        fu.stop(pipeline, thread)
    committed = fu.committed(broker.bootstrap, topics.group, topics.input)
    alerts = [orjson.loads(m.value()) for m in fu.read_topic(broker.bootstrap, topics.alerts)]
    dead = fu.read_topic(broker.bootstrap, topics.dlq)
    return {"alive": alive, "committed": committed, "sent": len(sent), "fate": fate,
            "alerts": alerts, "dead": dead, "stats": pipeline.stats}


def _flow_id(alert: dict[str, Any]) -> str:
    if "stream" in alert:  # ECS
        return str(alert["stream"]["event"]["flow_id"])
    if "unmapped" in alert:  # OCSF
        return str(orjson.loads(alert["raw_data"])["flow_id"])
    return str(alert["event"]["flow_id"])


@pytest.mark.integration
def test_hostile_records_in_every_format_and_delivery_mode(
    broker: EmbeddedBroker, tracking_uri: str, unique: str
) -> None:
    model = fu.shared_model(tracking_uri)
    combos = [(f, m) for f in ("native", "ecs", "ocsf") for m in ("at-least-once",
                                                                   "exactly-once")]
    runs = fu.concurrently(*(lambda f=f, m=m: _run_one(broker, tracking_uri, model, f, m,
                                                       unique) for f, m in combos))
    for (fmt, mode), r in zip(combos, runs, strict=True):
        where = f"{fmt}/{mode}"
        assert r["alive"], where  # the process stayed up
        assert r["committed"] == {0: r["sent"]}, (where, r["committed"])  # the partition moved
        alerted = {_flow_id(a) for a in r["alerts"]}
        want = {fid for fid, what in r["fate"].items() if what == "alert"}
        assert alerted == want, (where, len(alerted), len(want))
        reasons = {dict(m.headers())["reason"].decode(): m for m in r["dead"]}
        assert set(reasons) == {"oversize", "invalid_tenant"}, (where, set(reasons))
        cut = dict(reasons["oversize"].headers())
        assert len(reasons["oversize"].value()) <= 1_000_000 < int(cut["stream.original.size"])
        assert cut["stream.truncated"] == b"true" and len(cut["stream.original.sha256"]) == 64
        noisy = reasons["invalid_tenant"]
        assert noisy.key() is None and dict(noisy.headers())[
            "stream.original.headers_dropped"] == b"200"
        if fmt == "ecs":  # typed fields take only what they can hold; the event keeps it
            huge = next(a for a in r["alerts"]
                        if a["stream"]["event"].get("bytes_transferred") == 1e20)
            assert "bytes" not in huge.get("network", {})
        if fmt == "ocsf":
            neg = next(a for a in r["alerts"] if orjson.loads(a["raw_data"]).get("src_port") == -1)
            assert "port" not in neg.get("src_endpoint", {})
    print(f"\nhostile records: {len(combos)} format x delivery runs, each "
          f"{runs[0]['sent']} records, all committed, 2 dead letters, the rest alerted")


# ---- window state keys ------------------------------------------------------------------








# ---- metrics, health server, secrets ----------------------------------------------------










@pytest.mark.integration
def test_a_file_name_with_quotes_makes_valid_alert_json(tracking_uri: str, tmp_path: Path
                                                        ) -> None:
    model = fu.shared_model(tracking_uri)
    path = tmp_path / 'we"ird\\name.jsonl'
    from stream.generate import write_jsonl

    write_jsonl(path, generate_flows(50, ("acme",), seed=3))
    out = tmp_path / "a.jsonl"
    r = CliRunner().invoke(main, ["score", str(path), "-o", str(out), "--min-level", "low",
                                  "--model-name", model, "--tracking-uri", tracking_uri])
    assert r.exit_code == 0, r.output
    alerts = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(alerts) == 50 and alerts[0]["source"]["topic"] == path.name
    assert alerts[0]["alert_id"].startswith(path.name + "/0/")


# ---- tenants ------------------------------------------------------------------------------








