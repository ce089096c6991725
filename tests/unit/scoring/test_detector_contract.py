"""The contract every detector ``stream train --detector`` offers keeps, checked on each.

Whatever the detector: fitted in one Pipeline with the scaler, ``decision_function``
gives one finite score per row, lower for what is more unusual; the same data and seed
give the same scores; skops saves and loads it with the trusted types alone, scoring the
same after; and the one threshold policy calibrates levels on its training scores.
Model versions that name this tool's detectors by the modules they had before the stage
packages still load.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

from stream.registry import loading
from stream.registry.loading import TRUSTED_TYPES, current_type, needed_types
from stream.registry.training import DETECTORS, build_pipeline
from stream.scoring import detectors
from stream.scoring.thresholds import calibrate_thresholds, threat_levels


def _normal(n: int = 1500, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.normal(8, 1, n), rng.choice([443.0, 80.0, 53.0], n),
                            rng.normal(size=n)])


def _fit(detector: str, X: np.ndarray) -> Any:
    return build_pipeline(n_estimators=30, detector=detector, contamination=0.05,
                          tails=[1, 0, 1]).fit(X)


@pytest.mark.parametrize("detector", DETECTORS)
def test_every_detector_keeps_the_scoring_contract(detector: str) -> None:
    X = _normal()
    model = _fit(detector, X)
    scores = model.decision_function(X)
    assert scores.shape == (len(X),) and scores.dtype == np.float64
    assert np.isfinite(scores).all()
    # Lower is more unusual: a row far outside the training data scores below nearly
    # every training row.
    far = np.array([[20.0, 443.0, 9.0]])
    assert model.decision_function(far)[0] < np.quantile(scores, 0.02)
    # The same data and seed: the same model, the same scores.
    again = _fit(detector, X).decision_function(X)
    assert np.array_equal(again, scores)
    # Levels from the one threshold policy, calibrated on its own training scores.
    cuts = np.asarray(calibrate_thresholds(scores))
    levels = threat_levels(scores, cuts)
    assert np.all(np.diff(cuts) > 0) and 0 < np.count_nonzero(levels > 0) < len(X) * 0.2
    assert threat_levels(model.decision_function(far), cuts)[0] == 3


@pytest.mark.parametrize("detector", DETECTORS)
def test_every_detector_round_trips_through_skops_with_the_trusted_types_only(
        detector: str) -> None:
    import skops.io as sio

    X = _normal(600)
    model = _fit(detector, X)
    needed = needed_types(model)
    assert needed <= set(TRUSTED_TYPES), needed - set(TRUSTED_TYPES)
    loaded = sio.loads(sio.dumps(model), trusted=sorted(needed))
    assert np.array_equal(loaded.decision_function(X), model.decision_function(X))


def test_versions_naming_the_detectors_old_module_still_load(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import skops.io as sio

    X = _normal(600)
    model = _fit("hbos", X)
    # As a version trained before the stage packages wrote it: the class in stream.detectors.
    monkeypatch.setattr(detectors.HistogramOutlier, "__module__", "stream.detectors")
    monkeypatch.setitem(sys.modules, "stream.detectors", detectors)
    blob = sio.dumps(model)
    monkeypatch.undo()
    monkeypatch.delitem(sys.modules, "stream.detectors", raising=False)
    asked = set(sio.get_untrusted_types(data=blob))
    assert "stream.detectors.HistogramOutlier" in asked
    # The allow-list reads the old name as the current one ...
    assert {current_type(t) for t in asked} <= set(TRUSTED_TYPES)
    # ... and the old module resolves to the current one when a model loads.
    loading._alias_legacy_modules()
    try:
        loaded = sio.loads(blob, trusted=sorted(asked))
    finally:
        sys.modules.pop("stream.detectors", None)
    assert np.array_equal(loaded.decision_function(X), model.decision_function(X))
