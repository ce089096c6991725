"""The state keeper and the changelog with fake clients (no broker): a batch's changes as
changelog records and back into a fresh store, what a restore leaves out, its failure
paths, and the keeper's ready / committed / failed / forget around a batch."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from stream.config import Settings
from stream.delivery.inflight import Batch
from stream.features import FeatureSpec, RecordColumns, WindowStore
from stream.state import changelog
from stream.state import keeper as keeper_mod
from stream.state.keeper import StateKeeper, StateUnavailable

SPEC = FeatureSpec.parse([
    ("c", "count(by=src, window=60s)"),
    ("d", "distinct(dst, by=src, window=60s)"),
    ("m", "mean(x, by=src, decay=30s)"),
])
SETTINGS = Settings(input_topic="flows", group_id="g")
TOPIC = SETTINGS.changelog_topic


def _events(t0: float, n: int = 30, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [{"tenant_id": "acme", "timestamp": t0 + i, "src": f"h{rng.integers(3)}",
             "dst": f"d{rng.integers(5)}", "x": float(rng.integers(100))} for i in range(n)]


def _compute(store: WindowStore, events: list[dict[str, Any]]) -> np.ndarray:
    return SPEC.compute(RecordColumns(events), store=store,
                        tenants=[e["tenant_id"] for e in events]).X


class Msg:
    def __init__(self, key: bytes | None = None, value: bytes | None = None,
                 headers: Any = None, error: KafkaError | None = None) -> None:
        self._key, self._value, self._headers, self._error = key, value, headers, error

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> Any:
        return self._headers

    def error(self) -> KafkaError | None:
        return self._error


class RestoreConsumer:
    """The changelog partition as a list of records: one ``consume`` returns them all and
    the end of the partition (unless ``eof`` is False: it then never ends)."""

    def __init__(self, records: list[Any], eof: bool = True,
                 error: KafkaError | None = None) -> None:
        self.msgs = [Msg(key, value, headers) for _topic, value, key, headers, *_ in records]
        self.eof, self.error = eof, error
        self.assigned: list[TopicPartition] = []
        self.closed = False
        self._given = False

    def get_watermark_offsets(self, tp: TopicPartition, timeout: float = 0) -> tuple[int, int]:
        return 0, len(self.msgs)

    def assign(self, tps: list[TopicPartition]) -> None:
        self.assigned = tps

    def consume(self, n: int, timeout: float) -> list[Msg]:
        if self.error is not None:
            return [Msg(error=self.error)]
        if self._given:
            return []
        self._given = True
        return [*self.msgs, *([Msg(error=KafkaError(KafkaError._PARTITION_EOF))]
                              if self.eof else [])]

    def close(self) -> None:
        self.closed = True


def _serve(monkeypatch: pytest.MonkeyPatch, consumer: RestoreConsumer) -> list[dict[str, Any]]:
    confs: list[dict[str, Any]] = []

    def new_consumer(conf: dict[str, Any]) -> RestoreConsumer:
        confs.append(conf)
        return consumer

    monkeypatch.setattr(changelog, "new_consumer", new_consumer)
    return confs


def test_a_batchs_changes_restore_into_a_fresh_store_as_they_were(
        monkeypatch: pytest.MonkeyPatch) -> None:
    store = WindowStore(track=True)
    _compute(store, _events(1000.0))
    records = changelog.records(store, TOPIC, {0: 30})
    # One record per changed key, each with the input offset its batch committed.
    assert records and all(r[0] == TOPIC and r[3] == [(changelog.OFFSET_HEADER, b"30")]
                           for r in records)
    fake = RestoreConsumer(records)
    confs = _serve(monkeypatch, fake)
    fresh = WindowStore(track=True)
    n = changelog.restore(fresh, SETTINGS, 0, 30)
    assert n == len([r for r in records if not r[2].startswith(b"\x00")]) > 0
    assert fake.closed and fake.assigned[0].topic == TOPIC
    # Only what was committed is read, with the input consumer's settings.
    assert confs[0]["isolation.level"] == "read_committed"
    assert confs[0]["group.id"] == "g.restore"
    later = _events(1030.0, seed=1)
    assert np.array_equal(_compute(fresh, later), _compute(store, later))


def test_the_records_of_a_batch_that_never_committed_are_left_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    store = WindowStore(track=True)
    first, second = _events(1000.0), _events(1030.0, seed=1)
    _compute(store, first)
    committed = changelog.records(store, TOPIC, {0: 30})
    _compute(store, second)
    aborted = changelog.records(store, TOPIC, {0: 60})  # its transaction never committed
    _serve(monkeypatch, RestoreConsumer(committed + aborted))
    fresh = WindowStore(track=True)
    changelog.restore(fresh, SETTINGS, 0, 30)
    only_first = WindowStore()
    _compute(only_first, first)
    later = _events(1060.0, seed=2)
    assert np.array_equal(_compute(fresh, later), _compute(only_first, later))


def test_tombstones_remove_keys_and_unreadable_records_start_empty(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    store = WindowStore(track=True)
    _compute(store, _events(1000.0))
    records = changelog.records(store, TOPIC, {0: 30})
    state = [r for r in records if r[1] is not None and b"\x1e" in r[2]]
    headers = [(changelog.OFFSET_HEADER, b"30")]
    broken = (TOPIC, b"\x00 not a state", state[0][2], headers, 0)
    tomb = (TOPIC, None, state[1][2], headers, 0)
    _serve(monkeypatch, RestoreConsumer([*records, broken, tomb]))
    fresh = WindowStore(track=True)
    with caplog.at_level(logging.WARNING, logger=changelog.__name__):
        n = changelog.restore(fresh, SETTINGS, 0, 30)
    assert n == len(state) - 2
    assert "1 changelog records do not load" in caplog.text


def test_nothing_committed_restores_nothing_and_reads_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    confs = _serve(monkeypatch, RestoreConsumer([]))
    store = WindowStore(track=True)
    _compute(store, _events(1000.0))
    assert changelog.restore(store, SETTINGS, 0, -1) == 0
    assert confs == [] and store.entities_in(0) == 0


def test_a_broker_error_while_restoring_raises_and_closes_the_consumer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    store = WindowStore(track=True)
    _compute(store, _events(1000.0))
    fake = RestoreConsumer(changelog.records(store, TOPIC, {0: 30}),
                           error=KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    _serve(monkeypatch, fake)
    with pytest.raises(KafkaException):
        changelog.restore(WindowStore(track=True), SETTINGS, 0, 30)
    assert fake.closed


def test_a_restore_that_never_reaches_the_end_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    store = WindowStore(track=True)
    _compute(store, _events(1000.0))
    fake = RestoreConsumer(changelog.records(store, TOPIC, {0: 30}), eof=False)
    _serve(monkeypatch, fake)
    monkeypatch.setattr(changelog, "RESTORE_TIMEOUT_S", 0.0)
    with pytest.raises(RuntimeError, match="took over"):
        changelog.restore(WindowStore(track=True), SETTINGS, 0, 30)
    assert fake.closed


# ---- the keeper ------------------------------------------------------------------------


class InputConsumer:
    """What the keeper asks of the input consumer: partitions and committed offsets."""

    def __init__(self, partitions: int = 3, committed: int = 30) -> None:
        self.partitions, self.offset = partitions, committed

    def list_topics(self, topic: str, timeout: float = 0) -> Any:
        parts = dict.fromkeys(range(self.partitions))
        return SimpleNamespace(topics={topic: SimpleNamespace(partitions=parts)})

    def committed(self, tps: list[TopicPartition], timeout: float = 0) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.offset) for tp in tps]


class Recorder:
    def __init__(self) -> None:
        self.calls: list[Any] = []


@pytest.fixture
def kept(monkeypatch: pytest.MonkeyPatch) -> tuple[StateKeeper, Recorder, Recorder]:
    restores, topics = Recorder(), Recorder()

    def restore(store: WindowStore, settings: Any, partition: int, committed: int) -> int:
        restores.calls.append((partition, committed))
        return 0

    def create_topics(_common: Any, names: list[str], partitions: int, *_a: Any,
                      **kw: Any) -> list[str]:
        topics.calls.append((names, partitions, kw.get("config")))
        return names

    monkeypatch.setattr(keeper_mod.changelog, "restore", restore)
    monkeypatch.setattr(keeper_mod.kafka_clients, "create_topics", create_topics)
    return StateKeeper(SETTINGS, InputConsumer()), restores, topics


def test_ready_restores_each_partition_once_until_it_is_dropped(
        kept: tuple[StateKeeper, Recorder, Recorder]) -> None:
    keeper, restores, topics = kept
    keeper.ready([1, 0, 1])
    keeper.ready([0, 1])
    assert restores.calls == [(0, 30), (1, 30)]
    # The changelog topic is made once, compacted, with the input topic's partitions.
    assert topics.calls == [([TOPIC], 3, {"cleanup.policy": "compact"})]
    keeper.failed([1])  # a failed batch: partition 1's windows are gone, restored again
    keeper.forget(0)    # revoked and assigned again
    keeper.ready([0, 1, 2])
    assert restores.calls[2:] == [(0, 30), (1, 30), (2, 30)]
    assert len(topics.calls) == 1


def test_a_restore_that_fails_is_state_unavailable_and_is_tried_again(
        monkeypatch: pytest.MonkeyPatch, kept: tuple[StateKeeper, Recorder, Recorder]) -> None:
    keeper, restores, _topics = kept
    failing = [True]

    def restore(store: WindowStore, settings: Any, partition: int, committed: int) -> int:
        if failing[0]:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))
        restores.calls.append(partition)
        return 0

    monkeypatch.setattr(keeper_mod.changelog, "restore", restore)
    with pytest.raises(StateUnavailable, match=rf"{TOPIC}\[0\]"):
        keeper.ready([0])
    failing[0] = False
    keeper.ready([0])
    assert restores.calls == [0]


def test_without_a_changelog_there_is_nothing_to_restore_or_write(
        kept: tuple[StateKeeper, Recorder, Recorder]) -> None:
    _keeper, restores, topics = kept
    keeper = StateKeeper(Settings(input_topic="flows", state="none"), InputConsumer())
    keeper.ready([0, 1])
    _compute(keeper.store, _events(1000.0))
    outcome = SimpleNamespace(incident_records=[], entity_records=[])
    batch = Batch.of([], np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64))
    assert keeper.records(outcome, batch) == []
    assert restores.calls == [] and topics.calls == []


def test_a_batch_carries_its_changelog_records_and_its_fate_decides_its_state(
        kept: tuple[StateKeeper, Recorder, Recorder]) -> None:
    keeper, _restores, _topics = kept
    incidents = SimpleNamespace(calls=[])
    incidents.commit = lambda: incidents.calls.append("commit")
    incidents.rollback = lambda: incidents.calls.append("rollback")
    keeper.incidents = incidents
    keeper.ready([0])
    _compute(keeper.store, _events(1000.0))
    outcome = SimpleNamespace(incident_records=[], entity_records=[])
    batch = Batch.of([], np.zeros(30, dtype=np.int64), np.arange(30, dtype=np.int64))
    records = keeper.records(outcome, batch)
    assert records and {r[0] for r in records} == {TOPIC}
    assert all(r[3] == [(changelog.OFFSET_HEADER, b"30")] for r in records)
    keeper.committed()
    assert incidents.calls == ["commit"] and keeper.store.entities_in(0) > 0
    keeper.failed([0])
    assert incidents.calls == ["commit", "rollback"] and keeper.store.entities_in(0) == 0
