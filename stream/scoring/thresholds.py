"""The one threshold policy: a model's score -> threat level, and where the cut points
come from.

Detectors only score (lower is more anomalous, as scikit-learn's
``decision_function``); what a score means for an analyst is decided here, apart from
them, as River's ``AnomalyFilter`` keeps thresholds apart from its detectors. Three
cut points, critical < high < medium, either the design note's fixed ones or
calibrated on training scores so that given shares of training traffic would be
critical, high or above, medium or above (``stream train --calibrate``,
``--alert-budget`` and ``--target-precision`` all end here). A model carries its own
cut points; the consumer, ``stream score`` and the design note's API read levels with
:func:`threat_levels`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stream.config import LEVELS

__all__ = [
    "DEFAULT_CALIBRATION", "DEFAULT_THRESHOLDS", "calibrate_thresholds", "check_thresholds",
    "score_to_threat_level", "threat_levels",
]

# The design note's fixed cut-offs: < -0.5 critical, < -0.2 high, < 0 medium.
DEFAULT_THRESHOLDS: tuple[float, float, float] = (-0.5, -0.2, 0.0)
#: Default target rates of critical, high-or-above and medium-or-above on training traffic.
DEFAULT_CALIBRATION: tuple[float, float, float] = (0.001, 0.005, 0.02)


def threat_levels(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Level code per score (0 low .. 3 critical); NaN scores get level 0.

    >>> threat_levels(np.array([-0.7, -0.3, -0.1, 0.2]), np.asarray(DEFAULT_THRESHOLDS))
    array([3, 2, 1, 0], dtype=int8)
    """
    return (3 - np.searchsorted(thresholds, scores, side="right")).astype(np.int8)


def score_to_threat_level(
    score: float, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> str:
    """One score's level name (the design note's ``_score_to_threat_level``)."""
    return LEVELS[int(threat_levels(np.array([score]), np.asarray(thresholds))[0])]


def check_thresholds(thresholds: Sequence[float]) -> np.ndarray:
    """Validate three increasing finite cut points (critical < high < medium)."""
    t = np.asarray(thresholds, dtype=np.float64)
    if t.shape != (3,) or not np.all(np.isfinite(t)) or not np.all(np.diff(t) > 0):
        raise ValueError(
            f"thresholds must be 3 strictly increasing finite numbers, got {list(thresholds)}"
        )
    return t


def calibrate_thresholds(
    train_scores: np.ndarray, rates: Sequence[float] = DEFAULT_CALIBRATION
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
