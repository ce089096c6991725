"""Risk per entity: the alerts of a tenant's host add up, and fade.

Every actionable alert (medium or above) adds points to its entity's risk: medium 1,
high 3, critical 10 (as risk-based alerting does: a critical alert is worth a few
highs, a high a few mediums). The risk is the damped sum of those points, per tenant
and entity (``--risk-by``, default ``src_ip``: the scanner, the infected host), with a
half-life of ``--risk-half-life`` seconds of event time (default an hour): a host that
alerts once a day stays low, one that alerts every minute climbs. Each alert carries
its entity's risk after it (``entity_risk``), and the alert that takes the risk past
``--risk-threshold`` (default 12: two criticals, four highs or twelve mediums within a
half-life; one stray critical does not) is marked ``raised``: the one an analyst's
queue needs, however many alerts the entity makes while its risk stays above. An
entity whose risk fades below the threshold between two of its alerts (a quiet half
hour after two criticals) is raised again when it crosses again.

The sums are window state like any feature's (``sum(points, by=ENTITY,
decay=HALF_LIFE)`` over the alert rows, in the window store): kept in the changelog,
restored after a restart, committed with the batch, and the same in ``stream score``
as in the stream. The alert rows have clocks of their own (their tenant's id with a
suffix no tenant id can carry), so an alert is late only against earlier alerts of its
tenant, never against the batch's other events.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import orjson

from stream.features import FeatureSpec
from stream.features.columns import ColumnSource
from stream.ingest.decode import RowSubset
from stream.outcomes.records import ACTIONABLE_LEVEL, LEVEL_NAMES
from stream.state.store import event_times

__all__ = ["LEVEL_POINTS", "Risk", "risk_of"]

#: Points per level code (low, medium, high, critical).
LEVEL_POINTS: Final = np.array([0.0, 1.0, 3.0, 10.0])
#: The column the points are read from (a name no event field has).
POINTS: Final = "stream.risk.points"
#: Appended to a tenant id for the alert rows' clocks: "/" is not allowed in tenant ids.
_CLOCK_SUFFIX: Final = "/risk"


class _WithPoints:
    """A batch's columns (the rows of the alerts) plus their points."""

    def __init__(self, source: ColumnSource, rows: np.ndarray, points: np.ndarray) -> None:
        self._rows = RowSubset(source, rows)
        self._points = (points, np.zeros(len(rows), dtype=np.uint8))
        self.n = len(rows)

    def numeric(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        return self._points if path == POINTS else self._rows.numeric(path)

    def strings(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        return self._rows.strings(path)


@dataclass
class Risk:
    """How risk is summed (``--risk-by``, ``--risk-half-life``, ``--risk-threshold``)."""

    by: str = "src_ip"
    half_life: float = 3600.0
    threshold: float = 12.0
    timestamp_field: str = "timestamp"
    spec: FeatureSpec = field(init=False)

    def __post_init__(self) -> None:
        if not self.by or not self.half_life > 0 or not self.threshold > 0:
            raise ValueError("risk needs a field, a positive half-life and threshold")
        by = ">".join(f"`{p}`" if not p.isidentifier() else p for p in self.by.split(","))
        self.spec = FeatureSpec.parse(
            [("risk", f"sum(`{POINTS}`, by={by}, decay={self.half_life:g}s)")]
        ).with_timestamp_field(self.timestamp_field)

    def accumulate(self, source: ColumnSource, rows: np.ndarray, levels: np.ndarray,
                   tenants: Sequence[str], store: Any, scopes: np.ndarray | None,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Add the actionable rows' points to their entities: (those rows, their points,
        each entity's risk after it, and a reason code per row: 0 where it was read)."""
        rows = rows[levels[rows] >= ACTIONABLE_LEVEL]
        if len(rows) == 0:
            empty = np.zeros(0)
            return rows, empty, empty, np.zeros(0, dtype=np.uint8)
        points = LEVEL_POINTS[levels[rows].astype(np.int64)]
        computed = self.spec.compute(
            _WithPoints(source, rows, points), store=store,
            scopes=None if scopes is None else scopes[rows],
            tenants=[tenants[i] + _CLOCK_SUFFIX for i in rows.tolist()],
        )
        return rows, points, computed.X[:, 0], computed.reason

    def members(self, source: ColumnSource, rows: np.ndarray, levels: np.ndarray,
                tenants: list[str], store: Any, scopes: np.ndarray | None,
                alert_ids: Callable[[int], str] | None = None, detected_at: str = "",
                thresholds: np.ndarray | None = None,
                ) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
        """``,"entity_risk":{...}`` per actionable alert row (rows whose entity or time
        cannot be read have none), after adding the rows' points to their entities; and
        the entity alert records (key, value) of the rows whose risk is at or above the
        threshold (``alert_ids``: a batch row's alert id). ``thresholds``: per batch row,
        the threshold of the model that scored it (its alert budget's), where it has one
        (NaN: ``threshold``)."""
        rows, points, risk, reason = self.accumulate(source, rows, levels, tenants, store,
                                                     scopes)
        if len(rows) == 0:
            return {}, []
        cut = np.full(len(rows), self.threshold)
        if thresholds is not None:
            own = thresholds[rows]
            cut = np.where(np.isnan(own), cut, own)
        fields = self.by.split(",")
        keys = [source.strings(f)[0] for f in fields]
        times = source.numeric(self.timestamp_field)[0]
        out: dict[int, bytes] = {}
        records: list[tuple[bytes, bytes]] = []
        for j, (i, r, p, t) in enumerate(zip(rows.tolist(), risk.tolist(), points.tolist(),
                                             cut.tolist(), strict=True)):
            if reason[j] != 0 or not math.isfinite(r):
                continue
            entity = ">".join(str(k[i]) for k in keys)
            raised = bool(r >= t > r - p)
            doc = {"by": self.by, "entity": entity, "risk": round(r, 6),
                   "threshold": t, "raised": raised}
            out[i] = b',"entity_risk":' + orjson.dumps(doc)
            if r >= t and alert_ids is not None:
                key = f"{tenants[i]}/{self.by}={entity}"
                records.append((key.encode(), orjson.dumps({
                    "entity_alert_id": key, "tenant_id": tenants[i], "by": self.by,
                    "entity": entity, "status": "raised" if raised else "updated",
                    "risk": round(r, 6), "threshold": t,
                    "alert_id": alert_ids(i), "threat_level": LEVEL_NAMES[int(levels[i])],
                    "event_time": float(times[i]), "detected_at": detected_at,
                })))
        return out, records


def risk_of(settings: Any) -> Risk | None:
    """The risk settings of a ``Settings`` (None with an empty ``--risk-by``)."""
    if not settings.risk_by:
        return None
    return Risk(settings.risk_by, settings.risk_half_life, settings.risk_threshold)


@dataclass(frozen=True)
class EntityBudget:
    """The entity-alert threshold an alert budget set on training traffic, and what it
    saw: stored with a model version, shown by ``stream describe``."""

    threshold: float
    per_day: float
    by: str
    half_life: float
    days: float
    alerts: int
    entities: int
    raised_per_day: float

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


#: The lowest threshold a budget sets: one critical alert's points (a lone medium or high
#: alert is never an entity alert on its own).
MIN_BUDGET_THRESHOLD: Final = float(LEVEL_POINTS[3])


def budget_threshold(source: ColumnSource, levels: np.ndarray, tenants: Sequence[str],
                     store: Any, *, by: str, half_life: float, per_day: float,
                     timestamp_field: str = "timestamp") -> EntityBudget | None:
    """The lowest threshold at which ``source``'s alerts (training traffic at the levels
    the new model gives it, in order, as the stream would see them) raise at most
    ``per_day`` entity alerts per day of their event time; None when no alert's entity
    and time can be read.

    An alert raises its entity at threshold ``T`` when ``risk >= T > risk - points``; the
    count of raises is piecewise constant in ``T``, so it is read at every endpoint and
    the threshold is the lowest one above which no count exceeds the budget (never
    below ``MIN_BUDGET_THRESHOLD``).

    >>> from stream.features import RecordColumns, WindowStore
    >>> evs = [{"src_ip": "h1", "timestamp": 60.0 * k} for k in range(10)]
    >>> evs += [{"src_ip": "h2", "timestamp": 86400.0}]
    >>> b = budget_threshold(RecordColumns(evs), np.array([3] * 10 + [2]), ["t"] * 11,
    ...                      WindowStore(ttl=1e6), by="src_ip", half_life=3600.0,
    ...                      per_day=1.0)
    >>> b.alerts, b.entities, round(b.days, 2), b.threshold > 10.0, b.raised_per_day <= 1.0
    (11, 2, 1.0, True, True)
    """
    risk = Risk(by, half_life, MIN_BUDGET_THRESHOLD, timestamp_field)
    rows, points, r, reason = risk.accumulate(source, np.arange(source.n), levels, tenants,
                                              store, None)
    ok = (reason == 0) & np.isfinite(r)
    if not ok.any():
        return None
    hi, lo = r[ok], (r - points)[ok]
    times = event_times(source, timestamp_field)[0][rows[ok]]  # ISO text or epoch seconds
    days = max(float(np.nanmax(times) - np.nanmin(times)), 3600.0) / 86400.0
    allowed = per_day * days
    ends = np.unique(np.concatenate([hi, lo]))
    his, los = np.sort(hi), np.sort(lo)
    # Raises at T = c (the count on the piece of T that ends at c).
    counts = (len(his) - np.searchsorted(his, ends, side="left")) - (
        len(los) - np.searchsorted(los, ends, side="left"))
    worst_above = np.maximum.accumulate(counts[::-1])[::-1]
    fits = np.flatnonzero(worst_above <= allowed)
    threshold = float(ends[fits[0]]) if len(fits) else float(ends[-1]) + 1.0
    threshold = max(threshold, MIN_BUDGET_THRESHOLD)
    raised = int(np.count_nonzero((hi >= threshold) & (lo < threshold)))
    keys = [source.strings(f)[0] for f in by.split(",")]
    entities = {(tenants[i], *(str(k[i]) for k in keys)) for i in rows[ok].tolist()}
    return EntityBudget(threshold=round(threshold, 6), per_day=per_day, by=by,
                        half_life=half_life, days=days, alerts=int(ok.sum()),
                        entities=len(entities), raised_per_day=raised / days)
