"""The design note's usage examples, run as a user would: train in one process,
load and detect in a fresh one (the note's own code raised NotFittedError there)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

# Real broker, registry or child processes: not part of the fast unit run.
pytestmark = pytest.mark.integration

TRAIN = textwrap.dedent(
    """
    import json, sys
    from stream import MLflowAnomalyDetector, MLModelManager
    from stream.generate import training_flows

    network_data = [
        {k: r[k] for k in ("bytes_transferred", "packet_count", "connection_duration")}
        for r in training_flows("tenant_123", 1500, seed=4)
    ]
    detector = MLflowAnomalyDetector()
    run_id = detector.train_model(network_data, tenant_id="tenant_123")
    manager = MLModelManager()
    manager.promote_model_to_production(
        model_name="isolation_forest_anomaly_detector", version="1", tenant_id="tenant_123"
    )
    metrics = manager.get_model_metrics(run_id)
    comparison = manager.compare_models([run_id])
    print(json.dumps({"run_id": run_id, "metrics": metrics,
                      "tags": comparison[run_id]["tags"]}))
    """
)

DETECT = textwrap.dedent(
    """
    import json, sys
    from stream import MLflowAnomalyDetector
    new_network_data = json.loads(sys.stdin.read())
    detector = MLflowAnomalyDetector()
    assert detector.load_model(tenant_id="tenant_123")
    results = detector.detect_anomalies(new_network_data)
    print(json.dumps({"results": results, "version": detector.version,
                      "mean": detector.scaler.mean_.tolist()}))
    """
)


def _run(code: str, env: dict[str, str], stdin: str = "") -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", code],
        input=stdin.encode(),
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def test_seed_examples_train_then_detect_in_fresh_process(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'seed.db'}",
        "MLFLOW_EXPERIMENT_NAME": "seed-api-test",
    }
    trained = _run(TRAIN, env)
    assert trained["metrics"]["training_samples"] == 1500
    assert trained["tags"]["tenant_id"] == "tenant_123"

    new = [
        {"bytes_transferred": 1024, "packet_count": 10, "connection_duration": 5.2},
        {"bytes_transferred": 2048, "packet_count": 15, "connection_duration": 3.1},
        {"bytes_transferred": 9e9, "packet_count": 90000, "connection_duration": 7200.0},
        {"bytes_transferred": 512, "packet_count": 4},  # missing duration: 0, as in the note
    ]
    out = _run(DETECT, env, json.dumps(new))
    results = out["results"]
    assert out["version"] == "1"
    assert [r["index"] for r in results] == [0, 1, 2, 3]
    assert set(results[0]) == {
        "index",
        "is_anomaly",
        "anomaly_score",
        "threat_level",
        "original_data",
    }
    assert [r["original_data"] for r in results] == new
    # The scaler travelled with the model: it was fitted on the training data, not refitted.
    assert np.all(np.array(out["mean"]) > 0)
    huge = results[2]
    assert huge["is_anomaly"] and huge["threat_level"] in ("medium", "high", "critical")
    for r in results:
        assert r["is_anomaly"] == (r["anomaly_score"] < 0)


def test_load_production_model_returns_none_for_unknown_model(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import json
        from stream import MLModelManager, MLflowAnomalyDetector
        m = MLModelManager()
        print(json.dumps({"model": m.load_production_model("nothing_here", "t1"),
                          "detector": MLflowAnomalyDetector().load_model("t1")}))
        """
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'empty.db'}"}
    assert _run(code, env) == {"model": None, "detector": False}
