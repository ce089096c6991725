"""What becomes of a scored or rejected event: threat levels, alert and dead-letter records.

One home for the rules every path shares (the consumer, ``stream score``,
``stream evaluate``, the design note's API and the benchmarks):

- **Levels.** Three cut points per model; one vectorized ``searchsorted``:
  score < t0 -> critical, < t1 -> high, < t2 -> medium, else low.
  ``is_anomaly`` is ``score < 0`` (what IsolationForest's ``predict`` calls an
  outlier), whatever the level.
- **Alerts.** An alert is built by splicing the event's original bytes into a
  small JSON envelope, so passthrough fields are never decoded and re-encoded.
  Its ``alert_id`` is derived from the source topic, partition and offset: a
  re-delivered alert carries the same id and subscribers can de-duplicate.
- **Explanations.** Alerts at ``ACTIONABLE_LEVEL`` (medium) or above carry the
  top 3 inputs furthest from the model's training baseline (``stream.scoring.baseline``);
  ``low`` records (``--min-level low``) carry none, which keeps that firehose cheap.
- **Dead letters.** The original bytes and key, with the reason, its detail and
  the source position; on Kafka as headers, in files as one JSON object with
  the same field names (``dead_letter_json``).

Alert schema (one JSON object per message, keyed by ``tenant_id``)::

    {"alert_id": "flows/0/42", "tenant_id": "acme", "threat_level": "high",
     "anomaly_score": -0.31, "is_anomaly": true,
     "model": {"name": "isolation_forest_anomaly_detector_acme", "version": "3"},
     "explanation": [{"feature": "log_bytes", "value": 19.1, "baseline": 9.8,
                      "spread": 1.2, "deviation": 7.75}, ...],
     "incident_id": "5d1c...",  (with --incident-topic)
     "source": {"topic": "flows", "partition": 0, "offset": 42},
     "detected_at": "2026-11-27T02:15:12.345Z", "event": {...original event...}}
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import orjson

from stream.config import LEVELS

LEVEL_NAMES: tuple[str, ...] = LEVELS
LOW, MEDIUM, HIGH, CRITICAL = 0, 1, 2, 3
LEVEL_CODES: dict[str, int] = {name: i for i, name in enumerate(LEVEL_NAMES)}
#: Alerts from this level up carry an explanation (and join incidents).
ACTIONABLE_LEVEL = MEDIUM
def is_anomaly(scores: np.ndarray) -> np.ndarray:
    """True where the score is an outlier by IsolationForest's own rule (score < 0)."""
    return np.asarray(scores) < 0


# ---- alerts ------------------------------------------------------------------------

_LEVEL_BYTES = [f'"{name}"'.encode() for name in LEVEL_NAMES]
# One %-format per alert: a single C call instead of joining a dozen pieces. The
# topic (Kafka names are [a-zA-Z0-9._-]) and the tenant (validated by the decoder)
# need no JSON escaping; the score is a finite float whose repr is valid JSON.
_TEMPLATE = (
    b'{"alert_id":"%b/%d/%d","tenant_id":"%b","threat_level":%b,"anomaly_score":%b,'
    b'"is_anomaly":%b,"model":%b%b,"source":{"topic":"%b","partition":%d,"offset":%d},'
    b'"detected_at":"%b","event":%b}'
)


def explanation_member(
    explanation: list[dict[str, object]] | None, incident: str | None = None
) -> bytes:
    """``,"explanation":[...]`` and ``,"incident_id":"..."`` for the alert envelope, or
    nothing."""
    out = b""
    if explanation:
        out = b',"explanation":' + orjson.dumps(explanation)
    if incident:
        out += b',"incident_id":"' + incident.encode() + b'"'
    return out


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
    explanation: list[dict[str, object]] | None = None,
) -> bytes:
    """One alert's bytes (the benchmark's per-event baseline uses it; batches use
    ``encode_alerts``). ``tenant`` is pre-validated ([A-Za-z0-9_.-]) and needs no escaping."""
    t = orjson.dumps(topic)[1:-1]  # escaped: a file name can hold a quote
    return _TEMPLATE % (
        t,
        partition,
        offset,
        tenant.encode(),
        _LEVEL_BYTES[level],
        repr(score).encode(),
        b"true" if score < 0 else b"false",
        model,
        explanation_member(explanation),
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
    explanations: Mapping[int, list[dict[str, object]]] | None = None,
    incidents: Mapping[int, str] | None = None,
    risks: Mapping[int, bytes] | None = None,
) -> list[bytes]:
    """The alerts of ``rows`` of a batch (arrays are per batch row; ``models`` per model).

    Same bytes as ``encode_alert`` row by row; the per-batch constants are encoded once.
    ``explanations`` maps a batch row to its explanation (rows without one have none).
    """
    if len(rows) == 0:
        return []
    ex = explanations or {}
    inc = incidents or {}
    rk = risks or {}
    # The topic, escaped as a JSON string's contents: a file name (stream score) can hold
    # any character, a quote included.
    t = orjson.dumps(topic)[1:-1]
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
            explanation_member(ex.get(i), inc.get(i)) + rk.get(i, b""),
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


# ---- dead letters ------------------------------------------------------------------

Headers = list[tuple[str, bytes]]


def dead_letter_headers(
    reason: str, detail: str, topic: str, partition: int, offset: int
) -> Headers:
    """Kafka headers of a dead-letter record, after the original message's own headers;
    the value and key are the original ones."""
    return [
        ("reason", reason.encode()),
        ("detail", detail.encode()),
        ("source.topic", topic.encode()),
        ("source.partition", str(partition).encode()),
        ("source.offset", str(offset).encode()),
    ]


#: Room kept for a dead letter's key and headers beside its value.
HEADROOM: Final = 65536
#: Header of a dead letter whose value was cut to fit (``dead_letter``).
TRUNCATED: Final = "stream.truncated"


def dlq_value_limit(settings: Any) -> int:
    """The largest dead-letter value the producer of ``settings`` sends with room for its
    key and headers (``message.max.bytes``, as set or as ``stream.kafka.clients`` sets it)."""
    from stream.kafka.clients import producer_config

    size = int(producer_config(settings).get("message.max.bytes", 1_000_000))
    return max(1024, size - HEADROOM)


def dead_letter(reason: str, detail: str, m: Any, limit: int
                ) -> tuple[bytes | None, bytes | None, Headers]:
    """A consumed message's dead-letter record: (value, key, headers), within ``limit``
    bytes for the value and ``HEADROOM`` for the key and headers together.

    The original value, key and headers are kept as they came, unless they are larger:
    then the value is cut to ``limit`` bytes (headers ``stream.original.size`` and
    ``stream.original.sha256`` say what it was, ``stream.truncated`` that it was cut), and
    a key or original headers past the headroom are left out (``stream.original.key_size``,
    ``stream.original.headers_dropped``). A record the producer refused for its size would
    fail its batch again and again, holding the partition back.
    """
    value, key = m.value(), m.key()
    original = list(m.headers() or [])
    cut: Headers = []
    if value is not None and len(value) > limit:
        cut += [("stream.original.size", str(len(value)).encode()),
                ("stream.original.sha256", hashlib.sha256(value).hexdigest().encode()),
                (TRUNCATED, b"true")]
        value = value[:limit]
    if key is not None and len(key) > HEADROOM // 2:
        cut.append(("stream.original.key_size", str(len(key)).encode()))
        key = None
    if sum(len(k) + len(v or b"") for k, v in original) > HEADROOM // 4:
        cut.append(("stream.original.headers_dropped", str(len(original)).encode()))
        original = []
    detail = detail if len(detail) <= 1000 else detail[:1000]
    # The dead-letter headers last: a redrive takes what comes before them as the original.
    return value, key, [*original, *cut, *dead_letter_headers(reason, detail, m.topic(),
                                                              m.partition(), m.offset())]


def dead_letter_json(
    reason: str,
    detail: str,
    topic: str,
    partition: int,
    offset: int,
    value: bytes | None,
    key: bytes | None = None,
) -> bytes:
    """A dead-letter record for a file: the headers' fields, then the original bytes as text."""
    doc: dict[str, str | None] = {
        name: raw.decode() for name, raw in
        dead_letter_headers(reason, detail, topic, partition, offset)}
    doc["key"] = None if key is None else key.decode("utf-8", "replace")
    doc["value"] = (value or b"").decode("utf-8", "replace")
    return orjson.dumps(doc)
