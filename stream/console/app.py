"""The console's web application (Starlette; pages from Jinja2 templates, autoescaped).

Security, every request:

* **a token** (``--auth-token`` / ``STREAM_CONSOLE_TOKEN``) for every page and action:
  ``Authorization: Bearer TOKEN``, or the cookie ``/login?token=TOKEN`` sets (HttpOnly,
  SameSite=Strict); compared in constant time; anything else is 401;
* **CSRF**: every action is a POST carrying a token derived from the auth token (an
  HMAC), checked in constant time; with the SameSite cookie a page of another site can
  neither read nor forge it;
* **nothing from elsewhere**: the page's script and style ship with the package; a
  Content-Security-Policy of ``'self'`` says so to the browser;
* **escaping**: every value from an event is text (Jinja2's autoescape; the live queue
  is rebuilt with ``textContent``; the charts escape their labels).

Actions write where the rest of the tool reads: a verdict goes to the feedback topic
exactly as ``stream feedback`` reads it (``tools.feedback.write_verdict``); "suppress
similar" writes a rule to the suppression topic as ``stream suppress add`` does, so
running consumers apply it within their reload interval.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from stream.config import Settings
from stream.console import charts
from stream.console.store import LEVELS, ConsoleStore
from stream.outcomes.suppress import Rule, RuleError

__all__ = ["COOKIE", "make_app"]

HERE = Path(__file__).parent
COOKIE = "stream_console"
_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'")


def _csrf(token: str) -> str:
    return hmac.new(token.encode(), b"stream-console-csrf", hashlib.sha256).hexdigest()


class _Auth(BaseHTTPMiddleware):
    def __init__(self, app: Any, token: str) -> None:
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if request.url.path == "/healthz":  # liveness for a supervisor: says nothing else
            return PlainTextResponse("ok")
        if request.url.path == "/login":
            given = request.query_params.get("token", "")
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return PlainTextResponse("a valid token is required", status_code=401)
            resp: Response = RedirectResponse("/", status_code=303)
            resp.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
            return resp
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else \
            request.cookies.get(COOKIE, "")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return PlainTextResponse("a valid token is required (/login?token=...)",
                                     status_code=401)
        resp = await call_next(request)
        resp.headers["Content-Security-Policy"] = _CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        return resp


def make_app(store: ConsoleStore, settings: Settings, token: str) -> Starlette:
    """The console over ``store``; actions use ``settings``' topics and broker."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    csrf = _csrf(token)

    async def checked(request: Request) -> Any:
        """The form of an action, None unless it carries the CSRF token."""
        form = await request.form()
        sent = str(form.get("csrf", ""))
        return form if hmac.compare_digest(sent.encode(), csrf.encode()) else None

    def refused() -> Response:
        return PlainTextResponse("CSRF token missing or wrong", status_code=403)

    def page(request: Request, name: str, **ctx: Any) -> Response:
        return templates.TemplateResponse(request, name, {"csrf": csrf, **ctx})

    def filters(request: Request) -> dict[str, Any]:
        q = request.query_params
        within = _float(q.get("within"))
        since = time.time() - within if within else (_float(q.get("since")) or 0.0)
        return {"tenant": q.get("tenant", ""), "level": q.get("level", ""),
                "status": q.get("status", ""), "entity": q.get("entity", ""),
                "since": since}

    async def queue(request: Request) -> Response:
        f = filters(request)
        return page(request, "queue.html", items=store.queue(**f),
                    f={**f, "within": request.query_params.get("within", "")}, levels=LEVELS)

    async def api_queue(request: Request) -> Response:
        return JSONResponse(store.queue(**filters(request)))

    def _loaded(kind: str, iid: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        got = store.item(kind, iid) if kind in ("incident", "entity") else None
        if got is None:
            return None
        return got, store.alerts_of(kind, got["doc"])

    async def item(request: Request) -> Response:
        kind, iid = request.path_params["kind"], request.path_params["iid"]
        loaded = _loaded(kind, iid)
        if loaded is None:
            return PlainTextResponse("no such incident or entity alert", status_code=404)
        got, alerts = loaded
        doc = got["doc"]
        risk = doc.get("risk")
        points = [(_event_time(a), float(a.get("anomaly_score", math.nan)),
                   str(a.get("threat_level", "")),
                   (a.get("entity_risk") or {}).get("risk") if kind == "entity" else None)
                  for a in alerts]
        explained = [a for a in alerts if a.get("explanation")]
        lead = min(explained, key=lambda a: float(a.get("anomaly_score", 0.0)), default=None)
        peers = _peers(doc, alerts)
        return page(request, "item.html", kind=kind, iid=iid, doc=doc, got=got, risk=risk,
                    alerts=alerts, lead=lead, peers=peers,
                    timeline=charts.timeline(points),
                    explanation=charts.explanation((lead or {}).get("explanation") or []),
                    raw={a.get("alert_id"): orjson.dumps(a, option=orjson.OPT_INDENT_2)
                         .decode() for a in alerts})

    async def verdict(request: Request) -> Response:
        from stream.tools.feedback import VERDICTS, write_verdict

        kind, iid = request.path_params["kind"], request.path_params["iid"]
        loaded = _loaded(kind, iid)
        form = await checked(request)
        if form is None:
            return refused()
        v, note = str(form.get("verdict", "")), str(form.get("note", ""))[:500]
        if loaded is None or v not in VERDICTS:
            return PlainTextResponse("unknown item or verdict", status_code=400)
        got, alerts = loaded
        doc = got["doc"]
        tenant = str(doc.get("tenant_id", ""))
        ids = [str(a.get("alert_id")) for a in alerts] or [str(x) for x in
                                                           doc.get("alert_ids") or []]
        try:
            if kind == "incident":
                write_verdict(settings, {"incident_id": iid, "verdict": v, "note": note,
                                         "analyst": "console", "tenant_id": tenant})
            else:
                for aid in ids:
                    write_verdict(settings, {"alert_id": aid, "verdict": v, "note": note,
                                             "analyst": "console", "tenant_id": tenant})
        except RuntimeError as e:
            return PlainTextResponse(f"the verdict was not written: {e}", status_code=502)
        store.set_verdicts([(aid, tenant) for aid in ids], v, note)
        return RedirectResponse(f"/item/{kind}/{iid}?said={v}", status_code=303)

    async def suppress_form(request: Request) -> Response:
        kind, iid = request.path_params["kind"], request.path_params["iid"]
        loaded = _loaded(kind, iid)
        if loaded is None:
            return PlainTextResponse("no such incident or entity alert", status_code=404)
        return page(request, "suppress.html", kind=kind, iid=iid,
                    rule=_similar(loaded[0]["doc"], loaded[1]))

    async def suppress(request: Request) -> Response:
        from stream.consumer import suppressions

        form = await checked(request)
        if form is None:
            return refused()
        if not settings.suppression_topic:
            return PlainTextResponse("this console has no --suppression-topic to write to",
                                     status_code=400)
        doc: dict[str, Any] = {k: (str(form.get(k)) or None) for k in
               ("tenant", "src", "dst", "port", "proto", "feature", "reason", "author")}
        days = _float(form.get("days")) or 30.0
        doc.update(id=str(form.get("id") or f"r-{uuid.uuid4().hex[:10]}"),
                   expires=time.time() + days * 86400.0)  # a rule takes epoch seconds too
        try:
            rule = Rule.from_dict(doc)
        except RuleError as e:
            return PlainTextResponse(f"not a rule: {e}", status_code=400)
        if rule.matches_everything:
            return PlainTextResponse("the rule names no criterion: it would suppress "
                                     "everything (use stream suppress add --force)",
                                     status_code=400)
        try:
            suppressions.add(settings, rule)
        except RuntimeError as e:
            return PlainTextResponse(f"the rule was not written: {e}", status_code=502)
        back = str(form.get("back", "/"))
        return RedirectResponse(back if back.startswith("/") and not back.startswith("//")
                                else "/", status_code=303)

    async def assign(request: Request) -> Response:
        kind, iid = request.path_params["kind"], request.path_params["iid"]
        form = await checked(request)
        if form is None:
            return refused()
        store.assign(kind, iid, str(form.get("assignee", ""))[:100] or None,
                     form.get("close") == "1")
        return RedirectResponse(f"/item/{kind}/{iid}", status_code=303)

    async def quality(request: Request) -> Response:
        tenant = request.query_params.get("tenant", "")
        return page(request, "quality.html", rows=store.quality(), tenant=tenant,
                    histogram=charts.histogram(store.scores(tenant)),
                    rates=charts.rates(store.rates(tenant)),
                    raised=charts.rates(store.rates(tenant, table="raised"),
                                        what="entity alerts raised"),
                    drift=[(t, charts.drift(series, warn=settings.drift_psi_warn))
                           for t, series in sorted(store.drift(tenant).items())[:8]],
                    shift=charts.score_shift(store.latest_drift(tenant)))

    routes = [
        Route("/", queue), Route("/api/queue", api_queue),
        Route("/item/{kind}/{iid:path}/verdict", verdict, methods=["POST"]),
        Route("/item/{kind}/{iid:path}/suppress", suppress_form),
        Route("/item/{kind}/{iid:path}/assign", assign, methods=["POST"]),
        Route("/item/{kind}/{iid:path}", item),
        Route("/suppress", suppress, methods=["POST"]),
        Route("/quality", quality),
        Route("/login", queue),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(_Auth, token=token)])


def _float(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _event_time(a: dict[str, Any]) -> float:
    from stream.ingest.timestamps import epoch_seconds

    ev = a.get("event") or {}
    t = ev.get("timestamp") if isinstance(ev, dict) else None
    got = epoch_seconds(t) if t is not None else None
    return float(got) if got is not None else math.nan


def _peers(doc: dict[str, Any], alerts: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """The other entities it talked to: an episode's peers, or its alerts' destinations."""
    top = (doc.get("peers") or {}).get("top") if isinstance(doc.get("peers"), dict) else None
    if top:
        return [(str(p.get("value")), int(p.get("alerts", 0))) for p in top]
    counts: dict[str, int] = {}
    for a in alerts:
        ev = a.get("event") or {}
        d = ev.get("dst_ip") if isinstance(ev, dict) else None
        if d is not None:
            counts[str(d)] = counts.get(str(d), 0) + 1
    return sorted(counts.items(), key=lambda kv: -kv[1])[:10]


def _similar(doc: dict[str, Any], alerts: list[dict[str, Any]]) -> dict[str, str]:
    """A rule prefilled from an incident or entity alert: its tenant and entity, and the
    port, protocol and leading feature its alerts share."""
    rule = {"tenant": str(doc.get("tenant_id", ""))}
    field, value = (doc.get("by"), doc.get("entity")) if "by" in doc else (
        (doc.get("entity") or {}).get("field"), (doc.get("entity") or {}).get("value"))
    if field == "src_ip":
        rule["src"] = str(value)
    elif field == "dst_ip":
        rule["dst"] = str(value)
    for key, f in (("port", "dst_port"), ("proto", "protocol")):
        seen = {str((a.get("event") or {}).get(f)) for a in alerts
                if isinstance(a.get("event"), dict) and (a.get("event") or {}).get(f) is not None}
        if len(seen) == 1:
            rule[key] = seen.pop()
    leads = {(a.get("explanation") or [{}])[0].get("feature") for a in alerts}
    if len(leads) == 1 and None not in leads:
        rule["feature"] = str(leads.pop())
    return rule
