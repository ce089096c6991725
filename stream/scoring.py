"""Model scores: one call per matrix, threshold validation and calibration, the fast forest.

Scores come from the model's ``decision_function`` (lower = more anomalous);
what a score becomes (its threat level, an alert) is ``stream.outcomes``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from stream.outcomes import DEFAULT_THRESHOLDS  # noqa: F401  (a model's default cut-offs)

Scorer = Callable[[np.ndarray], np.ndarray]


def check_thresholds(thresholds: Sequence[float]) -> np.ndarray:
    """Validate three increasing finite cut points (critical < high < medium)."""
    t = np.asarray(thresholds, dtype=np.float64)
    if t.shape != (3,) or not np.all(np.isfinite(t)) or not np.all(np.diff(t) > 0):
        raise ValueError(
            f"thresholds must be 3 strictly increasing finite numbers, got {list(thresholds)}"
        )
    return t


def decision_scores(estimator: Any, X: np.ndarray) -> np.ndarray:
    """Anomaly scores for a whole matrix in one model call, as float64."""
    scores = np.asarray(estimator.decision_function(X), dtype=np.float64)
    if scores.shape != (X.shape[0],):
        raise ValueError(f"model returned scores of shape {scores.shape} for {X.shape[0]} rows")
    return scores


#: Default target rates of critical, high-or-above and medium-or-above on training traffic.
DEFAULT_CALIBRATION: tuple[float, float, float] = (0.001, 0.005, 0.02)


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


# Below this many rows, all trees are walked at once (one numpy pass per tree level);
# above it, tree by tree with sklearn's compiled ``Tree.apply``.
STACKED_WALK_MAX_ROWS = 64


def fast_isolation_forest(pipeline: Any, check: np.ndarray | None = None) -> Scorer | None:
    """``decision_function`` of a StandardScaler + IsolationForest pipeline without sklearn's
    per-call overhead, or None when the pipeline is not one or the result is not identical.

    ``IsolationForest.decision_function`` walks its trees through joblib with
    validation, tag lookups and config contexts per tree: ~5 ms per call for
    100 trees however few rows, which dominates per-tenant batches. This does
    the same arithmetic in the same order straight from the fitted trees. It
    reads private sklearn attributes, so it is only used after it has produced
    bit-identical scores to ``decision_function`` on ``check`` plus a spread of
    synthetic rows; anything else keeps the model's own method.

    Small calls (a tenant with a few events in a batch, common with many
    tenants) walk every tree at once: a per-tree ``Tree.apply`` costs ~4 us and
    drops the GIL each time, so with a model loading on another thread one call
    could wait out the interpreter's switch interval 100 times.
    """
    try:
        from sklearn.ensemble import IsolationForest
        from sklearn.ensemble._iforest import _average_path_length
        from sklearn.preprocessing import StandardScaler

        steps = list(getattr(pipeline, "named_steps", {}).values())
        if len(steps) != 2 or type(steps[0]) is not StandardScaler:
            return None
        scaler, forest = steps
        if type(forest) is not IsolationForest:
            return None
        trees = [
            (est.tree_, np.asarray(feats))
            for est, feats in zip(forest.estimators_, forest.estimators_features_, strict=True)
        ]
        path_lengths = forest._decision_path_lengths
        avg_lengths = forest._average_path_length_per_tree
        denominator = len(forest.estimators_) * _average_path_length([forest._max_samples])
        subsample = forest._max_features != forest.n_features_in_
        offset = float(forest.offset_)
        n_features = int(scaler.n_features_in_)
        center = np.asarray(scaler.mean_, dtype=np.float64) if scaler.with_mean else None
        spread = np.asarray(scaler.scale_, dtype=np.float64) if scaler.with_std else None
        stacked = _stack_trees(trees, path_lengths, avg_lengths)
    except Exception:
        return None

    def transform(X: np.ndarray) -> np.ndarray:
        # StandardScaler.transform's arithmetic, without its validation: same order, same dtype.
        Z = np.array(X, dtype=np.float64)
        if center is not None:
            Z -= center
        if spread is not None:
            Z /= spread
        return Z

    def score(X: np.ndarray) -> np.ndarray:
        if X.ndim != 2 or X.shape[1] != n_features:
            raise ValueError(f"expected {n_features} features, got shape {X.shape}")
        Z = np.ascontiguousarray(transform(X), dtype=np.float32)
        if len(Z) <= STACKED_WALK_MAX_ROWS and not np.isnan(Z).any():
            depths = stacked(Z)
        else:
            depths = np.zeros(len(Z), order="f")
            for k, (tree, feats) in enumerate(trees):
                leaves = tree.apply(np.ascontiguousarray(Z[:, feats]) if subsample else Z)
                depths += path_lengths[k][leaves] + avg_lengths[k][leaves] - 1.0
        scores = 2 ** (
            -np.divide(depths, denominator, out=np.ones_like(depths), where=denominator != 0)
        )
        return -scores - offset

    rng = np.random.default_rng(0)
    mean = np.asarray(scaler.mean_, dtype=np.float64)
    scale = np.asarray(scaler.scale_, dtype=np.float64)
    synthetic = mean + scale * rng.standard_normal((512, n_features)) * 3.0
    probes = [synthetic, np.vstack([mean, mean + 50 * scale, mean - 50 * scale])]
    if check is not None and check.size:
        probes.append(np.asarray(check, dtype=np.float64))
    try:
        for X in probes:
            expected = pipeline.decision_function(X)
            if not np.array_equal(score(X), expected):
                return None
            # Both walks: a large probe again in slices small enough for the all-trees one.
            step = STACKED_WALK_MAX_ROWS
            if len(X) > step and not np.array_equal(
                np.concatenate([score(X[i : i + step]) for i in range(0, len(X), step)]),
                expected,
            ):
                return None
    except Exception:
        return None
    return score


def _stack_trees(
    trees: list[tuple[Any, np.ndarray]], path_lengths: Sequence[np.ndarray],
    avg_lengths: Sequence[np.ndarray],
) -> Callable[[np.ndarray], np.ndarray]:
    """All trees' nodes in flat arrays; returns a walk of every row down every tree at once.

    Leaves point to themselves, so each row simply takes ``max_depth`` steps. Each
    node carries its tree's term of the path-length sum, computed exactly as the
    tree-by-tree loop computes it, and the terms are added tree by tree
    (``cumsum`` is sequential), so the sums are the same floats.
    """
    sizes = [t.node_count for t, _f in trees]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
    left, right, feature, threshold, term = [], [], [], [], []
    for k, ((tree, feats), start) in enumerate(zip(trees, starts, strict=True)):
        own = np.arange(tree.node_count, dtype=np.intp) + start
        leaf = tree.children_left == -1
        left.append(np.where(leaf, own, tree.children_left + start))
        right.append(np.where(leaf, own, tree.children_right + start))
        # The tree's feature index is into its own columns (feature subsampling).
        feature.append(np.where(leaf, 0, feats[np.where(leaf, 0, tree.feature)]))
        threshold.append(np.where(leaf, np.inf, tree.threshold))
        term.append(path_lengths[k] + avg_lengths[k] - 1.0)
    left_all = np.concatenate(left).astype(np.intp)
    right_all = np.concatenate(right).astype(np.intp)
    feature_all = np.concatenate(feature).astype(np.intp)
    threshold_all = np.concatenate(threshold).astype(np.float64)
    term_all = np.concatenate(term).astype(np.float64)
    depth = max(t.max_depth for t, _f in trees)

    def walk(Z: np.ndarray) -> np.ndarray:
        rows = np.arange(len(Z))[:, None]
        node = np.broadcast_to(starts, (len(Z), len(starts)))
        for _ in range(depth):
            # float32 value against float64 threshold, as Tree.apply compares them.
            go_left = Z[rows, feature_all[node]] <= threshold_all[node]
            node = np.where(go_left, left_all[node], right_all[node])
        return np.cumsum(term_all[node], axis=1)[:, -1]

    return walk
