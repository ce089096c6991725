"""The alert record and its encoding.

An alert is built by splicing the event's original bytes into a small JSON
envelope, so passthrough fields are never decoded and re-encoded. Its
``alert_id`` is derived from the source topic, partition and offset: a
re-delivered alert carries the same id and subscribers can de-duplicate.

Schema (one JSON object per message, keyed by ``tenant_id``)::

    {"alert_id": "flows/0/42", "tenant_id": "acme", "threat_level": "high",
     "anomaly_score": -0.31, "is_anomaly": true,
     "model": {"name": "isolation_forest_anomaly_detector_acme", "version": "3"},
     "source": {"topic": "flows", "partition": 0, "offset": 42},
     "detected_at": "2026-11-27T02:15:12.345Z", "event": {...original event...}}
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from stream.scoring import LEVEL_NAMES

_LEVEL_BYTES = [f'"{name}"'.encode() for name in LEVEL_NAMES]


def alert_id(topic: str, partition: int, offset: int) -> str:
    return f"{topic}/{partition}/{offset}"


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def model_ref(name: str, version: str) -> bytes:
    """The encoded ``"model"`` member, computed once per model version."""
    return orjson.dumps({"name": name, "version": version})


def encode_alert(
    *,
    topic: str,
    partition: int,
    offset: int,
    tenant: str,
    level: int,
    score: float,
    model: bytes,
    detected_at: str,
    event: bytes,
) -> bytes:
    """One alert's bytes. ``tenant`` is pre-validated ([A-Za-z0-9_.-]) and needs no escaping."""
    return b"".join(
        (
            b'{"alert_id":"',
            f"{topic}/{partition}/{offset}".encode(),
            b'","tenant_id":"',
            tenant.encode(),
            b'","threat_level":',
            _LEVEL_BYTES[level],
            b',"anomaly_score":',
            repr(score).encode(),
            b',"is_anomaly":',
            b"true" if score < 0 else b"false",
            b',"model":',
            model,
            b',"source":{"topic":"',
            topic.encode(),
            b'","partition":',
            str(partition).encode(),
            b',"offset":',
            str(offset).encode(),
            b'},"detected_at":"',
            detected_at.encode(),
            b'","event":',
            event,
            b"}",
        )
    )
