"""The console's pages and guards over HTTP (a real server, no broker): a token for every
page, CSRF on every action, values from events as text, the queue's order and filters,
the store's bounds, and the rule "suppress similar" proposes."""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import orjson
import pytest

from stream.config import Settings
from stream.console import charts
from stream.console.app import COOKIE, _csrf, make_app
from stream.console.store import ConsoleStore
from tests.consoleutil import serving

TOKEN = "t0ken-for-the-tests-only"
EVIL = "<script>alert('x')</script>"


def _alert(i: int, src: str, level: str, score: float, **event: Any) -> dict[str, Any]:
    return {"alert_id": f"flows/0/{i}", "tenant_id": "acme", "threat_level": level,
            "anomaly_score": score, "incident_id": "inc1",
            "event": {"timestamp": 1700000000.0 + i, "src_ip": src, "dst_ip": "10.9.1.1",
                      "dst_port": 873, "protocol": "tcp", **event},
            "explanation": [{"feature": "rare_port", "value": 9.1, "baseline": 0.3,
                             "spread": 0.5, "deviation": 17.6, "tail": 3.0}]}


@pytest.fixture
def store() -> ConsoleStore:
    st = ConsoleStore(":memory:")
    for i in range(3):
        st.add_alert(_alert(i, "10.0.0.5", "high", -0.2 - i / 10, service=EVIL))
    st.add_incident({"incident_id": "inc1", "tenant_id": "acme", "status": "open",
                     "entity": {"field": "src_ip", "value": "10.0.0.5"}, "alerts": 3,
                     "threat_level": "high", "alert_ids": ["flows/0/0", "flows/0/1",
                                                           "flows/0/2"]})
    st.add_entity_alert({"entity_alert_id": "acme/src_ip=10.0.0.7", "tenant_id": "acme",
                         "by": "src_ip", "entity": "10.0.0.7", "status": "raised",
                         "risk": 25.0, "threshold": 12.0, "threat_level": "critical",
                         "alert_id": "flows/0/9", "alerts": 3, "alert_ids": ["flows/0/9"]})
    st.add_entity_alert({"entity_alert_id": "globex/src_ip=10.1.1.1", "tenant_id": "globex",
                         "by": "src_ip", "entity": "10.1.1.1", "status": "raised",
                         "risk": 13.0, "threshold": 12.0, "threat_level": "medium",
                         "alert_id": "flows/0/10", "alerts": 1})
    return st


def _get(url: str, token: str | None = TOKEN) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _post(url: str, form: dict[str, str], token: str = TOKEN) -> int:
    req = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(),
                                 method="POST")
    req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_every_page_and_action_needs_the_token_and_actions_the_csrf_token(
        store: ConsoleStore) -> None:
    with serving(make_app(store, Settings(), TOKEN)) as base:
        for path in ("/", "/api/queue", "/quality", "/item/incident/inc1",
                     "/static/console.js"):
            assert _get(base + path, token=None)[0] == 401, path
            assert _get(base + path, token="wrong-token-wrong-token")[0] == 401, path
        assert _get(base + "/login?token=nope", token=None)[0] == 401
        status, _body = _get(base + "/", token=TOKEN)
        assert status == 200
        # An action without the CSRF token, or with a wrong one: refused, nothing written.
        for form in ({"verdict": "false_positive"},
                     {"verdict": "false_positive", "csrf": "0" * 64}):
            assert _post(base + "/item/incident/inc1/verdict", form) == 403
        assert _post(base + "/suppress", {"src": "10.0.0.5", "reason": "r", "author": "a"}) \
            == 403
        assert _post(base + "/item/incident/inc1/assign", {"assignee": "ana"}) == 403
        assert store.item("incident", "inc1")["assignee"] is None
        # With it: the assignment is saved.
        assert _post(base + "/item/incident/inc1/assign",
                     {"assignee": "ana", "csrf": _csrf(TOKEN)}) == 200
        assert store.item("incident", "inc1")["assignee"] == "ana"
        # The login link sets an HttpOnly, SameSite=Strict cookie.
        req = urllib.request.Request(base + f"/login?token={TOKEN}")
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            opener.open(req, timeout=10)
        except urllib.error.HTTPError as e:
            cookie = e.headers["set-cookie"]
            assert e.code == 303 and cookie.startswith(f"{COOKIE}=")
            assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kw: Any) -> None:
        return None


def test_values_from_events_are_text_and_nothing_is_fetched_elsewhere(
        store: ConsoleStore) -> None:
    with serving(make_app(store, Settings(), TOKEN)) as base:
        status, page = _get(base + "/item/incident/inc1")
        assert status == 200
        assert EVIL not in page and "&lt;script&gt;alert(" in page
        assert "<svg" in page and 'class="alert"' in page and 'class="bar"' in page
        # Every script, style and picture is the console's own.
        for attr in ("src=", "href="):
            for part in page.split(attr)[1:]:
                url = part.split('"')[1]
                assert url.startswith("/") and not url.startswith("//"), url
        req = urllib.request.Request(base + "/")
        req.add_header("Authorization", f"Bearer {TOKEN}")
        with urllib.request.urlopen(req, timeout=10) as r:
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]


def test_the_queue_is_highest_risk_first_and_filters(store: ConsoleStore) -> None:
    with serving(make_app(store, Settings(), TOKEN)) as base:
        items = orjson.loads(_get(base + "/api/queue")[1])
        assert [i["entity"] for i in items] == ["src_ip=10.0.0.7", "src_ip=10.1.1.1",
                                                "src_ip=10.0.0.5"]
        assert [i["entity"] for i in orjson.loads(_get(base + "/api/queue?tenant=globex")[1])
                ] == ["src_ip=10.1.1.1"]
        assert [i["kind"] for i in orjson.loads(_get(base + "/api/queue?level=critical")[1])
                ] == ["entity"]
        assert orjson.loads(_get(base + "/api/queue?entity=10.0.0.5")[1])[0]["id"] == "inc1"
        assert len(orjson.loads(_get(base + "/api/queue?within=3600")[1])) == 3
        store.db.execute("UPDATE items SET updated = updated - 7200 WHERE id = 'inc1'")
        assert "inc1" not in {i["id"] for i in orjson.loads(
            _get(base + "/api/queue?within=3600")[1])}


def test_suppress_similar_proposes_the_entity_and_what_its_alerts_share(
        store: ConsoleStore) -> None:
    with serving(make_app(store, Settings(), TOKEN)) as base:
        status, page = _get(base + "/item/incident/inc1/suppress")
        assert status == 200
        for name, value in (("tenant", "acme"), ("src", "10.0.0.5"), ("port", "873"),
                            ("proto", "tcp"), ("feature", "rare_port")):
            assert f'name="{name}" value="{value}"' in page, name


def test_the_quality_page_draws_alert_and_entity_alert_rates(store: ConsoleStore) -> None:
    with serving(make_app(store, Settings(), TOKEN)) as base:
        status, page = _get(base + "/quality")
    assert status == 200
    rates, raised = page.split('id="rates"')[1], page.split('id="raised"')[1]
    assert 'class="rate"' in rates.split("</div>")[0]  # three alerts of acme
    assert 'class="rate"' in raised.split("</div>")[0]  # two entity alerts raised
    assert store.rates(table="raised").keys() == {"acme", "globex"}
    assert store.rates(table="alerts; DROP TABLE alerts").keys() == {"acme"}  # a name only


def test_the_store_keeps_within_its_age_and_size() -> None:
    st = ConsoleStore(":memory:", max_age=100.0, max_alerts=5)
    for i in range(8):
        st.add_alert(_alert(i, "10.0.0.5", "low", -0.1))
    assert st.prune() == 3
    assert st.db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == 5
    assert st.prune(now=1e12) == 5  # all older than 100 s by then
    st.add_alert({"alert_id": "x", "event": "not a dict", "anomaly_score": "NaN?"})
    assert st.db.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == 1


def test_drift_snapshots_are_kept_and_drawn_over_time(store: ConsoleStore) -> None:
    edges = [-0.1, 0.0, 0.1]
    for k, (s_psi, x_psi) in enumerate([(0.01, 0.02), (0.05, 0.3), (0.2, 0.6)]):
        store.add_drift({"type": "drift", "tenant_id": "acme", "model": "m", "version": "2",
                         "window": 1000, "at": time.time() - 300 + 60 * k,
                         "psi": {"score": s_psi, "bytes": x_psi, "pkts": 0.0,
                                 "a": 0.01, "b": 0.02, "c": 0.03},
                         "alert_rate": 0.01,
                         "scores": {"edges": edges, "live": [5, 10, 60, 25],
                                    "training": [0.1, 0.2, 0.4, 0.3]}})
    store.add_drift({"type": "drift", "tenant_id": "acme", "at": "not a time"})  # skipped
    series = store.drift("acme", inputs=2)["acme"]
    assert [round(p["score"], 2) for _t, p in series] == [0.01, 0.05, 0.2]
    assert set(series[-1][1]) == {"score", "bytes", "c"}  # the inputs that moved most
    svg = charts.drift(series)
    assert svg.count('class="psi"') == 3 and svg.count("<circle") == 9
    shift = charts.score_shift(store.latest_drift("acme"))
    assert shift.count('class="live"') == 4 and shift.count('class="training"') == 4
    assert "score PSI 0.200" in shift
    with serving(make_app(store, Settings(), TOKEN)) as base:
        status, page = _get(base + "/quality?tenant=acme")
    drift = page.split('id="drift"')[1].split("</div>")[0]
    assert status == 200 and drift.count('class="psi"') == 4  # the scores, three inputs
    assert page.split('id="shift"')[1].split("</div>")[0].count('class="live"') == 4
    assert "no drift snapshot" in charts.score_shift(None)
    assert store.prune(now=time.time() + 30 * 86400) >= 3 and store.drift() == {}
