"""Batch scoring and threat levels.

Scores come from the model's ``decision_function`` (lower = more anomalous);
levels come from three cut points with one vectorized ``searchsorted``:
score < t0 -> critical, < t1 -> high, < t2 -> medium, else low.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from stream.config import LEVELS

# The design note's fixed cut-offs: < -0.5 critical, < -0.2 high, < 0 medium.
DEFAULT_THRESHOLDS: tuple[float, float, float] = (-0.5, -0.2, 0.0)

LOW, MEDIUM, HIGH, CRITICAL = 0, 1, 2, 3
LEVEL_NAMES: tuple[str, ...] = LEVELS
LEVEL_CODES: dict[str, int] = {name: i for i, name in enumerate(LEVEL_NAMES)}


def check_thresholds(thresholds: Sequence[float]) -> np.ndarray:
    """Validate three increasing finite cut points (critical < high < medium)."""
    t = np.asarray(thresholds, dtype=np.float64)
    if t.shape != (3,) or not np.all(np.isfinite(t)) or not np.all(np.diff(t) > 0):
        raise ValueError(
            f"thresholds must be 3 strictly increasing finite numbers, got {list(thresholds)}"
        )
    return t


def threat_levels(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Level code per score (0 low .. 3 critical); NaN scores get level 0."""
    return (3 - np.searchsorted(thresholds, scores, side="right")).astype(np.int8)


def score_to_threat_level(score: float, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> str:
    """One score's level name (the design note's ``_score_to_threat_level``)."""
    return LEVEL_NAMES[int(threat_levels(np.array([score]), np.asarray(thresholds))[0])]


def decision_scores(estimator: Any, X: np.ndarray) -> np.ndarray:
    """Anomaly scores for a whole matrix in one model call, as float64."""
    scores = np.asarray(estimator.decision_function(X), dtype=np.float64)
    if scores.shape != (X.shape[0],):
        raise ValueError(f"model returned scores of shape {scores.shape} for {X.shape[0]} rows")
    return scores


def calibrate_thresholds(
    train_scores: np.ndarray, rates: Sequence[float] = (0.001, 0.005, 0.02)
) -> tuple[float, float, float]:
    """Cut points so that about ``rates`` of training traffic is critical, high+, medium+.

    ``rates`` are cumulative target alert rates for critical, high-or-above and
    medium-or-above; each must be in (0, 1) and increasing.
    """
    r = np.asarray(rates, dtype=np.float64)
    if r.shape != (3,) or not np.all((r > 0) & (r < 1)) or not np.all(np.diff(r) > 0):
        raise ValueError(f"rates must be 3 increasing fractions in (0, 1), got {list(rates)}")
    q = np.quantile(np.asarray(train_scores, dtype=np.float64), r)
    # Ties in the training scores can collapse quantiles; nudge to keep them strictly increasing.
    for i in (1, 2):
        if q[i] <= q[i - 1]:
            q[i] = np.nextafter(q[i - 1], np.inf)
    return float(q[0]), float(q[1]), float(q[2])
