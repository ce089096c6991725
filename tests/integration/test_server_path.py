"""The real server path: `stream train`, `promote`, `models` and `run` against `mlflow server`.

The server is MLflow's own tracking server with its backend store on this
machine's PostgreSQL, proxied artifact storage in a directory, and MLflow's
basic-auth app in front (``mlflow server --app-name basic-auth``). The CLI gets
its credentials only from MLflow's client variables ``MLFLOW_TRACKING_USERNAME``
and ``MLFLOW_TRACKING_PASSWORD``; the tests show they reach the server:

- without credentials, or with a wrong password, the registry answers 401;
- what `stream train` creates is owned (MANAGE) by the user named in the
  variables, as the server's own permission store reports;
- a read-only user can list models and run the consumer, and is refused (403)
  when it tries to change production.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream.generate import generate_flows, training_flows, write_jsonl
from stream.kafka.embedded import EmbeddedBroker
from tests.integration.test_ops_integration import (
    consumer_env,
    consumer_process,
    topic_names,
    value,
)
from tests.kafkautil import produce, read_all
from tests.servers import MlflowServer, postgres_available

# CI provides PostgreSQL, so there a missing database fails the tests instead of skipping them.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.server,
    pytest.mark.skipif(
        not os.environ.get("CI") and not postgres_available(),
        reason="no PostgreSQL for the MLflow server",
    ),
]

CLIENT_ENV = {
    # A refused or failing request surfaces at once instead of after minutes of retries.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
}
CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


class AuthMlflowServer(MlflowServer):
    """``MlflowServer`` with MLflow's basic-auth app in front of the tracking server."""

    def command(self) -> list[str]:
        cmd = super().command()
        at = cmd.index("server") + 1
        return [*cmd[:at], "--app-name", "basic-auth", *cmd[at:]]


@dataclass(frozen=True)
class User:
    name: str
    password: str

    def env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_USERNAME": self.name, "MLFLOW_TRACKING_PASSWORD": self.password}

    def header(self) -> str:
        return "Basic " + base64.b64encode(f"{self.name}:{self.password}".encode()).decode()


@dataclass(frozen=True)
class Registry:
    uri: str
    admin: User
    trainer: User  # creates and promotes models
    reader: User  # the consumer's account: read-only


def rest(registry: Registry, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """(status, JSON body) of an admin call to the server's REST API."""
    req = urllib.request.Request(
        registry.uri + path,
        method=method,
        data=orjson.dumps(body) if body is not None else None,
        headers={"Content-Type": "application/json", "Authorization": registry.admin.header()},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    try:
        import flask_wtf  # noqa: F401  (the basic-auth app needs it; mlflow[auth] brings it)
    except ImportError:
        pytest.fail("MLflow's basic-auth app needs Flask-WTF: install the test extras")
    workdir = tmp_path_factory.mktemp("mlflow-auth")
    config = workdir / "basic_auth.ini"
    # The users store is a small SQLite file beside the config; the tracking data (runs,
    # models) goes to PostgreSQL. The credential cache spares the PBKDF2 check on every
    # request: without it a `stream train` took ~39 s here instead of ~11 s.
    config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{workdir / 'auth.db'}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 300\n"
    )
    admin = User("admin", secrets.token_urlsafe(16))
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin.password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
    }
    with AuthMlflowServer(extra_env=env) as server:
        reg = Registry(
            server.uri,
            admin,
            User(f"trainer-{uuid.uuid4().hex[:6]}", secrets.token_urlsafe(16)),
            User(f"reader-{uuid.uuid4().hex[:6]}", secrets.token_urlsafe(16)),
        )
        for user in (reg.trainer, reg.reader):
            status, body = rest(reg, "POST", "/api/2.0/mlflow/users/create",
                                {"username": user.name, "password": user.password})
            assert status == 200, body
        yield reg


def client_env(user: User | None, **extra: str) -> dict[str, str]:
    """The environment of a CLI process: the test's own minus any inherited credentials."""
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARS}
    # Left in os.environ by other tests' in-process training (mlflow.set_*_uri).
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_REGISTRY_URI", None)
    env.update(CLIENT_ENV)
    if user is not None:
        env.update(user.env())
    env.update(extra)
    return env


def cli(args: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        env=dict(env), capture_output=True, text=True, timeout=180,
    )


def permission(registry: Registry, user: User, model: str) -> str:
    """The user's permission on a registered model, as the server's auth store has it."""
    status, body = rest(
        registry, "GET",
        f"/api/3.0/mlflow/users/permissions/get?username={user.name}"
        f"&resource_type=registered_model&resource_id={model}",
    )
    assert status == 200, body
    return str(body["permission"])


@pytest.mark.timeout(240)
def test_registry_refuses_missing_or_wrong_credentials(registry: Registry) -> None:
    anonymous = cli(["models", "--json", "--tracking-uri", registry.uri], client_env(None))
    assert anonymous.returncode != 0
    assert "401" in anonymous.stderr and "not authenticated" in anonymous.stderr

    wrong = User(registry.reader.name, "not-the-password")
    refused = cli(["models", "--json", "--tracking-uri", registry.uri], client_env(wrong))
    assert refused.returncode != 0
    assert "401" in refused.stderr

    # The same command with the right credentials in the variables succeeds.
    ok = cli(["models", "--json", "--tracking-uri", registry.uri], client_env(registry.reader))
    assert ok.returncode == 0, ok.stderr[-2000:]


@pytest.mark.timeout(400)
def test_train_promote_models_and_run_through_the_server(
    registry: Registry, broker: EmbeddedBroker, unique: str, tmp_path: Path
) -> None:
    base = f"srv_{unique}"
    tenant_model = f"{base}_acme"
    flows = tmp_path / "train.jsonl"
    write_jsonl(flows, [r for t in ("acme", "globex") for r in training_flows(t, 600, seed=4)])
    as_trainer = client_env(registry.trainer, MLFLOW_EXPERIMENT_NAME=f"srv-{unique}")
    train = ["train", "--input", str(flows), "--model-name", base, "--n-estimators", "30",
             "--json", "--tracking-uri", registry.uri]

    # -- train: the global model promoted at once; acme's registered, promoted later ------
    # Two trainers at a time, as two pipelines would; the experiment is created by whichever
    # comes first and found by the other.
    procs = [
        subprocess.Popen([sys.executable, "-m", "stream.cli", *train, "--promote"],
                         env=as_trainer, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True),
        subprocess.Popen([sys.executable, "-m", "stream.cli", *train, "--tenant", "acme",
                          "--detector", "isolation_forest"],
                         env=as_trainer, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True),
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
        # stdout is the one JSON object; MLflow's run link went to stderr.
        results.append(orjson.loads(out))
        assert "View run " in err and registry.uri in err
        # The proved scorer went up through the server with the model (registry/shipped.py).
        assert "was not shipped" not in err, err[-3000:]
    glob, acme = results
    assert (glob["model_name"], glob["version"], glob["promoted"]) == (base, "1", True)
    assert (acme["model_name"], acme["version"], acme["promoted"]) == (tenant_model, "1", False)

    # The server attributes both models to the user named in the client variables.
    assert permission(registry, registry.trainer, base) == "MANAGE"
    assert permission(registry, registry.trainer, tenant_model) == "MANAGE"
    assert permission(registry, registry.reader, tenant_model) == "READ"

    # -- promote: refused to the read-only account, done by the trainer --------------------
    promote = ["promote", "--model-name", base, "--tenant", "acme", "--version", "1",
               "--tracking-uri", registry.uri]
    denied = cli(promote, client_env(registry.reader))
    assert denied.returncode != 0
    assert "403" in denied.stderr and "Permission denied" in denied.stderr
    done = cli(promote, as_trainer)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"{tenant_model} v1 is now production"

    # -- models: what the consumer will serve, read with the read-only account -------------
    listed = cli(["models", "--json", "--tracking-uri", registry.uri],
                 client_env(registry.reader))
    assert listed.returncode == 0, listed.stderr[-2000:]
    rows = {r["name"]: r for r in map(orjson.loads, listed.stdout.splitlines())}
    assert rows[base]["production"] == "1" and rows[tenant_model]["production"] == "1"
    assert rows[tenant_model]["aliases"] == {"production": "1"}

    # -- run: the consumer polls and downloads through the server as the reader ------------
    topics = topic_names(unique)
    broker.create_topics([topics["input"]], partitions=2)
    broker.create_topics([topics["alerts"], topics["dlq"]], partitions=1)
    env = consumer_env(broker, topics, registry.uri, base)
    for var in CREDENTIAL_VARS:
        env.pop(var, None)
    env.update(CLIENT_ENV)
    env.update(registry.reader.env())
    values = [orjson.dumps(f) for f in generate_flows(3000, ("acme", "globex"), seed=21,
                                                      attack_rate=0.05)]
    with consumer_process(env, tmp_path) as proc:
        proc.wait_for("readiness", lambda: proc.get("/readyz") == (200, "ready\n"), 120)
        produce(broker.bootstrap, topics["input"], values)
        proc.wait_for(
            "every event consumed",
            lambda: proc.sample("stream_events_consumed_total") == len(values),
            120,
        )
        samples = proc.scrape()
        assert proc.stop() == 0, proc.log_tail()

    alerts = [orjson.loads(m.value()) for m in read_all(broker.bootstrap, topics["alerts"])]
    assert alerts
    served_by = Counter((a["tenant_id"], a["model"]["name"], a["model"]["version"])
                        for a in alerts)
    assert {(t, m, v) for t, m, v in served_by} <= {
        ("acme", tenant_model, "1"), ("globex", base, "1")
    }
    assert {t for t, _, _ in served_by} == {"acme", "globex"}
    assert value(samples, "stream_events_scored_total") == len(values)
    for model in (base, tenant_model):
        assert value(samples, "stream_model_version", model=model) == 1
        assert value(samples, "stream_model_reload_failures_total", model=model) == 0
    assert read_all(broker.bootstrap, topics["dlq"]) == []
    # No refusal by the server (as a status code, not inside a port number).
    assert not re.search(r"(?<![\d:])40[13](?!\d)", proc.stderr_text())
    # acme's forest served from the scorer its trainer shipped through the server, the
    # global ensemble (the default detector) with its forest walked by the compiled scorer;
    # each proved here.
    err = proc.stderr_text()
    assert err.count("its trainer shipped") == 1, proc.log_tail()
    assert err.count("forest walked by the compiled scorer proved identical") == 1, err



