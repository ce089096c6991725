"""What a model's training data looked like, recorded with the model: explanations and drift.

At training, :meth:`Baseline.fit` records per model input column its median and a
robust spread, its decile bin edges and the training share in each bin, and the
same bins for the training scores. It is stored in the model's MLmodel metadata
(``stream.scoring.baseline``) beside the feature spec, so it is versioned with the model.

**Explanations** (:meth:`Baseline.explain`): for an alert, the 3 inputs whose
values were rarest in training: ranked by ``tail``, the share of training
values at least as far out on the same side (from the recorded percentiles; a
value beyond the training range has tail 0), then, among values beyond the
range, by how far beyond it they are (in widths of the training range), then
by the robust deviation ``(value - median) / spread``, which is reported. The
spread is ``1.4826 * MAD`` (the standard deviation for normal data, but not
moved by the outliers the training data holds), else the IQR / 1.349, else
the standard deviation, else 1. Ranking by
tail first keeps an input that is nearly constant in training (a tiny spread)
from topping every explanation with a huge but ordinary deviation.

A detector that measures evidence per input (``hbos``, ``ensemble``: see
``stream.scoring.detectors``) says itself which inputs carried the score: those come first,
each with its ``evidence`` in nats, and the rarity order above only breaks ties.

For the others, why this and not the detector's own attribution (e.g. depth contributions
along IsolationForest's paths): it is the same for
every detector the tool trains (forest, LOF, one-class SVM, elliptic envelope),
costs a handful of array operations per alert row, and says what an analyst can
check against the event ("log_bytes 6.2 spreads above this tenant's normal").
Its limit: it ranks how unusual each input is, not how much the model used it;
correlated inputs (bytes and packets) tend to appear together.

**Drift** (``stream.ops.drift``) compares the live scores and inputs with the bins
recorded here (:func:`psi`). A model trained on several tenants' traffic (the
global model) also records each tenant's own share per bin (tenants with at
least ``MIN_TENANT_ROWS`` training rows, the ``MAX_TENANTS`` largest): a tenant is
compared with its own training traffic, not with the mix, which no single tenant
looks like.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

TOP_K: Final = 3
#: Bins of the PSI: training deciles (fewer where values repeat).
_QUANTILES: Final = np.linspace(0.1, 0.9, 9)
#: Floor of a bin share in the PSI, so an empty bin does not make it infinite.
_EPS: Final = 1e-4
#: Tenants whose own bins a baseline records: enough rows for deciles to mean something,
#: and a bound on the metadata's size.
MIN_TENANT_ROWS: Final = 200
MAX_TENANTS: Final = 1000


def _spread(X: np.ndarray, median: np.ndarray) -> np.ndarray:
    mad = 1.4826 * np.median(np.abs(X - median), axis=0)
    q75, q25 = np.percentile(X, [75, 25], axis=0)
    iqr = (q75 - q25) / 1.349
    std = X.std(axis=0)
    out = np.where(mad > 0, mad, np.where(iqr > 0, iqr, np.where(std > 0, std, 1.0)))
    return out.astype(np.float64)


def _bins(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Interior edges at the deciles (deduplicated) and the share of values per bin."""
    edges = np.unique(np.quantile(values, _QUANTILES))
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return edges, counts / max(1, len(values))


def _shares(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return counts / max(1, len(values))


def psi(expected: np.ndarray, counts: np.ndarray) -> float:
    """Population stability index of observed bin ``counts`` against ``expected`` shares."""
    total = counts.sum()
    if total == 0:
        return 0.0
    a = np.maximum(counts / total, _EPS)
    e = np.maximum(expected, _EPS)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class Baseline:
    """Per-column median, spread and bins, and the score bins, of a model's training data."""

    columns: tuple[str, ...]
    median: np.ndarray
    spread: np.ndarray
    edges: tuple[np.ndarray, ...]
    shares: tuple[np.ndarray, ...]
    score_edges: np.ndarray
    score_shares: np.ndarray
    percentiles: np.ndarray  # (101, columns): the 0th..100th training percentiles
    # tenant -> (score shares, shares per column) in the same bins, for tenants with enough
    # training rows (empty for a model trained on one tenant, or before this was recorded).
    by_tenant: Mapping[str, tuple[np.ndarray, tuple[np.ndarray, ...]]] = field(
        default_factory=dict)

    @classmethod
    def fit(cls, X: np.ndarray, scores: np.ndarray, columns: Sequence[str],
            tenants: Sequence[str] | None = None) -> Baseline:
        X = np.asarray(X, dtype=np.float64)
        scores = np.asarray(scores, dtype=np.float64)
        median = np.median(X, axis=0)
        bins = [_bins(X[:, j]) for j in range(X.shape[1])]
        se, ss = _bins(scores)
        edges = tuple(b[0] for b in bins)
        by_tenant: dict[str, tuple[np.ndarray, tuple[np.ndarray, ...]]] = {}
        if tenants is not None and len(set(tenants)) > 1:
            names = np.asarray(tenants, dtype=object)
            kinds, counts = np.unique(names, return_counts=True)
            order = np.argsort(-counts, kind="stable")[:MAX_TENANTS]
            for k in order.tolist():
                if counts[k] < MIN_TENANT_ROWS:
                    continue
                sel = names == kinds[k]
                by_tenant[str(kinds[k])] = (
                    _shares(se, scores[sel]),
                    tuple(_shares(e, X[sel, j]) for j, e in enumerate(edges)),
                )
        return cls(
            tuple(columns), median, _spread(X, median), edges,
            tuple(b[1] for b in bins), se, ss, np.percentile(X, np.arange(101), axis=0),
            by_tenant,
        )

    def shares_for(self, tenant: str) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """(score shares, per-column shares) to compare ``tenant``'s traffic with: its own
        training traffic's when recorded, else the whole training traffic's."""
        own = self.by_tenant.get(tenant)
        return own if own is not None else (self.score_shares, self.shares)

    def to_dict(self) -> dict[str, Any]:
        return {
            "columns": list(self.columns),
            "median": self.median.tolist(),
            "spread": self.spread.tolist(),
            "edges": [e.tolist() for e in self.edges],
            "shares": [s.tolist() for s in self.shares],
            "score_edges": self.score_edges.tolist(),
            "score_shares": self.score_shares.tolist(),
            "percentiles": self.percentiles.tolist(),
            "tenants": {t: {"score_shares": s.tolist(), "shares": [c.tolist() for c in cs]}
                        for t, (s, cs) in self.by_tenant.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Baseline:
        cols = tuple(d["columns"])
        b = cls(
            cols,
            np.asarray(d["median"], dtype=np.float64),
            np.asarray(d["spread"], dtype=np.float64),
            tuple(np.asarray(e, dtype=np.float64) for e in d["edges"]),
            tuple(np.asarray(s, dtype=np.float64) for s in d["shares"]),
            np.asarray(d["score_edges"], dtype=np.float64),
            np.asarray(d["score_shares"], dtype=np.float64),
            np.asarray(d["percentiles"], dtype=np.float64).reshape(101, len(cols)),
            {str(t): (np.asarray(v["score_shares"], dtype=np.float64),
                      tuple(np.asarray(c, dtype=np.float64) for c in v["shares"]))
             for t, v in (d.get("tenants") or {}).items()},
        )
        n = len(cols)
        for s, cs in b.by_tenant.values():
            if len(s) != len(b.score_shares) or len(cs) != n or any(
                    len(c) != len(e) + 1 for c, e in zip(cs, b.edges, strict=True)):
                raise ValueError("a tenant's baseline bins do not match the baseline's")
        if not (len(b.median) == len(b.spread) == len(b.edges) == len(b.shares) == n):
            raise ValueError("baseline arrays do not match its columns")
        return b

    # ---- explanations -----------------------------------------------------------------

    def deviations(self, X: np.ndarray) -> np.ndarray:
        """Robust deviation of each input from the training median, in spreads."""
        return (X - self.median) / self.spread

    def tails(self, X: np.ndarray) -> np.ndarray:
        """Per value, the share of training values at least as far out on its side."""
        pct = self.percentiles
        out = np.empty(X.shape, dtype=np.float64)
        for j in range(X.shape[1]):
            col = pct[:, j]
            below = np.searchsorted(col, X[:, j], side="right") / 101.0  # share <= x
            above = 1.0 - np.searchsorted(col, X[:, j], side="left") / 101.0  # share >= x
            out[:, j] = np.minimum(below, above)
        return out

    def explain(self, X: np.ndarray, k: int = TOP_K,
                evidence: np.ndarray | None = None) -> list[list[dict[str, Any]]]:
        """Per row of ``X``, the ``k`` inputs rarest in training, rarest first; with
        ``evidence`` (the detector's own per-input evidence: hbos, ensemble), the ``k``
        that carried the most of it, and that evidence in each item."""
        if len(X) == 0:
            return []
        z = self.deviations(X)
        tail = self.tails(X)
        k = min(k, z.shape[1])
        # One sort key: the tail first (coarse, percentile steps), then how far beyond
        # the training range, then the deviation.
        lo, hi = self.percentiles[0], self.percentiles[100]
        beyond = np.maximum(np.maximum(X - hi, lo - X), 0.0) / np.maximum(hi - lo, 1e-12)
        key = tail - np.minimum(beyond, 1e3) * 1e-6 - np.minimum(np.abs(z), 1e6) * 1e-12
        if evidence is not None:
            # The detector's evidence first (in nats; 0 for inputs that carried none),
            # the same order as above among equals.
            key = -np.round(evidence, 3) * 1e3 + np.clip(key, -1.0, 1.0)
        top = np.argsort(key, axis=1, kind="stable")[:, :k]
        cols, med, spr = self.columns, self.median.tolist(), self.spread.tolist()
        out = []
        for i, row in enumerate(top.tolist()):
            xi, zi, ti = X[i], z[i], tail[i]
            items = [
                {
                    "feature": cols[j],
                    "value": _num(xi[j]),
                    "baseline": _num(med[j]),
                    "spread": _num(spr[j]),
                    "deviation": round(float(zi[j]), 2),
                    "tail": round(float(ti[j]), 3),
                }
                for j in row
            ]
            if evidence is not None:
                for item, j in zip(items, row, strict=True):
                    item["evidence"] = round(float(evidence[i, j]), 3)
            out.append(items)
        return out


def _num(x: float) -> float:
    """A float shortened for reading (6 significant digits); finite by construction."""
    x = float(x)
    if x == 0 or not math.isfinite(x):
        return x
    return float(f"{x:.6g}")
