"""One batch from raw values to outcomes: routing, scoring, levels, alerts, dead letters."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import pytest

from stream.consumer.batch import BatchOutcome, group_rows, process_batch
from stream.outcomes import reasons
from stream.registry import LoadedModel, build_pipeline
from stream.scoring.thresholds import DEFAULT_THRESHOLDS

FEATURES = ("bytes_transferred", "packet_count", "connection_duration")


class Linear:
    """A stand-in model: score = a - b * bytes_transferred; counts its calls and rows."""

    def __init__(self, a: float = 0.3, b: float = 1e-3, fail: bool = False) -> None:
        self.a, self.b, self.fail = a, b, fail
        self.calls: list[int] = []

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        self.calls.append(len(X))
        if self.fail:
            raise ValueError("boom")
        return self.a - self.b * X[:, 0]


def model(name: str, est: Any, version: str = "1",
          features: tuple[str, ...] = FEATURES) -> LoadedModel:
    return LoadedModel(name, version, features, np.asarray(DEFAULT_THRESHOLDS), est)


def ev(tenant: str, nbytes: float, **extra: Any) -> bytes:
    return orjson.dumps({"tenant_id": tenant, "bytes_transferred": nbytes, "packet_count": 3,
                         "connection_duration": 1.5, **extra})


def run(values: Sequence[bytes | None], table: dict[str, LoadedModel | None],
        fallback: LoadedModel | None = None, **kw: Any) -> BatchOutcome:
    calls: list[list[str]] = []

    def resolve(tenants: Sequence[str]) -> list[LoadedModel | None]:
        calls.append(list(tenants))
        return [table.get(t, fallback) for t in tenants]

    n = len(values)
    out = process_batch(values, resolve, topic="flows",
                        partitions=np.arange(n, dtype=np.int64) % 3,
                        offsets=np.arange(100, 100 + n, dtype=np.int64), **kw)
    assert len(calls) == 1, "tenants are resolved once per batch"
    assert len(calls[0]) == len(set(calls[0])), "each distinct tenant is resolved once"
    return out


def test_scores_levels_and_alerts() -> None:
    est = Linear()
    # scores: 0.3 - bytes/1000 -> 0.2 (low), -0.1 (medium), -0.4 (high), -0.9 (critical)
    values = [ev("acme", 100), ev("acme", 400), ev("acme", 700), ev("acme", 1200)]
    out = run(values, {"acme": model("m_acme", est)}, min_level=1)
    np.testing.assert_allclose(out.scores, [0.2, -0.1, -0.4, -0.9])
    assert out.levels.tolist() == [0, 1, 2, 3]
    assert out.alert_rows.tolist() == [1, 2, 3]
    alerts = [orjson.loads(a) for a in out.alerts]
    assert [a["threat_level"] for a in alerts] == ["medium", "high", "critical"]
    assert [a["alert_id"] for a in alerts] == ["flows/1/101", "flows/2/102", "flows/0/103"]
    assert [a["source"]["offset"] for a in alerts] == [101, 102, 103]
    assert [a["anomaly_score"] for a in alerts] == out.scores[1:].tolist()
    assert all(a["model"] == {"name": "m_acme", "version": "1"} for a in alerts)
    assert [a["event"] for a in alerts] == [orjson.loads(v) for v in values[1:]]
    assert est.calls == [4]
    assert out.scored == 4 and len(out.rejected_rows) == 0
    assert out.alert_counts() == Counter({("acme", "medium"): 1, ("acme", "high"): 1,
                                          ("acme", "critical"): 1})


@pytest.mark.parametrize(("min_level", "alerts"), [(0, 4), (1, 3), (2, 2), (3, 1)])
def test_min_level(min_level: int, alerts: int) -> None:
    values = [ev("acme", b) for b in (100, 400, 700, 1200)]
    out = run(values, {"acme": model("m", Linear())}, min_level=min_level)
    assert len(out.alerts) == alerts
    assert (out.levels[out.alert_rows] >= min_level).all()


def test_routing_fallback_and_one_call_per_model_version() -> None:
    own, glob = Linear(), Linear(a=0.5)
    m_own, m_glob = model("m_acme", own), model("m", glob)
    values = [ev(t, 100 + i) for i, t in enumerate(["acme", "globex", "acme", "initech",
                                                     "globex", "acme"])]
    out = run(values, {"acme": m_own}, fallback=m_glob, min_level=0)
    assert own.calls == [3] and glob.calls == [3]  # globex+initech share the global model
    names = [out.models[i].name for i in out.model_index.tolist()]
    assert names == ["m_acme", "m", "m_acme", "m", "m", "m_acme"]
    np.testing.assert_allclose(out.scores, [0.3 - (100 + i) * 1e-3 if t == "acme"
                                            else 0.5 - (100 + i) * 1e-3
                                            for i, t in enumerate(["acme", "globex", "acme",
                                                                   "initech", "globex",
                                                                   "acme"])])
    alerts = {orjson.loads(a)["source"]["offset"]: orjson.loads(a) for a in out.alerts}
    assert alerts[101]["model"]["name"] == "m" and alerts[100]["model"]["name"] == "m_acme"


def test_no_model_and_model_error_reject_only_their_rows() -> None:
    bad = Linear(fail=True)
    good = Linear()
    values = [ev("acme", 500), ev("broken", 500), ev("nobody", 500), ev("acme", 900),
              b"{oops"]
    out = run(values, {"acme": model("m_acme", good), "broken": model("m_broken", bad),
                       "nobody": None}, min_level=1)
    reason = out.decoded.reason.tolist()
    assert reason == [0, reasons.MODEL_ERROR, reasons.NO_MODEL, 0, reasons.MALFORMED_JSON]
    assert "models:/m_broken/1" in out.decoded.detail[1] and "boom" in out.decoded.detail[1]
    assert out.levels.tolist()[1:3] == [-1, -1] and out.levels[4] == -1
    assert np.isnan(out.scores[[1, 2, 4]]).all()
    assert out.rejected_rows.tolist() == [1, 2, 4]
    assert out.reason_counts() == Counter({"model_error": 1, "no_model": 1,
                                           "malformed_json": 1})
    assert [orjson.loads(a)["source"]["offset"] for a in out.alerts] == [100, 103]


def test_bad_features_are_dead_lettered_by_the_serving_models_features() -> None:
    m_small = model("m_small", Linear(), features=("bytes_transferred",))
    values = [ev("acme", 500, packet_count="x"), ev("globex", 500, packet_count="x")]
    out = run(values, {"acme": m_small, "globex": model("m_full", Linear())}, min_level=0)
    # acme's model does not read packet_count; globex's does.
    assert out.decoded.reason.tolist() == [0, reasons.NON_NUMERIC_FEATURE]
    assert "'packet_count'" in out.decoded.detail[1]


def test_every_row_ends_exactly_once() -> None:
    rng = np.random.default_rng(3)
    values: list[bytes | None] = []
    for i in range(600):
        r = rng.random()
        if r < 0.05:
            values.append(b"")
        elif r < 0.1:
            values.append(b"[1]")
        elif r < 0.15:
            values.append(ev("acme", 10, bytes_transferred=None))
        else:
            values.append(ev(["acme", "globex", "zed"][i % 3], float(rng.integers(0, 1500))))
    out = run(values, {"acme": model("a", Linear()), "globex": model("g", Linear())},
              fallback=model("m", Linear(a=0.1)), min_level=1)
    scored = out.levels >= 0
    rejected = out.decoded.reason != reasons.OK
    assert (scored ^ rejected).all()
    assert set(out.alert_rows.tolist()) == set(np.flatnonzero(out.levels >= 1).tolist())
    assert out.scored + len(out.rejected_rows) == len(values)
    assert sum(out.alert_counts().values()) == len(out.alerts)
    assert sum(out.reason_counts().values()) == int(rejected.sum())


def test_challenger_is_shadow_scored_without_changing_outcomes() -> None:
    prod, chal = model("m_acme", Linear(), "1"), model("m_acme", Linear(a=0.2), "2")
    values = [ev("acme", b) for b in (100, 250, 400)]
    out = run(values, {"acme": prod}, min_level=0, challenger=lambda m: chal)
    np.testing.assert_allclose(out.scores, [0.2, 0.05, -0.1])
    assert len(out.shadow) == 1
    r = out.shadow[0]
    assert (r.tenant, r.rows, r.production_version, r.challenger_version) == ("acme", 3, "1", "2")
    # production 0.2 / 0.05 / -0.1 -> low, low, medium; challenger 0.1 / -0.05 / -0.2 ->
    # low, medium, medium (-0.2 is not below the high cut-off -0.2)
    assert r.agree == 2
    assert r.score_diff_sum == pytest.approx(-0.3)


def test_real_pipeline_scores_equal_its_decision_function() -> None:
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.lognormal(9, 1, 2000), rng.integers(1, 100, 2000),
                         rng.lognormal(0, 1, 2000)])
    pipe = build_pipeline(n_estimators=20).fit(X)
    values = [orjson.dumps({"tenant_id": "acme", "bytes_transferred": float(a),
                            "packet_count": int(b), "connection_duration": float(c)})
              for a, b, c in X[:300]]
    out = run(values, {"acme": model("m", pipe)}, min_level=0)
    np.testing.assert_array_equal(out.scores, pipe.decision_function(X[:300]))


def test_group_rows() -> None:
    codes = np.array([2, -1, 0, 2, 0, 5, -1])
    groups = [(c, g.tolist()) for c, g in group_rows(codes)]
    assert groups == [(0, [2, 4]), (2, [0, 3]), (5, [5])]
    assert group_rows(np.array([-1, -1])) == []
    assert group_rows(np.array([], dtype=np.int64)) == []


def test_empty_batch() -> None:
    out = run([], {})
    assert out.n == 0 and out.alerts == [] and out.scored == 0
