"""Model scores: one call per matrix, threshold validation and calibration, the fast forest.

Scores come from the model's ``decision_function`` (lower = more anomalous);
what a score becomes (its threat level, an alert) is ``stream.outcomes.records``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Scorer = Callable[[np.ndarray], np.ndarray]

log = logging.getLogger(__name__)


class FastScorer:
    """A proved scorer: called as ``decision_function`` is, plus whether it walks the
    compiled forest (``compiled``) and the arrays that rebuild it (``parts``)."""

    __slots__ = ("_score", "compiled", "parts")

    def __init__(self, score: Scorer, compiled: bool,
                 parts: dict[str, np.ndarray] | None) -> None:
        self._score, self.compiled, self.parts = score, compiled, parts

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return self._score(X)

try:  # the compiled forest walk, built by `pip install` (setup.py); optional
    from stream.scoring import _forest as compiled_forest
except ImportError as exc:  # pragma: no cover - depends on the install having had a compiler
    compiled_forest = None  # type: ignore[assignment]
    _COMPILED_MISSING = f"{type(exc).__name__}: {exc}"
else:
    _COMPILED_MISSING = ""
_warned_missing = False


def decision_scores(estimator: Any, X: np.ndarray) -> np.ndarray:
    """Anomaly scores for a whole matrix in one model call, as float64."""
    scores = np.asarray(estimator.decision_function(X), dtype=np.float64)
    if scores.shape != (X.shape[0],):
        raise ValueError(f"model returned scores of shape {scores.shape} for {X.shape[0]} rows")
    return scores


# Below this many rows, all trees are walked at once (one numpy pass per tree level);
# above it, tree by tree with sklearn's compiled ``Tree.apply``.
STACKED_WALK_MAX_ROWS = 64


def fast_isolation_forest(
    pipeline: Any, check: np.ndarray | None = None, compiled: bool = True
) -> Scorer | None:
    """``decision_function`` of a StandardScaler + IsolationForest pipeline without sklearn's
    per-call overhead, or None when the pipeline is not one or the result is not identical.

    ``IsolationForest.decision_function`` walks its trees through joblib with
    validation, tag lookups and config contexts per tree: ~5 ms per call for
    100 trees however few rows, which dominates per-tenant batches. This does
    the same arithmetic in the same order straight from the fitted trees. It
    reads private sklearn attributes, so it is only used after it has produced
    bit-identical scores to ``decision_function`` on ``check`` plus a spread of
    synthetic rows; anything else keeps the model's own method.

    The walk is the compiled one (``stream.scoring._forest``: every row down every tree
    in one call without the GIL) when it was built and proves identical;
    otherwise numpy's: small calls walk every tree at once (a per-tree
    ``Tree.apply`` costs ~4 us and drops the GIL each time, so with a model
    loading on another thread one call could wait out the interpreter's switch
    interval 100 times), large ones tree by tree with ``Tree.apply``. Rows with
    a NaN input always take ``Tree.apply`` (its missing-value rules).
    """
    global _warned_missing
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
        flat = FlatForest.of(trees, path_lengths, avg_lengths)
    except Exception:
        return None
    walk = None
    parts: dict[str, np.ndarray] | None = None
    if compiled and compiled_forest is not None:
        walk, parts = flat.compiled(center, spread, parts=True)
    elif compiled and not _warned_missing:
        _warned_missing = True
        log.warning("compiled forest walk unavailable (%s): scoring with numpy and sklearn's "
                    "Tree.apply, about 3x slower per event", _COMPILED_MISSING)
    # The numpy all-trees walk only when the compiled one is absent: a NaN row, which the
    # compiled walk hands back, goes to Tree.apply either way. (Each loaded model keeps
    # the arrays of the walk it uses, and no more.)
    stacked = flat.stacked_walk() if walk is None else None
    del flat

    def transform(X: np.ndarray) -> np.ndarray:
        # StandardScaler.transform's arithmetic, without its validation: same order, same dtype.
        Z = np.array(X, dtype=np.float64)
        if center is not None:
            Z -= center
        if spread is not None:
            Z /= spread
        return Z

    def path_depths(X: np.ndarray) -> np.ndarray:
        if walk is not None:
            # Scaler and trees in one compiled call; False at a NaN (Tree.apply's rules below).
            out = np.empty(len(X), dtype=np.float64)
            if walk.depths(np.ascontiguousarray(X, dtype=np.float64), out):
                return out
        Z = np.ascontiguousarray(transform(X), dtype=np.float32)
        if stacked is not None and len(Z) <= STACKED_WALK_MAX_ROWS and not np.isnan(Z).any():
            return stacked(Z)
        depths = np.zeros(len(Z), order="F")
        for k, (tree, feats) in enumerate(trees):
            leaves = tree.apply(np.ascontiguousarray(Z[:, feats]) if subsample else Z)
            depths += path_lengths[k][leaves] + avg_lengths[k][leaves] - 1.0
        return depths

    def score(X: np.ndarray) -> np.ndarray:
        if X.ndim != 2 or X.shape[1] != n_features:
            raise ValueError(f"expected {n_features} features, got shape {X.shape}")
        return _scores(path_depths(X), denominator, offset)

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
                raise ArithmeticError("not identical")
            # Both walks: a large probe again in slices small enough for the all-trees one.
            step = STACKED_WALK_MAX_ROWS
            if len(X) > step and not np.array_equal(
                np.concatenate([score(X[i : i + step]) for i in range(0, len(X), step)]),
                expected,
            ):
                raise ArithmeticError("not identical")
    except Exception:
        if walk is not None:
            # Keep the numpy walk if only the compiled one differs (a compiler that
            # reorders floating-point arithmetic, say).
            log.warning("compiled forest walk is not identical to decision_function; "
                        "scoring with numpy")
            return fast_isolation_forest(pipeline, check, compiled=False)
        return None
    # What rebuilds this scorer without sklearn (``compiled_scorer``): the compiled walk's
    # arrays and the final arithmetic's constants, kept beside a proved model.
    return FastScorer(score, walk is not None, None if parts is None else {
        **parts,
        "constants": np.array([float(np.ravel(denominator)[0]), offset, n_features],
                              dtype=np.float64),
    })


def compiled_scorer(parts: dict[str, np.ndarray], fallback: Callable[[], Any]) -> Scorer | None:
    """The compiled scorer ``fast_isolation_forest`` proved, rebuilt from its ``parts``.

    No sklearn import: a restart scores from these arrays at once. The arithmetic
    is the proved scorer's; a row the compiled walk hands back (a NaN input) is
    scored by ``fallback()``'s model (loaded then, once). None without the
    compiled extension or when the parts do not fit together.
    """
    if compiled_forest is None:
        return None
    try:
        checked = _checked_parts(parts)
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        log.warning("compiled forest arrays refused: %s", e)
        return None
    denominator, offset, n_features, roots, depths, nodes, term, center, spread = checked
    walk = compiled_forest.Forest(roots, depths, nodes, term, center, spread)

    def score(X: np.ndarray) -> np.ndarray:
        if X.ndim != 2 or X.shape[1] != n_features:
            raise ValueError(f"expected {n_features} features, got shape {X.shape}")
        depths = np.empty(len(X), dtype=np.float64)
        if not walk.depths(np.ascontiguousarray(X, dtype=np.float64), depths):
            return decision_scores(fallback(), X)
        return _scores(depths, denominator, offset)

    return FastScorer(score, True, parts)


#: Bounds a forest's arrays must keep before the compiled walk (which checks no index)
#: sees them: far above any forest sklearn fits (100 trees of 256 samples: ~51k nodes,
#: depth 8), far below what would exhaust memory or spin for minutes.
MAX_NODES = 20_000_000
MAX_TREES = 100_000
MAX_DEPTH = 64
MAX_FEATURES = 100_000
#: Steps one row takes down every tree (the sum of the depths): bounds a call's time.
MAX_STEPS = 200_000


def _checked_parts(parts: dict[str, np.ndarray]) -> tuple[Any, ...]:
    """The arrays of a compiled scorer as the walk takes them, once every index is in
    range and every size and number sane; ValueError saying what is not.

    The arrays come from a model file: a registry or a disk an attacker may have written
    to. The walk reads ``nodes[child]``, ``nodes[root]``, ``term[node]``, ``Z[feature]``
    and ``depths[tree]`` unchecked, and steps ``depths[tree]`` times per row.
    """
    constants = np.asarray(parts["constants"], dtype=np.float64).reshape(-1)
    if constants.shape != (3,) or not np.all(np.isfinite(constants)):
        raise ValueError("constants are not 3 finite numbers")
    denominator, offset, n = (float(x) for x in constants)
    if not (n.is_integer() and 1 <= n <= MAX_FEATURES):
        raise ValueError(f"feature count {n} out of range")
    n_features = int(n)
    raw = np.asarray(parts["nodes"])
    if raw.dtype != np.uint8 and raw.dtype != NODE_DTYPE:
        raise ValueError(f"nodes have dtype {raw.dtype}")
    if raw.nbytes % NODE_DTYPE.itemsize or raw.nbytes // NODE_DTYPE.itemsize > MAX_NODES:
        raise ValueError(f"nodes take {raw.nbytes} bytes: not whole nodes, or too many")
    nodes = np.ascontiguousarray(raw).view(NODE_DTYPE).reshape(-1)
    roots = _ints(parts["roots"], "roots")
    depths = _ints(parts["depths"], "depths")
    term = np.ascontiguousarray(parts["term"], dtype=np.float64).reshape(-1)
    center = np.ascontiguousarray(parts["center"], dtype=np.float64).reshape(-1)
    spread = np.ascontiguousarray(parts["spread"], dtype=np.float64).reshape(-1)
    m = len(nodes)
    if not 1 <= len(roots) <= MAX_TREES or len(depths) != len(roots):
        raise ValueError(f"{len(roots)} roots and {len(depths)} depths")
    if len(term) != m:
        raise ValueError(f"{len(term)} path terms for {m} nodes")
    if m == 0 or roots.min() < 0 or roots.max() >= m:
        raise ValueError("a root is not a node")
    if depths.min() < 0 or depths.max() > MAX_DEPTH:
        raise ValueError(f"tree depths outside 0..{MAX_DEPTH}")
    if int(depths.astype(np.int64).sum()) > MAX_STEPS:
        raise ValueError(f"a row would take over {MAX_STEPS} steps down the trees")
    child = nodes["child"]
    if child.min() < 0 or child.max() >= m:
        raise ValueError("a child is not a node")
    feature = nodes["feature"]
    if feature.min() < 0 or feature.max() >= n_features:
        raise ValueError("a split reads a feature the model does not have")
    if not np.all(np.isfinite(term)):
        raise ValueError("path terms are not finite")
    if len(center) not in (0, n_features) or len(spread) not in (0, n_features):
        raise ValueError("the scaler does not have one value per feature")
    if not (np.all(np.isfinite(center)) and np.all(np.isfinite(spread))):
        raise ValueError("the scaler is not finite")
    return denominator, offset, n_features, roots, depths, nodes, term, center, spread


def _ints(a: Any, what: str) -> np.ndarray:
    arr = np.asarray(a).reshape(-1)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{what} are not integers")
    if len(arr) and (int(arr.min()) < -(2**31) or int(arr.max()) >= 2**31):
        raise ValueError(f"{what} do not fit 32 bits")
    return np.ascontiguousarray(arr, dtype=np.int32)


def _scores(depths: np.ndarray, denominator: Any, offset: float) -> np.ndarray:
    """``decision_function`` from the summed path terms: sklearn's arithmetic, ufunc for
    ufunc, but in place (fewer temporaries per call)."""
    if denominator != 0:
        depths /= denominator
    else:
        depths.fill(1.0)
    np.negative(depths, out=depths)
    np.power(2.0, depths, out=depths)
    np.negative(depths, out=depths)
    depths -= offset
    return depths


#: ``stream.scoring._forest.Node``'s layout.
NODE_DTYPE = np.dtype([("threshold", "<f4"), ("feature", "<i4"), ("child", "<i4", (2,))])


def float32_floor(x: np.ndarray) -> np.ndarray:
    """The largest float32 at or below each float64 (+inf stays +inf).

    For a float32 value v, ``v <= t`` holds exactly when ``v <= float32_floor(t)``,
    so a walk can compare in float32 and still split as the float64 tree does.
    """
    down = np.asarray(x, dtype=np.float64).astype(np.float32)  # nearest, maybe above
    above = down.astype(np.float64) > x
    down[above] = np.nextafter(down[above], np.float32(-np.inf))
    return down


class FlatForest:
    """All trees' nodes in flat arrays, for one walk over every tree at once.

    Each node carries its tree's term of the path-length sum, computed exactly as
    the tree-by-tree loop computes it; both walks add the terms tree by tree, so
    the sums are the same floats.
    """

    def __init__(self, roots: np.ndarray, left: np.ndarray, right: np.ndarray,
                 feature: np.ndarray, threshold: np.ndarray, term: np.ndarray,
                 depths: np.ndarray) -> None:
        self.roots, self.left, self.right = roots, left, right  # leaves: left = right = -1
        self.feature, self.threshold, self.term = feature, threshold, term
        self.depths = depths  # per tree
        self.depth = int(depths.max())

    @classmethod
    def of(cls, trees: list[tuple[Any, np.ndarray]], path_lengths: Sequence[np.ndarray],
           avg_lengths: Sequence[np.ndarray]) -> FlatForest:
        sizes = [t.node_count for t, _f in trees]
        roots = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
        left, right, feature, threshold, term = [], [], [], [], []
        for k, ((tree, feats), start) in enumerate(zip(trees, roots, strict=True)):
            leaf = tree.children_left == -1
            left.append(np.where(leaf, -1, tree.children_left + start))
            right.append(np.where(leaf, -1, tree.children_right + start))
            # The tree's feature index is into its own columns (feature subsampling).
            feature.append(np.where(leaf, 0, feats[np.where(leaf, 0, tree.feature)]))
            threshold.append(np.where(leaf, np.inf, tree.threshold))
            term.append(path_lengths[k] + avg_lengths[k] - 1.0)
        return cls(roots, np.concatenate(left).astype(np.intp),
                   np.concatenate(right).astype(np.intp),
                   np.concatenate(feature).astype(np.intp),
                   np.concatenate(threshold).astype(np.float64),
                   np.concatenate(term).astype(np.float64),
                   np.array([t.max_depth for t, _f in trees], dtype=np.intp))

    def compiled(self, center: np.ndarray | None, spread: np.ndarray | None,
                 parts: bool = False) -> Any:
        """The compiled walk (``stream.scoring._forest.Forest``), scaler included: no GIL,
        no branches.

        With ``parts``: (the walk, the arrays it was built from)."""
        assert compiled_forest is not None
        own = np.arange(len(self.left), dtype=np.intp)
        leaf = self.left < 0
        # One 16-byte record per node; a leaf is its own child (its threshold is +inf).
        nodes = np.empty(len(own), dtype=NODE_DTYPE)
        nodes["threshold"] = float32_floor(self.threshold)
        nodes["feature"] = self.feature
        nodes["child"][:, 0] = np.where(leaf, own, self.left)
        nodes["child"][:, 1] = np.where(leaf, own, self.right)
        none = np.empty(0, dtype=np.float64)
        arrays = {
            "roots": self.roots.astype(np.int32), "depths": self.depths.astype(np.int32),
            "nodes": nodes, "term": np.ascontiguousarray(self.term, dtype=np.float64),
            "center": none if center is None else np.ascontiguousarray(center, dtype=np.float64),
            "spread": none if spread is None else np.ascontiguousarray(spread, dtype=np.float64),
        }
        walk = compiled_forest.Forest(arrays["roots"], arrays["depths"], nodes, arrays["term"],
                                      arrays["center"], arrays["spread"])
        if not parts:
            return walk
        # Plain arrays for the store (no structured dtype: np.load reads them without pickle).
        return walk, {**arrays, "nodes": nodes.view(np.uint8).reshape(len(nodes), -1)}

    def stacked_walk(self) -> Callable[[np.ndarray], np.ndarray]:
        """numpy's walk: every row down every tree at once, one pass per tree level.

        Leaves point to themselves here, so each row simply takes ``depth`` steps;
        ``cumsum`` over trees is sequential, so the sum is the tree-by-tree one.
        """
        own = np.arange(len(self.left), dtype=np.intp)
        leaf = self.left < 0
        left = np.where(leaf, own, self.left)
        right = np.where(leaf, own, self.right)
        feature, threshold, term, roots = self.feature, self.threshold, self.term, self.roots
        depth = self.depth

        def walk(Z: np.ndarray) -> np.ndarray:
            rows = np.arange(len(Z))[:, None]
            node = np.broadcast_to(roots, (len(Z), len(roots)))
            for _ in range(depth):
                # float32 value against float64 threshold, as Tree.apply compares them.
                go_left = Z[rows, feature[node]] <= threshold[node]
                node = np.where(go_left, left[node], right[node])
            return np.cumsum(term[node], axis=1)[:, -1]

        return walk
