"""The tool's own detectors (stream.scoring.detectors): HBOS-style tail evidence and the ensemble.

Unit tests, no broker or registry: what each score means on data whose answer is known,
that a model round-trips through skops with the trusted types the loader names, and
that scikit-learn treats them as outlier detectors (clone, Pipeline, decision_function).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone, is_outlier_detector
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from stream.registry.loading import TRUSTED_TYPES
from stream.registry.training import build_pipeline, training_matrix
from stream.scoring.detectors import Ensemble, HistogramOutlier


def _normal(n: int = 3000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sizes = rng.lognormal(8, 1, n)
    ports = rng.choice([443.0, 80.0, 53.0], n, p=[0.7, 0.2, 0.1])  # a discrete input
    return np.column_stack([np.log1p(sizes), ports, rng.normal(size=n)])


def test_one_strong_input_is_enough_and_names_itself() -> None:
    X = _normal()
    det = HistogramOutlier().fit(X)
    ordinary = np.array([[8.0, 443.0, 0.0]])
    rare_port = np.array([[8.0, 22.0, 0.0]])  # a value the discrete input never had
    huge = np.array([[30.0, 443.0, 0.0]])  # far beyond the training range
    s = det.decision_function(np.vstack([ordinary, rare_port, huge]))
    assert s[0] > s[1] and s[0] > s[2]
    ev = det.evidence(np.vstack([ordinary, rare_port, huge]))
    assert ev[0].sum() == 0.0  # an ordinary row carries no evidence at all
    assert ev[1].argmax() == 1 and ev[2].argmax() == 0
    # Further beyond the range is more evidence (log of the distance), never less.
    far = det.evidence(np.array([[12.0, 443.0, 0.0], [20.0, 443.0, 0.0], [1e6, 443.0, 0.0]]))
    assert far[0, 0] < far[1, 0] < far[2, 0] < 100
    # A NaN input is as far out as an input gets.
    assert det.evidence(np.array([[np.nan, 443.0, 0.0]]))[0, 0] >= far[2, 0]


def test_evidence_adds_up_across_inputs() -> None:
    X = _normal()
    det = HistogramOutlier().fit(X)
    one = det.score_samples(np.array([[8.0, 443.0, 4.5]]))[0]
    two = det.score_samples(np.array([[8.0, 22.0, 4.5]]))[0]
    assert two < one < 0


def test_a_value_just_past_the_largest_training_value_is_no_rarer_than_it() -> None:
    """Growth past the training maximum is measured in spreads: no cliff at the edge."""
    X = _normal()
    det = HistogramOutlier(floor_quantile=0.0).fit(X)
    top = X[:, 0].max()
    at, past = det._raw(np.array([[top, 443.0, 0.0], [top + 1e-9, 443.0, 0.0]]))[:, 0]
    assert past - at < 1.0


def test_training_rows_flagged_near_the_contamination() -> None:
    X = _normal()
    det = HistogramOutlier(contamination=0.05).fit(X)
    share = float(np.mean(det.decision_function(X) < 0))
    assert share <= 0.05
    assert set(np.unique(det.predict(X))) <= {-1, 1}


def test_fit_refuses_what_it_cannot_use() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        HistogramOutlier().fit(np.zeros((1, 2)))
    with pytest.raises(ValueError, match="floor_quantile"):
        HistogramOutlier(floor_quantile=1.5).fit(np.zeros((5, 2)))
    det = HistogramOutlier().fit(np.arange(20.0).reshape(10, 2))
    with pytest.raises(ValueError, match="fitted with 2"):
        det.decision_function(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="not fitted"):
        HistogramOutlier().decision_function(np.zeros((3, 2)))


def test_the_ensemble_calibrates_each_member_and_takes_the_surest() -> None:
    X = _normal()
    pipe = build_pipeline(n_estimators=30, detector="ensemble").fit(X)
    ens = pipe[-1]
    assert isinstance(ens, Ensemble) and [n for n, _ in ens.fitted_] == ["isolation_forest",
                                                                         "hbos"]
    rows = np.array([[8.0, 443.0, 0.0], [8.0, 22.0, 0.0], [30.0, 443.0, 6.0]])
    Z = pipe[0].transform(rows)
    sur = ens.surprise(Z)
    # In nats of surprise against each member's own training scores: an ordinary row
    # is not surprising to either; the odd ones are, to at least one.
    assert sur[0].max() < 3 and sur[1].max() > 5 and sur[2].max() > 5
    np.testing.assert_array_equal(ens.score_samples(Z), -sur.max(axis=1))
    assert ens.evidence(Z) is not None and ens.evidence(Z).shape == (3, 3)
    total = clone(ens).set_params(combine="sum").fit(Z)
    assert np.all(np.isfinite(total.decision_function(Z)))


def test_sklearn_sees_outlier_detectors() -> None:
    for det in (HistogramOutlier(), Ensemble([("hbos", HistogramOutlier())])):
        assert is_outlier_detector(det)
        c = clone(det)
        assert c.get_params().keys() == det.get_params().keys()
    pipe = Pipeline([("scaler", StandardScaler()), ("hbos", HistogramOutlier())]).fit(_normal())
    assert pipe.decision_function(_normal(10, 1)).shape == (10,)


@pytest.mark.parametrize("detector", ["hbos", "ensemble"])
def test_skops_round_trip_needs_only_the_trusted_types(detector: str) -> None:
    import skops.io as sio

    X = _normal(800)
    pipe = build_pipeline(n_estimators=20, detector=detector, tails=[1, 0, -1]).fit(X)
    blob = sio.dumps(pipe)
    asked = set(sio.get_untrusted_types(data=blob))
    assert asked <= set(TRUSTED_TYPES), asked - set(TRUSTED_TYPES)
    loaded = sio.loads(blob, trusted=sorted(asked))
    assert np.array_equal(loaded.decision_function(X), pipe.decision_function(X))
    # Without trusting them, skops refuses to build the file's objects.
    with pytest.raises(Exception, match=r"[Uu]ntrusted"):
        sio.loads(blob, trusted=[])


def test_a_discrete_value_next_to_a_training_value_is_that_value() -> None:
    """rarity's unseen value, log(N + 1), beside a training singleton's log N: as rare as
    the singleton, not as a value never seen (the training saw values only it had)."""
    n = 1000
    col = np.array([0.0] * 900 + [np.log(n / 2)] * 60 + [np.log(n)] * 40)
    det = HistogramOutlier(floor_quantile=0.0).fit(col[:, None])
    raw = det._raw(np.array([[np.log(n)], [np.log(n + 1)], [np.log(n) + 2]]))[:, 0]
    assert raw[1] == raw[0]
    assert raw[2] > raw[0]  # well past the largest: a value never seen


def test_explanations_name_the_inputs_that_carried_the_evidence() -> None:
    from stream.scoring.baseline import Baseline

    X = _normal()
    det = HistogramOutlier().fit(X)
    base = Baseline.fit(X, det.decision_function(X), ["log_bytes", "port", "noise"])
    rows = np.array([[8.0, 22.0, 0.0], [30.0, 443.0, 0.2]])
    ev = det.evidence(rows)
    out = base.explain(rows, evidence=ev)
    assert [r[0]["feature"] for r in out] == ["port", "log_bytes"]
    assert out[0][0]["evidence"] == round(float(ev[0, 1]), 3) > 0
    assert all("evidence" not in item for r in base.explain(rows) for item in r)


def test_a_served_model_gives_its_detectors_evidence_through_the_pipeline() -> None:
    from stream.registry.loading import LoadedModel

    X = _normal(500)
    rows = np.array([[8.0, 22.0, 0.0]])
    for detector, has in (("hbos", True), ("ensemble", True), ("isolation_forest", False)):
        pipe = build_pipeline(n_estimators=10, detector=detector).fit(X)
        model = LoadedModel("m", "1", ("a", "b", "c"), np.array([-0.3, -0.2, -0.1]), pipe)
        ev = model.evidence(rows)
        assert (ev is not None) == has
        none = model.evidence(rows[:0])  # a batch with no alert to explain
        assert none is None if not has else none.shape == (0, 3)
        if has:
            assert ev.shape == (1, 3) and ev[0].argmax() == 1


def test_a_loaded_ensemble_walks_its_forest_compiled_and_scores_the_same() -> None:
    import skops.io as sio

    from stream.registry.loading import _ensemble_walks
    from stream.scoring import scorers as scoring

    X = _normal(2000)
    pipe = build_pipeline(n_estimators=30, detector="ensemble").fit(X)
    before = pipe.decision_function(X)
    said = _ensemble_walks(pipe)
    assert said.startswith("the ensemble, its forest walked by the")
    fast = getattr(pipe[-1], "_fast", {})
    assert set(fast) == {"isolation_forest"}
    assert getattr(fast["isolation_forest"], "compiled", False) == (
        scoring.compiled_forest is not None)
    assert np.array_equal(pipe.decision_function(X), before)
    # The walk is this process's: never written with the model.
    blob = sio.dumps(pipe)
    again = sio.loads(blob, trusted=sio.get_untrusted_types(data=blob))
    assert getattr(again[-1], "_fast", None) is None
    assert np.array_equal(again.decision_function(X), before)


def test_a_one_sided_input_counts_evidence_on_its_side_only() -> None:
    # A rarity-like input: most rows common (low values), a few rare (high values).
    rng = np.random.default_rng(5)
    rare = rng.choice([0.5, 1.0, 2.0, 4.0, 6.0], size=2000, p=[0.4, 0.3, 0.2, 0.08, 0.02])
    X = np.column_stack([rare, rng.normal(size=2000)])
    both = HistogramOutlier().fit(X)
    upper = HistogramOutlier(tails=[1, 0]).fit(X)
    lower = HistogramOutlier(tails=[-1, 0]).fit(X)
    common, unseen = np.array([[0.5, 0.0]]), np.array([[9.0, 0.0]])
    below = np.array([[-3.0, 0.0]])
    # More common than anything in training is evidence only when both ways count.
    assert both.evidence(below)[0, 0] > 0
    assert upper.evidence(below)[0, 0] == 0.0 and upper.evidence(common)[0, 0] == 0.0
    # Rarer than anything in training is evidence on the upper side, none on the lower.
    assert upper.evidence(unseen)[0, 0] > 2.0
    assert lower.evidence(unseen)[0, 0] == 0.0 and lower.evidence(below)[0, 0] > 2.0
    # The other input is untouched, and all-zero tails are the two-sided detector.
    assert upper.evidence(X[:50])[:, 1].tolist() == both.evidence(X[:50])[:, 1].tolist()
    zero = HistogramOutlier(tails=[0, 0]).fit(X)
    assert np.array_equal(zero.decision_function(X), both.decision_function(X))
    with pytest.raises(ValueError, match="tails has 3 entries for 2 inputs"):
        HistogramOutlier(tails=[1, 0, 0]).fit(X)


def test_the_spec_tells_which_way_each_input_is_unusual() -> None:
    from stream.features.expr import compile_expr, tail_of
    from stream.features.recipes import recipe

    cases = {
        "rarity(dst_port)": 1,
        "log1p(since(by=src_ip>dst_ip, window=1d) / 60)": 1,
        "spread(dst_ip, by=src_ip, window=10m)": 1,
        "-rarity(dst_ip)": -1,
        "1 - freq(dst_port)": 1,
        "freq(dst_port) * 2": -1,
        "prevalence(dst_ip, by=src_ip)": -1,
        "log1p(fill(bytes_transferred, 0))": 0,
        "rarity(dst_ip) - rarity(dst_port)": 0,
        "rarity(dst_ip) * bytes_transferred": 0,
        "count(by=src_ip, window=1m)": 0,
        "mean(bytes_transferred, by=src_ip, window=1m)": 0,
    }
    assert {e: tail_of(compile_expr(e).root) for e in cases} == cases
    spec = recipe("network")
    rows = [{"src_ip": f"10.0.0.{i % 7}", "dst_ip": f"10.1.0.{i % 5}", "dst_port": 443,
             "protocol": "tcp", "bytes_transferred": 100 + i, "packet_count": 3,
             "connection_duration": 0.5, "timestamp": 1000.0 + i} for i in range(50)]
    fitted, _X, _skipped = training_matrix(rows, spec)
    tails = dict(zip(fitted.columns, fitted.tails, strict=True))
    assert tails["log_bytes"] == 0 and tails["rare_service"] == 1
    assert tails["pair_novelty"] == 1 and tails["pair_beacon"] == 1
    # The trainer hands them to the histogram detector, whichever it trains.
    for detector in ("hbos", "ensemble"):
        pipe = build_pipeline(n_estimators=10, detector=detector, tails=fitted.tails)
        hbos = pipe.fit(_X)[-1]
        hbos = dict(hbos.fitted_)["hbos"] if detector == "ensemble" else hbos
        assert hbos.tails_.tolist() == list(fitted.tails)
