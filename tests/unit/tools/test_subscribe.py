"""What ``stream alerts`` makes of a record: incidents and entity alerts in ECS or OCSF are
read in their native form, so they render as the native ones do."""

from __future__ import annotations

import orjson

from stream.outcomes.formats import format_entity_alert, format_incident
from stream.tools.subscribe import is_entity_alert, is_incident, native

INCIDENT = {"incident_id": "inc-1", "tenant_id": "acme", "status": "open",
            "threat_level": "high", "entity": {"field": "src_ip", "value": "10.0.0.9"},
            "first_seen": "2026-12-07T10:00:00+00:00", "last_seen": "2026-12-07T10:05:00+00:00",
            "alerts": 3, "by_level": {"high": 3}, "min_score": -0.4, "features": {},
            "alert_ids": ["f/0/1"], "models": ["m/1"]}
ENTITY = {"entity_alert_id": "acme/src_ip=10.0.0.9", "tenant_id": "acme", "by": "src_ip",
          "entity": "10.0.0.9", "status": "raised", "risk": 19.9, "threshold": 12.0,
          "alert_id": "f/0/2", "threat_level": "critical", "event_time": 10.0,
          "detected_at": "2026-12-07T10:05:00+00:00"}


def test_incidents_and_entity_alerts_in_any_format_read_as_their_native_records() -> None:
    for fmt in ("native", "ecs", "ocsf"):
        inc = native(orjson.loads(format_incident(fmt, orjson.dumps(INCIDENT))))
        ent = native(orjson.loads(format_entity_alert(fmt, orjson.dumps(ENTITY))))
        assert inc == INCIDENT and is_incident(inc) and not is_entity_alert(inc)
        assert ent == ENTITY and is_entity_alert(ent) and not is_incident(ent)


def test_anything_else_is_left_as_it_is() -> None:
    alert = {"alert_id": "f/0/1", "stream": {"anomaly_score": -0.3, "event": {}}}
    assert native(alert) is alert and native([1, 2]) == [1, 2] and native("x") == "x"
