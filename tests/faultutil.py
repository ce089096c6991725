"""Fault-test helpers: `stream run` child processes, a Kafka proxy, and offset accounting.

Accounting is by input offset: with ``min_level=low`` every scored event makes
an alert, so each input offset must have an outcome, i.e. an alert whose
``source`` names it or a dead-letter record whose ``source.*`` headers name it.
"""

from __future__ import annotations

import dataclasses
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from stream import registry
from stream.config import Settings
from stream.consumer.loop import Pipeline
from stream.delivery import Transactional
from stream.generate import generate_flows, training_flows
from stream.kafka.embedded import EmbeddedBroker, broker_binary, free_port, wait_for_port
from tests.kafkautil import partitions, produce

T = TypeVar("T")

TENANTS = ("acme", "globex", "initech")

# Hostile records mixed into the input: each must end on the dead-letter topic, with one
# of HOSTILE_REASONS.
HOSTILE: tuple[bytes, ...] = (
    b"{not json",
    b'{"tenant_id": "../../etc/passwd", "bytes_transferred": 1}',
    b'{"tenant_id": "acme; DROP TABLE models", "bytes_transferred": 1}',
    b'{"tenant_id": "' + b"a" * 65 + b'", "bytes_transferred": 1}',
    b'{"tenant_id": "acme", "bytes_transferred": NaN, "packet_count": 1, '
    b'"connection_duration": 1}',
    b"",
    b'{"tenant_id": "acme", "pad": "' + b"x" * 9000 + b'"}',  # over the tests' 8000-byte limit
)
MAX_MESSAGE_BYTES = 8000
HOSTILE_REASONS = frozenset({"malformed_json", "invalid_tenant", "empty_message", "oversize"})

_models: dict[str, str] = {}


def shared_model(tracking_uri: str) -> str:
    """Base name of one global model trained once per test session (training costs seconds)."""
    if tracking_uri not in _models:
        base = "faults_" + os.urandom(3).hex()
        flows = [r for t in TENANTS for r in training_flows(t, 1000, seed=1)]
        registry.train(flows, model_name=base, uri=tracking_uri, do_promote=True)
        _models[tracking_uri] = base
    return _models[tracking_uri]


@dataclass
class Topics:
    """One test's topics and group on the shared broker."""

    unique: str
    input: str = ""
    alerts: str = ""
    dlq: str = ""
    group: str = ""

    def __post_init__(self) -> None:
        self.input = self.input or f"flows-{self.unique}"
        self.alerts = self.alerts or f"alerts-{self.unique}"
        self.dlq = self.dlq or f"dlq-{self.unique}"
        self.group = self.group or f"g-{self.unique}"

    def create(self, broker: EmbeddedBroker, input_partitions: int) -> None:
        broker.create_topics([self.input], partitions=input_partitions)
        broker.create_topics([self.alerts, self.dlq], partitions=3)


def fill(bootstrap: str, topic: str, n: int, *, seed: int, hostile_every: int = 2000) -> int:
    """Produce ``n`` flow events plus hostile records (see ``flow_values``); returns the count."""
    return produce(bootstrap, topic, flow_values(n, seed=seed, hostile_every=hostile_every))


def stream_env(
    bootstrap: str, topics: Topics, tracking_uri: str, model: str, **extra: str
) -> dict[str, str]:
    """Environment for ``stream run`` (the variable names come from stream/config.py)."""
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "STREAM_INPUT_TOPIC": topics.input,
        "STREAM_ALERT_TOPIC": topics.alerts,
        "STREAM_DLQ_TOPIC": topics.dlq,
        "KAFKA_GROUP_ID": topics.group,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "STREAM_MODEL_NAME": model,
        "KAFKA_SESSION_TIMEOUT_MS": "6000",
        "STREAM_MIN_LEVEL": "low",
        "STREAM_BATCH_SIZE": "500",
        "STREAM_BATCH_MAX_WAIT_MS": "100",
        "STREAM_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES),
        "STREAM_RELOAD_INTERVAL": "60",
    }
    env.update(extra)
    return env


class StreamProcess:
    """One ``stream run`` child process; its output goes to a log file (never a full pipe)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.cmd = [sys.executable, "-m", "stream.cli", "run"]

    def start(self) -> StreamProcess:
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.started = time.monotonic()
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM: finish the batch in flight, commit, exit; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"stream run ignored SIGTERM:\n{self.log()[-3000:]}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _port_outside_ephemeral_range() -> int:
    """A free loopback port below the kernel's ephemeral range.

    While the proxy is down, clients keep reconnecting to its port; a port in the ephemeral
    range can then be picked as a client's own source port and the client connects to
    itself (TCP simultaneous open), holding the port and talking to itself for good.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1025, low - 12000), low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    return free_port()


class Proxy:
    """``tansu proxy`` on a fixed loopback port in front of a broker: stop it to cut the link."""

    def __init__(self, origin: str, port: int | None = None) -> None:
        self.origin = origin
        self.port = port or _port_outside_ephemeral_range()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Proxy:
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [broker_binary(), "proxy", "--listener-url", url, "--advertised-listener-url", url,
             "--origin-url", f"tcp://{self.origin}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port("127.0.0.1", self.port)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()  # a cut, not a goodbye: open connections just die
            proc.wait(timeout=10)

    def freeze(self) -> None:
        """Stall the link: connections stay open but nothing is answered (SIGSTOP)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


def high_watermarks(bootstrap: str, topic: str) -> int:
    """Sum of the topic's high watermarks: a progress signal only.

    Tansu 0.6 answers ListOffsets with the last batch's base offset + 1, so this lags by
    up to a batch; counts come from ``read_topic`` and ``committed``.
    """
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "probe"})
    try:
        return sum(
            c.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1]
            for p in partitions(bootstrap, topic)
        )
    finally:
        c.close()


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = [TopicPartition(topic, p) for p in partitions(bootstrap, topic)]
        return {tp.partition: tp.offset for tp in c.committed(tps, timeout=10)}
    finally:
        c.close()


def wait_until(
    pred: Callable[[], bool], timeout: float, what: str, step: float = 0.1,
    state: Callable[[], object] | None = None,
) -> float:
    """Poll ``pred`` until true; returns the seconds it took.

    ``state`` describes what the system looked like, for the message of a timeout.
    """
    t0 = time.monotonic()
    while not pred():
        if time.monotonic() - t0 > timeout:
            seen = f"; state: {state()}" if state is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{seen}")
        time.sleep(step)
    return time.monotonic() - t0


@dataclass
class Copy:
    """One record on the alert or dead-letter topic that names an input offset."""

    alert_id: str
    score: float | None
    model: tuple[str, str] | None
    timestamp_ms: int

    def same_content(self, other: Copy) -> bool:
        return (self.alert_id, self.score, self.model) == (other.alert_id, other.score, other.model)


@dataclass
class Ledger:
    """Every input offset and every outcome record naming it, as one reader saw them."""

    inputs: set[tuple[int, int]]
    copies: dict[tuple[int, int], list[Copy]] = field(default_factory=lambda: defaultdict(list))
    stray: int = 0  # outcomes naming an offset that is not in the input

    @property
    def lost(self) -> set[tuple[int, int]]:
        return {k for k in self.inputs if not self.copies.get(k)}

    @property
    def outcomes(self) -> int:
        return sum(len(v) for v in self.copies.values())

    @property
    def duplicates(self) -> int:
        """Records beyond the first per input offset."""
        return sum(len(v) - 1 for v in self.copies.values() if len(v) > 1)

    def dead_letter_reasons(self) -> Counter[str]:
        return Counter(c.alert_id.rsplit("/", 1)[1] for v in self.copies.values() for c in v
                       if c.alert_id.startswith("dlq/"))

    def duplicated(self) -> dict[tuple[int, int], list[Copy]]:
        return {k: v for k, v in self.copies.items() if len(v) > 1}

    def inexact(self) -> list[tuple[int, int]]:
        """Input offsets whose copies differ in alert id, score or model version."""
        return [k for k, v in self.duplicated().items() if any(not v[0].same_content(c) for c in v)]

    def summary(self) -> dict[str, Any]:
        sizes = Counter(len(v) for v in self.copies.values())
        return {"inputs": len(self.inputs), "outcomes": self.outcomes, "lost": len(self.lost),
                "duplicates": self.duplicates, "copies_per_offset": dict(sorted(sizes.items())),
                "stray": self.stray}


def read_topic(
    bootstrap: str, topic: str, *, isolation: str = "read_committed", timeout: float = 60.0
) -> list[Message]:
    """Every record of ``topic`` as a reader with ``isolation`` sees it, to the end.

    The end is where the reader's position reaches the high watermark of its last fetch
    (the last offset of a transactional topic is a marker, never returned). Not the
    ListOffsets answer: Tansu 0.6 reports the last batch's base offset + 1 there.
    A read_committed reader held back by a transaction left open never gets there.
    """
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "ledger-" + uuid.uuid4().hex[:8],
                  "enable.auto.commit": False, "isolation.level": isolation,
                  "enable.partition.eof": True})
    try:
        parts = partitions(bootstrap, topic)
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        out: list[Message] = []
        todo = set(parts)
        deadline = time.monotonic() + timeout
        while todo:
            if time.monotonic() > deadline:
                raise AssertionError(f"{isolation} reader never reached the end of {topic} "
                                     f"partitions {sorted(todo)} (a transaction left open?)")
            eof: dict[int, int] = {}
            for m in c.consume(10000, 0.2):
                if m.error() is None:
                    out.append(m)
                elif m.error().code() == KafkaError._PARTITION_EOF:
                    eof[m.partition()] = m.offset()
            for tp in c.position([TopicPartition(topic, p) for p in todo]):
                _low, high = c.get_watermark_offsets(tp, cached=True)
                at = max(tp.offset, eof.get(tp.partition, -1))
                if high >= 0 and at >= high:
                    todo.discard(tp.partition)
        return out
    finally:
        c.close()


def ledger(bootstrap: str, topics: Topics, *, isolation: str = "read_committed") -> Ledger:
    """Read the input, alert and dead-letter topics completely and match them up."""
    inputs = read_topic(bootstrap, topics.input)
    led = Ledger({(m.partition(), m.offset()) for m in inputs})
    for m in read_topic(bootstrap, topics.alerts, isolation=isolation):
        a = orjson.loads(m.value())
        src = a["source"]
        key = (src["partition"], src["offset"])
        copy = Copy(a["alert_id"], a["anomaly_score"], (a["model"]["name"], a["model"]["version"]),
                    m.timestamp()[1])
        _add(led, key, copy)
    for m in read_topic(bootstrap, topics.dlq, isolation=isolation):
        h = {k: v.decode() for k, v in (m.headers() or [])}
        key = (int(h["source.partition"]), int(h["source.offset"]))
        _add(led, key, Copy(f"dlq/{key[0]}/{key[1]}/{h['reason']}", None, None, m.timestamp()[1]))
    return led


def _add(led: Ledger, key: tuple[int, int], copy: Copy) -> None:
    if key not in led.inputs:
        led.stray += 1
    led.copies[key].append(copy)


def flow_values(n: int, *, seed: int, hostile_every: int = 2000) -> list[bytes]:
    """``n`` encoded flow events with a hostile record after every ``hostile_every``."""
    rng = random.Random(seed)
    out: list[bytes] = []
    for i, flow in enumerate(generate_flows(n, TENANTS, seed=seed)):
        if i and i % hostile_every == 0:
            out.append(rng.choice(HOSTILE))
        out.append(orjson.dumps(flow))
    return out


class PacedProducer(threading.Thread):
    """Feeds ``values`` to a topic at ``rate`` records/s, like live traffic; ``stop()`` ends it."""

    def __init__(self, bootstrap: str, topic: str, values: list[bytes], rate: float) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.values, self.rate = bootstrap, topic, values, rate
        self.sent = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        p = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5})
        t0 = time.monotonic()
        while self.sent < len(self.values) and not self._stop_event.is_set():
            due = min(len(self.values), int((time.monotonic() - t0) * self.rate) + 1)
            for v in self.values[self.sent:due]:
                p.produce(self.topic, v)
            self.sent = max(self.sent, due)
            p.poll(0)
            time.sleep(0.02)
        assert p.flush(30) == 0

    def stop(self) -> int:
        """Stop feeding; returns how many records were produced."""
        self._stop_event.set()
        self.join(timeout=60)
        return self.sent


_ASSIGN = re.compile(r"partitions (assigned|revoked|lost): (.*)$")


def assignment(log_text: str) -> set[int]:
    """The input partitions a ``stream run`` process owns, replayed from its log."""
    owned: set[int] = set()
    for line in log_text.splitlines():
        m = _ASSIGN.search(line)
        if not m:
            continue
        parts = {int(x) for x in re.findall(r"\[(\d+)\]", m.group(2))}
        if m.group(1) == "assigned":
            owned |= parts
        else:
            owned -= parts
    return owned


def settings(bootstrap: str, topics: Topics, tracking_uri: str, model: str, **kw: Any) -> Settings:
    """In-process consumer settings matching ``stream_env``."""
    base: dict[str, Any] = dict(
        bootstrap_servers=bootstrap, input_topic=topics.input, alert_topic=topics.alerts,
        dlq_topic=topics.dlq, group_id=topics.group, tracking_uri=tracking_uri,
        model_name=model, session_timeout_ms=6000, min_level="low", batch_size=500,
        batch_max_wait_ms=100, max_message_bytes=MAX_MESSAGE_BYTES, reload_interval=60.0,
    )
    base.update(kw)
    return Settings(**base)


def start(pipeline: Pipeline) -> threading.Thread:
    t = threading.Thread(target=pipeline.run, daemon=True)
    t.start()
    return t


def stop(pipeline: Pipeline, thread: threading.Thread) -> None:
    pipeline.stop_event.set()
    thread.join(timeout=90)
    pipeline.table.stop()
    assert not thread.is_alive(), "pipeline did not stop"


def route_producer(pipeline: Pipeline, bootstrap: str, **props: str) -> None:
    """Make ``pipeline`` build its producers to reach the broker at ``bootstrap`` (a proxy),
    with extra producer properties, so the alert side can fail while the consumer is fine.

    Exactly-once: same transactional.id, so the new producer fences the original one.
    """
    d = pipeline.delivery
    s = pipeline.s
    d.producer_settings = dataclasses.replace(  # type: ignore[attr-defined]
        s, bootstrap_servers=bootstrap, kafka_properties=(*s.kafka_properties, *props.items()))
    old = d.producer
    d.producer = d.new_producer()  # type: ignore[attr-defined]
    if isinstance(d, Transactional):
        d.producer.init_transactions(30)
    old.flush(5)


def concurrently(*fns: Callable[[], T]) -> list[T]:
    """Run ``fns`` on threads, return their results in order; re-raise the first failure."""
    results: list[Any] = [None] * len(fns)
    errors: list[BaseException] = []

    def run(i: int, fn: Callable[[], T]) -> None:
        try:
            results[i] = fn()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
