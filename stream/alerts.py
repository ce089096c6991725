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

from collections.abc import Sequence
from datetime import UTC, datetime

import numpy as np
import orjson

from stream.scoring import LEVEL_NAMES

_LEVEL_BYTES = [f'"{name}"'.encode() for name in LEVEL_NAMES]
# One %-format per alert: a single C call instead of joining a dozen pieces. The
# topic (Kafka names are [a-zA-Z0-9._-]) and the tenant (validated by the decoder)
# need no JSON escaping; the score is a finite float whose repr is valid JSON.
_TEMPLATE = (
    b'{"alert_id":"%b/%d/%d","tenant_id":"%b","threat_level":%b,"anomaly_score":%b,'
    b'"is_anomaly":%b,"model":%b,"source":{"topic":"%b","partition":%d,"offset":%d},'
    b'"detected_at":"%b","event":%b}'
)


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
    t = topic.encode()
    return _TEMPLATE % (
        t,
        partition,
        offset,
        tenant.encode(),
        _LEVEL_BYTES[level],
        repr(score).encode(),
        b"true" if score < 0 else b"false",
        model,
        t,
        partition,
        offset,
        detected_at.encode(),
        event,
    )


def encode_alerts(
    *,
    topic: str,
    rows: np.ndarray,
    partitions: np.ndarray,
    offsets: np.ndarray,
    tenants: Sequence[str],
    levels: np.ndarray,
    scores: np.ndarray,
    model_index: np.ndarray,
    models: Sequence[bytes],
    detected_at: str,
    events: Sequence[bytes | None],
) -> list[bytes]:
    """The alerts of ``rows`` of a batch (arrays are per batch row; ``models`` per model).

    Same bytes as ``encode_alert`` row by row; the per-batch constants are encoded once.
    """
    if len(rows) == 0:
        return []
    t = topic.encode()
    when = detected_at.encode()
    level_bytes = _LEVEL_BYTES
    template = _TEMPLATE
    return [
        template
        % (
            t,
            p,
            o,
            tenants[i].encode(),
            level_bytes[lv],
            repr(sc).encode(),
            b"true" if sc < 0 else b"false",
            models[mi],
            t,
            p,
            o,
            when,
            events[i],
        )
        for i, p, o, lv, sc, mi in zip(
            rows.tolist(),
            partitions[rows].tolist(),
            offsets[rows].tolist(),
            levels[rows].tolist(),
            scores[rows].tolist(),
            model_index[rows].tolist(),
            strict=True,
        )
    ]
