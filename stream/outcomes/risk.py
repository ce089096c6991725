"""Risk per entity: the alerts of a tenant's host add up, and fade.

Every actionable alert (medium or above) adds points to its entity's risk: medium 1,
high 3, critical 10 (as risk-based alerting does: a critical alert is worth a few
highs, a high a few mediums). The risk is the damped sum of those points, per tenant
and entity (``--risk-by``, default ``src_ip``: the scanner, the infected host;
``src_ip,dst_ip`` adds each alert to its source and to its destination, so that the
victim of a thousand sources surfaces too; ``src_ip>dst_ip`` sums per pair), with a
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import orjson

from stream.features import FeatureSpec
from stream.features.columns import ColumnSource
from stream.ingest.decode import RowSubset
from stream.outcomes.reasons import MISSING_FEATURE
from stream.outcomes.records import ACTIONABLE_LEVEL, LEVEL_NAMES
from stream.outcomes.suppress import RuleSet, cover_add, covering
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


class _AlertRows:
    """A batch's columns read at its alert rows only, each column once (the other rows
    read as missing): what risk reads costs the batch's few alerts, not all its events
    (a column the features read already is sliced, ``DecodedBatch.numeric_at``)."""

    def __init__(self, source: ColumnSource, rows: np.ndarray) -> None:
        self.n, self.rows = source.n, rows
        self._alerts = RowSubset(source, rows)
        self._cols: dict[tuple[bool, str], tuple[np.ndarray, np.ndarray]] = {}

    def _column(self, numeric: bool, path: str) -> tuple[np.ndarray, np.ndarray]:
        got = self._cols.get((numeric, path))
        if got is None:
            values, codes = (self._alerts.numeric if numeric else self._alerts.strings)(path)
            full = np.full(self.n, np.nan) if numeric else np.empty(self.n, dtype=object)
            full_codes = np.full(self.n, MISSING_FEATURE, dtype=np.uint8)
            full[self.rows], full_codes[self.rows] = values, codes
            got = self._cols[(numeric, path)] = (full, full_codes)
        return got

    def numeric(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        return self._column(True, path)

    def strings(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        return self._column(False, path)


@dataclass
class Risk:
    """How risk is summed (``--risk-by``, ``--risk-half-life``, ``--risk-threshold``).

    ``by``: the entities, comma-separated, each a field or a directed pair of fields
    (``src_ip>dst_ip``): with ``src_ip,dst_ip`` every alert adds its points to its
    source and to its destination, so a host attacked by a thousand sources that each
    send a few flows surfaces as one entity, as Splunk's risk objects do.
    """

    by: str = "src_ip"
    half_life: float = 3600.0
    threshold: float = 12.0
    timestamp_field: str = "timestamp"
    specs: dict[str, FeatureSpec] = field(init=False)

    def __post_init__(self) -> None:
        if not self.by or not self.half_life > 0 or not self.threshold > 0:
            raise ValueError("risk needs a field, a positive half-life and threshold")
        if any(not p for e in self.entities for p in e.split(">")):
            raise ValueError(f"--risk-by {self.by!r}: an empty field name")
        self.specs = {}
        for entity in self.entities:
            by = ">".join(f"`{p}`" if not p.isidentifier() else p for p in entity.split(">"))
            self.specs[entity] = FeatureSpec.parse(
                [("risk", f"sum(`{POINTS}`, by={by}, decay={self.half_life:g}s)")]
            ).with_timestamp_field(self.timestamp_field)

    @property
    def entities(self) -> list[str]:
        """The entity keys risk adds up by, in ``by``'s order (the first is the primary)."""
        return list(dict.fromkeys(self.by.split(",")))

    def accumulate(self, source: ColumnSource, rows: np.ndarray, levels: np.ndarray,
                   tenants: Sequence[str], store: Any, scopes: np.ndarray | None,
                   entity: str | None = None,
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Add the actionable rows' points to their ``entity`` (default the first): (those
        rows, their points, each entity's risk after it, and a reason code per row: 0
        where it was read)."""
        rows = rows[levels[rows] >= ACTIONABLE_LEVEL]
        if len(rows) == 0:
            empty = np.zeros(0)
            return rows, empty, empty, np.zeros(0, dtype=np.uint8)
        points = LEVEL_POINTS[levels[rows].astype(np.int64)]
        entity = entity or self.entities[0]
        # Each entity's rows on a clock of their own: the second pass over the same alerts
        # is not late against the first's.
        suffix = _CLOCK_SUFFIX if entity == self.entities[0] else f"{_CLOCK_SUFFIX}:{entity}"
        computed = self.specs[entity].compute(
            _WithPoints(source, rows, points), store=store,
            scopes=None if scopes is None else scopes[rows],
            tenants=[tenants[i] + suffix for i in rows.tolist()],
        )
        return rows, points, computed.X[:, 0], computed.reason

    def members(self, source: ColumnSource, rows: np.ndarray, levels: np.ndarray,
                tenants: list[str], store: Any, scopes: np.ndarray | None,
                alert_ids: Callable[[int], str] | None = None, detected_at: str = "",
                thresholds: np.ndarray | None = None, scores: np.ndarray | None = None,
                leads: Mapping[int, str] | None = None,
                summaries: Mapping[int, dict[str, str]] | None = None,
                ) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
        """``,"entity_risk":{...}`` per actionable alert row (rows whose entity or time
        cannot be read have none), after adding the rows' points to their entities; and
        the entity alert records (key, value) of the rows whose risk is at or above the
        threshold (``alert_ids``: a batch row's alert id). ``thresholds``: per batch row,
        the threshold of the model that scored it (its alert budget's), where it has one
        (NaN: ``threshold``). With several entities, ``entity_risk`` is the first one
        read and ``entity_risks`` lists them all.

        Each entity alert also says what is behind the risk: the entity's *episode*
        (its alerts since its risk last stood below one point; :class:`Episodes`),
        kept as a note in ``store`` so it is committed, restored and the same in
        ``stream score``. ``scores`` (per batch row) and ``leads`` (row -> the feature
        that led its explanation) fill its top events and behaviours; ``summaries``
        (row -> :func:`event_summaries`, read on the alerts' own columns) its events,
        else they are read from ``source``."""
        docs: dict[int, list[dict[str, Any]]] = {}
        records: list[tuple[bytes, bytes]] = []
        source = _AlertRows(source, rows)
        times = np.full(source.n, math.nan)  # read at the alert rows, as everything here
        times[rows] = event_times(RowSubset(source, rows), self.timestamp_field)[0]
        episodes = Episodes(store, source, scores, leads, alert_ids, summaries)
        for by in self.entities:
            rows_e, points, risk, reason = self.accumulate(source, rows, levels, tenants,
                                                           store, scopes, by)
            if len(rows_e) == 0:
                return {}, []
            cut = np.full(len(rows_e), self.threshold)
            if thresholds is not None:
                own = thresholds[rows_e]
                cut = np.where(np.isnan(own), cut, own)
            keys = [source.strings(f)[0] for f in by.split(">")]
            for j, (i, r, p, t) in enumerate(zip(rows_e.tolist(), risk.tolist(),
                                                 points.tolist(), cut.tolist(), strict=True)):
                if reason[j] != 0 or not math.isfinite(r):
                    continue
                entity = ">".join(str(k[i]) for k in keys)
                raised = bool(r >= t > r - p)
                docs.setdefault(i, []).append({"by": by, "entity": entity,
                                               "risk": round(r, 6), "threshold": t,
                                               "raised": raised})
                key = f"{tenants[i]}/{by}={entity}"
                ep = episodes.add(0 if scopes is None else int(scopes[i]), key, by, i,
                                  float(times[i]), r - p, LEVEL_NAMES[int(levels[i])])
                ep["risk"], ep["threshold"] = round(r, 6), t
                if r >= t and alert_ids is not None:
                    records.append((key.encode(), orjson.dumps({
                        "entity_alert_id": key, "tenant_id": tenants[i], "by": by,
                        "entity": entity, "status": "raised" if raised else "updated",
                        "risk": round(r, 6), "threshold": t,
                        "alert_id": alert_ids(i), "threat_level": LEVEL_NAMES[int(levels[i])],
                        "event_time": float(times[i]), "detected_at": detected_at,
                        **Episodes.view(ep),
                    })))
        episodes.save()
        several = len(self.entities) > 1
        out = {}
        for i, d in docs.items():
            member = b',"entity_risk":' + orjson.dumps(d[0])
            if several:
                member += b',"entity_risks":' + orjson.dumps(d)
            out[i] = member
        return out, records


#: An entity's episode starts afresh at an alert that finds its risk below this (less than
#: a medium alert's worth: what came before has faded).
EPISODE_FLOOR: Final = 1.0
#: Alert ids kept per episode (the rest counted), as incidents keep theirs.
EPISODE_ALERT_IDS: Final = 20
#: Distinct features and peers counted per episode, and events kept as its top.
EPISODE_FEATURES: Final = 20
EPISODE_PEERS: Final = 100
EPISODE_TOP: Final = 5
#: The fields of an event a top event shows.
_SUMMARY: Final = ("src_ip", "dst_ip", "dst_port", "protocol")
#: What an episode holds (a restored note without it starts afresh).
_EPISODE_KEYS: Final = frozenset({"first_seen", "last_seen", "alerts", "by_level", "alert_ids",
                                  "features", "peer_field", "peers", "top", "cover"})
#: The other end of an entity's alerts, when the entity is an address.
_PEER: Final = {"src_ip": "dst_ip", "dst_ip": "src_ip"}


class Episodes:
    """The entities' episodes a batch touches: read from the store's notes once, changed
    alert by alert in the batch's order, written back by :meth:`save` (so the changelog
    commits them with the batch, and a restart or ``stream score`` sees the same).

    An episode (a JSON object) holds the event times of its first and last alert, its
    alerts per level, their first ids, the features that led them, the other ends of
    their flows (``_PEER``), and its most anomalous events.
    """

    def __init__(self, store: Any, source: ColumnSource, scores: np.ndarray | None,
                 leads: Mapping[int, str] | None, alert_ids: Callable[[int], str] | None,
                 summaries: Mapping[int, dict[str, str]] | None = None) -> None:
        self.store, self.source, self.scores = store, source, scores
        self.leads = leads or {}
        self.alert_ids = alert_ids
        self.summaries = summaries
        self.open: dict[tuple[int, str], dict[str, Any]] = {}
        self._cols: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _summary(self, i: int) -> dict[str, str]:
        if self.summaries is not None:
            return self.summaries.get(i, {})
        out = {}
        for f in _SUMMARY:
            got = self._cols.get(f)
            if got is None:
                got = self._cols[f] = self.source.strings(f)
            if got[1][i] == 0:
                out[f] = str(got[0][i])
        return out

    def add(self, sc: int, key: str, by: str, i: int, t: float, before: float,
            level: str) -> dict[str, Any]:
        """Batch row ``i``'s alert joins entity ``key``'s episode (a new one when the
        entity's risk ``before`` it was under ``EPISODE_FLOOR``); the episode."""
        ep = self.open.get((sc, key))
        if ep is None and self.store is not None:
            ep = self.store.note(sc, key)  # changed in place: a failed batch drops it
            if not _is_episode(ep):
                ep = None  # none, or not one of ours (restored from another build): afresh
        if ep is None or before < EPISODE_FLOOR:
            ep = self._fresh(t, by)
        self.open[(sc, key)] = ep
        try:
            return self._fold(ep, i, t, level)
        except (TypeError, ValueError, KeyError, AttributeError, IndexError):
            # A restored note whose insides are not an episode's: this alert starts one.
            ep = self.open[(sc, key)] = self._fresh(t, by)
            return self._fold(ep, i, t, level)

    @staticmethod
    def _fresh(t: float, by: str) -> dict[str, Any]:
        return {"first_seen": t, "last_seen": t, "alerts": 0, "by_level": {},
                "alert_ids": [], "features": {}, "peer_field": _PEER.get(by),
                "peers": {}, "top": [], "cover": {}}

    def _fold(self, ep: dict[str, Any], i: int, t: float, level: str) -> dict[str, Any]:
        ep["alerts"] += 1
        ep["last_seen"] = t  # an alert's time is always read: risk needs it
        by_level = ep["by_level"]
        by_level[level] = by_level.get(level, 0) + 1
        aid = None
        ids = ep["alert_ids"]
        if self.alert_ids is not None and len(ids) < EPISODE_ALERT_IDS:
            aid = self.alert_ids(i)
            ids.append(aid)
        lead = self.leads.get(i)
        if lead is not None:
            feats = ep["features"]
            if lead in feats or len(feats) < EPISODE_FEATURES:
                feats[lead] = feats.get(lead, 0) + 1
        event = self._summary(i)
        cover_add(ep["cover"], event, lead)  # for a rule added later to judge
        if ep["peer_field"]:
            peer = event.get(ep["peer_field"])
            peers = ep["peers"]
            if peer is not None and (peer in peers or len(peers) < EPISODE_PEERS):
                peers[peer] = peers.get(peer, 0) + 1
        if self.scores is not None:
            score = round(float(self.scores[i]), 6)
            top = ep["top"]
            if len(top) < EPISODE_TOP or score < top[-1]["anomaly_score"]:
                if aid is None and self.alert_ids is not None:
                    aid = self.alert_ids(i)
                top.append({"alert_id": aid, "anomaly_score": score, "threat_level": level,
                            "event_time": t, "event": event})
                top.sort(key=_by_score)  # stable: ties keep their order
                del top[EPISODE_TOP:]
        return ep

    def save(self) -> None:
        if self.store is None:
            return
        for (sc, key), ep in self.open.items():
            self.store.set_note(sc, key, ep)

    @staticmethod
    def view(ep: dict[str, Any]) -> dict[str, Any]:
        """What an entity alert says of its episode."""
        feats = sorted(ep["features"].items(), key=_most)[:3]
        peers = sorted(ep["peers"].items(), key=_most)[:5]
        out: dict[str, Any] = {
            "first_seen": ep["first_seen"], "last_seen": ep["last_seen"],
            "alerts": ep["alerts"], "alerts_by_level": dict(sorted(ep["by_level"].items())),
            "alert_ids": ep["alert_ids"],
            "alert_ids_omitted": ep["alerts"] - len(ep["alert_ids"]),
            "behaviours": [{"feature": f, "alerts": n} for f, n in feats],
            "top_events": ep["top"],
        }
        if ep["peer_field"]:
            out["peers"] = {"field": ep["peer_field"], "distinct": len(ep["peers"]),
                            "more": len(ep["peers"]) >= EPISODE_PEERS,
                            "top": [{"value": v, "alerts": n} for v, n in peers]}
        return out


def _most(kv: tuple[str, Any]) -> tuple[int, str]:
    """Most counted first, then by name (a count that is not a number, from a note
    restored from elsewhere, counts as none rather than failing the batch)."""
    n = kv[1]
    return (-n if isinstance(n, int) else 0, str(kv[0]))


def _level_rank(level: str) -> int:
    return LEVEL_NAMES.index(level) if level in LEVEL_NAMES else -1


def _is_episode(ep: Any) -> bool:
    """An episode as :class:`Episodes` writes it (a changelog note may be anything)."""
    return (isinstance(ep, dict) and ep.keys() >= _EPISODE_KEYS
            and all(isinstance(ep[k], t) for k, t in _EPISODE_TYPES))


#: The type of each member of an episode.
_EPISODE_TYPES: Final = (("first_seen", float | int), ("last_seen", float | int),
                         ("alerts", int), ("by_level", dict), ("alert_ids", list),
                         ("features", dict), ("peer_field", str | None), ("peers", dict),
                         ("top", list), ("cover", dict))


def close_covered(store: Any, rules: RuleSet, detected_at: str,
                  scopes: Sequence[int] | None = None) -> list[tuple[bytes, bytes]]:
    """Close every entity episode in ``store`` (in ``scopes``: the batch's partitions,
    whose changes it commits; default all) all of whose alerts a rule of ``rules`` covers
    (rules added while the consumer runs): an entity alert record per episode, status
    ``closed`` and ``closed_by`` the rule, and the episode forgotten (the entity's next
    alert starts a new one)."""
    out = []
    for sc in list(store.scopes) if scopes is None else scopes:
        for key, ep in list(store.notes_of(sc).items()):
            if not _is_episode(ep):
                continue  # not an episode (a deduplication note)
            tenant, _, rest = key.partition("/")
            by, _, entity = rest.partition("=")
            rid = covering(rules, tenant, ep["cover"])
            if rid is None:
                continue
            store.set_note(sc, key, None)
            out.append((key.encode(), orjson.dumps({
                "entity_alert_id": key, "tenant_id": tenant, "by": by, "entity": entity,
                "status": "closed", "closed_by": rid, "risk": ep.get("risk"),
                "threshold": ep.get("threshold"), "alert_id": (ep["alert_ids"] or [None])[-1],
                "threat_level": max(ep["by_level"], key=_level_rank, default="low"),
                "event_time": ep["last_seen"], "detected_at": detected_at,
                **Episodes.view(ep)})))
    return out


def _by_score(e: dict[str, Any]) -> float:
    return float(e["anomaly_score"])


def event_summaries(alerting: ColumnSource, rows: Sequence[int]) -> dict[int, dict[str, str]]:
    """Batch row -> the fields a top event shows, read on the alerts' own columns
    (``alerting``: row k is batch row ``rows[k]``), not on the whole batch's."""
    out: dict[int, dict[str, str]] = {i: {} for i in rows}
    for f in _SUMMARY:
        values, codes = alerting.strings(f)
        for k, i in enumerate(rows):
            if codes[k] == 0:
                out[i][f] = str(values[k])
    return out


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


#: ``stream train``'s default alert budget: entity alerts a day per 1,000 active hosts (and
#: at least this many). About what one analyst triages in a day (20-25 minutes each);
#: scaled with the hosts, since false entity alerts grow with them. Evaluated on the
#: labelled captures (README, "Detection on real traffic"): the benign entities it let
#: through stayed within it, and every attacking source was surfaced.
DEFAULT_ENTITY_ALERTS_PER_1000: Final = 20.0


def default_per_day(source: ColumnSource, by: str) -> float:
    """The default budget for training traffic ``source``: ``DEFAULT_ENTITY_ALERTS_PER_1000``
    a day per 1,000 distinct values of the first risk entity (the active hosts)."""
    fields = by.split(",")[0].split(">")
    cols = [source.strings(f) for f in fields]
    seen = {tuple(str(v[i]) for v, _c in cols) for i in range(source.n)
            if all(c[i] == 0 for _v, c in cols)}
    return DEFAULT_ENTITY_ALERTS_PER_1000 * max(1.0, len(seen) / 1000.0)


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
    his_, los_, times_, ok_rows, entities = [], [], [], [], set()
    stamps = event_times(source, timestamp_field)[0]  # ISO text or epoch seconds
    for entity in risk.entities:
        rows, points, r, reason = risk.accumulate(source, np.arange(source.n), levels,
                                                  tenants, store, None, entity)
        ok = (reason == 0) & np.isfinite(r)
        his_.append(r[ok])
        los_.append((r - points)[ok])
        times_.append(stamps[rows[ok]])
        ok_rows.append(rows[ok])
        keys = [source.strings(f)[0] for f in entity.split(">")]
        entities |= {(tenants[i], entity, *(str(k[i]) for k in keys))
                     for i in rows[ok].tolist()}
    hi, lo, times = np.concatenate(his_), np.concatenate(los_), np.concatenate(times_)
    if not len(hi):
        return None
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
    alerted = len(np.unique(np.concatenate(ok_rows)))
    return EntityBudget(threshold=round(threshold, 6), per_day=per_day, by=by,
                        half_life=half_life, days=days, alerts=alerted,
                        entities=len(entities), raised_per_day=raised / days)
