"""The console's pictures, drawn on the server as SVG: no script library, nothing fetched,
every label escaped (a value from an event is text, never markup).

``timeline``: an incident's or entity's alerts over event time, one mark per alert at
its anomaly score, coloured by level, and the entity's risk where the alerts carry it.
``explanation``: the inputs that led an alert, each as its value against the training
baseline (median and spread): a bar from the median, in spreads, labelled with the share
of training values as far out (its percentile on that side). ``histogram``: the
live score distribution of a tenant's alerts. ``drift``: the PSI of the scores and of
the inputs that moved most, over time, with the usual 0.1 and 0.25 lines.
``score_shift``: the live scores of the last drift window against the training ones, in
the training's own bins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import Any

__all__ = ["drift", "explanation", "histogram", "rates", "score_shift", "timeline"]

COLOURS = {"low": "#8a8f98", "medium": "#d4a017", "high": "#e06c00", "critical": "#c0392b"}
#: One colour per series (tenant, input), the first eight.
_PALETTE = ("#2c3e91", "#c0392b", "#2c7a2c", "#e06c00", "#7d3c98", "#117a65", "#555",
            "#b7950b")


def _svg(w: int, h: int, body: list[str], label: str) -> str:
    """A chart: ``body`` on a framed white ground, ``label`` for screen readers."""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
            f'aria-label="{escape(label)}" viewBox="0 0 {w} {h}" width="{w}" height="{h}">'
            f'<rect width="{w}" height="{h}" fill="#fff" stroke="#ccc"/>'
            + "".join(body) + "</svg>")


def _empty(w: int, h: int, text: str, label: str) -> str:
    """A chart with nothing to draw yet: ``text`` in its middle."""
    return _svg(w, h, [f'<text x="{w / 2}" y="{h / 2}" text-anchor="middle">{escape(text)}</text>'],
                label)


def timeline(points: Sequence[tuple[float, float, str, float | None]], w: int = 720,
             h: int = 220) -> str:
    """(event time, anomaly score, level, entity risk or None) per alert."""
    pts = [p for p in points if math.isfinite(p[0]) and math.isfinite(p[1])]
    if not pts:
        return _empty(w, h, "no alerts", "timeline: no alerts")
    body: list[str] = []
    t0, t1 = min(p[0] for p in pts), max(p[0] for p in pts)
    s0, s1 = min(p[1] for p in pts), max(p[1] for p in pts)
    risks = [p[3] for p in pts if p[3] is not None and math.isfinite(p[3])]
    r1 = max(risks, default=0.0) or 1.0
    pad = 30

    def x(t: float) -> float:
        return pad + (t - t0) / ((t1 - t0) or 1.0) * (w - 2 * pad)

    def y(s: float) -> float:  # lower scores (more anomalous) higher up
        return pad + (s - s0) / ((s1 - s0) or 1.0) * (h - 2 * pad)

    if risks:
        path = " ".join(f"{x(p[0]):.1f},{h - pad - (p[3] / r1) * (h - 2 * pad):.1f}"
                        for p in pts if p[3] is not None and math.isfinite(p[3]))
        body.append(f'<polyline class="risk" points="{path}" fill="none" stroke="#2c3e91" '
                    'stroke-width="1.5"/>')
    for t, s, level, _r in pts:
        body.append(f'<circle class="alert" cx="{x(t):.1f}" cy="{y(s):.1f}" r="4" '
                    f'fill="{COLOURS.get(level, "#555")}"><title>{escape(level)} '
                    f'{s:.4f}</title></circle>')
    said = f"; the entity's risk (line) up to {r1:.1f}" if risks else ""
    body.append(f'<text x="{pad}" y="{h - 8}" font-size="11">{len(pts)} alerts over '
                f'{t1 - t0:.3g} s of event time, the most anomalous highest{said}</text>')
    return _svg(w, h, body, f"timeline of {len(pts)} alerts")


def explanation(inputs: Sequence[dict[str, Any]], w: int = 720) -> str:
    """Each input of an alert's explanation: its value against the baseline median, in
    spreads (``deviation``): a bar from the median, and under the input's name its
    value, the median and spread, and the share of training as far out."""
    rows = [e for e in inputs if isinstance(e, dict)][:8]
    step = 36
    h = 20 + step * max(1, len(rows))
    body: list[str] = []
    if not rows:
        body.append('<text x="10" y="20">no explanation (the model has no baseline)</text>')
        return _svg(w, h, body, "explanation: none")
    devs = [abs(float(e.get("deviation") or 0.0)) for e in rows]
    top = max(max(devs), 1.0)
    mid = 300 + (w - 320) / 2
    half = (w - 320) / 2
    body.append(f'<line x1="{mid}" y1="8" x2="{mid}" y2="{h - 8}" stroke="#999"/>')
    for k, e in enumerate(rows):
        dev = float(e.get("deviation") or 0.0)
        yy = 12 + step * k
        length = abs(dev) / top * half
        x0 = mid if dev >= 0 else mid - length
        tail = e.get("tail")
        where = ("" if not isinstance(tail, int | float) else
                 ", beyond all training" if tail <= 0 else
                 f", {tail:.0%} of training as far out")
        name = f"{e.get('feature')} = {e.get('value')}"
        detail = f"median {e.get('baseline')}, spread {e.get('spread')}{where}"
        body.append(f'<text x="6" y="{yy + 11}" font-size="12">{escape(name[:44])}</text>')
        body.append(f'<text x="6" y="{yy + 25}" font-size="10" fill="#666">'
                    f"{escape(detail[:60])}</text>")
        body.append(f'<rect class="bar" x="{x0:.1f}" y="{yy + 4}" width="{length:.1f}" '
                    f'height="16" fill="#e06c00"><title>{escape(name)} ({escape(detail)}): '
                    f'{dev:+.1f} spreads from the median</title></rect>')
    return _svg(w, h, body, f"explanation of {len(rows)} inputs")


def histogram(values: Sequence[float], bins: int = 30, w: int = 720, h: int = 200) -> str:
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return _empty(w, h, "no scores", "score histogram: no scores")
    body: list[str] = []
    lo, hi = min(vals), max(vals)
    width = (hi - lo) / bins or 1.0
    counts = [0] * bins
    for v in vals:
        counts[min(bins - 1, int((v - lo) / width))] += 1
    top = max(counts)
    bw = (w - 40) / bins
    for k, c in enumerate(counts):
        bh = c / top * (h - 40)
        body.append(f'<rect class="bin" x="{20 + k * bw:.1f}" y="{h - 20 - bh:.1f}" '
                    f'width="{bw - 1:.1f}" height="{bh:.1f}" fill="#2c3e91"/>')
    body.append(f'<text x="20" y="{h - 5}" font-size="11">{len(vals)} alert scores from '
                f'{lo:.3f} to {hi:.3f}</text>')
    return _svg(w, h, body, f"histogram of {len(vals)} scores")


def rates(series: dict[str, list[tuple[float, int]]], bucket: float = 60.0, w: int = 720,
          h: int = 200, what: str = "alerts") -> str:
    """``what`` per bucket over time, a line per tenant (the first eight)."""
    pts = [(t, n) for s in series.values() for t, n in s]
    if not pts:
        return _empty(w, h, f"no {what} yet", f"{what} rates: none")
    body: list[str] = []
    t0, t1 = min(p[0] for p in pts), max(p[0] for p in pts)
    top = max(p[1] for p in pts)
    for k, (tenant, s) in enumerate(sorted(series.items())[:8]):
        xy = [(30 + (t - t0) / ((t1 - t0) or 1.0) * (w - 60), h - 30 - n / top * (h - 50))
              for t, n in s]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
        body.append(f'<polyline class="rate" points="{path}" fill="none" '
                    f'stroke="{_PALETTE[k]}" stroke-width="1.5"><title>{escape(tenant)}'
                    f'</title></polyline>')
        body += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{_PALETTE[k]}"/>'
                 for x, y in xy]
        body.append(f'<text x="{40 + 110 * k}" y="16" font-size="11" fill="{_PALETTE[k]}">'
                    f'{escape(tenant[:16])}</text>')
    body.append(f'<text x="30" y="{h - 8}" font-size="11">{what} per {bucket:.0f} s, up to '
                f'{top}, over {(t1 - t0) / 60:.0f} min</text>')
    return _svg(w, h, body, f"{what} rates per tenant")


def drift(series: Sequence[tuple[float, dict[str, float]]], w: int = 720, h: int = 220,
          warn: float = 0.25) -> str:
    """One tenant's PSI over time: a line for the scores and one per input shown."""
    if not series:
        return _empty(w, h, "no drift snapshots yet (stream run --drift-topic)", "drift: none")
    body: list[str] = []
    names = ["score", *sorted({k for _t, p in series for k in p} - {"score"})][:8]
    t0, t1 = series[0][0], series[-1][0]
    top = max(0.3, *(v for _t, p in series for v in p.values()))

    def x(t: float) -> float:
        return 40 + (t - t0) / ((t1 - t0) or 1.0) * (w - 80)

    def y(v: float) -> float:
        return h - 30 - min(v, top) / top * (h - 60)

    for level, dash in ((0.1, "2,3"), (warn, "6,3")):
        body.append(f'<line class="psi-line" x1="40" x2="{w - 40}" y1="{y(level):.1f}" '
                    f'y2="{y(level):.1f}" stroke="#999" stroke-dasharray="{dash}"/>'
                    f'<text x="{w - 36}" y="{y(level) + 4:.1f}" font-size="10">{level:g}</text>')
    for k, name in enumerate(names):
        pts = [(x(t), y(p[name])) for t, p in series if name in p]
        path = " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)
        body.append(f'<polyline class="psi" points="{path}" fill="none" stroke="{_PALETTE[k]}" '
                    f'stroke-width="{2.5 if name == "score" else 1.5}"><title>{escape(name)}'
                    "</title></polyline>")
        body += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.5" fill="{_PALETTE[k]}"/>'
                 for a, b in pts]
        body.append(f'<text x="{40 + 120 * k}" y="16" font-size="11" fill="{_PALETTE[k]}">'
                    f'{escape(name[:18])}</text>')
    body.append(f'<text x="40" y="{h - 8}" font-size="11">PSI against the training data, '
                f"{len(series)} windows over {(t1 - t0) / 60:.0f} min (0.1 moderate, "
                f"{warn:g} significant)</text>")
    return _svg(w, h, body, f"drift over time: {len(series)} snapshots")


def score_shift(snapshot: dict[str, Any] | None, w: int = 720, h: int = 220) -> str:
    """The live score distribution of the last drift window beside the training one, as
    shares of each bin of the training's own score bins (lowest, most anomalous, left)."""
    scores = (snapshot or {}).get("scores") or {}
    live, train = list(scores.get("live") or []), list(scores.get("training") or [])
    total = sum(v for v in live if isinstance(v, int | float))
    if not live or len(live) != len(train) or total <= 0:
        return _empty(w, h, "no drift snapshot yet", "score distribution against training: none")
    body: list[str] = []
    shares = [float(v) / total for v in live]
    top = max(*shares, *(float(t) for t in train)) or 1.0
    n = len(live)
    bw = (w - 60) / n
    for k in range(n):
        x0 = 40 + k * bw
        for cls, v, colour, off in (("training", float(train[k]), "#b8c4e8", 0.0),
                                    ("live", shares[k], "#c0392b", bw / 2)):
            bh = v / top * (h - 60)
            body.append(f'<rect class="{cls}" x="{x0 + off:.1f}" y="{h - 30 - bh:.1f}" '
                        f'width="{max(bw / 2 - 1, 0.5):.1f}" height="{bh:.1f}" '
                        f'fill="{colour}"><title>{cls} {v:.1%}</title></rect>')
    psi = ((snapshot or {}).get("psi") or {}).get("score")
    tenant = escape(str((snapshot or {}).get("tenant_id", "")))
    body.append('<text x="40" y="16" font-size="11"><tspan fill="#c0392b">live</tspan> '
                f'({total} scores of {tenant}) against <tspan fill="#6b7fc4">training'
                '</tspan>, share per training bin</text>')
    body.append(f'<text x="40" y="{h - 8}" font-size="11">more anomalous &#8592; score bins '
                f"&#8594; more normal; score PSI {float(psi or 0):.3f}</text>")
    return _svg(w, h, body, "live scores against the training scores")
