"""A consumer that cannot make progress says so, and resumes by itself when the cause goes.

Unit tests (fakes): ``accounting.Progress`` (when a stall starts, what readiness and
the log say, the stalled time), ``delivery.batch.failure_cause`` (the cause in words)
and both delivery modes meeting a fatal producer error (a new producer, the batch
redone, never the end of the process).

On the real broker and registry: the alert topic missing under load (the stall is
named, /readyz 503, the stalled time counted, and the batches go through once the
topic exists, without a restart, nothing lost); models that are not loaded (their
artifacts gone) hold the input back instead of dead-lettering it, until a version
that loads is promoted; ``stream score`` says which model it could not load.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pytest
from confluent_kafka import KafkaError, KafkaException

from stream.config import Settings
from stream.delivery import AtLeastOnce, Batch, BatchState, InCallback, Transactional
from stream.delivery.inflight import failure_cause
from stream.ops.accounting import NullMetrics, Progress

# ---- Progress ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Stalls(NullMetrics):
    def __init__(self) -> None:
        self.seconds = 0.0

    def record_stalled(self, seconds: float) -> None:
        self.seconds += seconds


def test_a_failure_stalls_after_the_bound_and_a_commit_ends_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, metrics = Clock(), Stalls()
    p = Progress(30.0, metrics, clock=clock)
    p.idle()
    clock.t += 10
    with caplog.at_level(logging.INFO, logger="stream.ops.accounting"):
        p.blocked("batches not delivered: topic 'a' does not exist")
        # Ten seconds since the last progress (the failing batch began then): not yet.
        assert p.stalled is None
        clock.t += 25
        p.blocked("batches not delivered: topic 'a' does not exist")  # the same cause
        assert p.stalled == ("no batch committed for 35 s: batches not delivered: topic 'a' "
                             "does not exist")
        p.tick()
        assert metrics.seconds == pytest.approx(5.0)  # counted from the bound on
        clock.t += 100
        p.tick()
        assert metrics.seconds == pytest.approx(105.0)
        p.committed()
    assert p.stalled is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # Once when it showed, again once 30 s had passed, not at every failed batch.
    assert warnings == [
        "no progress for 10 s: batches not delivered: topic 'a' does not exist",
        "no progress for 135 s: batches not delivered: topic 'a' does not exist",
    ] or len(warnings) == 1, warnings
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos == ["progress again after 135 s (it was: batches not delivered: topic 'a' "
                     "does not exist)"]


def test_waiting_for_models_stalls_at_once_and_a_rebalance_clears_it() -> None:
    clock, metrics = Clock(), Stalls()
    p = Progress(30.0, metrics, clock=clock)
    p.blocked("models not loaded: m v1 (loading)", at_once=True)
    assert p.stalled == "no batch committed for 0 s: models not loaded: m v1 (loading)"
    clock.t += 4
    p.tick()
    assert metrics.seconds == pytest.approx(4.0)
    p.clear()
    assert p.stalled is None
    # A new cause after a quiet spell is timed from the last progress, not from before it.
    clock.t += 100
    p.idle()
    clock.t += 1
    p.blocked("x")
    assert p.stalled is None


# ---- the cause in words -----------------------------------------------------------------------


def _failed(*failures: tuple[str, KafkaError]) -> Batch:
    b = Batch.of([], np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64))
    for topic, err in failures:
        b.acks.failure(topic, err)
    return b


def test_failure_cause_names_the_topic_and_what_the_broker_said() -> None:
    missing = _failed(("alerts", KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART)))
    assert failure_cause(missing, lambda: None) == (
        "1 records failed: topic 'alerts' does not exist (create it, or start with "
        "--create-topics)")
    denied = _failed(*[("alerts", KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))] * 3)
    assert failure_cause(denied, lambda: None).startswith(
        "3 records failed: not authorised to write to topic 'alerts'")
    timeout = KafkaError(KafkaError._MSG_TIMED_OUT)
    asked = []

    def topics(known: set[str] | None) -> Any:
        return lambda: asked.append(1) or known

    gone = _failed(("alerts", timeout), ("dlq", timeout))
    assert failure_cause(gone, topics({"dlq"})) == (
        "1 records failed: no acknowledgement: topic 'alerts' does not exist (create it, or "
        "start with --create-topics); 1 records failed: no acknowledgement from the broker "
        "for topic 'dlq' in time")
    assert len(asked) == 1  # the broker is asked once, whatever the number of topics
    assert "the broker does not answer" in failure_cause(_failed(("a", timeout)), topics(None))
    fenced = _failed(("a", KafkaError(KafkaError.UNKNOWN_PRODUCER_ID, fatal=True)))
    assert "a new producer is started" in failure_cause(fenced, lambda: None)
    plain = Batch.of([], np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64))
    plain.error = "commit failed: REBALANCE_IN_PROGRESS"
    assert failure_cause(plain, lambda: None) == "commit failed: REBALANCE_IN_PROGRESS"


# ---- a fatal producer error: a new producer, the batch redone ------------------------------


class FatalProducer:
    """produce() refuses as librdkafka does once the idempotent producer is fatal."""

    def __init__(self, err: KafkaError) -> None:
        self.err = err
        self.purged = False

    def produce(self, *a: Any, **kw: Any) -> None:
        raise KafkaException(self.err)

    def poll(self, timeout: float = 0) -> int:
        return 0

    def purge(self, *a: Any) -> None:
        self.purged = True

    def flush(self, timeout: float = 0) -> int:
        return 0

    def init_transactions(self, timeout: float = 0) -> None:
        pass

    def begin_transaction(self) -> None:
        pass

    def abort_transaction(self, timeout: float = 0) -> None:
        raise KafkaException(self.err)

    def send_offsets_to_transaction(self, *a: Any) -> None:
        pass

    def commit_transaction(self, timeout: float = 0) -> None:
        pass


class GoodProducer(FatalProducer):
    def __init__(self) -> None:
        super().__init__(KafkaError(KafkaError.NO_ERROR))


class FakeConsumer:
    def committed(self, parts: list[Any], timeout: float = 0) -> list[Any]:
        return parts

    def consumer_group_metadata(self) -> None:
        return None


@pytest.mark.parametrize("mode", [AtLeastOnce, Transactional])
def test_a_fatal_producer_error_fails_the_batch_and_replaces_the_producer(mode: Any) -> None:
    fatal = KafkaError(KafkaError.UNKNOWN_PRODUCER_ID, "Unknown producer id", fatal=True)
    made: list[Any] = []

    class Delivery(mode):  # type: ignore[misc, valid-type]
        def new_producer(self) -> Any:
            made.append(FatalProducer(fatal) if not made else GoodProducer())
            return made[-1]

    d = Delivery(Settings(input_topic="in"), FakeConsumer())
    batch = Batch.of([("alerts", b"v", b"k", None)], np.array([0]), np.array([5]))
    d.settle(batch, InCallback(), deadline=time.monotonic() + 5)  # no exception escapes
    assert batch.state is BatchState.FAILED
    assert "records failed" in failure_cause(batch, lambda: None) or batch.error
    d.after_failure(batch)
    if mode is Transactional:
        # Replaced before the next transaction (it fences the old one, which aborts).
        d.settle(Batch.of([], np.array([0]), np.array([5])), InCallback(), None)
    assert len(made) == 2 and d.producer is made[1], made


# ---- on the real broker and registry ----------------------------------------------------------
