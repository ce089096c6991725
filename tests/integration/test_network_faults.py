"""Faults on a real network path: packet loss, a rate limit and a 30 s partition between
the consumer and the broker, while 60k events flow, exactly-once, windows and incidents
on. Nothing is lost, every copy on the alert topic carries the score ``stream score``
gives, and the time from the partition healing to the first commit is measured.

The consumer runs in a network namespace of the test's own, the broker in the root one,
joined by a veth pair (``tests/netutil.py``); the test's producer and readers are on the
broker's side, so only the consumer's link is bad. A soak test (about three minutes):
``pytest --soak -k network_faults``.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from stream.kafka.clients import create_topics
from tests import faultutil as fu
from tests import netutil
from tests.integration.test_windows_e2e import (
    TENANTS,
    _events,
    compare,
    offline_scores,
    windowed_model,
)

pytestmark = [pytest.mark.integration, pytest.mark.soak]

EVENTS = 60000
RATE = 700  # events a second: the feed outlasts the faults


class Feed(threading.Thread):
    """The events in order, keyed by tenant to one partition each, at ``RATE`` a second."""

    def __init__(self, bootstrap: str, topic: str, events: list[dict[str, Any]]) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.events = bootstrap, topic, events
        self.sent = 0

    def run(self) -> None:
        p = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5})
        t0 = time.monotonic()
        for i, e in enumerate(self.events):
            t = e["tenant_id"]
            while True:
                try:
                    p.produce(self.topic, orjson.dumps(e), key=t.encode(),
                              partition=TENANTS.index(t))
                    break
                except BufferError:
                    p.poll(0.05)
            self.sent = i + 1
            ahead = t0 + self.sent / RATE - time.monotonic()
            if ahead > 0:
                p.poll(0)
                time.sleep(ahead)
        assert p.flush(60) == 0


@pytest.fixture
def lab(tmp_path: Path, unique: str) -> Any:
    why = netutil.unavailable()
    if why:
        pytest.skip(why)
    with netutil.NetLab(unique, tmp_path) as lab:
        yield lab


def test_loss_a_rate_limit_and_a_partition_lose_nothing_and_keep_window_parity(
    lab: netutil.NetLab, tracking_uri: str, unique: str, tmp_path: Path
) -> None:
    base = windowed_model(tracking_uri)
    bootstrap = lab.bootstrap
    conf = {"bootstrap.servers": bootstrap}
    topics = fu.Topics(unique)
    incidents, entities = f"incidents-{unique}", f"entities-{unique}"
    create_topics(conf, [topics.input], len(TENANTS), 1)
    create_topics(conf, [topics.alerts, topics.dlq], 3, 1)
    create_topics(conf, [incidents, entities], 1, 1, config={"cleanup.policy": "compact"})
    events = _events(EVENTS, seed=51)
    env = fu.stream_env(bootstrap, topics, tracking_uri, base,
                        STREAM_DELIVERY="exactly-once", STREAM_INCIDENT_TOPIC=incidents,
                        STREAM_ENTITY_ALERT_TOPIC=entities,
                        STREAM_KAFKA_PROPERTIES=f"transactional.id=net-{unique}")
    proc = fu.StreamProcess(env, tmp_path / "run.log")
    proc.cmd = lab.inside(sys.executable, "-m", "stream.cli", "run")

    def done() -> int:
        return sum(max(o, 0) for o in fu.committed(bootstrap, topics.group,
                                                   topics.input).values())

    feed = Feed(bootstrap, topics.input, events)
    phases: dict[str, str] = {}

    def phase(name: str, seconds: float) -> None:
        before, t0 = done(), time.monotonic()
        time.sleep(seconds)
        moved = done() - before
        phases[name] = f"{moved} events committed in {time.monotonic() - t0:.0f} s"
        assert moved > 0, f"no progress under {name}: {proc.log()[-2000:]}"

    proc.start()
    feed.start()
    try:
        fu.wait_until(lambda: done() > 0, 120, "first commit", state=lambda: proc.log()[-2000:])
        phase("clean link", 10)
        lab.loss(0.05)
        phase("5% loss each way", 20)
        lab.heal()
        lab.rate(2000)
        phase("2 Mbit/s token bucket", 20)
        lab.unlimited()
        lab.partition()
        time.sleep(3)  # what was in flight settles or fails
        frozen = done()
        time.sleep(27)
        assert done() == frozen, "committed through a partition"
        lab.heal()
        healed = time.monotonic()
        fu.wait_until(lambda: done() > frozen, 300, "a commit after the partition healed",
                      step=0.05, state=lambda: proc.log()[-2000:])
        first_commit = time.monotonic() - healed
        feed.join(timeout=300)
        assert not feed.is_alive()
        fu.wait_until(lambda: done() >= EVENTS, 300, "every event committed",
                      state=lambda: proc.log()[-2000:])
        drained = time.monotonic() - healed
        assert proc.stop() == 0, proc.log()[-3000:]
    finally:
        lab.heal()
        lab.unlimited()
        if proc.alive:
            proc.kill()
    log = proc.log()
    assert "Traceback" not in log, log[-3000:]

    led = fu.ledger(bootstrap, topics)
    assert len(led.inputs) == EVENTS
    lost = sorted(led.lost)
    assert not lost, f"{len(lost)} input offsets without an outcome: {lost[:10]}"
    assert led.stray == 0 and led.inexact() == []
    # Every copy on the alert topic, committed or from an aborted transaction (the
    # embedded broker hands those to read_committed readers too), scores as stream score.
    alerts = [orjson.loads(m.value()) for m in fu.read_topic(bootstrap, topics.alerts)]
    diff = compare(alerts, offline_scores(tmp_path, events, base, tracking_uri))
    assert diff <= 1e-9
    aborted = log.count("aborted")
    print(f"\nnetwork faults (exactly-once, flows windows, incidents, entity alerts): "
          f"{EVENTS} events at {RATE}/s; "
          + "; ".join(f"{k}: {v}" for k, v in phases.items())
          + f"; 30 s partition: no commit during it, first commit {first_commit:.1f} s after "
          f"it healed, all committed {drained:.0f} s after; lost 0, duplicate copies "
          f"{led.duplicates} (exact copies), log lines naming an abort {aborted}; "
          f"window scores vs stream score max |diff| {diff:.3g}")
