"""A real MLflow tracking server (PostgreSQL backend) survives a stop/start with its models.

Exercises the path the consumer depends on: log and register an IsolationForest
pipeline over HTTP, promote it with the `production` alias, load it by alias, see a
registry call fail fast while the server is down, and find the model again after the
server comes back on the same port.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from tests.servers import MlflowServer, postgres_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.server,
    pytest.mark.skipif(not postgres_available(), reason="no PostgreSQL for the MLflow server"),
]

# MLflow's client retries a refused connection 7 times with exponential backoff by
# default (minutes). A streaming consumer must instead notice the outage at once and
# keep scoring with the models it already holds.
FAIL_FAST_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    # Bounds a server that accepts the connection but never answers (seconds, int).
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowServer]:
    import mlflow

    # set_tracking_uri also writes MLFLOW_TRACKING_URI into os.environ; monkeypatch
    # restores whatever the environment had once the test is over.
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    with MlflowServer() as srv:
        # Both: an earlier test may have left a process-wide registry URI behind.
        mlflow.set_tracking_uri(srv.uri)
        mlflow.set_registry_uri(srv.uri)
        try:
            yield srv
        finally:
            mlflow.set_tracking_uri(None)
            mlflow.set_registry_uri(None)


def _pipeline(seed: int = 0):  # -> sklearn Pipeline; sklearn is imported lazily
    from sklearn.ensemble import IsolationForest
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.random.default_rng(seed).normal(size=(256, 3))
    pipe = Pipeline(
        [
            ("scale", StandardScaler()),
            ("iforest", IsolationForest(n_estimators=20, random_state=seed)),
        ]
    )
    return pipe.fit(x), x


def test_model_survives_server_restart(
    server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    import mlflow.sklearn
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    timings: dict[str, float] = {"first start": server.startup_seconds[0]}
    name = f"stream_tenant_{uuid.uuid4().hex[:8]}"
    pipe, x = _pipeline()
    client = MlflowClient()

    mlflow.set_experiment(f"test-{uuid.uuid4().hex[:8]}")
    t0 = time.monotonic()
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            pipe,
            name="model",
            registered_model_name=name,
            # skops refuses the fitted trees unless their type is trusted explicitly.
            skops_trusted_types=["sklearn.tree._tree.Tree"],
        )
    timings["log_model + register"] = time.monotonic() - t0
    # The HTTP store returns versions as strings, the SQL store as ints: compare as str.
    assert str(info.registered_model_version) == "1"
    client.set_registered_model_alias(name, "production", "1")

    loaded = mlflow.sklearn.load_model(f"models:/{name}@production")
    np.testing.assert_allclose(loaded.decision_function(x), pipe.decision_function(x))

    # -- the registry goes away ----------------------------------------------------------
    server.stop()
    assert not server.running
    for key, value in FAIL_FAST_ENV.items():
        monkeypatch.setenv(key, value)  # read by MLflow on every request
    t0 = time.monotonic()
    with pytest.raises(MlflowException, match="API request to"):
        client.get_model_version_by_alias(name, "production")
    timings["failing call (fail-fast env)"] = time.monotonic() - t0
    assert timings["failing call (fail-fast env)"] < 2.0

    # -- ... and comes back on the same port, with the same database and artifacts --------
    timings["restart"] = server.start()
    # The first call after the restart must succeed even with retries off: a pooled
    # keep-alive connection to the dead server must not surface as an error.
    mv = client.get_model_version_by_alias(name, "production")
    assert str(mv.version) == "1"
    reloaded = mlflow.sklearn.load_model(f"models:/{name}@production")
    np.testing.assert_allclose(reloaded.decision_function(x), pipe.decision_function(x))

    print("\nMLflow server timings (s):", {k: round(v, 3) for k, v in timings.items()})
