"""The console's bounded view of recent history: SQLite, so a restart does not start blank.

Four kinds of records, as the topics carry them: incidents and entity alerts (the
latest state of each, keyed by id), alerts (each once, by alert id) and drift snapshots
(each once, by tenant and time). Verdicts and
assignments the console made are kept too, so its pages and its precision figure show
them at once. ``prune`` keeps it within an age and a number of alerts: the oldest go.
One connection, used from the follower thread and the web server's threads under a
lock (SQLite serialises writers anyway; the volumes here are an analyst's, not the
stream's).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

__all__ = ["ConsoleStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    kind TEXT NOT NULL, id TEXT NOT NULL, tenant TEXT, entity TEXT, level TEXT,
    status TEXT, risk REAL, alerts INTEGER, updated REAL, doc TEXT NOT NULL,
    assignee TEXT, closed INTEGER DEFAULT 0, PRIMARY KEY (kind, id));
CREATE TABLE IF NOT EXISTS alerts (
    alert_id TEXT PRIMARY KEY, tenant TEXT, incident_id TEXT, entity TEXT, level TEXT,
    score REAL, event_time REAL, received REAL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS alerts_incident ON alerts (incident_id);
CREATE INDEX IF NOT EXISTS alerts_entity ON alerts (tenant, entity);
CREATE INDEX IF NOT EXISTS alerts_received ON alerts (received);
CREATE TABLE IF NOT EXISTS raised (
    tenant TEXT, id TEXT, status TEXT, received REAL);
CREATE INDEX IF NOT EXISTS raised_received ON raised (received);
CREATE TABLE IF NOT EXISTS drift (
    tenant TEXT, at REAL, model TEXT, psi_score REAL, alert_rate REAL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS drift_at ON drift (tenant, at);
CREATE TABLE IF NOT EXISTS verdicts (
    alert_id TEXT PRIMARY KEY, tenant TEXT, verdict TEXT, note TEXT, at REAL);
"""

#: Levels, lowest first, for ordering and filters.
LEVELS = ("low", "medium", "high", "critical")


class ConsoleStore:
    """SQLite at ``path`` (``:memory:`` for a blank one), bounded by ``max_age`` seconds
    and ``max_alerts`` alerts."""

    def __init__(self, path: str | Path, *, max_age: float = 7 * 86400.0,
                 max_alerts: int = 200_000) -> None:
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(_SCHEMA)
        self.lock = threading.Lock()
        self.max_age, self.max_alerts = max_age, max_alerts

    # ---- what the follower adds ---------------------------------------------------------

    def add_alert(self, a: dict[str, Any]) -> None:
        ev = a.get("event") or {}
        entity = str(ev.get("src_ip", "")) if isinstance(ev, dict) else ""
        with self.lock:
            self.db.execute(
                "INSERT OR IGNORE INTO alerts VALUES (?,?,?,?,?,?,?,?,?)",
                (str(a.get("alert_id")), str(a.get("tenant_id", "")),
                 a.get("incident_id"), entity, str(a.get("threat_level", "")),
                 _num(a.get("anomaly_score")), _num(ev.get("timestamp"))
                 if isinstance(ev, dict) else None, time.time(), orjson.dumps(a).decode()))

    def add_incident(self, inc: dict[str, Any]) -> None:
        ent = inc.get("entity") or {}
        self._item("incident", str(inc.get("incident_id")), str(inc.get("tenant_id", "")),
                   f"{ent.get('field')}={ent.get('value')}", str(inc.get("threat_level", "")),
                   str(inc.get("status", "")), None, _int(inc.get("alerts")), inc)

    def add_entity_alert(self, rec: dict[str, Any]) -> None:
        if rec.get("status") == "raised":  # each raise, for the rate over time
            with self.lock:
                self.db.execute("INSERT INTO raised VALUES (?,?,?,?)",
                                (str(rec.get("tenant_id", "")), str(rec.get("entity_alert_id")),
                                 "raised", time.time()))
        self._item("entity", str(rec.get("entity_alert_id")), str(rec.get("tenant_id", "")),
                   f"{rec.get('by')}={rec.get('entity')}", str(rec.get("threat_level", "")),
                   str(rec.get("status", "")), _num(rec.get("risk")), _int(rec.get("alerts")),
                   rec)

    def add_drift(self, rec: dict[str, Any]) -> None:
        """A drift snapshot (``stream.ops.drift.snapshot_record``), once per (tenant, at)."""
        tenant, at = str(rec.get("tenant_id") or ""), _num(rec.get("at"))
        got = rec.get("psi")
        psi: dict[str, Any] = got if isinstance(got, dict) else {}
        if not tenant or at is None:
            return
        model = f"{rec.get('model')}/{rec.get('version')}"
        with self.lock:
            self.db.execute("DELETE FROM drift WHERE tenant = ? AND at = ?", (tenant, at))
            self.db.execute("INSERT INTO drift VALUES (?, ?, ?, ?, ?, ?)",
                            (tenant, at, model, _num(psi.get("score")),
                             _num(rec.get("alert_rate")), orjson.dumps(rec).decode()))

    def _item(self, kind: str, iid: str, tenant: str, entity: str, level: str, status: str,
              risk: float | None, alerts: int | None, doc: dict[str, Any]) -> None:
        with self.lock:
            self.db.execute(
                "INSERT INTO items (kind, id, tenant, entity, level, status, risk, alerts, "
                "updated, doc) VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (kind, id) DO UPDATE "
                "SET tenant=excluded.tenant, entity=excluded.entity, level=excluded.level, "
                "status=excluded.status, risk=excluded.risk, alerts=excluded.alerts, "
                "updated=excluded.updated, doc=excluded.doc",
                (kind, iid, tenant, entity, level, status, risk, alerts, time.time(),
                 orjson.dumps(doc).decode()))

    def prune(self, now: float | None = None) -> int:
        """Forget what is older than ``max_age`` and alerts beyond ``max_alerts``."""
        cut = (time.time() if now is None else now) - self.max_age
        with self.lock:
            n = self.db.execute("DELETE FROM alerts WHERE received < ?", (cut,)).rowcount
            n += self.db.execute("DELETE FROM items WHERE updated < ?", (cut,)).rowcount
            n += self.db.execute("DELETE FROM raised WHERE received < ?", (cut,)).rowcount
            n += self.db.execute("DELETE FROM drift WHERE at < ?", (cut,)).rowcount
            over = self.db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] - self.max_alerts
            if over > 0:
                n += self.db.execute(
                    "DELETE FROM alerts WHERE alert_id IN (SELECT alert_id FROM alerts "
                    "ORDER BY received LIMIT ?)", (over,)).rowcount
        return n

    # ---- what the pages read ------------------------------------------------------------

    def queue(self, *, tenant: str = "", level: str = "", status: str = "", entity: str = "",
              since: float = 0.0, limit: int = 200) -> list[dict[str, Any]]:
        """Entity alerts and incidents, highest risk (then most alerts) first."""
        where: list[str] = ["updated >= ?"]
        args: list[Any] = [since]
        if tenant:
            where.append("tenant = ?")
            args.append(tenant)
        if level in LEVELS:
            marks = ",".join("?" * (4 - LEVELS.index(level)))
            where.append(f"level IN ({marks})")
            args.extend(LEVELS[LEVELS.index(level):])
        if status == "open":
            where.append("status != 'closed' AND closed = 0")
        elif status == "closed":
            where.append("(status = 'closed' OR closed = 1)")
        if entity:
            where.append("entity LIKE ?")
            args.append(f"%{entity}%")
        sql = ("SELECT kind, id, tenant, entity, level, status, risk, alerts, updated, "
               "assignee, closed FROM items WHERE " + " AND ".join(where) +
               " ORDER BY COALESCE(risk, 0) DESC, COALESCE(alerts, 0) DESC, updated DESC "
               "LIMIT ?")
        with self.lock:
            rows = self.db.execute(sql, (*args, limit)).fetchall()
        keys = ("kind", "id", "tenant", "entity", "level", "status", "risk", "alerts",
                "updated", "assignee", "closed")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def item(self, kind: str, iid: str) -> dict[str, Any] | None:
        with self.lock:
            r = self.db.execute("SELECT doc, assignee, closed FROM items WHERE kind=? AND id=?",
                                (kind, iid)).fetchone()
        if r is None:
            return None
        return {"doc": orjson.loads(r[0]), "assignee": r[1], "closed": bool(r[2])}

    def alerts_of(self, kind: str, doc: dict[str, Any], limit: int = 500) -> list[dict[str, Any]]:
        """The alerts of an incident (its id) or an entity alert (its ids, then its
        source's alerts)."""
        with self.lock:
            if kind == "incident":
                rows = self.db.execute(
                    "SELECT doc FROM alerts WHERE incident_id = ? ORDER BY event_time LIMIT ?",
                    (doc.get("incident_id"), limit)).fetchall()
            else:
                # Its episode's first ids, and for a source its other alerts held here.
                ids = [str(x) for x in doc.get("alert_ids") or []]
                marks = ",".join("?" * len(ids))
                by_src = doc.get("by") == "src_ip"
                rows = self.db.execute(
                    f"SELECT doc FROM alerts WHERE alert_id IN ({marks}) OR (? AND tenant = ? "
                    "AND entity = ?) ORDER BY event_time LIMIT ?",
                    (*ids, by_src, doc.get("tenant_id"), str(doc.get("entity")), limit),
                ).fetchall()
        return [orjson.loads(r[0]) for r in rows]

    def set_verdicts(self, alerts: Iterable[tuple[str, str]], verdict: str, note: str) -> None:
        now = time.time()
        with self.lock:
            self.db.executemany("INSERT OR REPLACE INTO verdicts VALUES (?,?,?,?,?)",
                                [(aid, tenant, verdict, note, now) for aid, tenant in alerts])

    def assign(self, kind: str, iid: str, assignee: str | None, closed: bool) -> None:
        with self.lock:
            self.db.execute("UPDATE items SET assignee=?, closed=? WHERE kind=? AND id=?",
                            (assignee, int(closed), kind, iid))

    def quality(self) -> list[dict[str, Any]]:
        """Per tenant: alerts, entity alerts and incidents held, verdicts, precision."""
        with self.lock:
            alerts = dict(self.db.execute(
                "SELECT tenant, COUNT(*) FROM alerts GROUP BY tenant").fetchall())
            items = self.db.execute(
                "SELECT tenant, kind, COUNT(*) FROM items GROUP BY tenant, kind").fetchall()
            verdicts = self.db.execute(
                "SELECT tenant, verdict, COUNT(*) FROM verdicts GROUP BY tenant, verdict"
            ).fetchall()
        out: dict[str, dict[str, Any]] = {}
        for t, n in alerts.items():
            out.setdefault(t, {"tenant": t})["alerts"] = n
        for t, kind, n in items:
            out.setdefault(t, {"tenant": t})[f"{kind}s"] = n
        for t, v, n in verdicts:
            out.setdefault(t, {"tenant": t}).setdefault("verdicts", {})[v] = n
        for d in out.values():
            v = d.get("verdicts", {})
            total = sum(v.values())
            d["precision"] = v.get("true_positive", 0) / total if total else None
        return sorted(out.values(), key=lambda d: d["tenant"])

    def rates(self, tenant: str = "", bucket: float = 60.0, span: float = 6 * 3600.0,
              table: str = "alerts") -> dict[str, list[tuple[float, int]]]:
        """Per tenant, alerts (``table="raised"``: entity alerts raised) received per
        ``bucket`` seconds over the last ``span``."""
        since = time.time() - span
        source = "raised" if table == "raised" else "alerts"  # a table name, never input
        with self.lock:
            rows = self.db.execute(
                f"SELECT tenant, CAST(received / ? AS INTEGER) AS b, COUNT(*) FROM {source} "
                "WHERE received >= ? AND (? = '' OR tenant = ?) GROUP BY tenant, b ORDER BY b",
                (bucket, since, tenant, tenant)).fetchall()
        out: dict[str, list[tuple[float, int]]] = {}
        for t, b, n in rows:
            out.setdefault(t, []).append((b * bucket, n))
        return out

    def scores(self, tenant: str = "", limit: int = 5000) -> list[float]:
        with self.lock:
            rows = self.db.execute(
                "SELECT score FROM alerts WHERE score IS NOT NULL AND (? = '' OR tenant = ?) "
                "ORDER BY received DESC LIMIT ?", (tenant, tenant, limit)).fetchall()
        return [r[0] for r in rows]

    def drift(self, tenant: str = "", span: float = 7 * 86400.0, inputs: int = 3
              ) -> dict[str, list[tuple[float, dict[str, float]]]]:
        """Per tenant, its drift snapshots over the last ``span`` seconds, oldest first:
        (time, PSI of the scores and of the ``inputs`` inputs that moved most)."""
        since = time.time() - span
        with self.lock:
            rows = self.db.execute(
                "SELECT tenant, at, doc FROM drift WHERE at >= ? AND (? = '' OR tenant = ?) "
                "ORDER BY at", (since, tenant, tenant)).fetchall()
        out: dict[str, list[tuple[float, dict[str, float]]]] = {}
        for t, at, doc in rows:
            psi = orjson.loads(doc).get("psi") or {}
            out.setdefault(t, []).append(
                (at, {k: float(v) for k, v in psi.items() if _num(v) is not None}))
        for t, series in out.items():
            top: dict[str, float] = {}
            for _at, psi in series:
                for k, v in psi.items():
                    if k != "score":
                        top[k] = max(top.get(k, 0.0), v)
            keep = {"score", *sorted(top, key=lambda k: -top[k])[:inputs]}
            out[t] = [(at, {k: v for k, v in psi.items() if k in keep}) for at, psi in series]
        return out

    def latest_drift(self, tenant: str = "") -> dict[str, Any] | None:
        """The newest drift snapshot (of ``tenant``, or of any)."""
        with self.lock:
            row = self.db.execute(
                "SELECT doc FROM drift WHERE (? = '' OR tenant = ?) ORDER BY at DESC LIMIT 1",
                (tenant, tenant)).fetchone()
        return orjson.loads(row[0]) if row else None

    def close(self) -> None:
        with self.lock:
            self.db.close()


def _num(x: Any) -> float | None:
    try:
        return float(x) if x is not None and not isinstance(x, bool) else None
    except (TypeError, ValueError):
        return None


def _int(x: Any) -> int | None:
    return x if isinstance(x, int) and not isinstance(x, bool) else None
