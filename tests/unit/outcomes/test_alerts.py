"""The alert record: schema, exact scores, the event spliced in byte for byte."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import orjson
import pytest

from stream.outcomes.records import alert_id, encode_alert, model_ref, utc_now_iso

EVENT = (b'{"tenant_id":"acme","bytes_transferred":48213,"packet_count":41,'
         b'"connection_duration":2.7,"note":"caf\xc3\xa9 \\u2713","nested":{"a":[1,2.5e-3]}}')


def _alert(**kw: object) -> bytes:
    args: dict[str, object] = {
        "topic": "flows", "partition": 2, "offset": 1841, "tenant": "acme", "level": 2,
        "score": -0.2874, "model": model_ref("isolation_forest_anomaly_detector_acme", "3"),
        "detected_at": "2026-11-27T02:15:12.412Z", "event": EVENT,
    }
    args.update(kw)
    return encode_alert(**args)  # type: ignore[arg-type]


def test_schema_and_values() -> None:
    a = orjson.loads(_alert())
    assert a == {
        "alert_id": "flows/2/1841",
        "tenant_id": "acme",
        "threat_level": "high",
        "anomaly_score": -0.2874,
        "is_anomaly": True,
        "model": {"name": "isolation_forest_anomaly_detector_acme", "version": "3"},
        "source": {"topic": "flows", "partition": 2, "offset": 1841},
        "detected_at": "2026-11-27T02:15:12.412Z",
        "event": orjson.loads(EVENT),
    }
    assert list(a) == ["alert_id", "tenant_id", "threat_level", "anomaly_score", "is_anomaly",
                       "model", "source", "detected_at", "event"]


def test_event_bytes_are_spliced_untouched() -> None:
    out = _alert()
    assert out.endswith(b',"event":' + EVENT + b"}")
    assert out.count(EVENT) == 1


@pytest.mark.parametrize(("level", "name"), [(0, "low"), (1, "medium"), (2, "high"),
                                             (3, "critical")])
def test_levels(level: int, name: str) -> None:
    assert orjson.loads(_alert(level=level))["threat_level"] == name


@pytest.mark.parametrize("score", [-0.2874, 0.0, -0.0, 0.1, -0.5000000000000001, 1e-17,
                                   -0.12345678901234568, 0.30000000000000004])
def test_scores_round_trip_exactly_and_is_anomaly_means_below_zero(score: float) -> None:
    a = orjson.loads(_alert(score=score))
    assert a["anomaly_score"] == score
    assert a["is_anomaly"] is (score < 0)


def test_alert_id_is_source_position() -> None:
    assert alert_id("flows", 0, 42) == "flows/0/42"
    a = orjson.loads(_alert(topic="flows.eu", partition=11, offset=10**12))
    assert a["alert_id"] == "flows.eu/11/1000000000000"
    assert a["source"] == {"topic": "flows.eu", "partition": 11, "offset": 10**12}


def test_model_ref_escapes_like_json() -> None:
    ref = model_ref('odd"name', "12")
    assert orjson.loads(ref) == {"name": 'odd"name', "version": "12"}


def test_utc_now_iso() -> None:
    s = utc_now_iso()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", s)
    t = datetime.fromisoformat(s.replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - t).total_seconds()) < 5
