"""Feature specs end to end: trained by the CLI, stored with the model, served by the stream.

On the real embedded broker and a real MLflow registry (SQLite): a model with log
features trained by ``stream train --feature`` scores in the consumer exactly as
sklearn scores the same transform applied by hand; ``stream score`` on the same
events gives the same scores as the consumer; an expression that is not finite
for an event dead-letters that event; a spec error names the feature and the
position; other detectors train and serve.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from stream import registry
from stream.cli import main
from stream.config import Settings
from stream.consumer import service
from stream.generate import generate_flows, training_flows, write_jsonl
from stream.kafka.embedded import EmbeddedBroker
from tests.kafkautil import produce, read_all, run_until

pytestmark = pytest.mark.integration

LOG_FEATURES = [
    "lb=log1p(bytes_transferred)",
    "lp=log1p(packet_count)",
    "ld=log(connection_duration + 0.1)",
]


def by_hand(event: dict[str, Any]) -> list[float]:
    """The spec above, written out in plain Python."""
    return [
        math.log1p(event["bytes_transferred"]),
        math.log1p(event["packet_count"]),
        math.log(event["connection_duration"] + 0.1),
    ]


def _train(tmp_path: Path, uri: str, base: str, *extra: str) -> dict[str, Any]:
    data = tmp_path / "train.jsonl"
    write_jsonl(data, training_flows("acme", 2000, seed=3))
    r = CliRunner().invoke(
        main,
        ["train", "--input", str(data), "--tenant", "acme", "--model-name", base,
         "--tracking-uri", uri, "--promote", "--json", *extra],
    )
    assert r.exit_code == 0, r.output
    return orjson.loads(r.stdout.strip().splitlines()[-1])


def test_cli_log_features_serve_in_the_stream_and_match_sklearn_and_stream_score(
    broker: EmbeddedBroker, tracking_uri: str, unique: str, tmp_path: Path
) -> None:
    base = "feat_" + os.urandom(3).hex()
    trained = _train(tmp_path, tracking_uri, base, "--detector", "isolation_forest",
                     *[a for f in LOG_FEATURES for a in ("--feature", f)])
    assert trained["features"] == ["lb", "lp", "ld"]
    r = CliRunner().invoke(main, ["describe", "--tenant", "acme", "--model-name", base,
                                  "--tracking-uri", tracking_uri])
    assert r.exit_code == 0, r.output
    for text in ("IsolationForest", "lb  log1p(bytes_transferred)",
                 "ld  log(connection_duration + 0.1)", f"{base}_acme v{trained['version']}"):
        assert text in r.output, (text, r.output)
    # The global model (plain features) serves nobody here but must exist for fallback.
    registry.train(training_flows("x", 500, seed=1), model_name=base, uri=tracking_uri,
                   do_promote=True)

    flows = list(generate_flows(3000, ("acme",), seed=21, attack_rate=0.05))
    # log(-0.1 + 0.1) = log(0) = -inf: not finite, so a dead letter, never a crash.
    broken = {**flows[0], "flow_id": "broken", "connection_duration": -0.1}
    events = [*flows, broken]
    values = [orjson.dumps(f) for f in events]
    s = Settings(
        bootstrap_servers=broker.bootstrap, input_topic=f"flows-{unique}",
        alert_topic=f"alerts-{unique}", dlq_topic=f"dlq-{unique}", group_id=f"g-{unique}",
        tracking_uri=tracking_uri, model_name=base, session_timeout_ms=6000,
        batch_size=1000, batch_max_wait_ms=100, min_level="low",
    )
    broker.create_topics([s.input_topic], partitions=2)
    broker.create_topics([s.alert_topic, s.dlq_topic], partitions=1)
    n = produce(broker.bootstrap, s.input_topic, values)
    pipeline = service.build(s)
    run_until(pipeline, n)
    assert pipeline.stats.consumed == n

    alerts = [orjson.loads(m.value()) for m in read_all(broker.bootstrap, s.alert_topic)]
    dlq = read_all(broker.bootstrap, s.dlq_topic)
    assert len(alerts) == len(flows) and len(dlq) == 1
    headers = {k: v.decode() for k, v in dlq[0].headers()}
    assert headers["reason"] == "non_finite_feature" and "'ld'" in headers["detail"]
    assert orjson.loads(dlq[0].value())["flow_id"] == "broken"

    # The consumer's scores are sklearn's on the transform applied by hand.
    model = registry.load_version(f"{base}_acme", trained["version"], uri=tracking_uri)
    X = np.array([by_hand(a["event"]) for a in alerts])
    got = np.array([a["anomaly_score"] for a in alerts])
    np.testing.assert_allclose(got, model.estimator.decision_function(X), rtol=0, atol=1e-9)
    assert {a["model"]["name"] for a in alerts} == {f"{base}_acme"}

    # `stream score` on the same events: the same scores as the stream, event by event.
    path = tmp_path / "events.jsonl"
    write_jsonl(path, events)
    out, dead = tmp_path / "alerts.jsonl", tmp_path / "dead.jsonl"
    r = CliRunner().invoke(main, ["score", str(path), "-o", str(out), "--min-level", "low",
                                  "--dead-letters", str(dead), "--model-name", base,
                                  "--tracking-uri", tracking_uri])
    assert r.exit_code == 0, r.output
    offline = {a["event"]["flow_id"]: a["anomaly_score"]
               for a in map(orjson.loads, out.read_bytes().splitlines())}
    stream = {a["event"]["flow_id"]: a["anomaly_score"] for a in alerts}
    assert offline.keys() == stream.keys()
    diff = max(abs(offline[k] - stream[k]) for k in stream)
    print(f"\nstream vs stream score: {len(stream)} events, max |score diff| {diff:.3g}")
    assert diff <= 1e-9
    (d,) = map(orjson.loads, dead.read_bytes().splitlines())
    assert d["reason"] == "non_finite_feature"


def test_spec_errors_exit_2_and_name_the_feature_and_position(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    write_jsonl(data, training_flows("acme", 50, seed=3))
    uri = f"sqlite:///{tmp_path / 'r.db'}"
    cases = [
        (["--feature", "ld=lgo(connection_duration)"], ["'ld'", "position 1", "lgo"]),
        (["--feature", "lb=log1p(bytes_transferred"], ["'lb'", "position"]),
        (["--feature", "x=fill(no_such_field, 0)"], ["'x'", "no_such_field"]),
    ]
    for args, words in cases:
        r = CliRunner().invoke(main, ["train", "--input", str(data), "--tracking-uri", uri,
                                      "--min-records", "10", *args])
        assert r.exit_code == 2, (args, r.output)
        assert "Traceback" not in r.output
        for w in words:
            assert w in r.output, (args, w, r.output)


@pytest.mark.parametrize("detector", ["lof", "ocsvm", "elliptic"])
def test_other_detectors_train_and_score(
    detector: str, tracking_uri: str, tmp_path: Path
) -> None:
    base = f"det_{detector}_" + os.urandom(3).hex()
    trained = _train(tmp_path, tracking_uri, base, "--detector", detector,
                     "--feature", "lb=log1p(bytes_transferred)",
                     "--feature", "lp=log1p(packet_count)")
    assert trained["detector"] == detector
    flows = list(generate_flows(500, ("acme",), seed=4, attack_rate=0.1))
    path, out = tmp_path / "e.jsonl", tmp_path / "a.jsonl"
    write_jsonl(path, flows)
    registry.train(training_flows("x", 300, seed=1), model_name=base, uri=tracking_uri,
                   do_promote=True)
    r = CliRunner().invoke(main, ["score", str(path), "-o", str(out), "--min-level", "low",
                                  "--model-name", base, "--tracking-uri", tracking_uri])
    assert r.exit_code == 0, r.output
    alerts = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert len(alerts) == len(flows)
    model = registry.load_version(f"{base}_acme", trained["version"], uri=tracking_uri)
    assert type(model.estimator[-1]).__name__ == {
        "lof": "LocalOutlierFactor", "ocsvm": "OneClassSVM", "elliptic": "EllipticEnvelope"
    }[detector]
    X = np.array([[math.log1p(a["event"]["bytes_transferred"]),
                   math.log1p(a["event"]["packet_count"])] for a in alerts])
    np.testing.assert_allclose([a["anomaly_score"] for a in alerts],
                               model.estimator.decision_function(X), rtol=0, atol=1e-9)
    # Calibrated by default (IsolationForest's fixed cut-offs mean nothing on its scale):
    # about 2% of training traffic is medium or above.
    assert trained["metrics"]["training_rate_medium_or_above"] == pytest.approx(0.02, abs=0.01)
