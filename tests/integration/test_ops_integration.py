"""Operations end to end: the real consumer process, scraped and probed over HTTP.

The main tests start ``python -m stream.cli run --metrics-port P`` as a subprocess
against the embedded broker and a real MLflow registry, exactly as an operator
runs it, then check what the process serves on that port against what is on
the topics:

- ``/readyz`` stays 503 while the group gives the process no partition, stays 503
  once it has a partition but no model is in production, and turns 200 when a
  model is promoted and loaded; ``/healthz`` answers 200 throughout.
- After a run with good traffic, bad records and 1,000 extra tenants, every
  counter of ``/metrics`` equals what the topics hold (events consumed = produced,
  alerts by tenant and level = the alert topic, dead letters by reason = the DLQ
  headers, shadow agreement = the shadow reports), the tenant label stays capped,
  and ``--log-format json`` writes nothing but JSON lines, with one line per
  rebalance and per model load.
- A model load uses the configured tracking URI even when ``MLFLOW_REGISTRY_URI``
  names another registry.
- Once a backlog is drained, the lag gauge of every assigned partition drops to zero.

Two fast tests cover ``stream.ops.logs``: the JSON formatter (warnings, extra fields,
exceptions) and ``BurstLog``, which limits a recurring condition to one line per burst
and interval.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer
from prometheus_client.parser import text_string_to_metric_families

from stream import registry
from stream.config import Settings
from stream.consumer import service
from stream.generate import generate_flows, training_flows
from stream.kafka.embedded import EmbeddedBroker, free_port
from stream.ops import logs
from stream.ops.metrics import OTHER, Metrics
from tests.kafkautil import produce, read_all

# Real broker, registry or child processes: not part of the fast unit run.
pytestmark = pytest.mark.integration

TENANTS = ("acme", "globex", "initech")  # acme has its own model, the others use the global one
# The tenant label cap of the consumer process: Metrics' default.
TENANT_LABEL_CAP: int = inspect.signature(Metrics).parameters["max_tenant_labels"].default

# (raw value, dead-letter reason) sent between good events.
BAD: list[tuple[bytes, str]] = [
    (b"{not json", "malformed_json"),
    (b"[1, 2, 3]", "not_object"),
    (b'{"tenant_id": "bad tenant!", "bytes_transferred": 1}', "invalid_tenant"),
    (b'{"tenant_id": "acme", "packet_count": 3, "connection_duration": 1.0}', "missing_feature"),
    (
        b'{"tenant_id": "globex", "bytes_transferred": "10kB", "packet_count": 3, '
        b'"connection_duration": 1.0}',
        "non_numeric_feature",
    ),
    (b"", "empty_message"),
    (b'{"tenant_id": "acme", "pad": "' + b"x" * 5000 + b'"}', "oversize"),
]
MAX_MESSAGE_BYTES = 4000  # below the oversize record above


# ---- the consumer process and its HTTP endpoints ---------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class ConsumerProcess:
    """``stream run --metrics-port P`` as a subprocess; stdout and stderr kept in files.

    Files rather than pipes: a consumer that logs more than a pipe buffer holds would
    block on its next log line while nobody reads, and stall the test.
    """

    def __init__(self, env: Mapping[str, str], workdir: Path, *args: str) -> None:
        self.port = free_port()
        self.stdout_path = workdir / "consumer.stdout"
        self.stderr_path = workdir / "consumer.stderr"
        self.metrics_path = workdir / "metrics.txt"
        cmd = [sys.executable, "-m", "stream.cli", "run", "--metrics-port", str(self.port), *args]
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                cmd, env=dict(env), stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=workdir
            )

    def get(self, path: str) -> tuple[int, str] | None:
        """(status, body) of ``GET path``; None while nothing listens on the port yet."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def scrape(self) -> Samples:
        got = self.get("/metrics")
        assert got is not None and got[0] == 200, got
        # Kept beside the logs: the last scrape is what to look at when a check fails.
        self.metrics_path.write_text(got[1])
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(got[1])
            for s in fam.samples
        }

    def sample(self, name: str, **labels: str) -> float | None:
        """One sample of a scrape; None if absent or while the endpoint does not answer."""
        got = self.get("/metrics")
        if got is None or got[0] != 200:
            return None
        for fam in text_string_to_metric_families(got[1]):
            for s in fam.samples:
                if s.name == name and s.labels == labels:
                    return float(s.value)
        return None

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        """Poll ``check`` until it returns something truthy; fail with the consumer's log."""
        deadline = time.monotonic() + timeout
        while True:
            result = check()
            if result:
                return result
            if self.proc.poll() is not None:
                pytest.fail(f"consumer exited ({self.proc.returncode}) waiting for {what}:\n"
                            f"{self.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}:\n"
                            f"{self.log_tail()}")
            time.sleep(0.1)

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.stderr_text().splitlines()[-lines:])

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (finish the batch in flight, commit, exit) and wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def consumer_process(
    env: Mapping[str, str], workdir: Path, *args: str
) -> Iterator[ConsumerProcess]:
    proc = ConsumerProcess(env, workdir, *args)
    try:
        yield proc
    finally:
        proc.kill()  # only acts if the test failed before stopping it


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every labelled sample of ``name``."""
    return {labels: v for (n, labels), v in samples.items() if n == name}


def consumer_env(
    broker: EmbeddedBroker, topics: Mapping[str, str], tracking_uri: str, base: str, **extra: str
) -> dict[str, str]:
    # In-process training in this test session calls mlflow.set_registry_uri, which leaves
    # MLFLOW_REGISTRY_URI in os.environ; the consumer must get only the URI given here.
    inherited = {k: v for k, v in os.environ.items() if k != "MLFLOW_REGISTRY_URI"}
    env = {
        **inherited,
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "STREAM_INPUT_TOPIC": topics["input"],
        "STREAM_ALERT_TOPIC": topics["alerts"],
        "STREAM_DLQ_TOPIC": topics["dlq"],
        "KAFKA_GROUP_ID": topics["group"],
        "MLFLOW_TRACKING_URI": tracking_uri,
        "STREAM_MODEL_NAME": base,
        # Group joins take ~3 s at 6 s and ~23 s at the client default on this broker.
        "KAFKA_SESSION_TIMEOUT_MS": "6000",
        "STREAM_RELOAD_INTERVAL": "0.5",
        "STREAM_BATCH_SIZE": "500",
        "STREAM_BATCH_MAX_WAIT_MS": "100",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    }
    env.update(extra)
    return env


def topic_names(unique: str) -> dict[str, str]:
    return {
        "input": f"ops-flows-{unique}",
        "alerts": f"ops-alerts-{unique}",
        "dlq": f"ops-dlq-{unique}",
        "shadow": f"ops-shadow-{unique}",
        "group": f"ops-g-{unique}",
    }


def header(m: Any, name: str) -> str:
    return dict(m.headers() or [])[name].decode()


# ---- logs ------------------------------------------------------------------------------


def test_json_logs_carry_warnings_extras_and_exceptions_as_json_lines() -> None:
    # A fresh interpreter: setup() replaces the root logger's handlers.
    code = """
import logging, warnings
from stream.ops import logs
logs.setup("json")
log = logging.getLogger("stream.test")
log.info("swap %s", "v1 -> v2", extra={"model": "m", "obj": object()})
warnings.warn("a library deprecation", DeprecationWarning, stacklevel=1)
try:
    1 / 0
except ZeroDivisionError:
    log.exception("failed")
"""
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True,
                         text=True, timeout=60, check=True)
    docs = [orjson.loads(line) for line in out.stderr.splitlines()]
    assert [d["level"] for d in docs] == ["info", "warning", "error"]
    assert docs[0]["message"] == "swap v1 -> v2" and docs[0]["model"] == "m"
    assert docs[0]["obj"].startswith("<object object")  # not JSON: written as text
    assert docs[1]["logger"] == "py.warnings" and "a library deprecation" in docs[1]["message"]
    assert "ZeroDivisionError" in docs[2]["exception"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_burst_log_writes_one_line_per_burst_and_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    burst = logs.BurstLog(logging.getLogger("stream.test.burst"), "dead-lettered",
                          interval=30.0, clock=clock)
    caplog.set_level(logging.WARNING, logger="stream.test.burst")

    burst.add({"malformed_json": 2}, records=500)  # a burst starts: logged at once
    for _ in range(20):  # a steady trickle within the interval: summed, not logged
        clock.now += 1.0
        burst.add({"malformed_json": 1, "oversize": 1}, records=500)
    burst.add({}, records=500)  # a clean batch is no occurrence
    assert [r.getMessage() for r in caplog.records] == [
        "dead-lettered 2 of 500 records: {'malformed_json': 2}"
    ]
    clock.now += 10.0  # 30 s after the first line: the next occurrence flushes the sum
    burst.add({"oversize": 3}, records=500)
    assert caplog.records[1].getMessage() == (
        "dead-lettered 43 of 10500 records in 21 batches over 29s: "
        "{'oversize': 23, 'malformed_json': 20}"
    )
    assert caplog.records[1].counts == {"oversize": 23, "malformed_json": 20}
    assert caplog.records[1].batches == 21
    burst.flush()  # nothing summed since: no line
    clock.now += 5.0
    burst.add({"not_object": 1}, records=10)
    burst.flush()  # shutdown: the rest is written
    assert len(caplog.records) == 3 == burst.lines
    assert caplog.records[2].getMessage() == "dead-lettered 1 of 10 records: {'not_object': 1}"
    with pytest.raises(ValueError):
        logs.BurstLog(logging.getLogger("x"), "x", interval=0)


# ---- readiness --------------------------------------------------------------------------


class GroupHolder:
    """A plain consumer in the same group that holds the topic's only partition.

    It polls from a thread so it keeps taking part in rebalances: the sticky assignor
    then leaves the partition with it when the stream consumer joins, until it leaves.
    """

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "partition.assignment.strategy": "cooperative-sticky",
                "session.timeout.ms": 6000,
                "enable.auto.commit": False,
            }
        )
        self._assigned = threading.Event()
        # Assignment is read in the callback, on the polling thread: a second thread
        # calling into the same client (e.g. assignment()) can block behind poll().
        self.consumer.subscribe(
            [topic], on_assign=lambda _c, parts: parts and self._assigned.set()
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.consumer.poll(0.1)

    def wait_assigned(self, timeout: float) -> bool:
        return self._assigned.wait(timeout)

    def leave(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.consumer.close()  # leaves the group: the partition moves on at once


@pytest.mark.timeout(240)
def test_readyz_waits_for_partitions_and_a_loaded_model(
    broker: EmbeddedBroker, tracking_uri: str, unique: str, tmp_path: Path
) -> None:
    topics = topic_names(unique)
    broker.create_topics([topics["input"]], partitions=1)
    broker.create_topics([topics["alerts"], topics["dlq"]], partitions=1)
    base = f"ops_ready_{unique}"
    # Registered but not in production: the consumer finds nothing to serve yet.
    trained = registry.train(training_flows("acme", 600, seed=5), model_name=base,
                             n_estimators=20, uri=tracking_uri)

    holder = GroupHolder(broker.bootstrap, topics["group"], topics["input"])
    assert holder.wait_assigned(60), "the holder never got the partition"

    seen: list[tuple[int, str]] = []  # distinct consecutive /readyz answers, in order

    def readyz() -> tuple[int, str] | None:
        got = proc.get("/readyz")
        if got is not None and (not seen or seen[-1] != got):
            seen.append(got)
        return got

    env = consumer_env(broker, topics, tracking_uri, base)
    with consumer_process(env, tmp_path) as proc:
        # 1. In the group, but the holder keeps the partition.
        proc.wait_for("the consumer to join the group",
                      lambda: "partitions assigned: (none)" in proc.stderr_text(), 60)
        for _ in range(10):  # and it stays that way while nothing changes
            assert readyz() == (503, "not ready: no partitions assigned\n")
            assert proc.get("/healthz") == (200, "ok\n")
            time.sleep(0.1)

        # 2. The partition arrives, but no model is in production.
        holder.leave()
        proc.wait_for("the partition", lambda: readyz() == (503, "not ready: no model loaded\n"),
                      60)
        time.sleep(1.5)  # three registry polls: still nothing to serve
        assert readyz() == (503, "not ready: no model loaded\n")
        assert value(proc.scrape(), "stream_ready") == 0

        # 3. A model is promoted: the watcher loads it and the process turns ready.
        registry.promote(base, trained.version, uri=tracking_uri)
        proc.wait_for("readiness", lambda: readyz() == (200, "ready\n"), 60)
        assert proc.get("/healthz") == (200, "ok\n")
        samples = proc.scrape()
        assert value(samples, "stream_ready") == 1
        assert value(samples, "stream_model_version", model=base) == float(trained.version)
        assert value(samples, "stream_model_reloads_total", model=base) == 1
        assert value(samples, "stream_model_reload_failures_total", model=base) == 0

        assert proc.stop() == 0, proc.log_tail()

    # Nothing else was ever answered ("starting" only before the loop's first poll).
    answers = [s for s in seen if s != (503, "not ready: starting\n")]
    assert answers == [
        (503, "not ready: no partitions assigned\n"),
        (503, "not ready: no model loaded\n"),
        (200, "ready\n"),
    ]
    # Default log format: human-readable lines, not JSON.
    lines = proc.stderr_text().splitlines()
    assert any(" INFO    stream.kafka.clients: partitions assigned: " in line for line in lines)
    assert not any(line.startswith("{") for line in lines)


# ---- metrics vs topics ------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tracking_uri: str) -> dict[str, Any]:
    """A global model, acme's own model in production, and a challenger for acme."""
    base = "ops_" + os.urandom(3).hex()
    mixed = [r for t in TENANTS for r in training_flows(t, 800, seed=1)]
    glob = registry.train(mixed, model_name=base, n_estimators=30, uri=tracking_uri,
                          do_promote=True)
    acme = registry.train(training_flows("acme", 1200, seed=2), tenant="acme", model_name=base,
                          n_estimators=30, calibrate=(0.01, 0.05, 0.2), uri=tracking_uri,
                          do_promote=True)
    challenger = registry.train(training_flows("acme", 1200, seed=3), tenant="acme",
                                model_name=base, n_estimators=30, uri=tracking_uri)
    registry.set_challenger(challenger.model_name, challenger.version, uri=tracking_uri)
    return {
        "base": base,
        "production": {glob.model_name: glob.version, acme.model_name: acme.version},
        "challenger": (challenger.model_name, challenger.version),
    }


def phase_one_values() -> tuple[list[bytes], Counter[str]]:
    """Good flows of the three tenants with a bad record every 400 events."""
    values: list[bytes] = []
    reasons: Counter[str] = Counter()
    for i, flow in enumerate(generate_flows(6000, TENANTS, seed=11, attack_rate=0.05)):
        if i % 400 == 0:
            raw, reason = BAD[(i // 400) % len(BAD)]
            values.append(raw)
            reasons[reason] += 1
        values.append(orjson.dumps(flow))
    return values, reasons


def phase_two_values() -> list[bytes]:
    """1,000 more tenants, two events each, all served by the global model."""
    flows = generate_flows(2000, ("acme",), seed=12)
    return [orjson.dumps({**f, "tenant_id": f"t{i % 1000:04d}"}) for i, f in enumerate(flows)]


@pytest.mark.timeout(300)
def test_metrics_match_the_topics_and_logs_are_json(
    broker: EmbeddedBroker,
    tracking_uri: str,
    served: dict[str, Any],
    unique: str,
    tmp_path: Path,
) -> None:
    topics = topic_names(unique)
    broker.create_topics([topics["input"]], partitions=3)
    broker.create_topics([topics["alerts"], topics["dlq"], topics["shadow"]], partitions=2)
    base = served["base"]
    env = consumer_env(
        broker, topics, tracking_uri, base,
        STREAM_SHADOW_TOPIC=topics["shadow"],
        STREAM_MIN_LEVEL="low",  # every scored event is an alert: all tenants get series
        STREAM_MAX_MESSAGE_BYTES=str(MAX_MESSAGE_BYTES),
        STREAM_LOG_FORMAT="json",
    )
    warmup = [orjson.dumps(f) for f in training_flows("acme", 20, seed=13)]
    one, bad_reasons = phase_one_values()
    two = phase_two_values()
    sent = len(warmup) + len(one) + len(two)
    chal_name, chal_version = served["challenger"]
    shadow_line = f"shadow scoring {chal_name} v{chal_version} beside production"

    def consumed(n: int) -> Callable[[], bool]:
        return lambda: proc.sample("stream_events_consumed_total") == n

    with consumer_process(env, tmp_path) as proc:
        proc.wait_for("readiness", lambda: proc.get("/readyz") == (200, "ready\n"), 90)
        # acme's model loads on acme's first event and its challenger on the registry
        # poll after that: wait for both, so that the shadow comparison covers phase one.
        produce(broker.bootstrap, topics["input"], warmup)
        proc.wait_for("the challenger", lambda: shadow_line in proc.stderr_text(), 90)
        # The three named tenants come first, so they get their own label before the cap
        # fills up with the 1,000 others.
        produce(broker.bootstrap, topics["input"], one)
        proc.wait_for("phase one consumed", consumed(len(warmup) + len(one)), 90)
        produce(broker.bootstrap, topics["input"], two)
        proc.wait_for(f"{sent} events consumed", consumed(sent), 90)
        samples = proc.scrape()
        assert proc.stop() == 0, proc.log_tail()

    alerts = [orjson.loads(m.value()) for m in read_all(broker.bootstrap, topics["alerts"])]
    dlq = read_all(broker.bootstrap, topics["dlq"])
    shadow = [orjson.loads(m.value()) for m in read_all(broker.bootstrap, topics["shadow"])]
    n_bad = sum(bad_reasons.values())

    # -- events: consumed = produced; every good one scored ------------------------------
    assert value(samples, "stream_events_consumed_total") == sent
    assert value(samples, "stream_events_scored_total") == sent - n_bad
    assert len(alerts) == sent - n_bad  # min level low: one alert per scored event

    # -- alerts by tenant and level = the alert topic, tenant label capped ----------------
    by_tenant_level = Counter((a["tenant_id"], a["threat_level"]) for a in alerts)
    assert len({t for t, _ in by_tenant_level}) == 1003
    metric_alerts = {
        (dict(labels)["tenant"], dict(labels)["level"]): v
        for labels, v in series(samples, "stream_alerts_total").items()
    }
    labelled = {t for t, _ in metric_alerts}
    assert len(labelled) == TENANT_LABEL_CAP + 1 and OTHER in labelled
    assert set(TENANTS) <= labelled
    folded: Counter[tuple[str, str]] = Counter()
    for (tenant, level), n in by_tenant_level.items():
        folded[(tenant if tenant in labelled else OTHER, level)] += n
    assert metric_alerts == {k: float(n) for k, n in folded.items()}
    levels_topic = Counter(a["threat_level"] for a in alerts)
    levels_metric: Counter[str] = Counter()
    for (_, level), n in metric_alerts.items():
        levels_metric[level] += int(n)
    assert levels_metric == levels_topic
    assert {"critical", "low"} <= set(levels_topic)

    # -- dead letters by reason = the DLQ's reason headers = what was sent ----------------
    dlq_reasons = Counter(header(m, "reason") for m in dlq)
    assert dlq_reasons == bad_reasons
    metric_dead = {
        dict(labels)["reason"]: int(v)
        for labels, v in series(samples, "stream_dead_letters_total").items()
    }
    assert metric_dead == dict(dlq_reasons)

    # -- batches and event age -------------------------------------------------------------
    batches = value(samples, "stream_batch_size_count")
    assert batches is not None and batches >= sent / 500
    assert value(samples, "stream_batch_size_sum") == sent
    assert value(samples, "stream_batch_seconds_count") == batches
    assert value(samples, "stream_batch_seconds_sum") > 0
    # Every record carries its producer's timestamp: one age per event, all under a minute.
    assert value(samples, "stream_event_age_seconds_count") == sent
    assert value(samples, "stream_event_age_seconds_bucket", le="60.0") == sent
    assert value(samples, "stream_last_batch_timestamp_seconds") > time.time() - 120

    # -- lag: one series per input partition, never more than was sent --------------------
    lag = series(samples, "stream_consumer_lag")
    assert lag
    for labels, v in lag.items():
        assert dict(labels)["topic"] == topics["input"]
        assert dict(labels)["partition"] in {"0", "1", "2"}
        assert 0 <= v <= sent

    # -- models: version per model, one successful load each, no failure ------------------
    for model, version in served["production"].items():
        assert value(samples, "stream_model_version", model=model) == float(version)
        assert value(samples, "stream_model_info", model=model, version=version) == 1
        assert value(samples, "stream_model_reloads_total", model=model) == 1
        assert value(samples, "stream_model_reload_failures_total", model=model) == 0
    model_labels = {dict(k)["model"] for k in series(samples, "stream_model_version")}
    assert model_labels == set(served["production"])
    assert value(samples, "stream_model_load_seconds_count") == len(served["production"])

    # -- shadow agreement = the shadow reports on the shadow topic -------------------------
    acme_reports = [r for r in shadow if r["tenant"] == "acme"]
    assert acme_reports and {r["tenant"] for r in shadow} == {"acme"}
    rows = sum(r["rows"] for r in acme_reports)
    # Every acme event after the warm-up was scored by both versions.
    acme_alerts = sum(n for (t, _), n in by_tenant_level.items() if t == "acme")
    assert acme_alerts - len(warmup) <= rows <= acme_alerts
    assert value(samples, "stream_shadow_agreement_ratio", tenant="acme") == pytest.approx(
        sum(r["agree"] for r in acme_reports) / rows
    )
    assert value(samples, "stream_shadow_score_diff", tenant="acme") == pytest.approx(
        sum(r["score_diff_sum"] for r in acme_reports) / rows
    )
    assert value(samples, "stream_delivery_failures_total") == 0
    assert value(samples, "stream_ready") == 1

    # -- logs: JSON lines only; rebalances and model loads once each -----------------------
    records = []
    for line in proc.stderr_text().splitlines():
        doc = orjson.loads(line)  # raises on anything that is not one JSON object per line
        assert {"time", "level", "logger", "message"} <= set(doc), line
        records.append(doc)
    messages = [r["message"] for r in records]
    assigned = [m for m in messages if m.startswith("partitions assigned:")]
    assert len(assigned) == 1 and all(f"{topics['input']}[{p}]" in assigned[0] for p in range(3))
    for model, version in served["production"].items():
        assert sum(m.startswith(f"model {model} v{version} loaded in ") for m in messages) == 1
    assert messages.count(shadow_line) == 1
    dead_lines = [r for r in records if r["message"].startswith("dead-lettered ")]
    # One line per batch that had dead letters, never one per record.
    assert 1 <= len(dead_lines) <= min(n_bad, batches)
    assert records[-1]["message"].startswith(f"stopped: consumed {sent},")


# ---- lag once a backlog is drained ---------------------------------------------------------


@pytest.mark.timeout(120)
def test_lag_gauge_reaches_zero_once_the_backlog_is_drained(
    broker: EmbeddedBroker, tracking_uri: str, served: dict[str, Any], unique: str
) -> None:
    topics = topic_names(unique)
    broker.create_topics([topics["input"]], partitions=3)
    broker.create_topics([topics["alerts"], topics["dlq"]], partitions=1)
    # A backlog waiting before the consumer starts, read in many batches within seconds.
    values = [orjson.dumps(f) for f in generate_flows(6000, TENANTS, seed=31)]
    # Spread over every partition explicitly: unkeyed records may all land in one (the
    # sticky partitioner), and a partition never fetched from reports no lag at all.
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    for i, v in enumerate(values):
        p.produce(topics["input"], v, partition=i % 3)
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(30) == 0
    settings = Settings(
        bootstrap_servers=broker.bootstrap,
        input_topic=topics["input"],
        alert_topic=topics["alerts"],
        dlq_topic=topics["dlq"],
        group_id=topics["group"],
        tracking_uri=tracking_uri,
        model_name=served["base"],
        session_timeout_ms=6000,
        batch_size=500,
        batch_max_wait_ms=100,
    )
    metrics = Metrics()
    pipeline = service.build(settings, metrics=metrics)
    thread = threading.Thread(target=pipeline.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while pipeline.stats.consumed < len(values) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pipeline.stats.consumed == len(values)
        time.sleep(6.5)  # idle for longer than the lag report interval
        lag = {
            p: metrics.registry.get_sample_value(
                "stream_consumer_lag", {"topic": topics["input"], "partition": str(p)}
            )
            for p in range(3)
        }
    finally:
        pipeline.stop_event.set()
        thread.join(timeout=30)
        pipeline.table.stop()
    assert lag == {0: 0.0, 1: 0.0, 2: 0.0}


# ---- which registry a model is loaded from ---------------------------------------------------

LOAD = """
import sys
from stream import registry
model = registry.load_version(sys.argv[1], sys.argv[2], uri=sys.argv[3])
print(model.name, model.version)
"""


@pytest.mark.timeout(120)
def test_model_loads_use_the_configured_uri_even_with_mlflow_registry_uri_set(
    tracking_uri: str, served: dict[str, Any], tmp_path: Path
) -> None:
    # A consumer process whose environment also names another registry (here one that is
    # not even up), e.g. left over from a deployment template. Its registry polls go to
    # the configured URI whatever the variable says; its model loads must too.
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_REGISTRY_URI": "http://127.0.0.1:9",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }
    base = served["base"]
    version = served["production"][base]
    loaded = subprocess.run([sys.executable, "-c", LOAD, base, version, tracking_uri], env=env,
                            capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr[-1500:]
    assert loaded.stdout.split() == [base, version]
