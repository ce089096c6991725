"""Static checks of the deployment files: compose, Dockerfiles, Prometheus, Grafana, topic init.

Nothing here needs a Docker engine: files are validated with the compose-spec schema
and hadolint, and cross-checked against the code (metric names, settings, ports).
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from stream import config
from stream.ops.metrics import HealthServer, Metrics

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
MLFLOW_DOCKERFILE = ROOT / "deploy" / "mlflow" / "Dockerfile"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "stream.json"
TOPICS_SCRIPT = ROOT / "deploy" / "kafka" / "create-topics.sh"
METRICS_PORT = 9108

# Prometheus' own per-target series, not exported by the consumer.
PROMETHEUS_SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def venv_tool(name: str) -> str:
    """A console script installed next to the running interpreter (the project venv)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; it comes with the project's test extras")
    return found


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, **kwargs)


def offline_env() -> dict[str, str]:
    # An unroutable proxy makes any attempt to fetch a schema fail loudly, proving the
    # check uses the schema vendored in the package.
    env = dict(os.environ)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env[var] = "http://127.0.0.1:9"
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    return env


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    with COMPOSE.open() as f:
        return yaml.safe_load(f)


# --- (a) compose file ---------------------------------------------------------------


def test_compose_validates_against_compose_spec_offline() -> None:
    result = run(
        [venv_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        env=offline_env(),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok" in result.stdout


def test_compose_schema_check_rejects_a_broken_file(tmp_path: Path) -> None:
    # Guards against the validator silently passing everything.
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  x:\n    image: busybox\n    depends_on: {y: {condition: maybe}}\n")
    result = run(
        [venv_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(bad)],
        env=offline_env(),
    )
    assert result.returncode != 0


def test_compose_long_running_services_have_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    one_shot = {name for name, svc in services.items() if svc.get("restart") == "no"}
    assert one_shot == {"kafka-init"}
    for name, svc in services.items():
        if name not in one_shot:
            assert "healthcheck" in svc, f"{name} has no healthcheck"
            assert svc["healthcheck"]["test"], name


def test_compose_start_order_uses_conditions(compose: dict[str, Any]) -> None:
    services = compose["services"]
    conditions: dict[tuple[str, str], str] = {}
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on must use conditions"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            conditions[(name, dep)] = spec["condition"]
    assert conditions[("kafka-init", "kafka")] == "service_healthy"
    assert conditions[("stream", "kafka-init")] == "service_completed_successfully"
    assert conditions[("stream", "mlflow")] == "service_healthy"
    assert conditions[("mlflow", "postgres")] == "service_healthy"
    assert conditions[("grafana", "prometheus")] == "service_healthy"


def test_compose_images_are_pinned(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        if "build" in svc:
            continue
        image = svc["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: {image} is not pinned"
        assert re.search(r"\d+\.\d+", tag), f"{name}: {image} is not a version tag"
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka:")
    assert compose["services"]["postgres"]["image"].startswith("postgres:")


def test_compose_bind_mounts_exist(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
        build = svc.get("build")
        if build:
            context = ROOT / build["context"]
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name


def test_compose_kafka_is_kraft_and_mlflow_uses_postgres(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]["environment"]
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "ZOOKEEPER" not in " ".join(kafka)
    mlflow = compose["services"]["mlflow"]
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://")
    assert "--serve-artifacts" in mlflow["command"]
    assert any(arg.startswith("--artifacts-destination=") for arg in mlflow["command"])
    assert any(v.endswith(":/mlartifacts") for v in mlflow["volumes"])
    assert "mlflow:5000" in mlflow["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")


# --- (b) Dockerfiles ----------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", [DOCKERFILE, MLFLOW_DOCKERFILE], ids=lambda p: p.parent.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    result = run([venv_tool("hadolint"), "--no-color", str(dockerfile)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_flags_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    result = run([venv_tool("hadolint"), "--no-color", str(bad)])
    assert result.returncode != 0
    assert "DL3007" in result.stdout


def test_dockerfile_contract() -> None:
    text = DOCKERFILE.read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2, "multi-stage build expected"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm$", text, re.M)
    assert "COPY --from=builder /opt/venv /opt/venv" in text
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    assert re.search(rf"^EXPOSE {METRICS_PORT}$", text, re.M)
    assert re.search(r'^ENTRYPOINT \["stream"\]$', text, re.M)
    assert re.search(r'^CMD \["run"\]$', text, re.M)
    healthcheck = text[text.index("HEALTHCHECK"):]
    assert "urllib.request" in healthcheck.split("\n\n")[0]
    assert "/healthz" in healthcheck.split("\n\n")[0]


def test_dockerignore_keeps_what_the_build_copies() -> None:
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "allow-list expected"
    copied: list[str] = []
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            copied.extend(line.split()[1:-1])
    assert copied
    for source in copied:
        assert f"!{source.rstrip('/')}" in patterns, f"{source} is excluded from the context"
        assert (ROOT / source).exists() or source == "README.md", source


# --- (c) Grafana dashboard and alert rules vs the exported metrics -------------------

PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (functions, labels, keywords removed)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\w+", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end():].lstrip().startswith("("):
            continue
        if match.group().lower() in PROMQL_KEYWORDS:
            continue
        names.add(match.group())
    return names


def test_promql_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, tenant) (rate(stream_batch_seconds_bucket'
        '{job="stream", le!="1e9"}[$__rate_interval]))) / on (x) group_left '
        "sum without (a) (up offset 5m) > 1e3 and time() - stream_x > bool 0"
    )
    assert promql_metric_names(expr) == {"stream_batch_seconds_bucket", "up", "stream_x"}


def exercise_all(m: Metrics) -> None:
    """Call every public Metrics method once; fails if a new method is not listed here."""
    calls = {
        "tenant_label": lambda: m.tenant_label("acme"),
        "model_label": lambda: m.model_label("detector_acme"),
        "record_batch": lambda: m.record_batch(consumed=100, scored=98, seconds=0.05),
        "record_alerts": lambda: m.record_alerts({("acme", "high"): 2, ("acme", "critical"): 1}),
        "record_dead_letters": lambda: m.record_dead_letters({"invalid_json": 2}),
        "record_suppressed": lambda: m.record_suppressed({"nightly-backup": 3}),
        "record_deduplicated": lambda: m.record_deduplicated(4),
        "observe_event_age": lambda: m.observe_event_age(np.array([0.2, 1.5, 30.0])),
        "set_lag": lambda: m.set_lag("flows", 0, 12),
        "remove_lag": lambda: (m.set_lag("flows", 1, 1), m.remove_lag("flows", 1)),
        "set_model": lambda: m.set_model("detector_acme", "7"),
        "remove_model": lambda: (m.set_model("detector_old", "1"), m.remove_model("detector_old")),
        "record_reload": lambda: m.record_reload("detector_acme", ok=True, seconds=0.8),
        "record_shadow": lambda: m.record_shadow("acme", 0.96, 0.01),
        "record_delivery_failures": lambda: m.record_delivery_failures(1),
        "record_stalled": lambda: m.record_stalled(2.5),
        "record_ready": lambda: m.record_ready(True),
        "record_tenants": lambda: m.record_tenants({"acme": 98, "_invalid": 2},
                                                   {("acme", "missing_feature"): 1}),
        "record_drift": lambda: m.record_drift("acme", {"score": 0.31, "log_bytes": 0.05}, 0.01),
        "record_state": lambda: m.record_state(
            entities=10, nbytes=2000, evicted_ttl=1, evicted_cap=2, late=3
        ),
    }
    public = {
        name for name, _ in inspect.getmembers(Metrics, inspect.isfunction)
        if not name.startswith("_")
    }
    assert public == set(calls), f"exercise_all is missing {public - set(calls)}"
    for call in calls.values():
        call()


@pytest.fixture(scope="module")
def scraped_names() -> set[str]:
    """Sample names of a real HTTP scrape after every Metrics method ran once."""
    m = Metrics()
    exercise_all(m)
    with HealthServer(0, m, host="127.0.0.1") as server:
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = resp.read().decode()
    return {s.name for fam in text_string_to_metric_families(body) for s in fam.samples}


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    exprs.extend(a["expr"] for a in dashboard.get("annotations", {}).get("list", []) if "expr" in a)
    return exprs


def test_dashboard_metrics_exist_in_a_real_scrape(scraped_names: set[str]) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = dashboard_exprs(dashboard)
    assert len(exprs) >= 10
    used: set[str] = set()
    for expr in exprs:
        names = promql_metric_names(expr)
        assert names, f"no metric in {expr!r}"
        unknown = names - scraped_names - PROMETHEUS_SYNTHETIC
        assert not unknown, f"{expr!r} uses metrics the consumer does not export: {unknown}"
        used |= names
    # The panels the stack promises: throughput, lag, alerts, models, dead letters, latency.
    for required in (
        "stream_events_consumed_total", "stream_consumer_lag", "stream_alerts_total",
        "stream_model_version", "stream_model_reloads_total",
        "stream_model_reload_failures_total", "stream_dead_letters_total",
        "stream_batch_seconds_bucket",
    ):
        assert required in used, f"dashboard does not show {required}"
    by_label = " ".join(exprs)
    assert "sum by (level)" in by_label and "sum by (tenant)" in by_label
    assert "sum by (reason)" in by_label


def test_dashboard_uses_the_provisioned_datasource() -> None:
    datasources = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    uids = {d["uid"] for d in datasources if d["type"] == "prometheus"}
    dashboard = json.loads(DASHBOARD.read_text())
    ids = set()
    for panel in dashboard["panels"]:
        ids.add(panel["id"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] in uids, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in uids, panel["title"]
    assert len(ids) == len(dashboard["panels"]), "panel ids must be unique"


def test_grafana_provisioning_matches_compose_mounts(compose: dict[str, Any]) -> None:
    providers = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "stream.yml").read_text()
    )["providers"]
    mounts = dict(v.split(":")[:2] for v in compose["services"]["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == providers[0]["options"]["path"]
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    url = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]["url"]
    assert url == "http://prometheus:9090" and "prometheus" in compose["services"]


def test_alert_rules_use_exported_metrics(scraped_names: set[str]) -> None:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert exprs
    for expr in exprs:
        unknown = promql_metric_names(expr) - scraped_names - PROMETHEUS_SYNTHETIC
        assert not unknown, f"{expr!r} uses unknown metrics {unknown}"


# --- (d) consumer environment ---------------------------------------------------------


def test_compose_stream_env_is_declared_in_settings(compose: dict[str, Any]) -> None:
    env = compose["services"]["stream"]["environment"]
    names = set(env) if isinstance(env, dict) else {e.split("=", 1)[0] for e in env}
    known = config.env_vars()
    unknown = {n for n in names if n not in known and not n.startswith("MLFLOW_")}
    assert not unknown, f"stream service sets variables the consumer never reads: {unknown}"
    assert {"KAFKA_BOOTSTRAP_SERVERS", "MLFLOW_TRACKING_URI", "STREAM_INPUT_TOPIC"} <= names
    # The init job must create the very topics the consumer uses.
    init_env = compose["services"]["kafka-init"]["environment"]
    for topic_var in ("STREAM_INPUT_TOPIC", "STREAM_ALERT_TOPIC", "STREAM_DLQ_TOPIC"):
        assert init_env[topic_var] == env[topic_var]


def test_compose_stream_serves_metrics_and_health_on_one_port(compose: dict[str, Any]) -> None:
    svc = compose["services"]["stream"]
    command = svc["command"]
    assert command[0] == "run"
    assert command[command.index("--metrics-port") + 1] == str(METRICS_PORT)
    probe = " ".join(svc["healthcheck"]["test"])
    assert f"127.0.0.1:{METRICS_PORT}/healthz" in probe


# --- (e) Prometheus -------------------------------------------------------------------


def test_prometheus_config_targets_the_consumer(compose: dict[str, Any]) -> None:
    prom = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    job = jobs["stream"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    ports = {sd["port"] for sd in job.get("dns_sd_configs", []) if "stream" in sd["names"]}
    ports |= {
        int(t.rsplit(":", 1)[1]) for sc in job.get("static_configs", [])
        for t in sc["targets"] if t.startswith("stream:")
    }
    assert ports == {METRICS_PORT}
    # Rule files must be inside the directory compose mounts into the container.
    mounts = dict(v.split(":")[:2] for v in compose["services"]["prometheus"]["volumes"])
    mounted_at = mounts["./deploy/prometheus"]
    for rule_file in prom["rule_files"]:
        assert rule_file.startswith(mounted_at + "/")
        assert (PROMETHEUS_DIR / rule_file.removeprefix(mounted_at + "/")).is_file()


# --- topic creation script -------------------------------------------------------------

STUB = """#!/usr/bin/env bash
echo "$*" >> "$STUB_LOG"
if [[ " $* " == *" --describe "* ]]; then
    printf 'Topic: t\\tTopicId: x\\tPartitionCount: %s\\tReplicationFactor: 1\\tConfigs: \\n' \\
        "$STUB_CURRENT"
    printf '\\tTopic: t\\tPartition: 0\\tLeader: 1\\n'
fi
"""


def run_topics_script(
    tmp_path: Path, **env: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    stub = tmp_path / "kafka-topics.sh"
    stub.write_text(STUB)
    stub.chmod(0o755)
    log = tmp_path / "calls.log"
    full_env = {"PATH": os.environ["PATH"], "KAFKA_BIN": str(tmp_path), "STUB_LOG": str(log)}
    full_env.update(env)
    result = run(["bash", str(TOPICS_SCRIPT)], env=full_env)
    calls = log.read_text().splitlines() if log.exists() else []
    return result, calls


def test_topic_script_creates_topics_and_grows_partitions(tmp_path: Path) -> None:
    result, calls = run_topics_script(
        tmp_path, STUB_CURRENT="3", FLOWS_PARTITIONS="6", ALERTS_PARTITIONS="3",
        DLQ_PARTITIONS="1", KAFKA_BOOTSTRAP_SERVERS="kafka:9092",
    )
    assert result.returncode == 0, result.stderr
    creates = [c for c in calls if "--create" in c]
    assert len(creates) == 3
    assert all("--bootstrap-server kafka:9092" in c and "--if-not-exists" in c for c in creates)
    assert "--topic flows --partitions 6" in creates[0]
    assert "--topic alerts --partitions 3" in creates[1]
    assert "--topic flows.dlq --partitions 1" in creates[2]
    assert "retention.ms=" in creates[2]
    alters = [c for c in calls if "--alter" in c]
    assert alters == ["--bootstrap-server kafka:9092 --alter --topic flows --partitions 6"]
    # Kafka cannot shrink a topic: say so rather than fail the stack.
    assert "flows.dlq has 3 partitions" in result.stderr


def test_topic_script_uses_configured_names_and_shadow_topic(tmp_path: Path) -> None:
    result, calls = run_topics_script(
        tmp_path, STUB_CURRENT="1", STREAM_INPUT_TOPIC="in", STREAM_ALERT_TOPIC="out",
        STREAM_DLQ_TOPIC="in.dlq", STREAM_SHADOW_TOPIC="shadow",
        FLOWS_PARTITIONS="1", ALERTS_PARTITIONS="1", DLQ_PARTITIONS="1",
    )
    assert result.returncode == 0, result.stderr
    created = [c.split("--topic ")[1].split()[0] for c in calls if "--create" in c]
    assert created == ["in", "out", "in.dlq", "shadow"]
    assert not [c for c in calls if "--alter" in c]


def test_topic_script_fails_when_partition_count_is_unreadable(tmp_path: Path) -> None:
    result, _ = run_topics_script(tmp_path, STUB_CURRENT="")
    assert result.returncode != 0
    assert "cannot read the partition count" in result.stderr
