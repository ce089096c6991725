"""A prototype, measured by the benchmark only: IsolationForest scores without sklearn's
per-call bookkeeping.

``IsolationForest.decision_function`` walks its trees through joblib and runs
validation, tag lookups, warning filters and config contexts for every tree
(~5 ms per call for 100 trees, however few rows). This computes the same
arithmetic, in the same order, straight from the fitted trees, so the scores
are bit-identical (checked by ``make_scorer``). It reads private sklearn
attributes, which is why it is a prototype for the report and not used by the
pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Scorer = Callable[[np.ndarray], np.ndarray]


def make_scorer(pipeline: Any, check: np.ndarray) -> Scorer:
    """A scorer equal to ``pipeline.decision_function``; raises if it is not on ``check``."""
    from sklearn.ensemble._iforest import _average_path_length

    scaler = pipeline.named_steps["scaler"]
    forest = pipeline.named_steps["isolation_forest"]
    trees = [(est.tree_, feats) for est, feats in
             zip(forest.estimators_, forest.estimators_features_, strict=True)]
    path_lengths = forest._decision_path_lengths
    avg_lengths = forest._average_path_length_per_tree
    denominator = len(forest.estimators_) * _average_path_length([forest._max_samples])
    subsample = forest._max_features != forest.n_features_in_
    offset = forest.offset_

    def score(X: np.ndarray) -> np.ndarray:
        Z = np.asarray(scaler.transform(X), dtype=np.float32)
        depths = np.zeros(len(Z), order="f")
        for k, (tree, feats) in enumerate(trees):
            leaves = tree.apply(Z[:, feats] if subsample else Z)
            depths += path_lengths[k][leaves] + avg_lengths[k][leaves] - 1.0
        scores = 2 ** (-np.divide(depths, denominator, out=np.ones_like(depths),
                                  where=denominator != 0))
        return -scores - offset

    if not np.array_equal(score(check), pipeline.decision_function(check)):
        raise ValueError("direct scorer disagrees with decision_function")
    return score
