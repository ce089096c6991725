"""Rows measured through the embedded broker with the real consumer (`stream run` processes).

- Row 5: events produced beforehand; one `stream run` process consumes them,
  delivers the alerts and commits; events/s between 10% and 90% of the
  committed offsets (start-up and tail excluded).
- Row 6: the same process under a paced load of half of row 5; latency from the
  moment an event is handed to the producer to the moment its alert reaches a
  reader of the alert topic.
- Two `stream run` processes in one group on this machine: combined events/s.

The registry is a real MLflow registry (SQLite, temporary directory) holding
the benchmark's fitted model for every tenant.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from bench.workload import BASE_NAME, TENANTS, Workload, peak_rss_bytes
from stream import registry
from stream.kafka.embedded import EmbeddedBroker

PARTITIONS = 4
SESSION_TIMEOUT_MS = 6000  # group joins take ~3 s instead of ~23 s (see the field notes)


@dataclass
class ConsumerRun:
    """One `stream run` child process and what it logged."""

    proc: subprocess.Popen[bytes]
    lines: list[tuple[float, str]] = field(default_factory=list)
    reader: threading.Thread | None = None

    def assigned(self, topic: str) -> bool:
        return any("partitions assigned:" in line and f"{topic}[" in line
                   for _t, line in self.lines)

    def peak_rss(self) -> int:
        try:
            return peak_rss_bytes(self.proc.pid)
        except OSError:
            return 0

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.reader is not None:
            self.reader.join(timeout=5)
        return int(self.proc.returncode or 0)

    def tail(self, n: int = 20) -> str:
        return "\n".join(line for _t, line in self.lines[-n:])


@dataclass
class BrokerResult:
    events: int
    eps: float
    alerts_delivered: int
    alerts_expected: int
    dead_letters: int
    consumer_peak_rss: int
    startup_seconds: float
    latency_rate: float = 0.0
    latency_events: int = 0
    latency_samples: int = 0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    two_eps: float = 0.0
    two_peak_rss: list[int] = field(default_factory=list)
    registry_load_s: float = 0.0
    notes: list[str] = field(default_factory=list)


# ---- registry -----------------------------------------------------------------------------


def register_models(wl: Workload, uri: str) -> float:
    """The fitted model as every tenant's production model and as the global one.

    Logged once (MLflow's log_model takes seconds); the other names get a version
    pointing at the same logged model. Returns one real ``load_version`` time.
    """
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    first = registry.registered_name(BASE_NAME, TENANTS[0])
    from stream.features import FeatureSpec

    X = np.random.default_rng(0).normal(size=(64, len(wl.features)))
    res = registry.log_pipeline(
        wl.estimator, X, spec=FeatureSpec.from_fields(list(wl.features)), registered=first,
        thresholds=wl.thresholds.tolist(), params={"bench": True}, tags={},
        experiment="bench", uri=uri,
    )
    registry.promote(first, res.version, uri=uri)
    client = registry.client(uri)
    mv = client.get_model_version(first, res.version)
    model_id = str(mv.source).rsplit("/", 1)[-1]
    for tenant in [*TENANTS[1:], None]:
        name = registry.registered_name(BASE_NAME, tenant)
        client.create_registered_model(name)
        v = client.create_model_version(name, source=mv.source, run_id=mv.run_id,
                                        model_id=model_id)
        registry.promote(name, v.version, uri=uri)
    t0 = time.perf_counter()
    registry.load_version(first, res.version, uri=uri)
    return time.perf_counter() - t0


# ---- Kafka helpers ------------------------------------------------------------------------


def produce_all(bootstrap: str, topic: str, values: Sequence[bytes]) -> float:
    """Produce ``values`` round-robin over the partitions; seconds until all acknowledged."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20,
                  "queue.buffering.max.messages": 1_000_000, "compression.type": "lz4"})
    t0 = time.perf_counter()
    for i, v in enumerate(values):
        while True:
            try:
                p.produce(topic, v, partition=i % PARTITIONS)
                break
            except BufferError:
                p.poll(0.05)
    if p.flush(60) != 0:
        raise RuntimeError(f"could not produce to {topic}")
    return time.perf_counter() - t0


def count_records(bootstrap: str, topic: str, partitions: int, quiet: float = 1.0) -> int:
    """Distinct records on ``topic``, read from the start until ``quiet`` s bring nothing new.

    Counted by reading, not from watermarks: the embedded broker reports a high
    watermark below the real end when a produce request carried several records.
    """
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-count",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    seen: set[tuple[int, int]] = set()
    last = time.monotonic()
    try:
        while time.monotonic() - last < quiet:
            for m in c.consume(10000, 0.2):
                if not m.error():
                    seen.add((m.partition(), m.offset()))
                    last = time.monotonic()
    finally:
        c.close()
    return len(seen)


def end_offsets(bootstrap: str, topic: str, partitions: int) -> list[int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-watermarks"})
    try:
        return [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in range(partitions)]
    finally:
        c.close()


class CommitWatch:
    """Polls a group's committed offsets on a topic: (time, total committed) samples."""

    def __init__(self, bootstrap: str, group: str, topic: str) -> None:
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                           "enable.auto.commit": False})
        self.parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        self.samples: list[tuple[float, int]] = []

    def total(self) -> int:
        got = self.c.committed(self.parts, timeout=10)
        n = sum(max(tp.offset, 0) for tp in got)
        self.samples.append((time.monotonic(), n))
        return n

    def wait_for(self, target: int, timeout: float, proc: ConsumerRun | None = None) -> None:
        deadline = time.monotonic() + timeout
        while self.total() < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"committed {self.samples[-1][1]} of {target}")
            if proc is not None and proc.proc.poll() is not None:
                raise RuntimeError(f"consumer exited early:\n{proc.tail()}")
            time.sleep(0.05)

    def rate(self, lo: int, hi: int, since: float = 0.0) -> float:
        """Events/s between the first samples at or past ``lo`` and ``hi`` committed."""
        pts = [(t, n) for t, n in self.samples if t >= since]
        a = next((t, n) for t, n in pts if n >= lo)
        b = next((t, n) for t, n in pts if n >= hi)
        return (b[1] - a[1]) / (b[0] - a[0]) if b[0] > a[0] else float("nan")

    def close(self) -> None:
        self.c.close()


def start_consumer(bootstrap: str, uri: str, topic: str, group: str, workdir: Path,
                   suffix: str, extra_env: dict[str, str] | None = None) -> ConsumerRun:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "STREAM_INPUT_TOPIC": topic,
        "STREAM_ALERT_TOPIC": f"alerts{suffix}",
        "STREAM_DLQ_TOPIC": f"flows.dlq{suffix}",
        "KAFKA_GROUP_ID": group,
        "MLFLOW_TRACKING_URI": uri,
        "STREAM_MODEL_NAME": BASE_NAME,
        "KAFKA_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS),
        "STREAM_MIN_LEVEL": "medium",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "run"],
        env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    run = ConsumerRun(proc)

    def drain() -> None:
        # Read the log continuously: a full pipe would block the consumer.
        assert proc.stderr is not None
        for raw in proc.stderr:
            run.lines.append((time.monotonic(), raw.decode(errors="replace").rstrip()))

    run.reader = threading.Thread(target=drain, daemon=True)
    run.reader.start()
    return run


# ---- latency ------------------------------------------------------------------------------


class AlertReader(threading.Thread):
    """Reads the alert topic from its current end; latency per alert that carries sent_at.

    (The reported end may lie a little before the real one; older alerts carry no
    ``sent_at`` and are skipped.)
    """

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        super().__init__(daemon=True)
        ends = end_offsets(bootstrap, topic, partitions)
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-latency",
                           "enable.auto.commit": False, "fetch.wait.max.ms": 5})
        self.c.assign([TopicPartition(topic, p, ends[p]) for p in range(partitions)])
        self.latencies: list[tuple[float, float]] = []  # (sent_at, seconds)
        self.scored: list[float] = []  # seconds from sent_at to the alert's detected_at
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            for m in self.c.consume(1000, 0.02):
                if m.error():
                    continue
                now = time.time()
                alert = orjson.loads(m.value())
                sent = alert["event"].get("sent_at")
                if sent is not None:
                    self.latencies.append((sent, now - sent))
                    detected = datetime.fromisoformat(alert["detected_at"].replace("Z", "+00:00"))
                    self.scored.append(detected.timestamp() - sent)
        self.c.close()


def paced_produce(bootstrap: str, topic: str, values: Sequence[bytes], rate: float,
                  seconds: float) -> int:
    """Produce at ``rate`` events/s for ``seconds``; each event carries its hand-off time."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    t0 = time.monotonic()
    i = 0
    while True:
        elapsed = time.monotonic() - t0
        if elapsed >= seconds:
            break
        target = int(rate * elapsed)
        while i < target:
            v = values[i % len(values)]
            stamped = b"%b,\"sent_at\":%r}" % (v[:-1], time.time())
            try:
                p.produce(topic, stamped, partition=i % PARTITIONS)
            except BufferError:
                p.poll(0.01)
                continue
            i += 1
        p.poll(0)
        time.sleep(0.001)
    p.flush(30)
    return i


# ---- the runs -----------------------------------------------------------------------------


@contextlib.contextmanager
def environment(wl: Workload) -> Iterator[tuple[EmbeddedBroker, str, Path, float]]:
    """A broker, a registry holding the model, and a working directory."""
    with tempfile.TemporaryDirectory(prefix="stream-bench-") as tmp, EmbeddedBroker() as broker:
        work = Path(tmp)
        uri = f"sqlite:///{work / 'mlflow.db'}"
        load_s = register_models(wl, uri)
        yield broker, uri, work, load_s


def run_broker(wl: Workload, values: Sequence[bytes], alerts_expected: int,
               latency_seconds: float = 8.0, two_events: int | None = None,
               consumer_env: dict[str, str] | None = None) -> BrokerResult:
    n = len(values)
    old_switch = sys.getswitchinterval()
    # The latency reader and the paced producer share this process: switch often.
    sys.setswitchinterval(0.0005)
    try:
        with environment(wl) as (broker, uri, work, load_s):
            bs = broker.bootstrap
            broker.create_topics(["flows", "flows2"], partitions=PARTITIONS)
            broker.create_topics(["alerts", "alerts2"], partitions=2)
            broker.create_topics(["flows.dlq", "flows.dlq2"], partitions=1)
            produce_all(bs, "flows", values)

            # Row 5: one consumer, backlog produced beforehand.
            t_start = time.monotonic()
            c1 = start_consumer(bs, uri, "flows", "bench-one", work, "", consumer_env)
            watch = CommitWatch(bs, "bench-one", "flows")
            try:
                watch.wait_for(1, timeout=120, proc=c1)
                startup = time.monotonic() - t_start
                watch.wait_for(n, timeout=300, proc=c1)
                eps = watch.rate(int(0.1 * n), int(0.9 * n))
                delivered = count_records(bs, "alerts", 2)
                dead = count_records(bs, "flows.dlq", 1, quiet=0.3)
                result = BrokerResult(
                    events=n, eps=eps, alerts_delivered=delivered,
                    alerts_expected=alerts_expected, dead_letters=dead,
                    consumer_peak_rss=0, startup_seconds=startup, registry_load_s=load_s,
                )

                # Row 6: half of row 5's rate, paced, through the same process.
                rate = 0.5 * eps
                reader = AlertReader(bs, "alerts", 2)
                reader.start()
                t_lat = time.time()
                sent = paced_produce(bs, "flows", values, rate, latency_seconds)
                watch.wait_for(n + sent, timeout=120, proc=c1)
                time.sleep(0.5)  # alerts are delivered before the commit; let the reader see them
                reader.stop_event.set()
                reader.join(timeout=10)
                warm = [lat for s, lat in reader.latencies if s >= t_lat + 1.0]
                result.latency_rate = rate
                result.latency_events = sent
                result.latency_samples = len(warm)
                if warm:
                    ms = np.asarray(warm) * 1e3
                    result.p50_ms = float(np.percentile(ms, 50))
                    result.p99_ms = float(np.percentile(ms, 99))
                    result.max_ms = float(ms.max())
                result.consumer_peak_rss = c1.peak_rss()
            finally:
                watch.close()
                if c1.stop() != 0:
                    result_note = f"consumer exit code {c1.proc.returncode}:\n{c1.tail()}"
                    raise RuntimeError(result_note)

            # Two consumers in one group: started on the empty topic, then the backlog.
            two_n = two_events or n
            cs = [start_consumer(bs, uri, "flows2", "bench-two", work, "2", consumer_env)
                  for _ in range(2)]
            watch2 = CommitWatch(bs, "bench-two", "flows2")
            try:
                deadline = time.monotonic() + 120
                while not all(c.assigned("flows2") for c in cs):
                    if time.monotonic() > deadline or any(c.proc.poll() is not None for c in cs):
                        raise RuntimeError("two consumers did not both get partitions:\n"
                                           + "\n---\n".join(c.tail() for c in cs))
                    time.sleep(0.1)
                # A first slice lets each process load its tenants' models before timing.
                warm = 20_000
                produce_all(bs, "flows2", values[:warm])
                watch2.wait_for(warm, timeout=120)
                two_values = [values[i % n] for i in range(warm, warm + two_n)]
                produce_all(bs, "flows2", two_values)
                t_produced = time.monotonic()
                watch2.wait_for(warm + two_n, timeout=300)
                at_produced = next(c for t, c in watch2.samples if t >= t_produced)
                result.two_eps = watch2.rate(at_produced, warm + int(0.9 * two_n),
                                             since=t_produced)
                at_produced -= warm
                result.two_peak_rss = [c.peak_rss() for c in cs]
                if at_produced > 0.5 * two_n:
                    result.notes.append(
                        f"two consumers: {at_produced} of {two_n} were committed while "
                        "the backlog was being produced; the rate covers the rest"
                    )
            finally:
                watch2.close()
                for c in cs:
                    c.stop()
            return result
    finally:
        sys.setswitchinterval(old_switch)
