"""Drift per tenant: how far live scores and inputs have moved from the training baseline.

For each tenant and the model version serving it, a :class:`Drift` counts the
scored events into the bins its training recorded (``stream.scoring.baseline``) and
computes the population stability index (PSI) of the scores and of each input
over the last ``--drift-window`` events, sliding by half a window. The
consumer exports them (``stream_drift_psi{tenant,input}``, ``input="score"``
for the scores) with the alert rate over the same window
(``stream_alert_rate{tenant}``), and logs a warning when a PSI exceeds
``--drift-psi-warn`` (default 0.25, the usual "significant shift" line; 0.1 to
0.25 is usually read as moderate).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from stream.scoring.baseline import Baseline, psi

log = logging.getLogger(__name__)

#: Tenant-model pairs watched; the least recently seen beyond this are dropped.
MAX_WATCHED = 10_000


class Drift:
    """PSI of scores and inputs against one model's baseline, for one tenant.

    Bin counts accumulate in two halves of ``window`` events; each time a half
    fills, the PSI is computed over the last two halves (so over the last
    ``window`` events, sliding by half a window) and the older half is dropped.
    """

    def __init__(self, baseline: Baseline, window: int = 10_000, tenant: str = "") -> None:
        self.b = baseline
        # The tenant's own training bins when the baseline has them (a model serving
        # several tenants), else the whole training traffic's.
        self.score_shares, self.shares = baseline.shares_for(tenant)
        self.half = max(1, window // 2)
        self._new = self._empty()
        self._old: tuple[np.ndarray, list[np.ndarray]] | None = None
        self.psi_score: float | None = None
        #: The live score bin counts of the last window (``baseline.score_edges``' bins).
        self.score_counts: np.ndarray | None = None
        self.psi_features: dict[str, float] = {}
        self.alerts = 0
        self.scored = 0
        self.alert_rate: float | None = None
        self._window_alerts = [0, 0]
        self._window_scored = [0, 0]

    def _empty(self) -> tuple[np.ndarray, list[np.ndarray]]:
        return (
            np.zeros(len(self.b.score_edges) + 1, dtype=np.int64),
            [np.zeros(len(e) + 1, dtype=np.int64) for e in self.b.edges],
        )

    def add(self, X: np.ndarray, scores: np.ndarray, alerts: int) -> bool:
        """Count a batch's rows of this tenant; True when a new PSI was computed."""
        s_counts, f_counts = self._new
        s_counts += np.bincount(np.searchsorted(self.b.score_edges, scores, side="right"),
                                minlength=len(s_counts))
        for j, edges in enumerate(self.b.edges):
            f_counts[j] += np.bincount(np.searchsorted(edges, X[:, j], side="right"),
                                       minlength=len(f_counts[j]))
        self._window_alerts[1] += alerts
        self._window_scored[1] += len(scores)
        if s_counts.sum() < self.half:
            return False
        if self._old is None:
            total_s, total_f = s_counts, f_counts
        else:
            total_s = s_counts + self._old[0]
            total_f = [a + b for a, b in zip(f_counts, self._old[1], strict=True)]
        self.score_counts = total_s
        self.psi_score = psi(self.score_shares, total_s)
        self.psi_features = {
            c: psi(self.shares[j], total_f[j]) for j, c in enumerate(self.b.columns)
        }
        scored = sum(self._window_scored)
        self.alert_rate = sum(self._window_alerts) / scored if scored else 0.0
        self._old, self._new = self._new, self._empty()
        self._window_alerts = [self._window_alerts[1], 0]
        self._window_scored = [self._window_scored[1], 0]
        return True


class DriftSink(Protocol):
    """Where drift goes once a window fills (``stream.ops.metrics.Metrics``)."""

    def record_drift(self, tenant: str, values: dict[str, float], alert_rate: float) -> None: ...


class ScoredModel(Protocol):
    """What drift reads of a model version (``stream.registry.LoadedModel``)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def baseline(self) -> Baseline | None: ...


class Tenants(Protocol):
    @property
    def tenants(self) -> Sequence[str]: ...


class ScoredBatch(Protocol):
    """What drift reads of a committed batch (``stream.consumer.batch.BatchOutcome``)."""

    @property
    def decoded(self) -> Tenants: ...
    @property
    def levels(self) -> np.ndarray: ...
    @property
    def min_level(self) -> int: ...
    @property
    def models(self) -> Sequence[ScoredModel]: ...
    @property
    def inputs(self) -> Sequence[tuple[int, np.ndarray, np.ndarray, np.ndarray]]: ...


class DriftWatch:
    """One :class:`Drift` per (tenant, model version); metrics and warnings as windows fill."""

    def __init__(self, sink: DriftSink, window: int = 10_000, warn: float = 0.25,
                 publish: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.sink, self.window, self.warn = sink, window, warn
        #: Gets (tenant, :func:`snapshot_record`) each time a window fills (the consumer
        #: writes it to ``--drift-topic`` for the console).
        self.publish = publish
        self._drifts: OrderedDict[tuple[str, str, str], Drift] = OrderedDict()
        self._warned: set[tuple[str, str, str, str]] = set()

    def add(self, outcome: ScoredBatch) -> None:
        """Count a committed batch's scored rows (``BatchOutcome.inputs``)."""
        if not outcome.inputs:
            return
        tenants = outcome.decoded.tenants
        levels = outcome.levels
        for mi, rows, X, scores in outcome.inputs:
            model = outcome.models[mi]
            baseline = model.baseline
            if baseline is None or not len(rows):
                continue
            names = [tenants[i] for i in rows.tolist()]
            uniq = list(dict.fromkeys(names))
            codes = np.fromiter(map({t: k for k, t in enumerate(uniq)}.__getitem__, names),
                                dtype=np.int64, count=len(names))
            alerted = levels[rows] >= outcome.min_level
            for k, tenant in enumerate(uniq):
                sel = codes == k
                self._add(tenant, model, baseline, X[sel], scores[sel],
                          int(alerted[sel].sum()))

    def _add(self, tenant: str, model: ScoredModel, baseline: Baseline, X: np.ndarray,
             s: np.ndarray, alerts: int) -> None:
        key = (tenant, model.name, model.version)
        d = self._drifts.get(key)
        if d is None:
            d = self._drifts[key] = Drift(baseline, self.window, tenant)
            while len(self._drifts) > MAX_WATCHED:
                self._drifts.popitem(last=False)
        self._drifts.move_to_end(key)
        if not d.add(X, s, alerts):
            return
        values = {"score": d.psi_score or 0.0, **d.psi_features}
        self.sink.record_drift(tenant, values, d.alert_rate or 0.0)
        if self.publish is not None:
            self.publish(tenant, snapshot_record(tenant, model, d, self.window))
        for what, v in values.items():
            wkey = (*key, what)
            if v > self.warn and wkey not in self._warned:
                self._warned.add(wkey)
                log.warning(
                    "drift: tenant %s, models:/%s/%s, %s PSI %.2f > %.2f over the last %d "
                    "events (the traffic no longer looks like the training data)",
                    tenant, model.name, model.version, what, v, self.warn, self.window,
                )
            elif v <= self.warn:
                self._warned.discard(wkey)

    def snapshot(self) -> dict[str, dict[str, float]]:
        """tenant -> latest PSI per input ("score" included) and the alert rate."""
        out: dict[str, dict[str, float]] = {}
        for (tenant, _m, _v), d in self._drifts.items():
            if d.psi_score is not None:
                out[tenant] = {"score": d.psi_score, **d.psi_features,
                               "alert_rate": d.alert_rate or 0.0}
        return out


def snapshot_record(tenant: str, model: ScoredModel, d: Drift, window: int,
                    now: float | None = None) -> dict[str, Any]:
    """What the drift topic carries each time a tenant's window fills: the PSI of the
    scores and of each input, the alert rate, and the live score bin counts beside the
    training shares of the same bins (``edges`` are the inner bin edges: bin 0 is below
    the first, the last above the last).

    >>> rng = np.random.default_rng(0)
    >>> b = Baseline.fit(rng.normal(size=(500, 1)), rng.normal(size=500), ["x"])
    >>> d = Drift(b, window=200)
    >>> d.add(rng.normal(size=(100, 1)) + 3, rng.normal(size=100), alerts=5)
    True
    >>> class M: name, version, baseline = "m", "3", b
    >>> r = snapshot_record("acme", M(), d, 200, now=0.0)
    >>> r["psi"]["x"] > 1 > r["psi"]["score"]  # the input moved, the scores did not
    True
    >>> r["alert_rate"], sum(r["scores"]["live"]), len(r["scores"]["live"]) == len(
    ...     r["scores"]["training"]) == len(r["scores"]["edges"]) + 1
    (0.05, 100, True)
    """
    counts = d.score_counts if d.score_counts is not None else np.zeros(0, dtype=np.int64)
    return {
        "type": "drift", "tenant_id": tenant, "model": model.name, "version": model.version,
        "window": window, "at": time.time() if now is None else now,
        "psi": {"score": round(float(d.psi_score or 0.0), 6),
                **{k: round(float(v), 6) for k, v in d.psi_features.items()}},
        "alert_rate": round(float(d.alert_rate or 0.0), 6),
        "scores": {"edges": [float(e) for e in d.b.score_edges],
                   "live": [int(c) for c in counts],
                   "training": [round(float(x), 6) for x in d.score_shares]},
    }


__all__ = ["Baseline", "Drift", "DriftSink", "DriftWatch", "ScoredBatch", "psi",
           "snapshot_record"]
