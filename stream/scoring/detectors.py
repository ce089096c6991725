"""Detectors of our own, beside scikit-learn's: HBOS-style tail evidence per input.

:class:`HistogramOutlier` scores a row by the **sum of per-input tail evidence**: each
input has a histogram of its training values; a value in a bin that training rarely
filled carries evidence ``-log p(bin)``, less what an ordinary training row already
carries on that input (its ``floor_quantile`` of evidence), and never below 0. A value
beyond the training range counts as an empty bin, plus ``log1p`` of how many bin widths
beyond it lies. So one input far in its tail (a port never seen, a pair that never
talked, a hundred destinations a minute) makes a row anomalous on its own, and several
moderately unusual ones add up, where IsolationForest averages path lengths over every
input and one strong signal can drown in the others (Goldstein and Dengel, *HBOS*,
2012; the floor is ours: evidence an ordinary row has is not evidence).

Why written here and not taken from PyOD: PyOD is not among the packages this tool
installs, and a model is loaded with skops, which rebuilds only types it is told to
trust; this class holds plain numpy arrays and floats, its scoring is a few vectorized
numpy calls per input per batch, and it is short enough to read whole.

It follows scikit-learn's outlier detector API (``fit``, ``score_samples``,
``decision_function``: lower is more anomalous, ``predict``) so that it sits in the
same Pipeline as the others, and adds :meth:`HistogramOutlier.evidence`, the per-input
evidence that explanations read.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(2000, 3))
>>> det = HistogramOutlier().fit(X)
>>> ordinary, odd = det.decision_function(np.array([[0.0, 0.0, 0.0], [0.0, 9.0, 0.0]]))
>>> bool(ordinary > odd)
True
>>> int(det.evidence(np.array([[0.0, 9.0, 0.0]])).argmax())  # the input that carried it
1
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin

__all__ = ["Ensemble", "HistogramOutlier"]


class HistogramOutlier(OutlierMixin, BaseEstimator):
    """Histogram-based outlier score with tail evidence per input (see the module doc).

    ``bins``: bins per input ("auto": the square root of the training rows, between
    10 and 100); an input with at most that many distinct training values gets one bin
    per value (categorical inputs, one-hot columns, rarities). ``floor_quantile``: the
    share of training rows whose evidence on an input counts as ordinary (subtracted).
    ``contamination``: where ``decision_function`` crosses 0 on training data, as
    IsolationForest's (thresholds are calibrated on the training scores anyway).
    ``tails``: per input, which way its values are unusual: 0 either way (default), +1
    only above the training's (a rarity: a destination seen more often than most is
    not evidence), -1 only below. A one-sided input's evidence is the share of training
    values at least as far out on that side, whatever the spacing of its values; on the
    other side it is 0.

    >>> X = np.column_stack([np.repeat([1.0, 2.0, 3.0, 6.0], [50, 30, 15, 5])] * 2)
    >>> det = HistogramOutlier(tails=[1, 0]).fit(X)
    >>> [round(float(e), 2) for e in det.evidence(np.array([[0.0, 0.0]]))[0]]  # below
    [0.0, 3.58]
    """

    def __init__(self, bins: int | str = "auto", floor_quantile: float = 0.95,
                 contamination: float | str = 0.1, alpha: float = 1.0,
                 tails: list[int] | None = None) -> None:
        self.bins = bins
        self.floor_quantile = floor_quantile
        self.contamination = contamination
        self.alpha = alpha
        self.tails = tails

    def fit(self, X: Any, y: Any = None) -> HistogramOutlier:
        X = _matrix(X)
        n, d = X.shape
        if n < 2:
            raise ValueError("HistogramOutlier needs at least 2 training rows")
        if not 0.0 <= float(self.floor_quantile) < 1.0:
            raise ValueError("floor_quantile must be in [0, 1)")
        if self.alpha <= 0:
            raise ValueError("alpha must be positive")
        nb = (int(min(max(round(math.sqrt(n)), 10), 100)) if self.bins == "auto"
              else int(self.bins))
        if nb < 2:
            raise ValueError("bins must be at least 2")
        tails = np.zeros(d, dtype=np.int64) if self.tails is None else np.sign(
            np.asarray(self.tails, dtype=np.int64))
        if tails.shape != (d,):
            raise ValueError(f"tails has {tails.size} entries for {d} inputs")
        self.tails_ = tails
        # Per input (ragged lists of arrays, which skops stores as plain numpy arrays):
        # its support points; for a discrete input the boundaries between them and -log p
        # of each value; for a continuous one the training counts at or below and at or
        # above each point.
        self.discrete_ = np.zeros(d, dtype=bool)
        self.support_: list[np.ndarray] = []
        self.edges_: list[np.ndarray] = []
        self.logp_: list[np.ndarray] = []
        self.le_: list[np.ndarray] = []
        self.ge_: list[np.ndarray] = []
        empty = np.empty(0)
        for j in range(d):
            x = np.sort(X[:, j])
            distinct, counts = np.unique(x, return_counts=True)
            if len(distinct) <= nb and not tails[j]:
                self.discrete_[j] = True
                k = len(distinct)
                self.support_.append(distinct)
                self.edges_.append((distinct[:-1] + distinct[1:]) / 2.0)
                # Smoothed: one pseudo-count per value and one for a value not seen.
                self.logp_.append(-np.log((counts + self.alpha) / (n + self.alpha * (k + 1))))
                self.le_.append(empty)
                self.ge_.append(empty)
            else:
                pts = _support(x, distinct)
                self.support_.append(pts)
                self.edges_.append(empty)
                self.logp_.append(empty)
                self.le_.append(np.searchsorted(x, pts, side="right").astype(np.float64))
                self.ge_.append((n - np.searchsorted(x, pts, side="left")).astype(np.float64))
        # How far beyond the range counts as further out: a robust spread of the input.
        med = np.median(X, axis=0)
        spread = 1.4826 * np.median(np.abs(X - med), axis=0)
        iqr = np.subtract(*np.percentile(X, [75, 25], axis=0)) / 1.349
        gap = np.array([float(np.median(np.diff(p))) if len(p) > 1 else 1.0
                        for p in self.support_])
        self.scale_ = np.where(spread > 0, spread, np.where(iqr > 0, iqr, gap))
        self.scale_ = np.where(self.scale_ > 0, self.scale_, 1.0)
        self.tol_ = np.array([(0.1 * float(p[1] - p[0]), 0.1 * float(p[-1] - p[-2]))
                              if len(p) > 1 else (0.1 * sc, 0.1 * sc)
                              for p, sc in zip(self.support_, self.scale_, strict=True)])
        self.n_training_rows_ = n
        self.n_features_in_ = d
        raw = self._raw(X)
        self.floor_ = np.quantile(raw, float(self.floor_quantile), axis=0)
        scores = self.score_samples(X)
        if self.contamination == "auto":
            self.offset_ = -float(np.median(-scores)) * 2.0
        else:
            self.offset_ = float(np.percentile(scores, 100.0 * float(self.contamination)))
        return self

    def _raw(self, X: np.ndarray) -> np.ndarray:
        """Per row and input: the evidence before the floor."""
        out = np.empty(X.shape, dtype=np.float64)
        n, a = float(self.n_training_rows_), float(self.alpha)
        # Models fitted before inputs had a direction: every input both ways.
        tails = getattr(self, "tails_", None)
        for j in range(X.shape[1]):
            side = 0 if tails is None else int(tails[j])
            x = X[:, j]
            pts = self.support_[j]
            if self.discrete_[j]:
                logp = self.logp_[j]
                e = logp[np.searchsorted(self.edges_[j], x, side="right")]
                # Past either end by more than a tenth of the gap to the next value: a
                # value never seen (just past it, the end value itself: rarity's unseen
                # log(N + 1) next to a training singleton's log N).
                unseen = -math.log(a / (n + a * (len(pts) + 1)))
                tol_lo, tol_hi = self.tol_[j]
                lo_e = hi_e = unseen
                x = np.where((x < pts[0]) & (x >= pts[0] - tol_lo), pts[0], x)
                x = np.where((x > pts[-1]) & (x <= pts[-1] + tol_hi), pts[-1], x)
            else:
                le, ge = self.le_[j], self.ge_[j]
                i = np.searchsorted(pts, x, side="right") - 1  # last point <= x
                k = np.searchsorted(pts, x, side="left")  # first point >= x
                c_le = np.where(i >= 0, le[np.clip(i, 0, len(pts) - 1)], 0.0)
                c_ge = np.where(k < len(pts), ge[np.clip(k, 0, len(pts) - 1)], 0.0)
                # The share of training values at least this far out on the row's side
                # (on the input's one side, for a one-sided input).
                c = c_ge if side > 0 else c_le if side < 0 else np.minimum(c_le, c_ge)
                e = -np.log((c + a) / (n + a))
                lo_e = hi_e = -math.log(a / (n + a))
            # Beyond the range: the edge's evidence (an unseen value's, for a discrete input),
            # growing with the log of the distance in spreads (a value just past the
            # largest training value is as rare as it; one a thousand spreads past it,
            # rarer by log 1001).
            below = (pts[0] - x) / self.scale_[j]
            above = (x - pts[-1]) / self.scale_[j]
            if side <= 0:
                e = np.where(below > 0, lo_e + np.log1p(np.clip(below, 0.0, 1e12)), e)
            if side >= 0:
                e = np.where(above > 0, hi_e + np.log1p(np.clip(above, 0.0, 1e12)), e)
            # NaN compares False everywhere: a NaN input is as far out as it gets.
            out[:, j] = np.where(np.isnan(X[:, j]), max(lo_e, hi_e) + math.log1p(1e12), e)
        return out

    def evidence(self, X: Any) -> np.ndarray:
        """Per row and input: the tail evidence it contributes (0 for an ordinary value)."""
        X = self._check(X)
        return np.maximum(self._raw(X) - self.floor_, 0.0)

    def score_samples(self, X: Any) -> np.ndarray:
        """Minus the summed evidence (higher is more normal, as scikit-learn's)."""
        return -self.evidence(X).sum(axis=1)

    def decision_function(self, X: Any) -> np.ndarray:
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        return np.where(self.decision_function(X) < 0, -1, 1)

    def _check(self, X: Any) -> np.ndarray:
        return _fitted_matrix(self, X, "floor_")


class Ensemble(OutlierMixin, BaseEstimator):
    """Several detectors fitted on the same inputs, each score calibrated against its own
    training scores, combined by the maximum (default) or the sum.

    A member's anomaly (minus its ``decision_function``) becomes ``-log`` of the share of
    training rows at least as anomalous (beyond the most anomalous training row, plus
    ``log1p`` of how far beyond it, in robust spreads of the training anomalies): the
    same scale, in nats of surprise, for a forest's path lengths and a histogram's
    evidence. The maximum alerts when either member is sure; the sum when both lean.

    ``members``: ``(name, estimator)`` pairs, as a Pipeline's steps. A member named
    ``hbos`` (a :class:`HistogramOutlier`) also gives the ensemble its per-input
    :meth:`evidence` (explanations).
    """

    def __init__(self, members: list[tuple[str, Any]] | None = None, combine: str = "max",
                 contamination: float | str = 0.1) -> None:
        self.members = members
        self.combine = combine
        self.contamination = contamination

    def fit(self, X: Any, y: Any = None) -> Ensemble:
        from sklearn.base import clone

        X = _matrix(X)
        if not self.members:
            raise ValueError("an Ensemble needs members")
        if self.combine not in ("max", "sum"):
            raise ValueError("combine must be 'max' or 'sum'")
        self.fitted_: list[tuple[str, Any]] = []
        self.support_: list[np.ndarray] = []
        self.ge_: list[np.ndarray] = []
        scale = []
        for name, est in self.members:
            fitted = clone(est).fit(X)
            a = np.sort(-np.asarray(fitted.decision_function(X), dtype=np.float64))
            distinct = np.unique(a)
            pts = _support(a, distinct)
            self.fitted_.append((name, fitted))
            self.support_.append(pts)
            self.ge_.append((len(a) - np.searchsorted(a, pts, side="left")).astype(np.float64))
            mad = 1.4826 * float(np.median(np.abs(a - np.median(a))))
            iqr = float(np.subtract(*np.percentile(a, [75, 25]))) / 1.349
            scale.append(mad if mad > 0 else iqr if iqr > 0 else 1.0)
        self.scale_ = np.array(scale)
        self.n_training_rows_ = X.shape[0]
        self.n_features_in_ = X.shape[1]
        scores = self.score_samples(X)
        if self.contamination == "auto":
            self.offset_ = -float(np.median(-scores)) * 2.0
        else:
            self.offset_ = float(np.percentile(scores, 100.0 * float(self.contamination)))
        return self

    def surprise(self, X: Any) -> np.ndarray:
        """Per row and member: its calibrated anomaly, in nats (see the class doc)."""
        X = self._check(X)
        n = float(self.n_training_rows_)
        out = np.empty((X.shape[0], len(self.fitted_)), dtype=np.float64)
        fast = getattr(self, "_fast", None) or {}
        for m, (name, est) in enumerate(self.fitted_):
            score = fast.get(name) or est.decision_function
            a = -np.asarray(score(X), dtype=np.float64)
            pts, ge = self.support_[m], self.ge_[m]
            last = len(pts) - 1
            k = np.clip(np.searchsorted(pts, a, side="left"), 0, last)  # first point >= a
            # The training rows at least as anomalous, interpolated between support points
            # (a continuous, increasing surprise: no ties at every step of the training's).
            lo = np.clip(k - 1, 0, last)
            width = pts[k] - pts[lo]
            frac = np.where(width > 0, (pts[k] - a) / np.where(width > 0, width, 1.0), 0.0)
            c = ge[k] + (ge[lo] - ge[k]) * np.clip(frac, 0.0, 1.0)
            c = np.where(a > pts[last], 0.0, c)
            e = -np.log((c + 1.0) / (n + 1.0))
            above = np.clip((a - pts[-1]) / self.scale_[m], 0.0, 1e12)
            e = e + np.log1p(above)
            out[:, m] = np.where(np.isnan(a), -math.log(1.0 / (n + 1.0)) + math.log1p(1e12), e)
        return out

    def use_scorers(self, scorers: dict[str, Any]) -> None:
        """Score the named members with these callables instead of their
        ``decision_function`` (the compiled forest walk, proved bit-identical to it at
        load: ``scoring.fast_isolation_forest``). Not part of the fitted state."""
        self._fast = dict(scorers)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_fast", None)  # callables of this process, never serialized
        return state

    def score_samples(self, X: Any) -> np.ndarray:
        s = self.surprise(X)
        return -(s.max(axis=1) if self.combine == "max" else s.sum(axis=1))

    def decision_function(self, X: Any) -> np.ndarray:
        return self.score_samples(X) - self.offset_

    def predict(self, X: Any) -> np.ndarray:
        return np.where(self.decision_function(X) < 0, -1, 1)

    def evidence(self, X: Any) -> np.ndarray | None:
        """The histogram member's per-input evidence, when it has one."""
        for _name, est in getattr(self, "fitted_", ()):
            if isinstance(est, HistogramOutlier):
                return est.evidence(X)
        return None

    def _check(self, X: Any) -> np.ndarray:
        return _fitted_matrix(self, X, "scale_")


#: Support points kept per continuous input: every distinct value up to this many, else
#: the extremes exactly (where the evidence is) and the middle by rank.
SUPPORT_POINTS = 2048
_TAIL_POINTS = 256


def _support(x: np.ndarray, distinct: np.ndarray) -> np.ndarray:
    """Support points of a sorted column: all its distinct values if few, else its
    ``_TAIL_POINTS`` smallest and largest distinct values and the rest by rank."""
    if len(distinct) <= SUPPORT_POINTS:
        return distinct
    middle = x[np.linspace(0, len(x) - 1, SUPPORT_POINTS - 2 * _TAIL_POINTS).astype(np.int64)]
    return np.unique(np.concatenate([distinct[:_TAIL_POINTS], middle,
                                     distinct[-_TAIL_POINTS:]]))


def _matrix(X: Any) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"expected a 2-d matrix, got shape {X.shape}")
    return X


def _fitted_matrix(est: Any, X: Any, fitted: str) -> np.ndarray:
    """``X`` as a 2-d float matrix for a fitted ``est`` (its attribute ``fitted`` set by
    ``fit``), with as many columns as it was fitted on."""
    X = _matrix(X)
    name = type(est).__name__
    if not hasattr(est, fitted):
        raise ValueError(f"this {name} is not fitted yet")
    if X.shape[1] != est.n_features_in_:
        raise ValueError(f"X has {X.shape[1]} features; {name} was fitted "
                         f"with {est.n_features_in_}")
    return X
