"""Alerts an analyst can act on: explanations, incidents, ECS and OCSF, drift.

End to end on the real embedded broker and a real MLflow registry (SQLite): a
model trained with the ``flows`` recipe serves generator traffic with attacks.
Exfiltration alerts name a bytes feature first; one port-scan episode becomes
one incident; the alert and incident records in ECS and OCSF validate against
the schemas under tests/data (derived from the ECS and OCSF sources, see
SOURCES.md). Drift: the score PSI of a tenant whose traffic scale changes 10x
mid-stream rises above 0.25, and stays below it when the traffic does not change.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from stream import registry
from stream.features import RecordColumns
from stream.features.recipes import recipe
from stream.generate import generate_flows
from stream.ops.drift import Drift
from stream.outcomes.formats import flow_fields
from stream.outcomes.incidents import Incidents
from stream.scoring.baseline import Baseline

DATA = Path(__file__).resolve().parents[2] / "data"
TENANTS = ("acme",)
_models: dict[str, str] = {}






def model(tracking_uri: str) -> str:
    if tracking_uri not in _models:
        base = "analyst_" + os.urandom(3).hex()
        normal = list(generate_flows(6000, TENANTS, seed=5, attack_rate=0.0))
        registry.train(normal, model_name=base, uri=tracking_uri, features=recipe("flows"),
                       calibrate=(0.002, 0.01, 0.03), do_promote=True)
        _models[tracking_uri] = base
    return _models[tracking_uri]














# ---- pure logic: drift, incidents, flow fields ---------------------------------------------


def _fitted(seed: int = 5) -> tuple[Any, Any, Baseline]:
    from stream.registry import build_pipeline

    normal = list(generate_flows(6000, TENANTS, seed=seed, attack_rate=0.0))
    spec = recipe("flows").fit(RecordColumns(normal))
    X = spec.compute(RecordColumns(normal), tenants=["acme"] * len(normal)).X
    pipe = build_pipeline(100, 0.1, 42)
    pipe.fit(X)
    return spec, pipe, Baseline.fit(X, pipe.decision_function(X), spec.columns)


def test_score_psi_rises_when_traffic_scale_changes_tenfold_and_not_otherwise() -> None:
    spec, pipe, baseline = _fitted()
    live = list(generate_flows(12000, TENANTS, seed=41, attack_rate=0.0))
    scaled = [dict(e) for e in live]
    for e in scaled[6000:]:  # mid-stream, the tenant's flows get 10x larger
        e["bytes_transferred"] *= 10
        e["packet_count"] *= 10

    def psis(events: list[dict[str, Any]]) -> list[float]:
        d = Drift(baseline, window=3000)
        X = spec.compute(RecordColumns(events), tenants=["acme"] * len(events)).X
        s = pipe.decision_function(X)
        out = []
        for k in range(0, len(events), 500):
            if d.add(X[k:k + 500], s[k:k + 500], 0):
                out.append(d.psi_score)
        return out

    steady, shifted = psis(live), psis(scaled)
    print(f"\nscore PSI, steady traffic: max {max(steady):.3f}; after a 10x change: "
          f"{[round(x, 2) for x in shifted]}")
    assert max(steady) < 0.25
    assert max(shifted[:3]) < 0.25  # before the change (the windows end before event 6000)
    assert shifted[-1] > 0.25


class _Outcome:
    """The parts of a BatchOutcome that incidents read."""

    def __init__(self, rows: list[int], levels: list[int], base: int = 100,
                 tenant: str = "acme") -> None:
        n = max(rows) + 1
        self.topic = "flows"
        self.alert_rows = np.asarray(rows)
        self.levels = np.zeros(n, dtype=np.int8)
        self.levels[rows] = levels
        self.scores = np.full(n, -0.3)
        self.partitions = np.zeros(n, dtype=np.int64)
        self.offsets = np.arange(n, dtype=np.int64) + base
        self.model_index = np.zeros(n, dtype=np.int32)
        self.models = [type("M", (), {"name": "m", "version": "1"})()]
        self.explanations = {i: [{"feature": "log_bytes"}] for i in rows}
        self.decoded = type("D", (), {"tenants": [tenant] * n})()


def test_incident_rules_open_join_close_and_rollback() -> None:
    now = [1000.0]
    inc = Incidents(window=300, idle=60, clock=lambda: now[0])
    src = RecordColumns([{"src_ip": "a"}, {"src_ip": "a"}, {"src_ip": "b"}, {"src_ip": "a"}])
    recs, joined = inc.add(_Outcome([0, 1, 2, 3], [2, 1, 3, 0]), src)
    assert len(recs) == 2 and set(joined) == {0, 1, 2}  # row 3 is low: no incident
    inc.rollback()
    assert not inc.open
    recs, joined = inc.add(_Outcome([0, 1, 2], [2, 1, 3]), src)
    inc.commit()
    first = joined[0]
    assert joined[1] == first and joined[2] != first and inc.opened == 2
    now[0] += 30  # joins: within the idle timeout
    _recs, joined = inc.add(_Outcome([0], [1], base=200), src)
    inc.commit()
    assert joined[0] == first
    now[0] += 61  # idle: both close; a's next alert opens a new incident
    recs, joined = inc.add(_Outcome([0], [1], base=300), src)
    inc.commit()
    states = [orjson.loads(v) for _k, v in recs]
    assert sorted(s["status"] for s in states) == ["closed", "closed", "open"]
    assert joined[0] != first and inc.closed == 2
    closed_a = next(s for s in states if s["incident_id"] == first)
    assert closed_a["alerts"] == 3 and closed_a["alerts_by_level"] == {"high": 1, "medium": 2}


def test_flow_fields_come_from_the_sensor_schema_view() -> None:
    from stream.ingest.view import columns_for

    zeek = [{"id.orig_h": "10.0.0.1", "id.resp_h": "192.0.2.9", "id.orig_p": 5000,
             "id.resp_p": 443, "proto": "tcp", "orig_bytes": 10, "resp_bytes": 5,
             "orig_pkts": 2, "resp_pkts": 1, "duration": 0.5, "ts": 1.0}]
    (flow,) = flow_fields(columns_for(RecordColumns(zeek), "zeek"), [0])
    assert flow["src_ip"] == "10.0.0.1" and flow["dst_port"] == 443
    assert flow["bytes_transferred"] == 15 and flow["protocol"] == "tcp"


def test_alert_budget_sets_thresholds_for_that_many_alerts_an_hour() -> None:
    from stream.registry.training import budget_rates

    # 6,000 events at about 1,000 a second: about 3.6 million an hour, so a budget of
    # 2,160 medium+ alerts an hour is a rate of about 0.0006.
    normal = list(generate_flows(6000, TENANTS, seed=5, attack_rate=0.0))
    crit, high, medium = budget_rates(normal, 2160.0)
    assert medium == pytest.approx(6e-4, rel=0.05)
    assert (crit, high) == pytest.approx((medium / 10, medium / 3))
    with pytest.raises(Exception, match="timestamps"):
        budget_rates([{k: v for k, v in r.items() if k != "timestamp"} for r in normal], 10.0)


def test_target_precision_cuts_where_the_reviewed_alerts_reach_it() -> None:
    from stream.features import FeatureSpec
    from stream.registry import build_pipeline
    from stream.registry.training import precision_rates

    spec = FeatureSpec.parse([("lb", "log1p(bytes_transferred)"),
                              ("lp", "log1p(packet_count)")])
    normal = list(generate_flows(4000, TENANTS, seed=5, attack_rate=0.0))
    spec = spec.fit(RecordColumns(normal))
    X = spec.compute(RecordColumns(normal)).X
    pipe = build_pipeline(100, 0.1, 42)
    pipe.fit(X)
    train_scores = pipe.decision_function(X)
    # Reviewed alerts: the 40 lowest-scoring attack events are true positives, and
    # normal events below a middling score were reviewed as false positives.
    attacks = [e for e in generate_flows(8000, TENANTS, seed=6, attack_rate=0.05)
               if e["label"] != "normal"]
    reviewed = [{**e, "label": "attack"} for e in attacks[:40]]
    reviewed += [{**e, "label": "normal"} for e in normal[:40]]
    strict = precision_rates(pipe, spec, reviewed, 0.95, train_scores)
    loose = precision_rates(pipe, spec, reviewed, 0.5, train_scores)
    # A higher precision target cuts deeper: fewer training events flagged.
    assert strict[2] <= loose[2]
    with pytest.raises(Exception, match="true-positive"):
        precision_rates(pipe, spec, [{**e, "label": "normal"} for e in normal[:20]], 0.9,
                        train_scores)


def test_one_tenants_flood_of_incidents_closes_only_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each tenant's open incidents are capped on their own: a flood of new entities from
    one tenant closes that tenant's oldest, never another tenant's open incident."""
    from stream.outcomes import incidents as incidents_mod

    monkeypatch.setattr(incidents_mod, "MAX_OPEN_PER_TENANT", 5)
    monkeypatch.setattr(incidents_mod, "MAX_OPEN", 8)
    now = [1000.0]
    inc = Incidents(window=3000, idle=600, clock=lambda: now[0])
    _recs, victim = inc.add(_Outcome([0], [2], tenant="victim"), RecordColumns([{"src_ip": "v"}]))
    inc.commit()
    for k in range(40):  # 40 new attacker entities, one batch each
        now[0] += 1
        inc.add(_Outcome([0], [2], base=1000 + k, tenant="flood"),
                RecordColumns([{"src_ip": f"e{k}"}]))
        inc.commit()
    open_by = {}
    for (tenant, _entity) in inc.open:
        open_by[tenant] = open_by.get(tenant, 0) + 1
    # The cap holds at the start of each batch: its 5, plus the one this batch opened.
    assert open_by == {"victim": 1, "flood": 6}
    assert inc.open[("victim", "v")].incident_id == victim[0]
