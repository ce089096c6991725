"""Suppression rules: what a rule is, which alerts it matches, and what a matched alert
does not do in a batch (publish, add risk, join an incident), counted per rule."""

from __future__ import annotations

import ipaddress
import time
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.consumer.batch import process_batch
from stream.features import RecordColumns, WindowStore
from stream.outcomes.incidents import Incidents
from stream.outcomes.risk import Risk
from stream.outcomes.suppress import Rule, RuleError, RuleSet
from stream.registry import LoadedModel
from stream.scoring.thresholds import DEFAULT_THRESHOLDS


def rule(**kw: Any) -> Rule:
    return Rule.from_dict({"id": kw.pop("id", "r1"), "reason": "fine", "author": "ana", **kw})


@pytest.mark.parametrize(("doc", "says"), [
    ({"src": "10.0.0.0/33"}, "src '10.0.0.0/33' is not an address or CIDR block"),
    ({"dst": "example.org"}, "dst 'example.org' is not an address or CIDR block"),
    ({"port": "70000"}, "is not a port or a range"),
    ({"port": "90-80"}, "is not a port or a range"),
    ({"tenant": "bad tenant!"}, "is not a tenant id"),
    ({"reason": ""}, "a reason is required"),
    ({"author": None}, "an author is required"),
    ({"colour": "red"}, "unknown members ['colour']"),
    ({"fields": {"service": ["a"]}}, "fields must map field names to values"),
    ({"expires": "next tuesday"}, "is not an ISO 8601 time"),
    ({"id": "has space"}, "1-64 letters"),
])
def test_a_rule_that_cannot_be_used_is_refused_with_the_reason(doc: dict[str, Any],
                                                               says: str) -> None:
    with pytest.raises(RuleError) as e:
        rule(**doc)
    assert says in str(e.value)


def test_a_rule_round_trips_through_its_record() -> None:
    r = rule(tenant="acme", src="10.1.2.3", dst="192.168.0.0/16", port="8000-8100",
             proto="TCP", feature="bytes_out", fields={"service": "rsync", "vlan": 7},
             expires="2030-01-01T00:00:00Z")
    assert Rule.from_dict(orjson.loads(orjson.dumps(r.to_dict()))) == r
    assert r.proto == "tcp" and r.port == (8000, 8100) and r.fields == (
        ("service", "rsync"), ("vlan", "7"))
    assert not r.matches_everything and rule(tenant="acme").matches_everything
    assert r.active(time.time()) and not r.active(1893456000.0)


EVENTS = [
    {"src_ip": "10.0.0.5", "dst_ip": "10.9.1.1", "dst_port": 873, "protocol": "tcp",
     "service": "rsync"},
    {"src_ip": "10.0.0.5", "dst_ip": "10.9.1.1", "dst_port": "873", "protocol": "TCP"},
    {"src_ip": "10.0.0.6", "dst_ip": "8.8.8.8", "dst_port": 53, "protocol": "udp"},
    {"src_ip": "not an ip", "dst_ip": "10.9.1.1", "dst_port": 873, "protocol": "tcp"},
    {"dst_ip": "10.9.1.1", "protocol": "icmp"},  # no ports, no source: rules on them miss
]


def match(rules: list[Rule], tenants: list[str] | None = None,
          leading: dict[int, str] | None = None, now: float | None = None) -> dict[int, str]:
    lead = [(leading or {}).get(k) for k in range(len(EVENTS))]
    return RuleSet(rules).match(tenants or ["acme"] * len(EVENTS), RecordColumns(EVENTS),
                                lead, now)


def test_every_criterion_a_rule_names_must_hold() -> None:
    assert match([rule(dst="10.9.0.0/16", port="873")]) == {0: "r1", 1: "r1", 3: "r1"}
    assert match([rule(src="10.0.0.0/24", proto="tcp")]) == {0: "r1", 1: "r1"}
    assert match([rule(port="50-60")]) == {2: "r1"}
    assert match([rule(fields={"service": "rsync"})]) == {0: "r1"}
    assert match([rule(proto="icmp", dst="10.9.1.1")]) == {4: "r1"}
    assert match([rule(src="10.0.0.5", port="22")]) == {}


def test_tenants_leading_features_expiry_and_the_first_rule_that_matches() -> None:
    tenants = ["acme", "globex", "acme", "globex", "acme"]
    acme_only = rule(id="acme-dns", tenant="acme", port="53")
    assert match([acme_only], tenants) == {2: "acme-dns"}
    assert match([acme_only], ["globex"] * 5) == {}
    assert match([rule(feature="bytes_out")], leading={0: "bytes_out", 1: "dur"}) == {0: "r1"}
    expired = rule(port="873", expires=time.time() - 1)
    assert match([expired]) == {}
    assert match([expired], now=time.time() - 3600) == {0: "r1", 1: "r1", 3: "r1"}
    # A tenant's own rules are tried before the rules for every tenant.
    both = [rule(id="all", port="873"), rule(id="mine", tenant="acme", dst="10.9.1.1")]
    assert match(both) == {0: "mine", 1: "mine", 3: "mine", 4: "mine"}


class ByBytes:
    """score = 0.25 - bytes / 1000: 300 medium, 600 high, 900 critical."""

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return 0.25 - X[:, 0] / 1000.0


MODEL = LoadedModel("m", "1", ("bytes_transferred",), np.asarray(DEFAULT_THRESHOLDS),
                    ByBytes())


def _batch(rules: RuleSet, **kw: Any) -> Any:
    values = [orjson.dumps({"tenant_id": "acme", "timestamp": 100.0 + i, "src_ip": src,
                            "dst_ip": "10.9.1.1", "dst_port": port,
                            "bytes_transferred": 900})
              for i, (src, port) in enumerate([("10.0.0.5", 873), ("10.0.0.5", 873),
                                               ("10.0.0.7", 22)])]
    n = len(values)
    return process_batch(values, lambda ts: [MODEL for _ in ts], topic="f",
                         partitions=np.zeros(n, dtype=np.int64),
                         offsets=np.arange(n, dtype=np.int64), rules=rules, **kw)


def test_a_suppressed_alert_is_not_published_adds_no_risk_and_joins_no_incident() -> None:
    rules = RuleSet([rule(id="backup", dst="10.9.0.0/16", port="873")])
    incidents = Incidents(window=300, idle=60)
    store = WindowStore()
    out = _batch(rules, store=store, risk=Risk("src_ip", 600.0, 12.0), incidents=incidents)
    alerts = [orjson.loads(a) for a in out.alerts]
    assert [a["source"]["offset"] for a in alerts] == [2]
    assert out.suppressed == {0: "backup", 1: "backup"}
    # Only the unsuppressed critical counts: one alert's points, one incident.
    assert alerts[0]["entity_risk"]["entity"] == "10.0.0.7"
    assert [orjson.loads(v)["entity"]["value"] for _k, v in out.incident_records] == [
        "10.0.0.7"]
    # Without rules the same batch alerts three times.
    assert len(_batch(RuleSet()).alerts) == 3


def test_emit_suppressed_publishes_them_marked_with_their_rule() -> None:
    rules = RuleSet([rule(id="backup", port="873")])
    out = _batch(rules, store=WindowStore(), risk=Risk("src_ip", 600.0, 12.0),
                 emit_suppressed=True)
    alerts = {orjson.loads(a)["source"]["offset"]: orjson.loads(a) for a in out.alerts}
    assert sorted(alerts) == [0, 1, 2] and out.suppressed_emitted
    assert alerts[0]["suppressed_by"] == alerts[1]["suppressed_by"] == "backup"
    assert "entity_risk" not in alerts[0] and "suppressed_by" not in alerts[2]


def test_a_rule_added_later_closes_the_incidents_and_entity_alerts_it_covers_whole() -> None:
    """As Elastic's "close all alerts that match": a rule added while the consumer runs
    closes the open incidents and entity episodes every alert of which it covers (judged
    on their signatures: source, destination, port, protocol, leading feature), with a
    record that names it; one with other alerts too, or a rule on a field signatures do
    not keep, leaves them open. The next alerts are suppressed, as any rule's."""
    incidents = Incidents(window=300, idle=60)
    store = WindowStore()
    risk = Risk("src_ip", 600.0, 12.0)
    first = _batch(RuleSet(), store=store, risk=risk, incidents=incidents)
    incidents.commit()
    assert {orjson.loads(v)["entity"]["value"] for _k, v in first.incident_records} == {
        "10.0.0.5", "10.0.0.7"}
    # 10.0.0.5: two criticals to 10.9.1.1:873, an entity alert (20 > 12); 10.0.0.7: one.
    assert [orjson.loads(v)["entity"] for _k, v in first.entity_records] == ["10.0.0.5"]

    def later(closing: RuleSet, offset: int) -> Any:
        """A later batch of the same partition: one low alert of another host."""
        value = orjson.dumps({"tenant_id": "acme", "timestamp": 110.0 + offset,
                              "src_ip": "10.0.0.8", "dst_ip": "10.9.1.1", "dst_port": 53,
                              "bytes_transferred": 100})
        return process_batch([value], lambda ts: [MODEL for _ in ts], topic="f",
                             partitions=np.zeros(1, dtype=np.int64),
                             offsets=np.array([offset], dtype=np.int64), store=store,
                             risk=risk, incidents=incidents, closing=closing)

    kept = later(RuleSet([rule(id="svc", fields={"service": "rsync"})]), 3)
    assert kept.incident_records == [] and kept.entity_records == []

    closed = later(RuleSet([rule(id="backup", dst="10.9.0.0/16", port="873")]), 4)
    incidents.commit()
    inc = [orjson.loads(v) for _k, v in closed.incident_records]
    assert [(i["entity"]["value"], i["status"], i["closed_by"]) for i in inc] == [
        ("10.0.0.5", "closed", "backup")]
    assert list(incidents.open) == [("acme", "10.0.0.7")]  # its alert was on port 22
    ent = [orjson.loads(v) for _k, v in closed.entity_records]
    assert [(e["entity"], e["status"], e["closed_by"], e["alerts"]) for e in ent] == [
        ("10.0.0.5", "closed", "backup", 2)]
    from stream.outcomes.formats import format_entity_alert

    ocsf = orjson.loads(format_entity_alert("ocsf", closed.entity_records[0][1]))
    assert ocsf["activity_name"] == "Close" and ocsf["status"] == "Suppressed"


def _scan(rules: list[Rule], tenant: str, event: dict[str, Any], lead: str | None,
          now: float) -> str | None:
    """The first rule in force that holds for one event, by reading each rule in turn
    (the tenant's own, then everyone's): what ``RuleSet.match``'s index must agree with."""
    def addr(text: Any) -> Any:
        try:
            return ipaddress.ip_address(str(text))
        except ValueError:
            return None

    ordered = [r for r in rules if r.tenant == tenant] + [r for r in rules if r.tenant is None]
    for r in ordered:
        if not r.active(now):
            continue
        src, dst = addr(event.get("src_ip")), addr(event.get("dst_ip"))
        if r.src is not None and (src is None or src not in r.src):
            continue
        if r.dst is not None and (dst is None or dst not in r.dst):
            continue
        port = event.get("dst_port")
        if r.port is not None and (port is None or not r.port[0] <= float(port) <= r.port[1]):
            continue
        if r.proto is not None and str(event.get("protocol", "")).lower() != r.proto:
            continue
        if r.feature is not None and lead != r.feature:
            continue
        if any(str(event.get(f)) != v if event.get(f) is not None else True
               for f, v in r.fields):
            continue
        return r.id
    return None


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_the_indexed_match_finds_the_first_rule_a_scan_of_every_rule_finds(data: Any) -> None:
    now = 1_000_000.0
    tenants = ["acme", "globex", "initech"]
    ports = [22, 53, 873, 8080]
    docs = []
    for k in range(data.draw(st.integers(1, 25), label="rules")):
        d: dict[str, Any] = {"id": f"r{k}", "reason": "t", "author": "t"}
        tenant = data.draw(st.sampled_from([None, *tenants]))
        if tenant:
            d["tenant"] = tenant
        kinds = data.draw(st.sets(st.sampled_from(
            ["src", "dst", "port", "range", "proto", "feature", "field", "field2"]),
            min_size=1, max_size=3))
        if "src" in kinds:
            d["src"] = data.draw(st.sampled_from(["10.0.0.0/24", "10.0.1.0/24", "10.0.0.5"]))
        if "dst" in kinds:
            d["dst"] = data.draw(st.sampled_from(["192.168.0.0/16", "192.168.1.1"]))
        if "port" in kinds:
            d["port"] = str(data.draw(st.sampled_from(ports)))
        elif "range" in kinds:
            d["port"] = "50-900"
        if "proto" in kinds:
            d["proto"] = data.draw(st.sampled_from(["tcp", "udp"]))
        if "feature" in kinds:
            d["feature"] = data.draw(st.sampled_from(["rare_port", "log_bytes"]))
        fields = {}
        if "field" in kinds:
            fields["service"] = data.draw(st.sampled_from(["dns", "ssh"]))
        if "field2" in kinds:
            fields["conn_state"] = data.draw(st.sampled_from(["S0", "SF"]))
        if fields:
            d["fields"] = fields
        if data.draw(st.booleans()):
            d["expires"] = now + data.draw(st.sampled_from([-10, 10]))
        docs.append(d)
    rules = [Rule.from_dict(d) for d in docs]
    events, leads, who = [], [], []
    for _ in range(data.draw(st.integers(1, 30), label="alerts")):
        e: dict[str, Any] = {
            "src_ip": data.draw(st.sampled_from(["10.0.0.5", "10.0.1.9", "fe80::1", "bad"])),
            "dst_ip": data.draw(st.sampled_from(["192.168.1.1", "172.16.0.1"])),
            "protocol": data.draw(st.sampled_from(["TCP", "udp", "icmp"])),
            "service": data.draw(st.sampled_from(["dns", "ssh", "http"])),
            "conn_state": data.draw(st.sampled_from(["S0", "SF"])),
        }
        port = data.draw(st.sampled_from([None, *ports, 100]))
        if port is not None:
            e["dst_port"] = port
        events.append(e)
        leads.append(data.draw(st.sampled_from([None, "rare_port", "log_bytes"])))
        who.append(data.draw(st.sampled_from(tenants)))
    got = RuleSet(rules).match(who, RecordColumns(events), leads, now=now)
    want = {k: r for k in range(len(events))
            if (r := _scan(rules, who[k], events[k], leads[k], now)) is not None}
    assert got == want
