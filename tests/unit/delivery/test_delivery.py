"""At-least-once settling driven with fake clients: what is committed, when nothing is, and
how a failed batch is redone (no broker: the commit steps of ``at_least_once.py`` one by
one, their failure paths included)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from stream.config import Settings
from stream.delivery import outbox
from stream.delivery.at_least_once import AtLeastOnce
from stream.delivery.inflight import Batch, BatchState


class Msg:
    def __init__(self, topic: str) -> None:
        self._topic = topic

    def topic(self) -> str:
        return self._topic


class FakeProducer:
    """Queues each produce's delivery callback; ``poll`` runs them (as librdkafka does),
    failing the records whose topic is in ``fail`` and refusing ``full_once`` produces
    with a full local queue first."""

    def __init__(self, fail: set[str] | None = None, full_once: int = 0,
                 ack: bool = True) -> None:
        self.fail = fail or set()
        self.full_once = full_once
        self.ack = ack
        self.sent: list[tuple[str, bytes | None]] = []
        self.queued: list[tuple[Any, str]] = []
        self.purged = False

    def produce(self, topic: str, value: bytes | None = None, key: Any = None,
                partition: int = -1, on_delivery: Any = None, headers: Any = None) -> None:
        if self.full_once:
            self.full_once -= 1
            raise BufferError("Local: Queue full")
        self.sent.append((topic, value))
        self.queued.append((on_delivery, topic))

    def poll(self, timeout: float = 0) -> int:
        if not self.ack:
            return 0
        done, self.queued = self.queued, []
        for cb, topic in done:
            err = KafkaError(KafkaError._MSG_TIMED_OUT) if topic in self.fail else None
            cb(err, Msg(topic))
        return len(done)

    def purge(self) -> None:
        self.purged = True

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0


class FakeConsumer:
    def __init__(self, error: KafkaError | None = None) -> None:
        self.error = error
        self.commits: list[list[tuple[str, int, int]]] = []

    def commit(self, offsets: list[TopicPartition], asynchronous: bool = True) -> Any:
        assert asynchronous is False, "at-least-once commits synchronously"
        self.commits.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])
        if self.error is not None:  # what librdkafka returns: the partition with its error
            return [SimpleNamespace(topic=offsets[0].topic, partition=offsets[0].partition,
                                    error=self.error)]
        return offsets


class Waits:
    may_poll = True

    def __init__(self) -> None:
        self.why: list[str] = []

    def stalled(self, why: str) -> None:
        self.why.append(why)


def _delivery(consumer: FakeConsumer, *producers: FakeProducer,
              stopping: Any = lambda: False) -> AtLeastOnce:
    made = list(producers)

    class Fake(AtLeastOnce):
        def new_producer(self) -> Any:
            return made.pop(0)

    return Fake(Settings(input_topic="flows"), consumer, stopping=stopping)


def _batch() -> Batch:
    records: list[Any] = [("alerts", b'{"a":1}', b"acme", None),
                          ("alerts", b'{"a":2}', b"acme", None),
                          ("dlq", b"junk", None, [("reason", b"malformed_json")])]
    return Batch.of(records, np.array([0, 0, 1]), np.array([10, 12, 7]))


def test_every_record_acknowledged_then_the_next_offsets_committed() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    d = _delivery(consumer, producer)
    batch = _batch()
    d.settle(batch, Waits(), None)
    assert batch.state is BatchState.DONE
    assert [t for t, _ in producer.sent] == ["alerts", "alerts", "dlq"]
    assert consumer.commits == [[("flows", 0, 13), ("flows", 1, 8)]]


def test_a_failed_record_commits_nothing_and_the_batch_is_redone_on_a_new_producer() -> None:
    consumer = FakeConsumer()
    first, second = FakeProducer(fail={"dlq"}), FakeProducer()
    d = _delivery(consumer, first, second)
    batch = _batch()
    d.settle(batch, Waits(), None)
    assert batch.state is BatchState.FAILED and consumer.commits == []
    assert "1 records failed" in batch.error
    # Redone from its first offsets, on a producer that kept no broker state.
    assert d.rewind_targets(batch, owned={0, 1}) == {0: 10, 1: 7}
    assert d.rewind_targets(batch, owned={1}) == {1: 7}  # a partition lost meanwhile
    d.after_failure(batch)
    assert first.purged and d.producer is second
    again = _batch()
    d.settle(again, Waits(), None)
    assert again.state is BatchState.DONE and consumer.commits == [[("flows", 0, 13),
                                                                    ("flows", 1, 8)]]


def test_a_refused_commit_fails_the_batch() -> None:
    consumer = FakeConsumer(error=KafkaError(KafkaError.REBALANCE_IN_PROGRESS))
    d = _delivery(consumer, FakeProducer())
    batch = _batch()
    d.settle(batch, Waits(), None)
    assert batch.state is BatchState.FAILED and len(consumer.commits) == 1
    # Not the producer's fault: it is kept.
    kept = d.producer
    d.after_failure(batch)
    assert d.producer is kept


def test_a_full_local_queue_is_waited_out_not_dropped() -> None:
    consumer, producer = FakeConsumer(), FakeProducer(full_once=2)
    d = _delivery(consumer, producer)
    waits = Waits()
    batch = _batch()
    d.settle(batch, waits, None)
    assert batch.state is BatchState.DONE and len(producer.sent) == 3
    assert waits.why == ["local queue full", "local queue full"]


def test_stopping_with_acknowledgements_stalled_gives_the_batch_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox, "STOP_GRACE_S", 0.0)
    consumer, producer = FakeConsumer(), FakeProducer(ack=False)
    d = _delivery(consumer, producer, FakeProducer(), stopping=lambda: True)
    batch = _batch()
    d.settle(batch, Waits(), None)
    assert batch.state is BatchState.FAILED and consumer.commits == []
    assert "stopping with 3 records unacknowledged" in batch.error
    # Stopping: the producer is not replaced (the process is on its way out).
    d.after_failure(batch)
    assert d.producer is producer


def test_a_fatal_commit_error_ends_the_process() -> None:
    fatal = KafkaError(KafkaError._FENCED, fatal=True)
    d = _delivery(FakeConsumer(error=fatal), FakeProducer())
    with pytest.raises(KafkaException):
        d.settle(_batch(), Waits(), None)


# ---- exactly-once ----------------------------------------------------------------------

class FakeTxnProducer(FakeProducer):
    """A transactional producer: the calls, in order, and the errors asked for."""

    def __init__(self, log: list[str], raise_on: dict[str, KafkaError] | None = None,
                 **kw: Any) -> None:
        super().__init__(**kw)
        self.log = log
        self.raise_on = raise_on or {}

    def _call(self, name: str) -> None:
        self.log.append(name)
        err = self.raise_on.pop(name, None)
        if err is not None:
            raise KafkaException(err)

    def init_transactions(self, timeout: float = 0) -> None:
        self._call("init")

    def begin_transaction(self) -> None:
        self._call("begin")

    def send_offsets_to_transaction(self, offsets: Any, meta: Any, timeout: float = 0) -> None:
        self._call("offsets " + ",".join(f"{tp.partition}:{tp.offset}" for tp in offsets))

    def commit_transaction(self, timeout: float = 0) -> None:
        self._call("commit")

    def abort_transaction(self, timeout: float = 0) -> None:
        self._call("abort")

    def produce(self, topic: str, *args: Any, **kw: Any) -> None:
        super().produce(topic, *args, **kw)
        self.log.append(f"produce {topic}")


class GroupConsumer:
    def __init__(self, committed: dict[int, int]) -> None:
        self._committed = committed

    def consumer_group_metadata(self) -> object:
        return object()

    def committed(self, parts: list[TopicPartition], timeout: float = 0) -> list[Any]:
        return [TopicPartition(tp.topic, tp.partition, self._committed.get(tp.partition, -1001))
                for tp in parts]


def _txn(consumer: Any, *producers: FakeTxnProducer) -> Any:
    from stream.delivery.transactional import Transactional

    made = list(producers)

    class Fake(Transactional):
        def new_producer(self) -> Any:
            return made.pop(0)

    return Fake(Settings(input_topic="flows",
                         kafka_properties=(("transactional.id", "t-1"),)), consumer)


def test_a_transaction_holds_the_records_and_the_offsets() -> None:
    log: list[str] = []
    d = _txn(GroupConsumer({}), FakeTxnProducer(log))
    batch = _batch()
    d.settle(batch, Waits(), None)
    assert batch.state is BatchState.DONE
    assert log == ["init", "begin", "produce alerts", "produce alerts", "produce dlq",
                   "offsets 0:13,1:8", "commit"]


def test_a_failed_record_aborts_and_rewinds_to_the_group_offsets() -> None:
    log: list[str] = []
    d = _txn(GroupConsumer({0: 9}), FakeTxnProducer(log, fail={"dlq"}))
    batch = _batch()
    d.settle(batch, Waits(), None)
    assert batch.state is BatchState.FAILED and "1 records failed" in batch.error
    assert log[-1] == "abort" and "commit" not in log and not any(
        x.startswith("offsets") for x in log)
    # Where the aborted transaction left the group; a partition never committed falls
    # back to the batch's first offset.
    assert d.rewind_targets(batch, owned={0, 1}) == {0: 9, 1: 7}


def test_a_fenced_producer_is_replaced_not_aborted() -> None:
    old_log: list[str] = []
    new_log: list[str] = []
    fenced = KafkaError(KafkaError._FENCED, fatal=True)
    d = _txn(GroupConsumer({}), FakeTxnProducer(old_log, raise_on={"commit": fenced}),
             FakeTxnProducer(new_log))
    batch = _batch()
    d.settle(batch, Waits(), None)
    assert batch.state is BatchState.FAILED
    # The old producer cannot abort any more; a new one with the same transactional.id
    # fences it (its init aborts what was left open), and the batch is redone on it.
    assert "abort" not in old_log and old_log[-1] == "commit" and old_log[0] == "init"
    assert new_log == ["init"]
    again = _batch()
    d.settle(again, Waits(), None)
    assert again.state is BatchState.DONE and new_log[-1] == "commit"
