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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import orjson

from stream.features import FeatureSpec
from stream.features.columns import ColumnSource
from stream.ingest.decode import RowSubset
from stream.outcomes.records import ACTIONABLE_LEVEL, LEVEL_NAMES

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

    def members(self, source: ColumnSource, rows: np.ndarray, levels: np.ndarray,
                tenants: list[str], store: Any, scopes: np.ndarray | None,
                alert_ids: Callable[[int], str] | None = None, detected_at: str = "",
                ) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
        """``,"entity_risk":{...}`` per actionable alert row (rows whose entity or time
        cannot be read have none), after adding the rows' points to their entities; and
        the entity alert records (key, value) of the rows whose risk is at or above the
        threshold (``alert_ids``: a batch row's alert id)."""
        rows = rows[levels[rows] >= ACTIONABLE_LEVEL]
        if len(rows) == 0:
            return {}, []
        points = LEVEL_POINTS[levels[rows].astype(np.int64)]
        computed = self.spec.compute(
            _WithPoints(source, rows, points), store=store,
            scopes=None if scopes is None else scopes[rows],
            tenants=[tenants[i] + _CLOCK_SUFFIX for i in rows.tolist()],
        )
        risk = computed.X[:, 0]
        fields = self.by.split(",")
        keys = [source.strings(f)[0] for f in fields]
        times = source.numeric(self.timestamp_field)[0]
        out: dict[int, bytes] = {}
        records: list[tuple[bytes, bytes]] = []
        for j, (i, r, p) in enumerate(zip(rows.tolist(), risk.tolist(), points.tolist(),
                                          strict=True)):
            if computed.reason[j] != 0 or not math.isfinite(r):
                continue
            entity = ">".join(str(k[i]) for k in keys)
            raised = bool(r >= self.threshold > r - p)
            doc = {"by": self.by, "entity": entity, "risk": round(r, 6),
                   "threshold": self.threshold, "raised": raised}
            out[i] = b',"entity_risk":' + orjson.dumps(doc)
            if r >= self.threshold and alert_ids is not None:
                key = f"{tenants[i]}/{self.by}={entity}"
                records.append((key.encode(), orjson.dumps({
                    "entity_alert_id": key, "tenant_id": tenants[i], "by": self.by,
                    "entity": entity, "status": "raised" if raised else "updated",
                    "risk": round(r, 6), "threshold": self.threshold,
                    "alert_id": alert_ids(i), "threat_level": LEVEL_NAMES[int(levels[i])],
                    "event_time": float(times[i]), "detected_at": detected_at,
                })))
        return out, records


def risk_of(settings: Any) -> Risk | None:
    """The risk settings of a ``Settings`` (None with an empty ``--risk-by``)."""
    if not settings.risk_by:
        return None
    return Risk(settings.risk_by, settings.risk_half_life, settings.risk_threshold)
