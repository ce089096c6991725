"""Each recorded format through `stream replay`, the broker and the consumer, out as alerts."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from stream import registry
from stream.cli import main
from stream.config import Settings
from stream.consumer import service
from stream.generate import generate_flows, training_flows
from stream.ingest.files import iter_records
from stream.kafka.embedded import EmbeddedBroker
from tests.integration.test_replay import _write_all_formats
from tests.kafkautil import read_all, run_until

# Real broker, registry or child processes: not part of the fast unit run.
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def base(tracking_uri: str) -> str:
    name = "replay_" + os.urandom(3).hex()
    mixed = [r for t in ("acme", "globex", "initech") for r in training_flows(t, 1000, seed=1)]
    registry.train(mixed, model_name=name, uri=tracking_uri, do_promote=True)
    return name


def test_each_format_replays_into_scored_alerts(
    tmp_path: Path, broker: EmbeddedBroker, tracking_uri: str, base: str, unique: str
) -> None:
    flows = list(generate_flows(200, seed=4, attack_rate=0.05))
    paths = _write_all_formats(tmp_path, flows)
    s = Settings(
        bootstrap_servers=broker.bootstrap,
        input_topic=f"rp-{unique}",
        alert_topic=f"rp-alerts-{unique}",
        dlq_topic=f"rp-dlq-{unique}",
        group_id=f"rp-{unique}",
        tracking_uri=tracking_uri,
        model_name=base,
        session_timeout_ms=6000,
        min_level="low",
        batch_max_wait_ms=100,
    )
    broker.create_topics([s.input_topic, s.alert_topic, s.dlq_topic], partitions=1)
    expected = 0
    for name, path in paths.items():
        args = [
            "replay",
            str(path),
            "--topic",
            s.input_topic,
            "--bootstrap-servers",
            broker.bootstrap,
            "--no-progress",
            "--max",
        ]
        if name.startswith("zeek"):
            args += ["--tenant", f"zeek-{name}"]
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0, r.output
        n = 6 if name.startswith("zeek") else len(flows)
        assert f"sent {n} events" in r.output
        expected += n

    pipeline = service.build(s)
    run_until(pipeline, expected)
    assert pipeline.stats.consumed == expected
    # Zeek records of connections that never completed leave duration/bytes unset ("-"):
    # they cannot be scored and must be dead-lettered, not dropped.
    unscorable = sum(
        1
        for name in ("zeek", "zeek-json")
        for _, rec, _ in iter_records(paths[name])
        if rec is not None and not all(f in rec for f in registry.DEFAULT_FEATURES)
    )
    dlq = read_all(broker.bootstrap, s.dlq_topic)
    assert len(dlq) == pipeline.stats.dead_letters == unscorable
    assert {dict(m.headers())["reason"] for m in dlq} <= {b"missing_feature"}
    alerts = [orjson.loads(m.value()) for m in read_all(broker.bootstrap, s.alert_topic)]
    assert len(alerts) == expected - unscorable
    per_tenant: dict[str, int] = {}
    for a in alerts:
        per_tenant[a["tenant_id"]] = per_tenant.get(a["tenant_id"], 0) + 1
    assert per_tenant["zeek-zeek"] == per_tenant["zeek-zeek-json"] == 6 - unscorable // 2
    # Four flat formats carry the same 200 flows: every flow_id is alerted four times.
    ids: dict[str, int] = {}
    for a in alerts:
        if not a["tenant_id"].startswith("zeek"):
            ids[a["event"]["flow_id"]] = ids.get(a["event"]["flow_id"], 0) + 1
    assert set(ids.values()) == {4} and len(ids) == len(flows)
    zeek = next(a for a in alerts if a["tenant_id"] == "zeek-zeek")
    assert {"bytes_transferred", "packet_count", "connection_duration", "src_ip"} <= set(
        zeek["event"]
    )


def test_replay_reports_bad_lines_and_strict_aborts(
    tmp_path: Path, broker: EmbeddedBroker, unique: str
) -> None:
    topic = f"rp-bad-{unique}"
    broker.create_topics([topic])
    src = tmp_path / "mixed.jsonl"
    src.write_bytes(b'{"tenant_id": "a", "x": 1}\n{broken\n{"tenant_id": "b", "x": 2}\n[1]\n')
    args = [
        "replay",
        str(src),
        "--topic",
        topic,
        "--bootstrap-servers",
        broker.bootstrap,
        "--no-progress",
    ]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert f"rejected {src}:2:" in r.output and f"rejected {src}:4:" in r.output
    assert "sent 2 events" in r.output
    r = CliRunner().invoke(main, [*args, "--strict"])
    assert r.exit_code == 1 and f"{src}:2" in r.output
