"""Analyst feedback: verdicts on alerts and incidents, precision per tenant, labelled exports.

Analysts (or their SIEM) publish verdicts to the feedback topic (default
``alerts.feedback``), one JSON object per message::

    {"alert_id": "flows/0/42", "verdict": "true_positive", "analyst": "...", "note": "..."}
    {"incident_id": "5d1c0e...", "verdict": "false_positive"}

``verdict`` is ``true_positive``, ``false_positive`` or ``benign`` (a real
detection of something harmless: for the detector's precision it counts like a
false positive). A verdict on an incident applies to every alert it lists. The
latest verdict per id wins. A verdict that names a ``tenant_id`` applies only if
the alert (or incident) is that tenant's: one tenant's analysts, who write their
tenant id, cannot move another tenant's precision by guessing its alert ids
(``topic/partition/offset``); with ``--require-tenant`` a verdict without one is
refused too. Refused verdicts are counted (``mismatched``).

``stream feedback`` reads the alert topic, the incident topic (if given) and the
feedback topic, and reports per tenant: verdicts, alerts reviewed and precision
(``true_positive / all verdicts``); with ``--metrics-port`` it exports them
(``stream_feedback_total{tenant,verdict}``, ``stream_precision{tenant}``);
with ``--export FILE`` it writes the reviewed alerts' events as JSONL with a
``label`` field (``attack`` for true positives, ``normal`` otherwise) and the
``verdict``, which ``stream evaluate --label-field label`` and ``stream train
--labels`` read. Feedback for an id it has not seen is counted and skipped
with a log line; a malformed feedback message is dead-lettered (reason
``malformed_feedback``) with its original bytes.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from stream.outcomes.reasons import MALFORMED_FEEDBACK, REASONS
from stream.outcomes.suppress import Rule, RuleError

log = logging.getLogger(__name__)

VERDICTS: Final = ("true_positive", "false_positive", "benign")
MALFORMED: Final = REASONS[MALFORMED_FEEDBACK]  # the reason header of its dead letters
#: Alerts remembered for joining feedback; the oldest beyond this are forgotten.
MAX_ALERTS: Final = 2_000_000


@dataclass(frozen=True)
class Verdict:
    target: str  # "alert" or "incident"
    id: str
    verdict: str
    analyst: str = ""
    note: str = ""
    tenant: str | None = None  # the tenant the writer says the alert is; None: not said


def parse(raw: bytes | None) -> Verdict | str:
    """A verdict, or the reason the message is malformed."""
    if not raw:
        return "empty message"
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        return f"not JSON: {e}"
    if not isinstance(doc, dict):
        return "not a JSON object"
    has_alert, has_incident = "alert_id" in doc, "incident_id" in doc
    if has_alert == has_incident:
        return "needs exactly one of alert_id and incident_id"
    key = "alert_id" if has_alert else "incident_id"
    ident = doc[key]
    if not isinstance(ident, str) or not ident:
        return f"{key} must be a non-empty string"
    verdict = doc.get("verdict")
    if verdict not in VERDICTS:
        return f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}"
    for opt in ("analyst", "note", "tenant_id"):
        if opt in doc and not isinstance(doc[opt], str):
            return f"{opt} must be a string"
    return Verdict("alert" if has_alert else "incident", ident, verdict,
                   doc.get("analyst", ""), doc.get("note", ""), doc.get("tenant_id"))


@dataclass
class FeedbackBook:
    """Alerts and incidents seen, verdicts given, and what they add up to per tenant."""

    alerts: dict[str, dict[str, Any]] = field(default_factory=dict)
    incidents: dict[str, list[str]] = field(default_factory=dict)
    incident_tenants: dict[str, str] = field(default_factory=dict)
    verdicts: dict[str, str] = field(default_factory=dict)  # alert id -> latest verdict
    unknown: int = 0
    malformed: int = 0
    mismatched: int = 0  # verdicts whose tenant is not the alert's (or that name none)
    require_tenant: bool = False

    def add_alert(self, alert: Mapping[str, Any]) -> None:
        """An alert record, in any --alert-format (native, ECS or OCSF)."""
        native = _native(alert)
        if native is None:
            return
        if len(self.alerts) >= MAX_ALERTS:
            self.alerts.pop(next(iter(self.alerts)))
        self.alerts[native["alert_id"]] = native

    def add_incident(self, record: Mapping[str, Any]) -> None:
        inc = record.get("unmapped", {}).get("incident") or record.get("stream", {}).get(
            "incident") or record
        if isinstance(inc, Mapping) and "incident_id" in inc:
            self.incidents[str(inc["incident_id"])] = list(inc.get("alert_ids", []))
            self.incident_tenants[str(inc["incident_id"])] = str(inc.get("tenant_id", ""))

    def add_verdict(self, v: Verdict) -> bool:
        """Apply a verdict; False (counted, logged) when its id is unknown."""
        ids = [v.id] if v.target == "alert" else self.incidents.get(v.id)
        if v.target == "alert" and v.id not in self.alerts:
            ids = None
        if not ids:
            self.unknown += 1
            # %r: the id is whatever a writer put there (a newline would forge a log line).
            log.warning("feedback for unknown %s %r (%s): skipped", v.target, v.id[:200],
                        v.verdict)
            return False
        owner = (self.alerts[v.id]["tenant_id"] if v.target == "alert"
                 else self.incident_tenants.get(v.id, ""))
        if (v.tenant is None and self.require_tenant) or (v.tenant is not None
                                                          and v.tenant != owner):
            self.mismatched += 1
            log.warning("feedback on %s %r for tenant %r, which is not its tenant's: skipped",
                        v.target, v.id[:200], (v.tenant or "")[:80])
            return False
        for aid in ids:
            if aid in self.alerts:
                self.verdicts[aid] = v.verdict
        return True

    def per_tenant(self) -> dict[str, dict[str, Any]]:
        """tenant -> verdict counts, alerts seen, reviewed, precision."""
        out: dict[str, dict[str, Any]] = {}
        seen: Counter[str] = Counter(a["tenant_id"] for a in self.alerts.values())
        for tenant, n in seen.items():
            out[tenant] = {"alerts": n, **dict.fromkeys(VERDICTS, 0)}
        for aid, verdict in self.verdicts.items():
            out[self.alerts[aid]["tenant_id"]][verdict] += 1
        for row in out.values():
            reviewed = sum(row[v] for v in VERDICTS)
            row["reviewed"] = reviewed
            row["precision"] = row["true_positive"] / reviewed if reviewed else None
        return dict(sorted(out.items()))

    def suggested_rules(self, now: float | None = None) -> list[Rule]:
        """Suppression rules the ``benign`` verdicts propose: one per tenant, destination,
        port and protocol whose alerts were judged benign and never a true positive, for
        30 days (``stream feedback --suggest-rules`` prints them; ``stream suppress add``
        writes one)."""
        import hashlib
        import time

        groups: dict[tuple[str, str, str, str], list[str]] = {}
        attacks: set[tuple[str, str, str, str]] = set()
        for aid, verdict in self.verdicts.items():
            a = self.alerts[aid]
            ev: Mapping[str, Any] = a["event"] if isinstance(a.get("event"), dict) else {}
            if not ev.get("dst_ip"):
                continue
            key = (str(a["tenant_id"]), str(ev["dst_ip"]), str(ev.get("dst_port", "")),
                   str(ev.get("protocol", ev.get("proto", ""))).lower())
            if verdict == "true_positive":
                attacks.add(key)
            elif verdict == "benign":
                groups.setdefault(key, []).append(aid)
        expires = (time.time() if now is None else now) + 30 * 86400.0
        out = []
        for key, ids in sorted(groups.items()):
            if key in attacks:
                continue
            tenant, dst, port, proto = key
            rid = "benign-" + hashlib.sha256("/".join(key).encode()).hexdigest()[:10]
            try:
                out.append(Rule.from_dict({
                    "id": rid, "tenant": tenant, "dst": dst, "port": port or None,
                    "proto": proto or None, "author": "stream feedback",
                    "reason": f"{len(ids)} alerts judged benign (first {ids[0]})",
                    "expires": expires}))
            except RuleError:
                continue  # a destination that is no address: no rule to propose
        return out

    def labelled(self) -> Iterable[dict[str, Any]]:
        """The reviewed alerts' events with ``label``, ``verdict`` and where they came from."""
        for aid, verdict in self.verdicts.items():
            a = self.alerts[aid]
            event: dict[str, Any] = a["event"] if isinstance(a.get("event"), dict) else {}
            yield {
                **event,
                "tenant_id": a["tenant_id"],
                "label": "attack" if verdict == "true_positive" else "normal",
                "verdict": verdict,
                "alert_id": aid,
                "anomaly_score": a.get("anomaly_score"),
                "threat_level": a.get("threat_level"),
            }


def _native(alert: Mapping[str, Any]) -> dict[str, Any] | None:
    """The fields feedback needs from an alert in any of the three formats."""
    if "alert_id" in alert and "tenant_id" in alert:
        return dict(alert)
    if "stream" in alert and "event" in alert and isinstance(alert["event"], Mapping):
        s = alert["stream"]  # ECS
        return {"alert_id": alert["event"].get("id"), "tenant_id": alert["labels"]["tenant_id"],
                "anomaly_score": s.get("anomaly_score"), "threat_level": s.get("threat_level"),
                "event": s.get("event", {})}
    if alert.get("class_uid") == 2004 and "unmapped" in alert:  # OCSF
        u = alert["unmapped"]
        raw = alert.get("raw_data")
        return {"alert_id": alert["finding_info"]["uid"],
                "tenant_id": alert["metadata"].get("tenant_uid"),
                "anomaly_score": u.get("anomaly_score"), "threat_level": u.get("threat_level"),
                "event": orjson.loads(raw) if raw else {}}
    return None


# ---- the command's loop ------------------------------------------------------------------


def run(
    settings: Any,
    *,
    feedback_topic: str,
    incident_topic: str = "",
    follow: bool = False,
    should_stop: Any = lambda: False,
    on_update: Any = None,
    require_tenant: bool = False,
) -> FeedbackBook:
    """Read alerts (and incidents) to the end, then feedback; dead-letter what is malformed.

    With ``follow``, keep reading all three until ``should_stop()``; ``on_update(book)``
    runs after each round that changed something (the metrics).
    """

    from stream.kafka.clients import as_headers, new_producer, position, value_of
    from stream.outcomes.records import dead_letter_headers
    from stream.tools.subscribe import read_messages

    book = FeedbackBook(require_tenant=require_tenant)
    extra = dict(settings.kafka_properties)
    boot = settings.bootstrap_servers
    for m in read_messages(boot, settings.alert_topic, from_beginning=True, extra=extra):
        try:
            book.add_alert(orjson.loads(value_of(m)))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            continue
    if incident_topic:
        for m in read_messages(boot, incident_topic, from_beginning=True, extra=extra):
            try:
                book.add_incident(orjson.loads(value_of(m)))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
    dlq = new_producer({**settings.kafka_common(), "linger.ms": 20})
    try:
        for m in read_messages(boot, feedback_topic, from_beginning=True, follow=follow,
                               extra=extra, should_stop=should_stop):
            v = parse(value_of(m))
            if isinstance(v, str):
                book.malformed += 1
                topic, (partition, offset) = m.topic() or feedback_topic, position(m)
                log.warning("malformed feedback at %s[%d]@%d: %r: dead-lettered", topic,
                            partition, offset, v[:300])
                dlq.produce(settings.dlq_topic, m.value(), key=m.key(),
                            headers=as_headers(dead_letter_headers(
                                MALFORMED, v[:300], topic, partition, offset)))
                dlq.poll(0)
            else:
                book.add_verdict(v)
            if on_update is not None:
                on_update(book)
    finally:
        dlq.flush(30)
    return book


def write_verdict(settings: Any, doc: dict[str, Any]) -> str:
    """Write one verdict (a dict ``parse`` accepts) to the feedback topic, keyed by its id;
    returns where it went (``topic[partition]@offset``). RuntimeError with the broker's
    reason when it is not acknowledged."""


    raw = orjson.dumps(doc)
    v = parse(raw)
    if isinstance(v, str):
        raise RuntimeError(f"not a verdict: {v}")
    from stream.kafka.clients import produce_acknowledged

    try:
        msg = produce_acknowledged(settings.kafka_common(), settings.feedback_topic,
                                   v.id.encode(), raw)
    except RuntimeError as e:
        raise RuntimeError(f"the verdict was {e}") from None
    return f"{msg.topic()}[{msg.partition()}]@{msg.offset()}"


def serve_metrics(port: int, host: str = "127.0.0.1") -> Any:
    """Serve precision and verdict counts on ``host:port``; returns the update callback."""
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    r = CollectorRegistry()
    precision = Gauge("stream_precision", "Reviewed alerts that were true positives, per "
                      "tenant (analyst feedback).", ["tenant"], registry=r)
    verdicts = Gauge("stream_feedback_verdicts", "Alerts per tenant and analyst verdict.",
                     ["tenant", "verdict"], registry=r)
    unknown = Gauge("stream_feedback_unknown", "Feedback for ids not seen (skipped).",
                    registry=r)
    malformed = Gauge("stream_feedback_malformed", "Malformed feedback (dead-lettered).",
                      registry=r)
    start_http_server(port, addr=host, registry=r)

    def update(book: FeedbackBook) -> None:
        for tenant, row in book.per_tenant().items():
            if row["precision"] is not None:
                precision.labels(tenant).set(row["precision"])
            for v in VERDICTS:
                verdicts.labels(tenant, v).set(row[v])
        unknown.set(book.unknown)
        malformed.set(book.malformed)

    return update
