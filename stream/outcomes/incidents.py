"""Incidents: a tenant's actionable alerts about one entity, grouped into one record.

A 120-flow port scan is 120 alerts and should be one thing to look at. With
``--incident-topic``, every alert at medium or above joins the open incident of
its tenant and entity (``--incident-by``, default ``src_ip``: the scanner, the
exfiltrating host, the beaconing client; ``dst_ip`` groups a DDoS by its victim).

Rules (times are the consumer's clock when the alert was made):

* **open**: an alert whose tenant and entity have no open incident opens one; its
  id is derived from the tenant, the entity and the first alert's id, so a
  re-delivered batch opens the same incident;
* **join**: a later alert joins it while the incident is younger than
  ``--incident-window`` (default 300 s) and had an alert within
  ``--incident-idle`` (default 60 s);
* **close**: otherwise it closes (status ``closed``) and the alert opens a new
  one; incidents idle or past their window are also closed at the next batch.

Each batch publishes, per incident it changed, one record with its current state,
keyed by incident id: on a compacted topic the latest state per incident is what
stays. The records travel with the batch's alerts (in its transaction, exactly
once), and a failed batch changes no incident. Open incidents live in memory:
after a restart, alerts open new incidents.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final, Protocol

import numpy as np
import orjson

from stream.features.columns import ColumnSource
from stream.outcomes.records import ACTIONABLE_LEVEL, LEVEL_NAMES, alert_id
from stream.outcomes.suppress import RuleSet, cover_add, covering


class _Model(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...


class _Tenants(Protocol):
    @property
    def tenants(self) -> Sequence[str]: ...


class AlertedBatch(Protocol):
    """What incidents read of a scored batch (``stream.consumer.batch.BatchOutcome``
    before its alerts are encoded)."""

    @property
    def decoded(self) -> _Tenants: ...
    @property
    def topic(self) -> str: ...
    @property
    def partitions(self) -> np.ndarray: ...
    @property
    def offsets(self) -> np.ndarray: ...
    @property
    def scores(self) -> np.ndarray: ...
    @property
    def levels(self) -> np.ndarray: ...
    @property
    def model_index(self) -> np.ndarray: ...
    @property
    def models(self) -> Sequence[_Model]: ...
    @property
    def alert_rows(self) -> np.ndarray: ...
    @property
    def explanations(self) -> Mapping[int, list[dict[str, Any]]]: ...


#: Alert ids listed per incident; the rest are counted.
MAX_ALERT_IDS: Final = 20
#: Open incidents kept: per tenant (its least recently updated beyond this close early,
#: so one tenant's flood closes only its own), and in all (then the largest tenants'
#: oldest close first).
MAX_OPEN_PER_TENANT: Final = 10_000
MAX_OPEN: Final = 100_000


@dataclass
class Incident:
    """The state of one incident (see the module docstring)."""

    incident_id: str
    tenant: str
    entity: str
    opened: float
    last: float
    alerts: int = 0
    by_level: Counter[str] = field(default_factory=Counter)
    min_score: float = float("inf")
    features: Counter[str] = field(default_factory=Counter)
    alert_ids: list[str] = field(default_factory=list)
    models: set[str] = field(default_factory=set)
    status: str = "open"
    #: What its alerts' scope fields span (``suppress.cover_add``), for a rule added later
    #: to judge; None once an alert was not described.
    cover: dict[str, Any] | None = field(default_factory=dict)
    closed_by: str | None = None  # the suppression rule that closed it

    def copy(self) -> Incident:
        return replace(
            self, by_level=Counter(self.by_level), features=Counter(self.features),
            alert_ids=list(self.alert_ids), models=set(self.models),
            cover=copy.deepcopy(self.cover),
        )

    def record(self, by: str) -> dict[str, Any]:
        top = max((LEVEL_NAMES.index(lv) for lv in self.by_level), default=0)
        return {
            "incident_id": self.incident_id,
            "tenant_id": self.tenant,
            "status": self.status,
            "entity": {"field": by, "value": self.entity},
            "first_seen": _iso(self.opened),
            "last_seen": _iso(self.last),
            "alerts": self.alerts,
            "alerts_by_level": dict(sorted(self.by_level.items())),
            "threat_level": LEVEL_NAMES[top],
            "min_anomaly_score": self.min_score,
            "top_features": [
                {"feature": f, "alerts": n} for f, n in self.features.most_common(3)
            ],
            "alert_ids": self.alert_ids,
            "alert_ids_omitted": self.alerts - len(self.alert_ids),
            "models": sorted(self.models),
            **({"closed_by": self.closed_by} if self.closed_by else {}),
        }


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


def incident_id(tenant: str, entity: str, first_alert: str) -> str:
    raw = f"{tenant}\x1f{entity}\x1f{first_alert}".encode()
    return hashlib.sha256(raw).hexdigest()[:24]


class Incidents:
    """Open incidents, changed batch by batch; ``commit`` or ``rollback`` after settling."""

    def __init__(
        self,
        *,
        by: str = "src_ip",
        window: float = 300.0,
        idle: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.by, self.window, self.idle, self.clock = by, window, idle, clock
        self.open: dict[tuple[str, str], Incident] = {}
        self._per_tenant: Counter[str] = Counter()  # open incidents per tenant
        self._staged: dict[tuple[str, str], Incident | None] = {}
        self.opened = 0
        self.closed = 0

    def add(self, outcome: AlertedBatch, source: ColumnSource,
            summaries: Mapping[int, dict[str, str]] | None = None,
            ) -> tuple[list[tuple[bytes, bytes]], dict[int, str]]:
        """(key, value) records for the incidents this batch changes (staged, not
        committed), and the incident id of each batch row that joined one.

        ``outcome`` has the batch's levels, scores, explanations and alert rows (a
        ``BatchOutcome`` before its alerts are encoded); ``source`` is the batch's
        columns as its sensor schema reads them, for the entity field; ``summaries``
        (row -> ``risk.event_summaries``) each alert's scope fields, kept as its
        signature so that a rule added later can close the incident (:meth:`close`).
        """
        joined: dict[int, str] = {}
        now = self.clock()
        changed: dict[tuple[str, str], Incident] = {}
        closed: list[Incident] = []
        self._close_stale(now, closed)
        rows = [
            i for i, lv in zip(outcome.alert_rows.tolist(),
                               outcome.levels[outcome.alert_rows].tolist(), strict=True)
            if lv >= ACTIONABLE_LEVEL
        ]
        if rows:
            entities, codes = source.strings(self.by)
            tenants = outcome.decoded.tenants
            for i in rows:
                entity = entities[i] if codes[i] == 0 else "(unset)"
                key = (tenants[i], str(entity))
                inc = self._current(key)
                if inc is not None and (now - inc.opened > self.window
                                        or now - inc.last > self.idle):
                    inc.status = "closed"
                    closed.append(inc)
                    self._stage(key, None)
                    inc = None
                if inc is None:
                    aid = alert_id(outcome.topic, int(outcome.partitions[i]),
                                   int(outcome.offsets[i]))
                    inc = Incident(incident_id(key[0], key[1], aid), key[0], key[1], now, now)
                self._join(inc, outcome, i, now, summaries)
                self._stage(key, inc)
                changed[key] = inc
                joined[i] = inc.incident_id
        out = [(inc.incident_id.encode(), orjson.dumps(inc.record(self.by))) for inc in closed]
        out += [(inc.incident_id.encode(), orjson.dumps(inc.record(self.by)))
                for inc in changed.values()]
        return out, joined

    def _current(self, key: tuple[str, str]) -> Incident | None:
        if key in self._staged:
            return self._staged[key]
        inc = self.open.get(key)
        return inc.copy() if inc is not None else None

    def _stage(self, key: tuple[str, str], inc: Incident | None) -> None:
        self._staged[key] = inc

    def _join(self, inc: Incident, outcome: AlertedBatch, i: int, now: float,
              summaries: Mapping[int, dict[str, str]] | None = None) -> None:
        inc.last = now
        if summaries is not None and inc.cover is not None:
            ex = outcome.explanations.get(i)
            cover_add(inc.cover, summaries.get(i, {}), ex[0].get("feature") if ex else None)
        elif summaries is None:
            inc.cover = None  # its alerts were not described: no rule can judge it
        inc.alerts += 1
        inc.by_level[LEVEL_NAMES[int(outcome.levels[i])]] += 1
        inc.min_score = min(inc.min_score, float(outcome.scores[i]))
        for e in outcome.explanations.get(i, ())[:1]:
            inc.features[e["feature"]] += 1
        if len(inc.alert_ids) < MAX_ALERT_IDS:
            inc.alert_ids.append(
                alert_id(outcome.topic, int(outcome.partitions[i]), int(outcome.offsets[i]))
            )
        m = outcome.models[int(outcome.model_index[i])]
        inc.models.add(f"{m.name}/{m.version}")

    def _close_stale(self, now: float, closed: list[Incident]) -> None:
        stale = [k for k, inc in self.open.items()
                 if k not in self._staged
                 and (now - inc.last > self.idle or now - inc.opened > self.window)]
        gone = set(stale)
        left = self._per_tenant.copy()
        left.subtract(k[0] for k in stale)
        # A tenant over its own cap closes its oldest; then, over the cap in all, the
        # tenants with the most open incidents give theirs up first.
        over = {t: n - MAX_OPEN_PER_TENANT for t, n in left.items() if n > MAX_OPEN_PER_TENANT}
        total = sum(left.values()) - sum(over.values())
        if total > MAX_OPEN:
            for t, n in left.most_common():
                if total <= MAX_OPEN:
                    break
                extra = min(n - over.get(t, 0), total - MAX_OPEN)
                over[t] = over.get(t, 0) + extra
                total -= extra
        for tenant, n in over.items():
            mine = sorted((inc.last, k) for k, inc in self.open.items()
                          if k[0] == tenant and k not in gone and k not in self._staged)
            stale += [k for _t, k in mine[:n]]
        for k in stale:
            inc = self.open[k].copy()
            inc.status = "closed"
            closed.append(inc)
            self._stage(k, None)

    def close(self, rules: RuleSet) -> list[tuple[bytes, bytes]]:
        """Close (staged, as the batch's other changes) every open incident all of whose
        alerts a rule of ``rules`` covers (rules added while the consumer runs: as
        Elastic's "close all alerts that match"); their records, marked ``closed_by``."""
        out = []
        for key in list(self.open):
            inc = self._current(key)
            if inc is None or inc.cover is None:
                continue
            rid = covering(rules, key[0], inc.cover)
            if rid is None:
                continue
            inc.status, inc.closed_by = "closed", rid
            self._stage(key, None)
            out.append((inc.incident_id.encode(), orjson.dumps(inc.record(self.by))))
        return out

    def commit(self) -> None:
        """The batch settled: its incident changes stand."""
        for key, inc in self._staged.items():
            old = self.open.get(key)
            if inc is None:
                if old is not None:
                    self.closed += 1
                    self._per_tenant[key[0]] -= 1
                    if self._per_tenant[key[0]] <= 0:
                        del self._per_tenant[key[0]]
                self.open.pop(key, None)
            else:
                if old is None or old.incident_id != inc.incident_id:
                    self.opened += 1
                    if old is not None:
                        self.closed += 1
                if old is None:
                    self._per_tenant[key[0]] += 1
                self.open[key] = inc
        self._staged = {}

    def rollback(self) -> None:
        """The batch failed: forget its changes (it will be redone)."""
        self._staged = {}
