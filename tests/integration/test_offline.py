"""`stream score`, `stream evaluate` (no broker) and `stream alerts` (the subscriber's view)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from stream import registry
from stream.cli import main
from stream.generate import generate_flows, training_flows, write_jsonl
from stream.kafka.embedded import EmbeddedBroker
from tests.kafkautil import produce

# Real broker, registry or child processes: not part of the fast unit run.
pytestmark = pytest.mark.integration

TENANTS = ("acme", "globex", "initech")


@pytest.fixture(scope="module")
def base(tracking_uri: str) -> str:
    name = "offline_" + os.urandom(3).hex()
    mixed = [r for t in TENANTS for r in training_flows(t, 1500, seed=1)]
    registry.train(
        mixed, model_name=name, uri=tracking_uri, calibrate=(0.005, 0.01, 0.03), do_promote=True
    )
    registry.train(
        training_flows("acme", 1500, seed=2),
        tenant="acme",
        model_name=name,
        uri=tracking_uri,
        calibrate=(0.005, 0.01, 0.03),
        do_promote=True,
    )
    return name


def _lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines() if x.strip()]


def test_score_file_matches_models_and_reports_bad_lines(
    tmp_path: Path, tracking_uri: str, base: str
) -> None:
    flows = list(generate_flows(2000, TENANTS, seed=3))
    src = tmp_path / "flows.jsonl"
    write_jsonl(src, flows)
    with src.open("ab") as fh:  # one unreadable line, one record that decodes but cannot score
        fh.write(b"{broken\n")
        fh.write(b'{"tenant_id": "acme", "bytes_transferred": "many"}\n')
    out, dlq = tmp_path / "alerts.jsonl", tmp_path / "dlq.jsonl"
    r = CliRunner().invoke(
        main,
        [
            "score",
            str(src),
            "-o",
            str(out),
            "--min-level",
            "low",
            "--dead-letters",
            str(dlq),
            "--model-name",
            base,
            "--tracking-uri",
            tracking_uri,
        ],
    )
    assert r.exit_code == 0, r.output
    alerts = _lines(out)
    assert len(alerts) == 2000
    assert [d["reason"] for d in _lines(dlq)] == ["non_numeric_feature"]
    # The same fields as the dead-letter topic's headers, then the original record.
    (dead,) = _lines(dlq)
    assert set(dead) == {"reason", "detail", "source.topic", "source.partition",
                         "source.offset", "key", "value"}
    assert (dead["source.topic"], dead["source.partition"], dead["source.offset"]) == (
        "flows.jsonl", "0", "2002")
    assert "bytes_transferred" in dead["detail"]
    assert orjson.loads(dead["value"])["bytes_transferred"] == "many"
    assert "unreadable lines 1" in r.output
    assert {a["model"]["name"] for a in alerts if a["tenant_id"] == "acme"} == {f"{base}_acme"}
    assert {a["model"]["name"] for a in alerts if a["tenant_id"] != "acme"} == {base}
    assert all(a["source"]["topic"] == "flows.jsonl" for a in alerts)
    # Scores are the registered model's own.
    m = registry.load_version(f"{base}_acme", "1", uri=tracking_uri)
    acme = [a for a in alerts if a["tenant_id"] == "acme"]
    X = np.array([[a["event"][f] for f in m.features] for a in acme])
    np.testing.assert_allclose(
        [a["anomaly_score"] for a in acme], m.estimator.decision_function(X), atol=1e-9, rtol=0
    )

    r = CliRunner().invoke(
        main,
        [
            "score",
            str(src),
            "-o",
            str(out),
            "--min-level",
            "high",
            "--model-name",
            base,
            "--tracking-uri",
            tracking_uri,
        ],
    )
    assert r.exit_code == 0, r.output
    high = _lines(out)
    assert {a["threat_level"] for a in high} <= {"high", "critical"}
    assert len(high) == sum(a["threat_level"] in ("high", "critical") for a in alerts)


def _evaluate_json(path: Path, base: str, tracking_uri: str) -> dict[str, Any]:
    """``stream evaluate PATH --label-field label --json``: its report."""
    r = CliRunner().invoke(
        main,
        ["evaluate", str(path), "--label-field", "label", "--json", "--model-name", base,
         "--tracking-uri", tracking_uri],
    )
    assert r.exit_code == 0, r.output
    return orjson.loads(r.stdout.strip().splitlines()[-1])


def test_evaluate_reports_per_tenant_and_overall(
    tmp_path: Path, tracking_uri: str, base: str
) -> None:
    src = tmp_path / "labelled.jsonl"
    write_jsonl(src, generate_flows(6000, TENANTS, seed=8, attack_rate=0.05))
    result = _evaluate_json(src, base, tracking_uri)
    overall = result["overall"]
    assert overall["n"] == overall["scored"] == 6000
    assert overall["positives"] == pytest.approx(300, abs=60)
    assert set(result["tenants"]) == set(TENANTS)
    assert sum(t["n"] for t in result["tenants"].values()) == 6000
    assert sum(t["positives"] for t in result["tenants"].values()) == overall["positives"]
    for lv in ("medium", "high", "critical"):
        assert set(overall["at_level"][lv]) >= {"precision", "recall", "predicted"}
    # Recall can only fall as the level rises.
    rec = [overall["at_level"][lv]["recall"] for lv in ("medium", "high", "critical")]
    assert rec[0] >= rec[1] >= rec[2]

    # A tenant scored by its own model: attacks are injected to be anomalous for it.
    own = tmp_path / "acme.jsonl"
    write_jsonl(own, generate_flows(4000, ("acme",), seed=9, attack_rate=0.08))
    acme = _evaluate_json(own, base, tracking_uri)["tenants"]["acme"]
    print("acme own-model evaluation:", acme)
    assert acme["roc_auc"] > 0.7
    r = CliRunner().invoke(
        main,
        [
            "evaluate",
            str(src),
            "--label-field",
            "label",
            "--model-name",
            base,
            "--tracking-uri",
            tracking_uri,
        ],
    )
    assert r.exit_code == 0 and "overall" in r.output


def test_alerts_command_prints_exactly_the_matching_alerts(
    broker: EmbeddedBroker, unique: str
) -> None:
    topic = f"alerts-{unique}"
    broker.create_topics([topic], partitions=2)
    levels = ["low", "medium", "high", "critical"]
    sent = [
        {
            "alert_id": f"flows/0/{i}",
            "tenant_id": TENANTS[i % 3],
            "threat_level": levels[i % 4],
            "anomaly_score": -0.1 * (i % 4),
            "model": {"name": "m", "version": "1"},
            "event": {"src_ip": "10.0.0.1", "dst_ip": "10.0.0.2"},
        }
        for i in range(60)
    ]
    produce(broker.bootstrap, topic, (orjson.dumps(a) for a in sent))
    r = CliRunner().invoke(
        main,
        [
            "alerts",
            "--topic",
            topic,
            "--bootstrap-servers",
            broker.bootstrap,
            "--from-beginning",
            "--json",
            "--tenant",
            "acme",
            "--min-level",
            "high",
        ],
    )
    assert r.exit_code == 0, r.output
    got = [orjson.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    want = [
        a for a in sent if a["tenant_id"] == "acme" and a["threat_level"] in ("high", "critical")
    ]
    assert sorted(a["alert_id"] for a in got) == sorted(a["alert_id"] for a in want)
    assert len(got) == len(want) > 0

    r = CliRunner().invoke(
        main,
        ["alerts", "--topic", topic, "--bootstrap-servers", broker.bootstrap, "--from-beginning"],
    )
    assert r.exit_code == 0, r.output
    assert "60 alerts" in r.stdout
    # No flags at all: it reads to the end (of what is new) and exits, as documented.
    t0 = time.monotonic()
    r = CliRunner().invoke(main, ["alerts", "--topic", topic, "--bootstrap-servers",
                                  broker.bootstrap])
    assert r.exit_code == 0 and time.monotonic() - t0 < 15, r.output
    # --follow reads until told to stop: SIGTERM and SIGINT end it at once, cleanly.
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "alerts", "--topic", topic,
             "--bootstrap-servers", broker.bootstrap, "--follow", "--from-beginning", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None
        first = proc.stdout.readline()  # it is reading
        assert first.startswith(b"{"), first
        t0 = time.monotonic()
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=10)
        took = time.monotonic() - t0
        assert proc.returncode == 0 and took < 2, (sig, proc.returncode, took, err[-800:])
        assert b"Traceback" not in err
    r = CliRunner().invoke(
        main,
        ["alerts", "--topic", "no-such-topic-" + unique, "--bootstrap-servers", broker.bootstrap],
    )
    assert r.exit_code == 1 and "does not exist" in r.output
