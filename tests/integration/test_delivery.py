"""Delivery guarantees of one consumer, in process, on the real embedded broker.

The alert side is made to fail while the consumer side stays healthy: the
pipeline's producer (built from its own settings) reaches the broker through a
Kafka-protocol proxy that the test cuts or stalls. What must hold:

- backpressure: while the producer cannot deliver, the partitions are paused
  (nothing more is fetched, nothing is buffered), the consumer keeps its group
  membership past ``max.poll.interval.ms``, and processing resumes afterwards;
- an outage longer than ``message.timeout.ms`` fails the batch, which is redone
  (at-least-once: rewind; exactly-once: abort, rewind to the committed offsets):
  no input offset is lost or skipped;
- a revocation while a batch is in flight settles that batch before the
  partitions go: the next owner starts right after it (exactly-once: no input
  offset is processed by both), and the revoked partitions' lag series go;
- secrets in pass-through client properties never reach the logs.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import OFFSET_INVALID

from stream.config import Settings
from stream.consumer import service
from stream.kafka import clients as kafka_clients
from stream.kafka.embedded import EmbeddedBroker
from stream.ops.metrics import Metrics
from tests import faultutil as fu

# Real broker, registry or child processes: not part of the fast unit run.
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model(tracking_uri: str) -> str:
    return fu.shared_model(tracking_uri)


@pytest.fixture
def proxy(broker: EmbeddedBroker) -> Iterator[fu.Proxy]:
    p = fu.Proxy(broker.bootstrap).start()
    yield p
    if p.proc is not None:
        p.thaw()
        p.stop()


def _check_ledger(broker: EmbeddedBroker, topics: fu.Topics, n: int) -> fu.Ledger:
    led = fu.ledger(broker.bootstrap, topics)
    assert len(led.inputs) == n
    assert not led.lost, f"input offsets without an outcome: {sorted(led.lost)[:10]}"
    assert led.stray == 0
    assert led.inexact() == [], "a duplicate differs from its original"
    ends = fu.committed(broker.bootstrap, topics.group, topics.input)
    per_partition: dict[int, int] = {}
    for p, o in led.inputs:
        per_partition[p] = max(per_partition.get(p, 0), o + 1)
    # Unkeyed input may leave a partition empty (sticky partitioner); it has no commit.
    assert ends == {p: per_partition.get(p, OFFSET_INVALID) for p in ends}, (
        "committed offsets must end exactly at the input's end")
    return led


def _outage(broker: EmbeddedBroker, tracking_uri: str, model: str, delivery: str,
            caplog: pytest.LogCaptureFixture) -> str:
    """One consumer whose alert side is stalled, then cut for 9 s; returns a summary."""
    unique = uuid.uuid4().hex[:8]
    topics = fu.Topics(unique)
    topics.create(broker, 3)
    proxy = fu.Proxy(broker.bootstrap).start()
    first = fu.fill(broker.bootstrap, topics.input, 3000, seed=7)
    # max.poll.interval.ms below the outage: membership survives only if the paused
    # consumer keeps being polled. message.timeout.ms below it too: records fail.
    s = fu.settings(broker.bootstrap, topics, tracking_uri, model, delivery=delivery,
                    kafka_properties=(("max.poll.interval.ms", "7000"),
                                      ("transactional.id", f"tx-{unique}")))
    pipeline = service.build(s)
    fu.route_producer(pipeline, proxy.bootstrap, **{"message.timeout.ms": "3000"})
    thread = fu.start(pipeline)
    try:
        fu.wait_until(lambda: pipeline.stats.consumed >= first, 60, "the first events")
        # Idle, so the next batch is certainly produced into the stalled link; then cut it.
        proxy.freeze()
        n = first + fu.fill(broker.bootstrap, topics.input, 20000, seed=8)
        fu.wait_until(lambda: pipeline.stats.pauses >= 1, 15, "partitions paused")
        proxy.stop()
        time.sleep(9)  # > max.poll.interval.ms and > message.timeout.ms
        assert pipeline.stats.consumed == first, "a batch settled while cut off"
        assert pipeline.stats.held == 0, "a poll while paused returned messages"
        proxy.start()
        recovery = fu.wait_until(lambda: pipeline.stats.consumed > first, 90, "resumption")
        fu.wait_until(lambda: pipeline.stats.consumed >= n, 120, "the rest of the input")
        mine = [r.getMessage() for r in caplog.records if topics.input in r.getMessage()]
    finally:
        fu.stop(pipeline, thread)
        proxy.stop()

    st = pipeline.stats
    assert st.rewinds >= 1 and st.delivery_failures >= 1  # the batch in flight was redone
    # The group never dropped the paused consumer: one assignment, no loss, no revocation
    # (until it was stopped, after ``mine`` was taken).
    assert [m.split(":")[0] for m in mine if m.startswith("partitions")] == [
        "partitions assigned"], mine
    led = _check_ledger(broker, topics, n)
    return (f"{delivery}: outage 9s, paused {st.pauses}x for {st.paused_seconds:.1f}s, "
            f"rewinds {st.rewinds}, resumed {recovery:.1f}s after the link came back; "
            f"ledger {led.summary()}")


def test_alert_side_outage_pauses_then_redoes_the_batch(
    broker: EmbeddedBroker, tracking_uri: str, model: str, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    # Both delivery modes side by side (own topics, group and proxy): half the wall time.
    for summary in fu.concurrently(
        lambda: _outage(broker, tracking_uri, model, "at-least-once", caplog),
        lambda: _outage(broker, tracking_uri, model, "exactly-once", caplog),
    ):
        print("\n" + summary)


def test_full_producer_queue_pauses_instead_of_buffering(
    broker: EmbeddedBroker, tracking_uri: str, model: str, unique: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topics = fu.Topics(unique)
    topics.create(broker, 3)
    n = fu.fill(broker.bootstrap, topics.input, 3000, seed=8)
    s = fu.settings(broker.bootstrap, topics, tracking_uri, model)
    pipeline = service.build(s)
    # A local queue far smaller than a batch: every batch overflows it.
    fu.route_producer(pipeline, broker.bootstrap, **{"queue.buffering.max.messages": "100"})
    thread = fu.start(pipeline)
    fu.wait_until(lambda: pipeline.stats.consumed >= n, 60, "the input")
    fu.stop(pipeline, thread)
    st = pipeline.stats
    assert st.pauses >= 1 and "local queue full" in caplog.text
    assert st.delivery_failures == 0 and st.held == 0
    led = _check_ledger(broker, topics, n)
    assert led.duplicates == 0


def test_revocation_settles_the_batch_in_flight_exactly_once(
    broker: EmbeddedBroker, proxy: fu.Proxy, tracking_uri: str, model: str, unique: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    topics = fu.Topics(unique)
    topics.create(broker, 4)
    first = fu.fill(broker.bootstrap, topics.input, 2000, seed=9)

    def build(name: str, metrics: Metrics | None = None) -> Any:
        return service.build(fu.settings(
            broker.bootstrap, topics, tracking_uri, model, delivery="exactly-once",
            kafka_properties=(("transactional.id", f"tx-{name}-{unique}"),)), metrics=metrics)

    old_metrics = Metrics()
    old = build("old", old_metrics)
    fu.route_producer(old, proxy.bootstrap)
    old_thread = fu.start(old)
    fu.wait_until(lambda: old.stats.consumed >= first, 60, "the first events")
    # Idle, then stall the link and feed more: the next batch stays in flight, paused.
    proxy.freeze()
    n = first + fu.fill(broker.bootstrap, topics.input, 20000, seed=10)
    fu.wait_until(lambda: old.stats.pauses >= 1, 15, "partitions paused")
    for p in range(4):  # a lag series per partition, as the periodic lag report leaves them
        old_metrics.set_lag(topics.input, p, 7)

    new = build("new")
    new_thread = fu.start(new)

    def state() -> str:
        return (f"old: {sorted(old.assignment)} {old.stats}; new: {sorted(new.assignment)} "
                f"{new.stats}; log: {[r.getMessage()[:120] for r in caplog.records[-30:]]}")

    fu.wait_until(lambda: "revocation with a batch in flight" in caplog.text, 60,
                  "a revocation while a batch is in flight", state=state)
    time.sleep(1)
    proxy.thaw()
    fu.wait_until(lambda: new.stats.consumed > 0, 60, "the new owner's first batch",
                  state=state)
    kept = {p for _t, p in old.assignment}
    lag_series = {p for p in range(4) if old_metrics.registry.get_sample_value(
        "stream_consumer_lag", {"topic": topics.input, "partition": str(p)}) is not None}
    assert 0 < len(kept) < 4 and lag_series == kept, "a revoked partition kept its lag series"
    fu.wait_until(lambda: old.stats.consumed + new.stats.consumed >= n, 120, "the input",
                  state=state)
    fu.stop(new, new_thread)
    fu.stop(old, old_thread)

    assert old.stats.settled_on_revoke >= 1
    assert old.stats.delivery_failures == new.stats.delivery_failures == 0
    # Nothing was aborted, so even on Tansu (which shows aborted records) every input
    # offset has exactly one outcome: no offset was processed by both owners.
    led = _check_ledger(broker, topics, n)
    assert led.duplicates == 0, led.summary()
    assert old.stats.consumed + new.stats.consumed == n


def test_secrets_in_client_properties_never_logged(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    secret = "s3cr3t-" + "x" * 8
    s = Settings(bootstrap_servers="127.0.0.1:1", kafka_properties=(
        ("sasl.username", "stream"), ("sasl.password", secret),
        ("ssl.key.password", secret), ("sasl.oauthbearer.client.secret", secret)))
    caplog.set_level(logging.DEBUG, logger="stream")
    consumer = kafka_clients.make_consumer(s)
    producer = kafka_clients.make_producer(s, transactional_id="tx-secret-test")
    consumer.close()
    producer.flush(0)
    assert "sasl.password" in caplog.text and "***" in caplog.text  # the config was logged
    out = capfd.readouterr()
    assert secret not in caplog.text + out.out + out.err
