"""``stream evaluate --report FILE``: detection quality as one self-contained HTML page.

What a number table does not show: the ROC and precision-recall curves, the recall of
each label value at the alert threshold (medium or above) and at 1% false positives,
and the score distributions of each label against the normal traffic. The images are
drawn with matplotlib (its file-only Agg backend) and inlined as PNG, the page has no
script and no link to anything, so it reads offline and can be attached to a ticket.

Scores are the models' (lower is more anomalous); curves use the anomaly (minus the
score), as ``stream.tools.evaluate`` does. "1% false positives": the cut at the 99th
percentile of the normal events' anomaly, so that 1% of them are above it.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np

from stream.outcomes.records import LEVEL_CODES

__all__ = ["html_report", "recall_table"]

#: Label values drawn one histogram each (the most frequent; the rest are counted).
MAX_LABELS: Final = 8
ALERT_LEVEL: Final = LEVEL_CODES["medium"]


def recall_table(scores: np.ndarray, levels: np.ndarray, labels: np.ndarray,
                 names: Sequence[str]) -> list[dict[str, Any]]:
    """Per label value: its events, the share flagged at the alert threshold and above
    the 1%-false-positive cut, and its median anomaly; normal events first."""
    anomaly = -np.asarray(scores, dtype=np.float64)
    ok = np.isfinite(anomaly)
    normal = ok & ~labels
    cut = float(np.percentile(anomaly[normal], 99)) if normal.any() else math.inf
    names_arr = np.asarray([str(n) for n in names], dtype=object)
    rows = []
    for name, count in Counter(names_arr[ok].tolist()).most_common():
        sel = ok & (names_arr == name)
        rows.append({
            "label": name,
            "attack": bool(labels[sel].any()),
            "events": int(count),
            "flagged_at_alert": float((levels[sel] >= ALERT_LEVEL).mean()),
            "above_1pct_fp": float((anomaly[sel] > cut).mean()),
            "median_anomaly": float(np.median(anomaly[sel])),
        })
    rows.sort(key=lambda r: (r["attack"], -r["events"]))
    return rows


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _curves(anomaly: np.ndarray, labels: np.ndarray) -> tuple[str, str]:
    from matplotlib.figure import Figure
    from sklearn.metrics import precision_recall_curve, roc_curve

    fpr, tpr, _ = roc_curve(labels, anomaly)
    prec, rec, _ = precision_recall_curve(labels, anomaly)
    roc = Figure(figsize=(4.6, 4.2))
    ax = roc.subplots()
    ax.plot(fpr, tpr, lw=1.5)
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.axvline(0.01, ls="--", c="tab:red", lw=0.8, label="1% false positives")
    ax.set(xlabel="false positive rate", ylabel="true positive rate (recall)",
           title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    pr = Figure(figsize=(4.6, 4.2))
    ax = pr.subplots()
    ax.plot(rec, prec, lw=1.5)
    ax.axhline(float(labels.mean()), ls=":", c="grey", label="attack share")
    ax.set(xlabel="recall", ylabel="precision", title="precision-recall",
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower left", fontsize=8)
    return _png(roc), _png(pr)


def _histograms(anomaly: np.ndarray, names: np.ndarray, labels: np.ndarray,
                cut: float) -> str:
    from matplotlib.figure import Figure

    counts = Counter(names.tolist()).most_common()
    shown = [n for n, _ in counts[:MAX_LABELS]]
    lo, hi = np.percentile(anomaly, [0.5, 99.9])
    bins = np.linspace(float(lo), float(hi) if hi > lo else float(lo) + 1.0, 60)
    fig = Figure(figsize=(9.2, 0.9 + 1.35 * len(shown)))
    axes = fig.subplots(len(shown), 1, sharex=True, squeeze=False)[:, 0]
    for ax, name in zip(axes, shown, strict=True):
        sel = names == name
        attack = bool(labels[sel].any())
        ax.hist(np.clip(anomaly[sel], bins[0], bins[-1]), bins=bins,
                color="tab:red" if attack else "tab:blue", alpha=0.8)
        if math.isfinite(cut):
            ax.axvline(cut, ls="--", c="black", lw=0.8)
        ax.set_ylabel(f"{name[:28]}\n({int(sel.sum()):,})", fontsize=8, rotation=0,
                      ha="right", va="center")
        ax.tick_params(labelsize=7)
    axes[-1].set_xlabel("anomaly (minus the model's score); dashed: the 1% false-positive cut")
    return _png(fig)


def _pct(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


def _num(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.3f}"


def html_report(result: dict[str, Any], tenants: np.ndarray, scores: np.ndarray,
                levels: np.ndarray, labels: np.ndarray, names: Sequence[str], *,
                title: str, label_field: str) -> str:
    """The page for one evaluation: ``result`` is ``stream.tools.evaluate.evaluate``'s, the
    arrays its inputs, ``names`` each event's label value as read."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    levels = np.asarray(levels, dtype=np.int64)
    ok = np.isfinite(scores)
    anomaly = -scores[ok]
    lab = labels[ok]
    name_arr = np.asarray([str(n) for n in names], dtype=object)[ok]
    normal = ~lab
    cut = float(np.percentile(anomaly[normal], 99)) if normal.any() else math.inf
    esc = html.escape
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{esc(title)}</title>",
        "<style>body{font:14px system-ui,sans-serif;margin:2em;max-width:72em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "tr.attack td:first-child{color:#b00}img{max-width:100%}.figs{display:flex;"
        "gap:1em;flex-wrap:wrap}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>Label field <code>{esc(label_field)}</code>; {int(labels.size):,} events, "
        f"{int(ok.sum()):,} scored, {int(labels.sum()):,} attacks. Made "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}. Alert threshold: medium "
        "or above. 1% false positives: the cut at the 99th percentile of the normal "
        "events' anomaly.</p>",
        "<h2>Per tenant</h2><table><tr><th>tenant</th><th>events</th><th>attacks</th>"
        "<th>ROC AUC</th><th>average precision</th><th>precision at alert</th>"
        "<th>recall at alert</th></tr>",
    ]
    named = [*sorted(result["tenants"].items()), ("overall", result["overall"])]
    for tenant, st in named:
        at = st["at_level"]["medium"]
        parts.append(
            f"<tr><td>{esc(tenant)}</td><td>{st['n']:,}</td><td>{st['positives']:,}</td>"
            f"<td>{_num(st['roc_auc'])}</td><td>{_num(st['average_precision'])}</td>"
            f"<td>{_pct(at['precision'])}</td><td>{_pct(at['recall'])}</td></tr>")
    parts.append("</table><h2>Per label value</h2><table><tr><th>label</th><th>events</th>"
                 "<th>flagged at alert</th><th>above the 1% false-positive cut</th>"
                 "<th>median anomaly</th></tr>")
    for row in recall_table(scores, levels, labels, names):
        cls = " class=attack" if row["attack"] else ""
        parts.append(
            f"<tr{cls}><td>{esc(row['label'])}</td><td>{row['events']:,}</td>"
            f"<td>{_pct(row['flagged_at_alert'])}</td><td>{_pct(row['above_1pct_fp'])}</td>"
            f"<td>{_num(row['median_anomaly'])}</td></tr>")
    parts.append("</table>")
    if 0 < int(lab.sum()) < lab.size:
        roc, pr = _curves(anomaly, lab)
        parts.append("<h2>Curves (all tenants)</h2><div class=figs>"
                     f"<img alt='ROC curve' src='data:image/png;base64,{roc}'>"
                     f"<img alt='precision-recall curve' src='data:image/png;base64,{pr}'>"
                     "</div>")
    else:
        parts.append("<p>One class only among the scored events: no curves.</p>")
    if anomaly.size:
        hist = _histograms(anomaly, name_arr, lab, cut)
        parts.append("<h2>Anomaly per label value</h2>"
                     f"<img alt='anomaly histograms per label' "
                     f"src='data:image/png;base64,{hist}'>")
    parts.append("</body></html>")
    return "\n".join(parts)
