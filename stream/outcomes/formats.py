"""Alert and incident records in the formats SIEMs ingest: native, ECS or OCSF.

``--alert-format`` picks one for the alert and incident topics:

* ``native``: this tool's own envelope (``stream.outcomes.records``), the event's bytes
  spliced in unchanged;
* ``ecs``: an Elastic Common Schema document (``event.kind: alert``);
* ``ocsf``: an OCSF Detection Finding (class_uid 2004).

Network fields come from the event as its sensor schema reads it (the canonical
``src_ip``, ``dst_ip``, ``src_port``, ``dst_port``, ``protocol``,
``bytes_transferred``, ``packet_count``, ``connection_duration``), so a Zeek or
Suricata record maps the same way as a native one. What neither schema has a
place for (the anomaly score, the explanation, the model, the original event)
goes under ``stream`` (ECS: a custom field set, as ECS asks of custom fields)
or ``unmapped`` (OCSF). The mapping tables are in the README (Alert formats).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import orjson

FORMATS: Final = ("native", "ecs", "ocsf")
ECS_VERSION: Final = "8.11.0"
OCSF_VERSION: Final = "1.3.0"
PRODUCT: Final = "stream"

# Risk and severity per level, as Elastic's detection rules map severity to a risk
# score (low 21, medium 47, high 73, critical 99).
_RISK: Final = {"low": 21, "medium": 47, "high": 73, "critical": 99}
# OCSF severity_id: 1 Informational, 2 Low, 3 Medium, 4 High, 5 Critical.
_OCSF_SEVERITY: Final = {"low": (2, "Low"), "medium": (3, "Medium"), "high": (4, "High"),
                         "critical": (5, "Critical")}
# OCSF risk_level_id: 0 Info, 1 Low, 2 Medium, 3 High, 4 Critical.
_OCSF_RISK_LEVEL: Final = {"low": (1, "Low"), "medium": (2, "Medium"), "high": (3, "High"),
                           "critical": (4, "Critical")}
_NUMERIC: Final = ("src_port", "dst_port", "bytes_transferred", "packet_count",
                   "connection_duration")
_TEXT: Final = ("src_ip", "dst_ip", "protocol")


def flow_fields(source: Any, rows: Sequence[int]) -> list[dict[str, Any]]:
    """The canonical network fields of ``rows`` (absent where the event has none)."""
    out: list[dict[str, Any]] = [{} for _ in rows]
    if source is None or not rows:
        return out
    for name in _TEXT:
        try:
            values, codes = source.strings(name)
        except (KeyError, ValueError):
            continue
        for k, i in enumerate(rows):
            if codes[i] == 0:
                out[k][name] = values[i]
    for name in _NUMERIC:
        try:
            values, codes = source.numeric(name)
        except (KeyError, ValueError):
            continue
        for k, i in enumerate(rows):
            if codes[i] == 0:
                v = float(values[i])
                if not math.isfinite(v):
                    continue
                out[k][name] = int(v) if name != "connection_duration" and v.is_integer() \
                    and _INT64_MIN <= v < _INT64_MAX else v
    return out


#: The typed fields of ECS and OCSF are 64-bit integers (ports 16-bit): a number an event
#: carries outside them is left out of the typed field (it stays in the event itself).
_INT64_MIN, _INT64_MAX = -(2.0**63), 2.0**63


def _long(v: Any) -> int | None:
    """``v`` as a 64-bit integer field, or None when it is not one (1e20, -1, NaN)."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v if 0 <= v < 2**63 else None
    if isinstance(v, float) and v.is_integer() and 0 <= v < _INT64_MAX:
        return int(v)
    return None


def _port(v: Any) -> int | None:
    p = _long(v)
    return p if p is not None and p <= 65535 else None


def _nanoseconds(seconds: Any) -> int | None:
    try:
        ns = float(seconds) * 1e9
    except (TypeError, ValueError):
        return None
    return round(ns) if math.isfinite(ns) and 0 <= ns < _INT64_MAX else None


def _epoch_iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def _message(alert: Mapping[str, Any], flow: Mapping[str, Any]) -> str:
    who = flow.get("src_ip", "?")
    to = flow.get("dst_ip", "?")
    ex = alert.get("explanation") or []
    why = f"; most unusual: {ex[0]['feature']}" if ex else ""
    return (f"{alert['threat_level']} network anomaly for tenant {alert['tenant_id']}: "
            f"{who} -> {to} (score {alert['anomaly_score']:.3f}){why}")


# ---- ECS -------------------------------------------------------------------------------


def ecs_alert(alert: dict[str, Any], flow: Mapping[str, Any]) -> dict[str, Any]:
    level = alert["threat_level"]
    model = alert["model"]
    doc: dict[str, Any] = {
        "@timestamp": alert["detected_at"],
        "ecs": {"version": ECS_VERSION},
        "event": {
            "kind": "alert",
            "category": ["network", "intrusion_detection"],
            "type": ["info", "connection"],
            "id": alert["alert_id"],
            "dataset": "stream.alert",
            "module": PRODUCT,
            "risk_score": float(_RISK[level]),
            "severity": _RISK[level],
            "created": alert["detected_at"],
        },
        "organization": {"id": alert["tenant_id"]},
        "rule": {"id": f"models:/{model['name']}/{model['version']}", "name": model["name"],
                 "version": str(model["version"]), "category": "anomaly"},
        "observer": {"product": PRODUCT, "vendor": PRODUCT, "type": "ids"},
        "labels": {"tenant_id": alert["tenant_id"], "threat_level": level},
        "message": _message(alert, flow),
        PRODUCT: {
            "anomaly_score": alert["anomaly_score"],
            "is_anomaly": alert["is_anomaly"],
            "threat_level": level,
            "model": model,
            "source": alert["source"],
            "explanation": alert.get("explanation", []),
            "event": alert["event"],
        },
    }
    if alert.get("entity_risk"):
        doc[PRODUCT]["entity_risk"] = alert["entity_risk"]
    _ecs_network(doc, flow)
    return doc


def _ecs_network(doc: dict[str, Any], flow: Mapping[str, Any]) -> None:
    for side, ip, port in (("source", "src_ip", "src_port"), ("destination", "dst_ip", "dst_port")):
        part: dict[str, Any] = {}
        if ip in flow:
            part["ip"] = flow[ip]
        if (p := _port(flow.get(port))) is not None:
            part["port"] = p
        if part:
            doc[side] = part
    net: dict[str, Any] = {}
    if "protocol" in flow:
        net["transport"] = str(flow["protocol"]).lower()
    if (n := _long(flow.get("bytes_transferred"))) is not None:
        net["bytes"] = n
    if (n := _long(flow.get("packet_count"))) is not None:
        net["packets"] = n
    if net:
        doc["network"] = net
    if (ns := _nanoseconds(flow.get("connection_duration"))) is not None:
        doc["event"]["duration"] = ns


def _ecs_summary(rec: Mapping[str, Any], when: str, uid: str, dataset: str, message: str
                 ) -> dict[str, Any]:
    """What an incident and an entity alert share in ECS: an alert about many events."""
    level = rec["threat_level"]
    return {
        "@timestamp": when,
        "ecs": {"version": ECS_VERSION},
        "event": {
            "kind": "alert",
            "category": ["network", "intrusion_detection"],
            "type": ["info"],
            "id": uid,
            "dataset": dataset,
            "module": PRODUCT,
            "risk_score": float(_RISK[level]),
            "severity": _RISK[level],
        },
        "organization": {"id": rec["tenant_id"]},
        "observer": {"product": PRODUCT, "vendor": PRODUCT, "type": "ids"},
        "labels": {"tenant_id": rec["tenant_id"], "threat_level": level,
                   "status": rec["status"]},
        "message": message,
    }


def ecs_incident(inc: dict[str, Any]) -> dict[str, Any]:
    field, value = inc["entity"]["field"], inc["entity"]["value"]
    doc = _ecs_summary(inc, inc["last_seen"], inc["incident_id"], "stream.incident",
                       f"{inc['status']} incident for tenant {inc['tenant_id']}: "
                       f"{inc['alerts']} alerts about {field} {value}")
    doc["event"].update(start=inc["first_seen"], end=inc["last_seen"])
    doc[PRODUCT] = {"incident": inc}
    if field in ("src_ip", "dst_ip"):
        doc["source" if field == "src_ip" else "destination"] = {"ip": value}
    return doc


def _entity_message(rec: Mapping[str, Any]) -> str:
    return (f"{rec['status']} entity alert for tenant {rec['tenant_id']}: {rec['by']} "
            f"{rec['entity']} at risk {rec['risk']:g} (threshold {rec['threshold']:g})")


def ecs_entity_alert(rec: dict[str, Any]) -> dict[str, Any]:
    """An entity alert (``stream.outcomes.risk``) as an ECS alert; the entity's risk in
    ECS's entity risk fields (``host.risk``) when the entity is a host address."""
    level = rec["threat_level"]
    doc = _ecs_summary(rec, rec["detected_at"], rec["entity_alert_id"], "stream.entity_alert",
                       _entity_message(rec))
    doc[PRODUCT] = {"entity_alert": rec}
    if isinstance(rec.get("first_seen"), int | float) and isinstance(rec.get("last_seen"),
                                                                     int | float):
        # The episode behind the risk: its first and last alert's event time.
        doc["event"].update(start=_epoch_iso(rec["first_seen"]),
                            end=_epoch_iso(rec["last_seen"]))
    if rec["by"] in ("src_ip", "dst_ip"):
        doc["source" if rec["by"] == "src_ip" else "destination"] = {"ip": rec["entity"]}
        doc["host"] = {"ip": [rec["entity"]],
                       "risk": {"calculated_score": float(rec["risk"]),
                                "calculated_level": level.capitalize()}}
    return doc


# ---- OCSF ------------------------------------------------------------------------------


def _ocsf_base(level: str, when_ms: int, activity: tuple[int, str], uid: str, tenant: str
               ) -> dict[str, Any]:
    sev_id, sev = _OCSF_SEVERITY[level]
    risk_id, risk = _OCSF_RISK_LEVEL[level]
    return {
        "activity_id": activity[0],
        "activity_name": activity[1],
        "category_uid": 2,
        "category_name": "Findings",
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "type_uid": 2004 * 100 + activity[0],
        "type_name": f"Detection Finding: {activity[1]}",
        "severity_id": sev_id,
        "severity": sev,
        "risk_level_id": risk_id,
        "risk_level": risk,
        "risk_score": _RISK[level],
        "status_id": 1,
        "status": "New",
        "time": when_ms,
        "metadata": {
            "version": OCSF_VERSION,
            "uid": uid,
            "tenant_uid": tenant,
            "product": {"name": PRODUCT, "vendor_name": PRODUCT},
        },
    }


def _endpoints(flow: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    src: dict[str, Any] = {}
    dst: dict[str, Any] = {}
    if "src_ip" in flow:
        src["ip"] = flow["src_ip"]
    if (p := _port(flow.get("src_port"))) is not None:
        src["port"] = p
    if "dst_ip" in flow:
        dst["ip"] = flow["dst_ip"]
    if (p := _port(flow.get("dst_port"))) is not None:
        dst["port"] = p
    return src, dst


def ocsf_alert(alert: dict[str, Any], flow: Mapping[str, Any]) -> dict[str, Any]:
    level = alert["threat_level"]
    model = alert["model"]
    when = _ms(alert["detected_at"])
    doc = _ocsf_base(level, when, (1, "Create"), alert["alert_id"], alert["tenant_id"])
    ex = alert.get("explanation") or []
    doc["finding_info"] = {
        "uid": alert["alert_id"],
        "title": f"Network flow anomaly ({level})",
        "desc": _message(alert, flow),
        "types": ["Network Anomaly"],
        "created_time": when,
        "analytic": {"name": model["name"], "uid": f"models:/{model['name']}/{model['version']}",
                     "version": str(model["version"]), "type_id": 1, "type": "Rule"},
    }
    doc["message"] = _message(alert, flow)
    doc["count"] = 1
    src, dst = _endpoints(flow)
    evidence: dict[str, Any] = {}
    if src:
        evidence["src_endpoint"] = src
    if dst:
        evidence["dst_endpoint"] = dst
    if "protocol" in flow:
        evidence["connection_info"] = {"protocol_name": str(flow["protocol"]).lower()}
    if evidence:
        doc["evidences"] = [evidence]
    doc["observables"] = [
        {"name": f"{side}.ip", "type_id": 2, "type": "IP Address", "value": ep["ip"]}
        for side, ep in (("src_endpoint", src), ("dst_endpoint", dst)) if "ip" in ep
    ]
    doc["unmapped"] = {
        "anomaly_score": alert["anomaly_score"],
        "is_anomaly": alert["is_anomaly"],
        "threat_level": level,
        "source": alert["source"],
        "explanation": ex,
    }
    if alert.get("entity_risk"):
        doc["unmapped"]["entity_risk"] = alert["entity_risk"]
    doc["raw_data"] = orjson.dumps(alert["event"]).decode()
    return doc


def ocsf_incident(inc: dict[str, Any]) -> dict[str, Any]:
    level = inc["threat_level"]
    closed = inc["status"] == "closed"
    activity = (3, "Close") if closed else (2, "Update") if inc["alerts"] > 1 else (1, "Create")
    first, last = _ms(inc["first_seen"]), _ms(inc["last_seen"])
    doc = _ocsf_base(level, last, activity, inc["incident_id"], inc["tenant_id"])
    if closed:
        # Closed by a suppression rule added later: its alerts are fine, not resolved.
        doc["status_id"], doc["status"] = (3, "Suppressed") if inc.get("closed_by") else (
            4, "Resolved")
    field, value = inc["entity"]["field"], inc["entity"]["value"]
    doc["finding_info"] = {
        "uid": inc["incident_id"],
        "title": f"{inc['alerts']} network anomalies about {field} {value}",
        "types": ["Network Anomaly", "Incident"],
        "first_seen_time": first,
        "last_seen_time": last,
    }
    doc["count"] = inc["alerts"]
    doc["start_time"], doc["end_time"] = first, last
    doc["message"] = (f"{inc['status']} incident for tenant {inc['tenant_id']}: "
                      f"{inc['alerts']} alerts about {field} {value}")
    if field in ("src_ip", "dst_ip"):
        side = "src_endpoint" if field == "src_ip" else "dst_endpoint"
        doc["evidences"] = [{side: {"ip": value}}]
        doc["observables"] = [{"name": f"{side}.ip", "type_id": 2, "type": "IP Address",
                               "value": value}]
    doc["unmapped"] = {"incident": inc}
    return doc


def ocsf_entity_alert(rec: dict[str, Any]) -> dict[str, Any]:
    """An entity alert as an OCSF Detection Finding: Create when raised, Update after."""
    level = rec["threat_level"]
    activity = {"raised": (1, "Create"), "closed": (3, "Close")}.get(rec["status"],
                                                                    (2, "Update"))
    when = _ms(rec["detected_at"])
    doc = _ocsf_base(level, when, activity, rec["entity_alert_id"], rec["tenant_id"])
    if rec["status"] == "closed":
        doc["status_id"], doc["status"] = 3, "Suppressed"
    doc["finding_info"] = {
        "uid": rec["entity_alert_id"],
        "title": f"{rec['by']} {rec['entity']} at risk {rec['risk']:g}",
        "types": ["Network Anomaly", "Entity Risk"],
        "last_seen_time": when,
        "related_events": [{"uid": uid} for uid in dict.fromkeys(
            [*rec.get("alert_ids", ()), rec["alert_id"]])],
    }
    if isinstance(rec.get("first_seen"), int | float) and isinstance(rec.get("last_seen"),
                                                                     int | float):
        doc["finding_info"]["first_seen_time"] = int(rec["first_seen"] * 1000)
        doc["finding_info"]["last_seen_time"] = int(rec["last_seen"] * 1000)
    doc["message"] = _entity_message(rec)
    if rec["by"] in ("src_ip", "dst_ip"):
        side = "src_endpoint" if rec["by"] == "src_ip" else "dst_endpoint"
        doc["evidences"] = [{side: {"ip": rec["entity"]}}]
        doc["observables"] = [{"name": f"{side}.ip", "type_id": 2, "type": "IP Address",
                               "value": rec["entity"]}]
    doc["unmapped"] = {"entity_alert": rec}
    return doc


# ---- batch entry points ----------------------------------------------------------------


def format_alerts(fmt: str, alerts: Sequence[bytes], rows: Sequence[int], source: Any
                  ) -> tuple[list[bytes | None], dict[int, str]]:
    """The batch's native alert bytes in ``fmt`` (native: unchanged), and why any could
    not be written (row -> error; its value is None): whatever an event carries, a failure
    stays that event's, never the batch's."""
    if fmt == "native" or not alerts:
        return list(alerts), {}
    build = ecs_alert if fmt == "ecs" else ocsf_alert
    flows = flow_fields(source, list(rows))
    out: list[bytes | None] = []
    failed: dict[int, str] = {}
    for row, a, f in zip(rows, alerts, flows, strict=True):
        try:
            out.append(orjson.dumps(build(orjson.loads(a), f)))
        except (TypeError, ValueError, OverflowError, KeyError) as e:
            out.append(None)
            failed[row] = f"{fmt}: {type(e).__name__}: {e}"[:300]
    return out, failed


def format_incident(fmt: str, record: bytes) -> bytes:
    """One native incident record in ``fmt``."""
    if fmt == "native":
        return record
    build = ecs_incident if fmt == "ecs" else ocsf_incident
    return orjson.dumps(build(orjson.loads(record)))


def format_entity_alert(fmt: str, record: bytes) -> bytes:
    """One native entity alert record in ``fmt``."""
    if fmt == "native":
        return record
    build = ecs_entity_alert if fmt == "ecs" else ocsf_entity_alert
    return orjson.dumps(build(orjson.loads(record)))
