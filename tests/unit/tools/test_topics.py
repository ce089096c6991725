"""Reading and proposing for the tool's topics: ``stream alerts`` reads incidents and entity
alerts in ECS or OCSF in their native form, and ``stream feedback --suggest-rules``
proposes suppression rules from benign verdicts as commands ``stream suppress add``
takes."""

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


def test_benign_verdicts_propose_rules_and_a_true_positive_vetoes_its_group() -> None:
    import shlex

    from click.testing import CliRunner

    from stream.cli import main
    from stream.cli.topics import suppress_add, suppress_command
    from stream.tools.feedback import FeedbackBook, parse

    book = FeedbackBook()
    events = {"a1": ("10.9.1.1", 873), "a2": ("10.9.1.1", 873), "a3": ("8.8.8.8", 53),
              "a4": ("8.8.8.8", 53), "a5": ("203.0.113.7", 4444)}
    for aid, (dst, port) in events.items():
        book.add_alert({"alert_id": aid, "tenant_id": "acme", "threat_level": "high",
                        "event": {"dst_ip": dst, "dst_port": port, "protocol": "TCP"}})
    for aid, verdict in [("a1", "benign"), ("a2", "benign"), ("a3", "benign"),
                         ("a4", "true_positive"), ("a5", "false_positive")]:
        v = parse(orjson.dumps({"alert_id": aid, "verdict": verdict}))
        assert not isinstance(v, str) and book.add_verdict(v)
    rules = book.suggested_rules(now=0.0)
    assert [(r.tenant, str(r.dst), r.port, r.proto) for r in rules] == [
        ("acme", "10.9.1.1/32", (873, 873), "tcp")]
    assert rules[0].reason == "2 alerts judged benign (first a1)" and rules[0].expires == 30 * 86400
    # What --suggest-rules prints is a command stream suppress add takes as it is.
    line = suppress_command(rules[0])
    args = shlex.split(line)
    assert args[:3] == ["stream", "suppress", "add"]
    ctx = suppress_add.make_context("add", args[3:])
    assert (ctx.params["tenant"], ctx.params["dst"], ctx.params["port"], ctx.params["proto"],
            ctx.params["author"]) == ("acme", "10.9.1.1/32", "873", "tcp", "stream feedback")
    assert CliRunner().invoke(main, ["suppress", "add", "--help"]).exit_code == 0
