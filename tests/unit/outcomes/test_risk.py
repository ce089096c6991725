"""Risk per entity: points per alert level, damped per tenant and entity in event time,
the crossing of the threshold marked; window state, so it is the same however the
events are batched, and tenants never add to each other."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from stream.consumer.batch import process_batch
from stream.features import RecordColumns, WindowStore
from stream.outcomes.risk import Risk
from stream.registry import LoadedModel
from stream.scoring.thresholds import DEFAULT_THRESHOLDS

H = 600.0  # the half-life in these tests


class ByBytes:
    """score = -bytes / 1000: 100 bytes low, 300 medium, 600 high, 900 critical."""

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return 0.25 - X[:, 0] / 1000.0


MODEL = LoadedModel("m", "1", ("bytes_transferred",), np.asarray(DEFAULT_THRESHOLDS),
                    ByBytes())


def ev(t: float, src: str, nbytes: float, tenant: str = "acme") -> bytes:
    return orjson.dumps({"tenant_id": tenant, "timestamp": t, "src_ip": src,
                         "bytes_transferred": nbytes})


def run(values: list[bytes], store: WindowStore, risk: Risk, first: int = 0) -> list[Any]:
    n = len(values)
    out = process_batch(values, lambda ts: [MODEL for _ in ts], topic="f",
                        partitions=np.zeros(n, dtype=np.int64),
                        offsets=np.arange(first, first + n, dtype=np.int64), min_level=0,
                        store=store, risk=risk)
    return [orjson.loads(a).get("entity_risk") for a in out.alerts]


EVENTS = [
    ev(0.0, "10.0.0.9", 900),     # critical: 10 points
    ev(30.0, "10.0.0.9", 100),    # low: no points, no risk
    ev(60.0, "10.0.0.9", 600),    # high: 3
    ev(70.0, "10.0.0.9", 900, tenant="globex"),  # another tenant: its own risk
    ev(80.0, "10.0.0.7", 300),    # medium, another host: 1
    ev(900.0, "10.0.0.9", 900),   # critical, fourteen minutes later
]


def test_points_add_up_per_tenant_and_entity_and_fade_with_the_half_life() -> None:
    risk = Risk("src_ip", H, 12.0)
    got = run(EVENTS, WindowStore(), risk)
    assert got[1] is None  # a low alert adds nothing and carries no risk
    r0, r2, r3, r4, r5 = (got[i]["risk"] for i in (0, 2, 3, 4, 5))
    decay = lambda dt: 2 ** (-dt / H)  # noqa: E731
    assert r0 == 10.0 and r3 == 10.0 and r4 == 1.0  # first alerts of their entities
    assert math.isclose(r2, 10 * decay(60) + 3, rel_tol=1e-6)  # 12.33
    assert math.isclose(r5, r2 * decay(840) + 10, rel_tol=1e-6)  # 14.67
    # Raised where the risk crosses the threshold: a critical and a high a minute apart,
    # not one stray critical (10 < 12); the critical fourteen minutes on takes a risk
    # that had faded to 4.7 back over 12: raised again.
    assert [g["raised"] if g else None for g in got] == [False, None, True, False, False,
                                                        True]
    assert got[0]["entity"] == "10.0.0.9" and got[0]["by"] == "src_ip"


def test_the_same_in_any_batching() -> None:
    risk = Risk("src_ip", H, 12.0)
    whole = run(EVENTS, WindowStore(), risk)
    store = WindowStore()
    parts = run(EVENTS[:2], store, risk) + run(EVENTS[2:5], store, risk, 2) + \
        run(EVENTS[5:], store, risk, 5)
    assert parts == whole


def test_an_event_without_its_entity_or_time_alerts_without_risk() -> None:
    risk = Risk("src_ip", H, 12.0)
    values = [orjson.dumps({"tenant_id": "acme", "timestamp": 1.0, "bytes_transferred": 900}),
              orjson.dumps({"tenant_id": "acme", "src_ip": "x", "bytes_transferred": 900}),
              ev(2.0, "10.0.0.9", 900)]
    got = run(values, WindowStore(), risk)
    assert got[0] is None and got[1] is None and got[2]["risk"] == 10.0


def test_entity_alerts_raised_then_updated_while_the_risk_stays_above() -> None:
    risk = Risk("src_ip", H, 12.0)
    values = [ev(0.0, "10.0.0.9", 900), ev(10.0, "10.0.0.9", 900),   # 10, then 19.9: raised
              ev(20.0, "10.0.0.9", 300),                             # still above: updated
              ev(25.0, "10.0.0.9", 100),                             # low: nothing
              ev(30.0, "10.0.0.5", 900)]                             # 10: below, no record
    n = len(values)
    out = process_batch(values, lambda ts: [MODEL for _ in ts], topic="f",
                        partitions=np.zeros(n, dtype=np.int64),
                        offsets=np.arange(n, dtype=np.int64), min_level=0,
                        store=WindowStore(), risk=risk)
    records = [(k.decode(), orjson.loads(v)) for k, v in out.entity_records]
    assert [k for k, _ in records] == ["acme/src_ip=10.0.0.9"] * 2
    (k1, raised), (_k2, updated) = records
    assert raised["status"] == "raised" and raised["alert_id"] == "f/0/1"
    assert updated["status"] == "updated" and updated["alert_id"] == "f/0/2"
    assert updated["threat_level"] == "medium" and updated["event_time"] == 20.0
    assert math.isclose(raised["risk"], 10 * 2 ** (-10 / H) + 10, rel_tol=1e-6)
    assert raised["entity_alert_id"] == k1 and raised["tenant_id"] == "acme"


def test_entity_alerts_in_ecs_and_ocsf_validate_and_keep_what_they_say() -> None:
    import json

    import jsonschema

    from stream.outcomes.formats import format_entity_alert

    data = Path(__file__).resolve().parents[2] / "data"

    def validator(name: str) -> jsonschema.Draft202012Validator:
        return jsonschema.Draft202012Validator(json.loads((data / name).read_text()),
                                               format_checker=jsonschema.FormatChecker())

    ecs, ocsf = validator("ecs_alert.schema.json"), validator(
        "ocsf_detection_finding.schema.json")
    values = [ev(0.0, "10.0.0.9", 900), ev(10.0, "10.0.0.9", 900), ev(20.0, "10.0.0.9", 300)]
    n = len(values)
    out = process_batch(values, lambda ts: [MODEL for _ in ts], topic="f",
                        partitions=np.zeros(n, dtype=np.int64),
                        offsets=np.arange(n, dtype=np.int64), min_level=0,
                        store=WindowStore(), risk=Risk("src_ip", H, 12.0))
    natives = [v for _k, v in out.entity_records]
    assert [format_entity_alert("native", v) for v in natives] == natives
    for v in natives:
        rec = orjson.loads(v)
        e = orjson.loads(format_entity_alert("ecs", v))
        o = orjson.loads(format_entity_alert("ocsf", v))
        for validator_, doc in ((ecs, e), (ocsf, o)):
            errors = [f"{list(x.path)}: {x.message}" for x in validator_.iter_errors(doc)]
            assert not errors, errors[:5]
        assert e["event"]["id"] == rec["entity_alert_id"] and e["source"]["ip"] == "10.0.0.9"
        assert e["host"]["risk"]["calculated_score"] == rec["risk"]
        assert e["stream"]["entity_alert"] == rec
        assert o["finding_info"]["uid"] == rec["entity_alert_id"]
        assert o["activity_name"] == ("Create" if rec["status"] == "raised" else "Update")
        # The episode's alerts, the one that moved the risk last; its first and last time.
        related = [r["uid"] for r in o["finding_info"]["related_events"]]
        assert related == rec["alert_ids"] and related[-1] == rec["alert_id"]
        assert o["finding_info"]["first_seen_time"] == 0
        assert o["finding_info"]["last_seen_time"] == int(rec["event_time"] * 1000)
        assert e["event"]["start"] == "1970-01-01T00:00:00.000Z"
        assert o["evidences"] == [{"src_endpoint": {"ip": "10.0.0.9"}}]


def _hosts(rng: np.random.Generator, hosts: int, hours: float) -> list[dict[str, Any]]:
    """Alerts of ``hosts`` hosts over ``hours``: most rare, a few hosts noisy."""
    out = []
    for h in range(hosts):
        rate = 20.0 if h < 3 else 0.5  # alerts per hour
        n = rng.poisson(rate * hours)
        out += [{"src_ip": f"10.0.{h // 256}.{h % 256}", "timestamp": float(t)}
                for t in rng.uniform(0, hours * 3600, n)]
    return sorted(out, key=lambda e: float(e["timestamp"]))


def test_an_alert_budget_sets_the_lowest_threshold_that_keeps_to_it() -> None:
    from stream.outcomes.risk import MIN_BUDGET_THRESHOLD, budget_threshold

    rng = np.random.default_rng(4)
    evs = _hosts(rng, 200, 48.0)
    levels = rng.choice([1, 2, 3], len(evs), p=[0.6, 0.3, 0.1]).astype(np.int8)
    tenants = ["acme"] * len(evs)

    def budget(per_day: float) -> Any:
        b = budget_threshold(RecordColumns(evs), levels, tenants, WindowStore(ttl=1e7),
                             by="src_ip", half_life=H, per_day=per_day)
        assert b is not None
        return b

    tight, loose = budget(2.0), budget(40.0)
    assert abs(tight.days - 2.0) < 0.01
    assert tight.alerts == len(evs) and tight.entities == 200
    assert tight.raised_per_day <= 2.0 and loose.raised_per_day <= 40.0
    assert tight.threshold > loose.threshold >= MIN_BUDGET_THRESHOLD
    risk = Risk("src_ip", H, tight.threshold)
    _rows, points, r, _reason = risk.accumulate(
        RecordColumns(evs), np.arange(len(evs)), levels, tenants, WindowStore(ttl=1e7), None)

    def raised(t: float) -> int:
        return int(np.count_nonzero((r >= t) & (r - points < t)))

    assert raised(tight.threshold) / tight.days == tight.raised_per_day <= 2.0
    # The lowest that keeps to it: at the count's step just below, it raises more.
    ends = np.unique(np.concatenate([r, r - points]))
    assert tight.threshold > MIN_BUDGET_THRESHOLD
    assert raised(ends[ends < tight.threshold][-1]) > 2.0 * tight.days


def test_a_models_budget_threshold_serves_its_tenants_risk() -> None:
    budgeted = LoadedModel("m_acme", "2", ("bytes_transferred",),
                           np.asarray(DEFAULT_THRESHOLDS), ByBytes(),
                           info={"entity_budget": {"threshold": 25.0, "by": "src_ip",
                                                   "half_life": H}})
    other_by = LoadedModel("m", "3", ("bytes_transferred",), np.asarray(DEFAULT_THRESHOLDS),
                           ByBytes(), info={"entity_budget": {"threshold": 99.0,
                                                              "by": "dst_ip", "half_life": H}})
    values = [ev(0.0, "10.0.0.9", 900), ev(10.0, "10.0.0.9", 900),
              ev(20.0, "10.0.0.9", 900, tenant="globex"),
              ev(30.0, "10.0.0.9", 900, tenant="globex")]
    n = len(values)
    out = process_batch(values, lambda ts: [budgeted if t == "acme" else other_by for t in ts],
                        topic="f", partitions=np.zeros(n, dtype=np.int64),
                        offsets=np.arange(n, dtype=np.int64), min_level=0,
                        store=WindowStore(), risk=Risk("src_ip", H, 12.0))
    got = [orjson.loads(a)["entity_risk"] for a in out.alerts]
    # acme: its model's 25 (two criticals, ~19.9, stay below); globex: the consumer's 12.
    assert [g["threshold"] for g in got] == [25.0, 25.0, 12.0, 12.0]
    assert [g["raised"] for g in got] == [False, False, False, True]


def test_several_entities_each_get_every_alerts_points_so_a_distributed_attack_surfaces() -> None:
    """--risk-by src_ip,dst_ip: forty sources each send the victim one high alert. No
    source reaches the threshold (3 < 12), the victim does (its fourth alert: 12),
    and stays raised; a pair (src_ip>dst_ip) is one entity, as in window keys."""
    def to(t: float, src: str, dst: str) -> bytes:
        return orjson.dumps({"tenant_id": "acme", "timestamp": t, "src_ip": src,
                             "dst_ip": dst, "bytes_transferred": 600})

    values = [to(float(k), f"198.51.100.{k}", "10.0.0.5") for k in range(40)]
    n = len(values)

    def batch(risk: Risk) -> Any:
        return process_batch(values, lambda ts: [MODEL for _ in ts], topic="f",
                             partitions=np.zeros(n, dtype=np.int64),
                             offsets=np.arange(n, dtype=np.int64), min_level=0,
                             store=WindowStore(), risk=risk)

    out = batch(Risk("src_ip,dst_ip", H, 12.0))
    alerts = [orjson.loads(a) for a in out.alerts]
    assert all(a["entity_risk"]["by"] == "src_ip" and a["entity_risk"]["risk"] == 3.0
               for a in alerts)
    dst = [next(d for d in a["entity_risks"] if d["by"] == "dst_ip") for a in alerts]
    assert [d["raised"] for d in dst].index(True) == 4  # 3, 6, 9, 11.99, then over 12
    assert all(d["entity"] == "10.0.0.5" for d in dst)
    keys = {k.decode() for k, _v in out.entity_records}
    assert keys == {"acme/dst_ip=10.0.0.5"}  # no source is an entity alert
    statuses = [orjson.loads(v)["status"] for _k, v in out.entity_records]
    assert statuses[0] == "raised" and set(statuses[1:]) == {"updated"}
    # By the source alone (the default), nothing is raised.
    assert batch(Risk("src_ip", H, 12.0)).entity_records == []
    pair = [orjson.loads(a)["entity_risk"] for a in batch(Risk("src_ip>dst_ip", H, 12.0)).alerts]
    assert pair[0]["entity"] == "198.51.100.0>10.0.0.5" and "entity_risks" not in \
        orjson.loads(batch(Risk("src_ip>dst_ip", H, 12.0)).alerts[0])


def test_a_budget_over_several_entities_counts_the_raises_of_each() -> None:
    from stream.outcomes.risk import budget_threshold

    evs = [{"src_ip": f"s{k % 50}", "dst_ip": f"d{k % 3}", "timestamp": 30.0 * k}
           for k in range(2000)]
    levels = np.full(len(evs), 3)
    both = budget_threshold(RecordColumns(evs), levels, ["t"] * len(evs), WindowStore(ttl=1e7),
                            by="src_ip,dst_ip", half_life=H, per_day=5.0)
    src = budget_threshold(RecordColumns(evs), levels, ["t"] * len(evs), WindowStore(ttl=1e7),
                           by="src_ip", half_life=H, per_day=5.0)
    assert both is not None and src is not None
    assert both.alerts == src.alerts == len(evs)
    assert both.entities == 53 and src.entities == 50
    assert both.raised_per_day <= 5.0 and both.threshold >= src.threshold


def test_an_entity_alert_says_what_is_behind_the_risk_and_survives_a_restore() -> None:
    """The episode: first and last alert, alerts per level, their ids, the features that
    led them, the other ends of their flows, the most anomalous events; a new one once
    the risk has faded below one point. Kept as a note in the window store: through the
    changelog's form into a fresh store, the records are those of one pass."""
    from stream.features.columns import RecordColumns as Cols
    from stream.outcomes.risk import Risk as R

    evs = [{"src_ip": "10.0.0.9", "dst_ip": f"203.0.113.{k % 3}", "dst_port": 4444,
            "timestamp": 10.0 * k} for k in range(8)]
    evs += [{"src_ip": "10.0.0.9", "dst_ip": "203.0.113.7", "dst_port": 4444,
             "timestamp": 10.0 * 8 + 20 * H + k} for k in range(2)]  # a new episode
    levels = np.array([3, 2, 3, 2, 3, 3, 2, 3, 3, 3], dtype=np.int8)
    scores = np.array([-0.3, -0.1, -0.5, -0.1, -0.2, -0.4, -0.1, -0.6, -0.3, -0.3])
    leads = {i: ("rare_port" if i % 2 else "pair_beacon") for i in range(len(evs))}
    tenants = ["acme"] * len(evs)

    def records(store: WindowStore, rows: range) -> list[dict[str, Any]]:
        _m, recs = R("src_ip", H, 12.0).members(
            Cols(evs), np.array(list(rows)), levels, tenants, store, None,
            alert_ids=lambda i: f"f/0/{i}", scores=scores, leads=leads)
        return [orjson.loads(v) for _k, v in recs]

    whole = records(WindowStore(track=True), range(10))
    last = whole[-2]  # the first episode's last record
    assert last["first_seen"] == 0.0 and last["last_seen"] == 70.0 and last["alerts"] == 8
    assert last["alerts_by_level"] == {"critical": 5, "high": 3}
    assert last["alert_ids"] == [f"f/0/{i}" for i in range(8)] and last["alert_ids_omitted"] == 0
    assert last["behaviours"] == [{"feature": "pair_beacon", "alerts": 4},
                                  {"feature": "rare_port", "alerts": 4}]
    assert [e["alert_id"] for e in last["top_events"]] == ["f/0/7", "f/0/2", "f/0/5",
                                                           "f/0/0", "f/0/4"]
    assert last["top_events"][0]["event"] == {"src_ip": "10.0.0.9", "dst_ip": "203.0.113.1",
                                              "dst_port": "4444"}
    assert last["peers"]["field"] == "dst_ip" and last["peers"]["distinct"] == 3
    # Faded to nothing, then two criticals: a new episode (the first, 10 < 12, raised no
    # record), counted afresh.
    new = whole[-1]
    assert new["status"] == "raised" and new["alerts"] == 2 and new["first_seen"] == 80 + 20 * H
    assert new["alert_ids"] == ["f/0/8", "f/0/9"] and new["peers"]["distinct"] == 1

    store = WindowStore(track=True)
    first = records(store, range(5))
    changed, _gone = store.take_changes(0)
    restored = WindowStore(track=True)
    restored.restore(0, [(n, k, bytes(v)) for (n, k), v in changed.items()],
                     store.clocks.of_scope(0))
    rest = records(restored, range(5, 10))
    strip = [{k: v for k, v in r.items() if k != "detected_at"} for r in first + rest]
    assert strip == [{k: v for k, v in r.items() if k != "detected_at"} for r in whole]
    assert any(name == "\x00notes" for name, _k in changed)


def test_notes_are_bounded_and_tombstoned() -> None:
    from stream.state import store as store_mod

    st = WindowStore(track=True)
    old = store_mod.MAX_NOTES
    try:
        store_mod.MAX_NOTES = 3  # type: ignore[misc]
        for k in range(5):
            st.set_note(0, f"k{k}", {"n": k})
        assert list(st.notes_of(0)) == ["k2", "k3", "k4"]
        changed, gone = st.take_changes(0)
        assert {k for _n, k in changed} == {"k2", "k3", "k4"}
        assert gone == {("\x00notes", "k0"), ("\x00notes", "k1")}
    finally:
        store_mod.MAX_NOTES = old  # type: ignore[misc]


def test_an_episode_or_dedup_note_that_is_not_ours_starts_afresh() -> None:
    """Notes come back from the changelog: whatever one holds (another build's, or one
    tampered with), the entity's next alert starts a fresh episode and the batch goes
    on, for every tenant."""
    from stream.outcomes.dedup import Dedup

    store = WindowStore()
    bad = [
        {"alerts": "many"},
        {"first_seen": 0.0, "last_seen": 0.0, "alerts": 1, "by_level": {"high": "x"},
         "alert_ids": [], "features": {}, "peer_field": None, "peers": {}, "top": [],
         "cover": {"src_ip": [4, "zz", "1"]}},
        [1, 2, 3],
        # Its insides read: counts that are not numbers, a level that is none.
        {"first_seen": 0.0, "last_seen": 0.0, "alerts": 1, "by_level": {"dire": 1},
         "alert_ids": [], "features": {"f": "x", "g": 2}, "peer_field": "dst_ip",
         "peers": {"p": None}, "top": [], "cover": {}},
    ]
    for k, note in enumerate(bad):
        store.set_note(0, f"acme/src_ip=10.0.0.{k}", note)
        store.set_note(0, f"dedup\x1facme\x1fsrc_ip=10.0.0.{k}\x1f", note)
    values = [ev(float(k), f"10.0.0.{k % 3}", 900) for k in range(6)]
    n = len(values)
    out = process_batch(values, lambda ts: [MODEL for _ in ts], topic="f",
                        partitions=np.zeros(n, dtype=np.int64),
                        offsets=np.arange(n, dtype=np.int64), min_level=0, store=store,
                        risk=Risk("src_ip", H, 12.0), dedup=Dedup(60.0))
    records = [orjson.loads(v) for _k, v in out.entity_records]
    assert {r["entity"] for r in records} == {"10.0.0.0", "10.0.0.1", "10.0.0.2"}
    fresh = [r for r in records if r["entity"] != "10.0.0.3"]
    assert all(r["alerts"] == 2 and r["first_seen"] < 3 for r in fresh)
    assert len(out.alerts) == 3  # one per host: the other three deduplicated
    # A rule closing what it covers reads every episode, whatever it holds: no crash.
    from stream.outcomes.risk import close_covered
    from stream.outcomes.suppress import Rule, RuleSet

    rule = Rule.from_dict({"id": "r", "reason": "fine", "author": "a", "src": "10.0.0.3"})
    store.set_note(0, "acme/src_ip=10.0.0.3", {**bad[3], "cover": {"src_ip": [4, 167772163,
                                                                    167772163]}})
    closed = close_covered(store, RuleSet([rule]), "now", [0])
    assert [orjson.loads(v)["threat_level"] for _k, v in closed] == ["dire"]
