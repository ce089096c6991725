"""Windows end to end: the stream, ``stream score``, crashes and rebalances agree.

On the real embedded broker and a real MLflow registry (SQLite). A model trained
with the ``flows`` recipe (per-source, per-destination and per-pair windows), and one
with the ``network`` recipe (rarity, since, spread, beacon) and the ``ensemble``
detector (the forest and hbos), and one adding the sketched windows (``cardinality``,
``regularity``) under ``hbos``, score the same events identically (<= 1e-9) in
``stream score`` and in the stream; in exactly-once mode across SIGKILLs and
restarts of ``stream run`` (its window state comes back from the changelog topic; a
soak test, run with ``--soak``); and across a rebalance that moves a partition, with
its state, to a second consumer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from confluent_kafka import Producer

from stream import registry
from stream.cli import main
from stream.consumer import service
from stream.features.recipes import recipe
from stream.generate import generate_flows, write_jsonl
from stream.kafka.embedded import EmbeddedBroker
from tests import faultutil as fu
from tests.kafkautil import read_all

pytestmark = pytest.mark.integration

TENANTS = ("acme", "globex")
_models: dict[tuple[str, str, str], str] = {}
#: (recipe, detector): the demo's earlier model, the default recipe with the tool's own
#: detectors, and the default recipe with the sketched windows (``cardinality``'s
#: HyperLogLog past 64 values, ``regularity``'s quantile sketches) under hbos.
MODELS = [("flows", "isolation_forest"), ("network", "ensemble"), ("sketches", "hbos")]
SKETCHES = (
    ("src_ports_1h", 'log1p(cardinality(fill(dst_port, "none"), by=src_ip, window=1h))'),
    ("dst_srcs_1h", "log1p(cardinality(src_ip, by=dst_ip, window=1h))"),
    ("pair_regularity", "regularity(fill(bytes_transferred, 0), by=src_ip>dst_ip, decay=1d)"),
)


def _spec(name: str) -> Any:
    if name != "sketches":
        return recipe(name)
    from stream.features import FeatureSpec
    from stream.features.recipes import RECIPES

    return FeatureSpec.parse([*RECIPES["network"], *SKETCHES])


def windowed_model(tracking_uri: str, kind: tuple[str, str] = MODELS[0]) -> str:
    """A global model on a windowed recipe, trained once per session."""
    key = (tracking_uri, *kind)
    if key not in _models:
        base = "win_" + os.urandom(3).hex()
        normal = list(generate_flows(6000, TENANTS, seed=5, attack_rate=0.0))
        registry.train(normal, model_name=base, uri=tracking_uri, features=_spec(kind[0]),
                       detector=kind[1], do_promote=True)
        _models[key] = base
    return _models[key]


def _events(n: int, seed: int) -> list[dict[str, Any]]:
    return list(generate_flows(n, TENANTS, seed=seed, attack_rate=0.03))


def _produce_by_tenant(bootstrap: str, topic: str, events: list[dict[str, Any]]) -> int:
    """In event order, keyed by tenant, one partition per tenant: each tenant's events
    keep their order, and both partitions carry traffic (and window state)."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for e in events:
        t = e["tenant_id"]
        while True:
            try:
                p.produce(topic, orjson.dumps(e), key=t.encode(), partition=TENANTS.index(t))
                break
            except BufferError:
                p.poll(0.1)
    assert p.flush(30) == 0
    return len(events)


def offline_scores(tmp_path: Path, events: list[dict[str, Any]], base: str, uri: str
                   ) -> dict[str, tuple[float, Any]]:
    """``stream score`` of the events, in order: flow_id -> (score, entity risk)."""
    path, out = tmp_path / "events.jsonl", tmp_path / "scored.jsonl"
    write_jsonl(path, events)
    r = CliRunner().invoke(main, ["score", str(path), "-o", str(out), "--min-level", "low",
                                  "--model-name", base, "--tracking-uri", uri])
    assert r.exit_code == 0, r.output
    scored = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(scored) == len(events)
    return {a["event"]["flow_id"]: (a["anomaly_score"], a.get("entity_risk")) for a in scored}


def compare(stream: list[dict[str, Any]], offline: dict[str, tuple[float, Any]]) -> float:
    """Max |score difference| over every alert copy; every event has one. The entity risk
    an alert carries (window state too: stream.outcomes.risk) is the same, to the bit."""
    seen = {a["event"]["flow_id"] for a in stream}
    assert seen == set(offline), (len(seen), len(offline))
    risky = [a for a in stream if a.get("entity_risk")]
    assert risky, "no alert carried an entity's risk"
    wrong = [a["event"]["flow_id"] for a in stream
             if a.get("entity_risk") != offline[a["event"]["flow_id"]][1]]
    assert wrong == [], (len(wrong), wrong[:3])
    return max(abs(a["anomaly_score"] - offline[a["event"]["flow_id"]][0]) for a in stream)


def _entity_key(d: dict[str, Any]) -> str:
    """An entity alert but what names a topic or a file (alert ids) and the wall clock."""
    kept = {k: v for k, v in d.items() if k not in ("detected_at", "alert_id", "alert_ids")}
    kept["top_events"] = [{k: v for k, v in e.items() if k != "alert_id"}
                          for e in d.get("top_events", ())]
    return orjson.dumps(kept).decode()


def _score_entities(tmp_path: Path, events: list[dict[str, Any]], base: str, uri: str
                    ) -> Path:
    """``stream score --entity-alerts`` of the events, in order: the entity alerts' file."""
    path, out, ent = tmp_path / "e.jsonl", tmp_path / "a.jsonl", tmp_path / "ent.jsonl"
    write_jsonl(path, events)
    r = CliRunner().invoke(main, ["score", str(path), "-o", str(out), "--min-level", "low",
                                  "--entity-alerts", str(ent), "--model-name", base,
                                  "--tracking-uri", uri])
    assert r.exit_code == 0, r.output
    return ent


def _latest(records: list[dict[str, Any]]) -> list[str]:
    """The last record per entity, as a compacted topic keeps it, comparable."""
    last = {r["entity_alert_id"]: r for r in records}
    return sorted(_entity_key(r) for r in last.values())


@pytest.mark.parametrize("kind", MODELS, ids=["flows", "network-ensemble", "sketches-hbos"])
def test_stream_and_stream_score_give_the_same_window_scores(
    broker: EmbeddedBroker, tracking_uri: str, unique: str, tmp_path: Path,
    kind: tuple[str, str],
) -> None:
    base = windowed_model(tracking_uri, kind)
    events = _events(6000, seed=11)
    topics = fu.Topics(unique)
    topics.create(broker, input_partitions=2)
    n = _produce_by_tenant(broker.bootstrap, topics.input, events)
    entity_topic = f"entities-{unique}"
    s = fu.settings(broker.bootstrap, topics, tracking_uri, base,
                    entity_alert_topic=entity_topic)
    pipeline = service.build(s)
    thread = fu.start(pipeline)
    fu.wait_until(lambda: pipeline.stats.consumed >= n, 120, "all events consumed")
    fu.stop(pipeline, thread)
    assert pipeline.stats.dead_letters == 0
    alerts = [orjson.loads(m.value()) for m in read_all(broker.bootstrap, topics.alerts)]
    diff = compare(alerts, offline_scores(tmp_path, events, base, tracking_uri))
    # Entity alerts: the stream's topic and `stream score --entity-alerts` hold the same
    # records (but the wall-clock detected_at), keyed by tenant and entity.
    on_topic = read_all(broker.bootstrap, entity_topic)
    assert on_topic and all(m.key() == orjson.loads(m.value())["entity_alert_id"].encode()
                            for m in on_topic)
    ent = _score_entities(tmp_path, events, base, tracking_uri)

    stream_side = sorted(_entity_key(orjson.loads(m.value())) for m in on_topic)
    offline_side = sorted(_entity_key(orjson.loads(x)) for x in ent.read_bytes().splitlines())
    assert stream_side == offline_side
    statuses = {orjson.loads(m.value())["status"] for m in on_topic}
    print(f"\nentity alerts: {len(on_topic)} records ({sorted(statuses)}), the same in "
          "stream score")
    print(f"\nwindows ({'/'.join(kind)}): stream vs stream score, {len(alerts)} events, "
          f"max |diff| {diff:.3g}")
    assert diff <= 1e-9
    # The state went to the changelog topic, one record per changed entity.
    assert read_all(broker.bootstrap, s.changelog_topic)


@pytest.mark.soak  # ~35 s; once a restarted member waited out its group join in CI
@pytest.mark.parametrize("kind", MODELS, ids=["flows", "network-ensemble", "sketches-hbos"])
def test_exactly_once_windows_survive_sigkill_and_restart(
    broker: EmbeddedBroker, tracking_uri: str, unique: str, tmp_path: Path,
    kind: tuple[str, str],
) -> None:
    base = windowed_model(tracking_uri, kind)
    events = _events(12000, seed=12)
    topics = fu.Topics(unique)
    topics.create(broker, input_partitions=2)
    n = _produce_by_tenant(broker.bootstrap, topics.input, events)
    # A stable transactional.id, as the consumer's own warning asks for exactly-once:
    # a restart then fences the killed process's open transaction at once. (With a
    # random id its transaction stays open, and read_committed reads of the changelog
    # wait for it, which on the embedded broker can outlast the test.)
    entity_topic = f"entities-{unique}"
    env = fu.stream_env(broker.bootstrap, topics, tracking_uri, base,
                        STREAM_DELIVERY="exactly-once",
                        STREAM_ENTITY_ALERT_TOPIC=entity_topic,
                        STREAM_KAFKA_PROPERTIES=f"transactional.id=stream-{topics.unique}")

    def done() -> int:
        return sum(max(o, 0) for o in fu.committed(broker.bootstrap, topics.group,
                                                   topics.input).values())

    log = tmp_path / "run.log"
    kills = 0
    for share in (0.3, 0.6):
        proc = fu.StreamProcess(env, log).start()
        fu.wait_until(lambda s=share: done() >= s * n, 180, f"{share:.0%} committed",
                      state=lambda p=proc: p.log()[-2000:])
        proc.kill()
        kills += 1
    before = len(log.read_text()) if log.exists() else 0
    proc = fu.StreamProcess(env, log).start()
    fu.wait_until(lambda: done() >= n, 180, "every event committed",
                  state=lambda: proc.log()[-2000:])
    # Its predecessor may have committed nearly everything: stop it once it is up (a
    # SIGTERM while it still imports would end it before its handler is installed).
    fu.wait_until(lambda: "consuming " in proc.log()[before:], 60, "the last process up",
                  state=lambda: proc.log()[-2000:])
    assert proc.stop() == 0
    text = proc.log()
    # A partition's windows are restored when a restarted process first reads it, and
    # only if it had committed before: a restart may find nothing of its own to restore
    # (its predecessor got through a partition, or never reached the other one), so
    # the proof is the scores below; at least one restart restores.
    assert text.count("restored") >= 1, text[-3000:]
    # Every copy, committed or from a transaction the kill aborted (the embedded broker
    # hands those to read_committed readers too), carries the score `stream score` gives.
    alerts = [orjson.loads(m.value()) for m in fu.read_topic(broker.bootstrap, topics.alerts)]
    diff = compare(alerts, offline_scores(tmp_path, events, base, tracking_uri))
    print(f"\nwindows ({'/'.join(kind)}) across {kills} SIGKILLs (exactly-once): {n} events, "
          f"{len(alerts)} alert copies, max |diff| {diff:.3g}")
    assert diff <= 1e-9
    # Entity alerts, episodes included (restored from the changelog after each kill): the
    # latest record per entity is stream score's. (Aborted copies come before the batch
    # that redid them, so the last record of each entity is a committed one.)
    ent = _score_entities(tmp_path, events, base, tracking_uri)
    on_topic = [orjson.loads(m.value()) for m in fu.read_topic(broker.bootstrap, entity_topic)]
    offline = [orjson.loads(x) for x in ent.read_bytes().splitlines()]
    assert on_topic and _latest(on_topic) == _latest(offline)
    print(f"entity alerts across the SIGKILLs: {len(on_topic)} copies, "
          f"{len(_latest(on_topic))} entities, the latest of each as stream score's")


def test_windows_follow_a_partition_to_a_second_consumer(
    broker: EmbeddedBroker, tracking_uri: str, unique: str, tmp_path: Path
) -> None:
    base = windowed_model(tracking_uri)
    events = _events(8000, seed=13)
    half = len(events) // 2
    topics = fu.Topics(unique)
    topics.create(broker, input_partitions=2)
    first = _produce_by_tenant(broker.bootstrap, topics.input, events[:half])
    s = fu.settings(broker.bootstrap, topics, tracking_uri, base)
    a = service.build(s)
    ta = fu.start(a)
    fu.wait_until(lambda: a.stats.consumed >= first, 120, "first half consumed by A")
    b = service.build(s)
    tb = fu.start(b)
    fu.wait_until(lambda: a.assignment and b.assignment and len(a.assignment) == 1, 60,
                  "the partitions shared by A and B",
                  state=lambda: (a.assignment, b.assignment))
    moved = {p for _t, p in b.assignment}
    second = _produce_by_tenant(broker.bootstrap, topics.input, events[half:])
    fu.wait_until(lambda: a.stats.consumed + b.stats.consumed >= first + second, 120,
                  "second half consumed")
    # B holds the windows of the partition it took over, restored from the changelog with
    # the first half's entities in them (read before stopping, which drops them).
    store = b.keeper.store
    held = {p: store.entities_in(p) for p in list(store.scopes)}
    fu.stop(a, ta)
    fu.stop(b, tb)
    assert b.stats.consumed > 0
    assert set(held) == moved and all(held.values()), held
    alerts = [orjson.loads(m.value()) for m in read_all(broker.bootstrap, topics.alerts)]
    diff = compare(alerts, offline_scores(tmp_path, events, base, tracking_uri))
    print(f"\nwindows across a rebalance: partition {sorted(moved)} moved to B, "
          f"{b.stats.consumed} events scored there, max |diff| {diff:.3g}")
    assert diff <= 1e-9


# ---- tenants apart: one input, each tenant as if alone ------------------------------------

_tenant_models: dict[str, str] = {}


def tenant_models(tracking_uri: str) -> str:
    """One flows-recipe model per tenant (no global one), trained once per session."""
    if tracking_uri not in _tenant_models:
        base = "iso_" + os.urandom(3).hex()
        normal = list(generate_flows(6000, TENANTS, seed=5, attack_rate=0.0))
        for t in TENANTS:
            registry.train([e for e in normal if e["tenant_id"] == t], tenant=t, model_name=base,
                           uri=tracking_uri, features=recipe("flows"), n_estimators=30,
                           calibrate=(0.005, 0.01, 0.03), do_promote=True)
        _tenant_models[tracking_uri] = base
    return _tenant_models[tracking_uri]


def _score(tmp_path: Path, name: str, paths: list[Path], base: str, uri: str
           ) -> tuple[dict[str, float], str]:
    out = tmp_path / f"{name}.alerts.jsonl"
    r = CliRunner().invoke(main, ["score", *map(str, paths), "-o", str(out), "--min-level", "low",
                                  "--model-name", base, "--tracking-uri", uri])
    assert r.exit_code == 0, r.output
    scored = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    return {f"{a['source']['topic']}/{a['event']['flow_id']}": a["anomaly_score"]
            for a in scored}, r.output


def test_stream_score_scores_each_tenant_as_if_its_events_were_alone(
    tracking_uri: str, tmp_path: Path
) -> None:
    base = tenant_models(tracking_uri)
    events = _events(8000, seed=21)
    both = tmp_path / "both.jsonl"
    write_jsonl(both, events)
    together, said = _score(tmp_path, "both", [both], base, tracking_uri)
    assert "late" not in said
    worst = 0.0
    for t in TENANTS:
        own = tmp_path / f"{t}.jsonl"
        write_jsonl(own, [e for e in events if e["tenant_id"] == t])
        alone, _ = _score(tmp_path, t, [own], base, tracking_uri)
        assert len(alone) == sum(e["tenant_id"] == t for e in events)
        worst = max(worst, max(abs(s - together[k.replace(f"{t}.jsonl", "both.jsonl")])
                               for k, s in alone.items()))
    print(f"\nstream score, {len(events)} events of {len(TENANTS)} tenants in one file vs "
          f"each alone: max |diff| {worst:.3g}")
    assert worst <= 1e-9
    # The same file twice: the second copy is late for both tenants (older than their
    # newest events), scored against the windows and said so, per tenant; nothing is
    # dead-lettered (no flow gives a non-finite window value).
    twice, said = _score(tmp_path, "twice", [both, both], base, tracking_uri)
    assert "dead letters 0 {}" in said, said
    assert "late (older than their tenant's newest event" in said and "'acme': " in said, said
    assert len(twice) == len(together)  # (the same names: keyed by file and flow id)


def test_two_tenants_on_one_partition_score_as_they_would_alone(
    broker: EmbeddedBroker, tracking_uri: str, unique: str, tmp_path: Path
) -> None:
    """Unkeyed, one partition: the stream scores each tenant as `stream score` of its
    events alone does."""
    base = tenant_models(tracking_uri)
    events = _events(6000, seed=22)
    topics = fu.Topics(unique)
    topics.create(broker, input_partitions=1)
    p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    for e in events:
        p.produce(topics.input, orjson.dumps(e), partition=0)
        p.poll(0)
    assert p.flush(30) == 0
    s = fu.settings(broker.bootstrap, topics, tracking_uri, base)
    pipeline = service.build(s)
    thread = fu.start(pipeline)
    fu.wait_until(lambda: pipeline.stats.consumed >= len(events), 120, "all events consumed")
    fu.stop(pipeline, thread)
    assert pipeline.stats.dead_letters == 0
    alerts = [orjson.loads(m.value()) for m in read_all(broker.bootstrap, topics.alerts)]
    worst = 0.0
    for t in TENANTS:
        mine = [a for a in alerts if a["tenant_id"] == t]
        own = tmp_path / t
        own.mkdir()
        alone = offline_scores(own, [e for e in events if e["tenant_id"] == t], base,
                               tracking_uri)
        worst = max(worst, compare(mine, alone))
    print(f"\n{len(events)} events of {len(TENANTS)} tenants on one partition vs each tenant "
          f"alone in stream score: max |diff| {worst:.3g}")
    assert worst <= 1e-9
