"""``stream alerts``: read the alert topic as a subscriber would, filter, print.

Readable table rows (time, tenant, level, score, src -> dst, model version,
the most unusual input and how far it is from the training baseline, and
the incident the alert joined) or JSON lines for piping. Without
``--follow`` it reads up to the end of the topic as it is when the command
starts, then exits.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Message, TopicPartition

from stream.kafka.clients import headers_of, new_consumer, position, value_of
from stream.outcomes.records import LEVEL_CODES

LEVEL_STYLE = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "dim"}


def read_messages(
    bootstrap: str,
    topic: str,
    *,
    follow: bool = False,
    from_beginning: bool = False,
    group_id: str | None = None,
    extra: dict[str, Any] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Iterator[Message]:
    """Records of ``topic`` (every partition) up to its end, or on and on with ``follow``."""
    conf = {
        "bootstrap.servers": bootstrap,
        # A throwaway group: reading never moves anyone's committed offsets.
        "group.id": group_id or f"stream-reader-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        **(extra or {}),
    }
    c = new_consumer(conf)
    try:
        md = c.list_topics(topic, timeout=10)
        if topic not in md.topics or md.topics[topic].error is not None:
            raise RuntimeError(f"topic {topic!r} does not exist")
        parts = sorted(md.topics[topic].partitions)
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        c.assign([TopicPartition(topic, p, start) for p in parts])
        next_offset: dict[int, int] = {}
        idle_rounds = 0
        while not should_stop():
            msgs = c.consume(1000, 0.5)
            for m in msgs:
                if m.error():
                    continue
                partition, offset = position(m)
                next_offset[partition] = offset + 1
                yield m
            if msgs or follow:
                idle_rounds = 0
                continue
            idle_rounds += 1
            # Caught up? The broker's high watermark arrives with fetched data; a partition
            # never fetched from reports a negative one, and for those an idle round suffices.
            highs = [
                c.get_watermark_offsets(TopicPartition(topic, p), cached=True)[1] for p in parts
            ]
            unknown = any(h < 0 for h in highs)
            # The fetch position, not the last record read: a transactional topic ends in
            # a commit marker, which takes an offset but is never handed out.
            at = {tp.partition: tp.offset for tp in c.position(
                [TopicPartition(topic, p) for p in parts])}
            caught_up = all(h <= max(next_offset.get(p, 0), at.get(p, 0))
                            for p, h in zip(parts, highs, strict=True))
            if caught_up and idle_rounds >= (3 if unknown else 1):
                return
    finally:
        c.close()


def read_alerts(bootstrap: str, topic: str, **kw: Any) -> Iterator[dict[str, Any]]:
    """Alerts on ``topic`` as dicts (``kw``: as ``read_messages``); undecodable records are
    skipped with a stub alert."""
    try:
        for m in read_messages(bootstrap, topic, **kw):
            try:
                alert = native(orjson.loads(value_of(m)))
            except orjson.JSONDecodeError:
                alert = {"alert_id": f"{topic}/{m.partition()}/{m.offset()}", "invalid": True}
            yield alert
    except RuntimeError as e:
        if "does not exist" in str(e):
            raise RuntimeError(f"alert topic {topic!r} does not exist") from None
        raise


def native(rec: Any) -> Any:
    """A record in its native form: an incident or entity alert in ECS or OCSF carries its
    native record whole (``stream.incident``, ``unmapped.entity_alert``, ...)."""
    if isinstance(rec, dict):
        for outer in ("stream", "unmapped"):
            inner = rec.get(outer)
            if isinstance(inner, dict):
                for kind in ("incident", "entity_alert"):
                    if isinstance(inner.get(kind), dict):
                        return inner[kind]
    return rec


def matches(alert: dict[str, Any], tenant: str | None, min_level: str) -> bool:
    if tenant is not None and alert.get("tenant_id") != tenant:
        return False
    return LEVEL_CODES.get(str(alert.get("threat_level")), -1) >= LEVEL_CODES[min_level]


def row(alert: dict[str, Any]) -> list[str]:
    ev = alert.get("event") or {}
    src = f"{ev.get('src_ip', '?')}:{ev.get('src_port', '')}".rstrip(":")
    dst = f"{ev.get('dst_ip', '?')}:{ev.get('dst_port', '')}".rstrip(":")
    model = alert.get("model") or {}
    score = alert.get("anomaly_score")
    ex = alert.get("explanation") or []
    why = f"{ex[0]['feature']} {ex[0]['deviation']:+.1f}" if ex else ""
    return [
        str(alert.get("detected_at", "")),
        str(alert.get("tenant_id", "")),
        str(alert.get("threat_level", "")),
        f"{score:+.4f}" if isinstance(score, float) else str(score),
        f"{src} -> {dst}",
        f"v{model.get('version', '?')}",
        why,
        str(alert.get("incident_id", ""))[:12],
    ]


def is_incident(rec: dict[str, Any]) -> bool:
    """An incident record (``--incident-topic``) rather than an alert."""
    return "status" in rec and "alert_id" not in rec and "incident_id" in rec


def is_entity_alert(rec: dict[str, Any]) -> bool:
    """An entity alert record (``--entity-alert-topic``, ``stream.outcomes.risk``)."""
    return "entity_alert_id" in rec and "risk" in rec


def entity_row(ent: dict[str, Any]) -> list[str]:
    """An entity alert as a table row: its last alert's event time, tenant, level, risk,
    entity, status, the alert that last added to it, its id."""
    risk = ent.get("risk")
    when = ent.get("event_time")
    return [
        (datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")
         if isinstance(when, int | float) and math.isfinite(when) else str(when)),
        str(ent.get("tenant_id", "")),
        str(ent.get("threat_level", "")),
        f"{risk:.2f}" if isinstance(risk, int | float) else str(risk),
        f"{ent.get('by', '?')}={ent.get('entity', '?')}",
        str(ent.get("status", "")),
        str(ent.get("alert_id", "")),
    ]


def incident_row(inc: dict[str, Any]) -> list[str]:
    """An incident as a table row: last seen, tenant, level, lowest score, entity, status,
    alerts, the leading feature, its id."""
    entity = inc.get("entity") or {}
    score = inc.get("min_anomaly_score")
    top = inc.get("top_features") or []
    return [
        str(inc.get("last_seen", "")),
        str(inc.get("tenant_id", "")),
        str(inc.get("threat_level", "")),
        f"{score:+.4f}" if isinstance(score, float) else str(score),
        f"{entity.get('field', '?')}={entity.get('value', '?')}",
        str(inc.get("status", "")),
        str(inc.get("alerts", "")),
        f"{top[0]['feature']} x{top[0]['alerts']}" if top else "",
        str(inc.get("incident_id", ""))[:12],
    ]


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {
    c: f"\\u{c:04x}" for c in range(0x80, 0xA0)}


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters (escape sequences, carriage
    returns, bells) written as ``\\xNN`` rather than obeyed."""
    return text.translate(_CONTROL)


def dead_letter_row(m: Message) -> dict[str, Any]:
    """A dead-letter record as a row: its reason, detail, source and a preview of its bytes
    (control characters escaped: the bytes are whatever a sender put there)."""
    h = {k: printable(v.decode("utf-8", "replace")) for k, v in headers_of(m)
         if v is not None}
    value = m.value() or b""
    preview = printable(value[:80].decode("utf-8", "replace"))
    return {
        "reason": h.get("reason", "?"),
        "detail": h.get("detail", ""),
        "source": f"{h.get('source.topic', '?')}/{h.get('source.partition', '?')}/"
                  f"{h.get('source.offset', '?')}",
        "bytes": len(value),
        "preview": preview + ("..." if len(value) > 80 else ""),
        "dead_letter": f"{m.topic()}/{m.partition()}/{m.offset()}",
    }
