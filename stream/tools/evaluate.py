"""Detection quality of scored, labelled flows: ROC-AUC, average precision, P/R per level.

Pure functions over numpy arrays; the result is a plain JSON-serializable dict.
Scores follow IsolationForest's ``decision_function``: lower means more anomalous.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from stream.outcomes.records import LEVEL_NAMES

__all__ = ["LEVEL_NAMES", "evaluate", "format_report", "labels_from_field"]

# "At level L" means an event counts as flagged when its level code is >= L.
_THRESHOLDS: tuple[tuple[str, int], ...] = (("medium", 1), ("high", 2), ("critical", 3))
# "false_positive": analysts' verdicts (stream feedback) read as labels too.
_NEGATIVE_WORDS = frozenset({"normal", "benign", "0", "false", "", "false_positive",
                             "background"})
# A label whose words include one of these is not an attack either: the labelled public
# captures write "Background" and "Benign" (Zeek, Stratosphere), "flow=From-Normal-V42-..."
# and "flow=To-Background-UDP-..." (CTU-13 binetflow), where the attacks read
# "Malicious" or "flow=From-Botnet-...".
_NEGATIVE_TOKENS = frozenset({"normal", "benign", "background"})
_TOKEN = re.compile(r"[a-z]+")


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def _stats(scores: np.ndarray, levels: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    n = int(labels.size)
    positives = int(labels.sum())
    # Unscored events (NaN) cannot be ranked; they still count for the level metrics.
    finite = np.isfinite(scores)
    ranked_labels = labels[finite]
    n_pos_ranked = int(ranked_labels.sum())
    auc: float | None = None
    ap: float | None = None
    if 0 < n_pos_ranked < ranked_labels.size:
        # Negated: the metrics want "higher = more likely positive".
        auc = float(roc_auc_score(ranked_labels, -scores[finite]))
        ap = float(average_precision_score(ranked_labels, -scores[finite]))
    at_level: dict[str, dict[str, Any]] = {}
    for name, code in _THRESHOLDS:
        flagged = levels >= code
        predicted = int(flagged.sum())
        tp = int((flagged & labels).sum())
        precision = _ratio(tp, predicted)
        recall = _ratio(tp, positives)
        f1 = None
        if precision is not None and recall is not None and precision + recall > 0:
            f1 = 2 * precision * recall / (precision + recall)
        at_level[name] = {
            "threshold": code,
            "predicted": predicted,
            "true_positives": tp,
            "precision": precision,
            "recall": recall,
            "f1": f1,
        }
    return {
        "n": n,
        "positives": positives,
        "scored": int(finite.sum()),
        "roc_auc": auc,
        "average_precision": ap,
        "at_level": at_level,
    }


def evaluate(
    tenants: np.ndarray,
    scores: np.ndarray,
    levels: np.ndarray,
    labels: np.ndarray,
) -> dict[str, Any]:
    """Metrics per tenant and overall for aligned arrays of one row per event.

    ``levels`` are threat level codes (0 low, 1 medium, 2 high, 3 critical);
    ``labels`` are True for attack events. A metric that is undefined for the
    data (one class only, nothing flagged) is None.
    """
    tenants = np.asarray(tenants).astype(str)
    scores = np.asarray(scores, dtype=np.float64)
    levels = np.asarray(levels, dtype=np.int64)
    labels = np.asarray(labels, dtype=bool)
    sizes = {tenants.size, scores.size, levels.size, labels.size}
    if len(sizes) != 1 or tenants.ndim != 1:
        raise ValueError(
            "tenants, scores, levels and labels must be 1-D and of equal length, got "
            f"{tenants.shape}, {scores.shape}, {levels.shape}, {labels.shape}"
        )
    per_tenant = {
        str(t): _stats(scores[tenants == t], levels[tenants == t], labels[tenants == t])
        for t in np.unique(tenants)
    }
    return {"overall": _stats(scores, levels, labels), "tenants": per_tenant}


def labels_from_field(values: Iterable[Any], positive: Sequence[str] | None = None) -> np.ndarray:
    """Boolean attack labels from a label column.

    With ``positive``, a value is an attack when its string form is one of them.
    Without, anything but an empty or "normal"-like value is an attack:
    normal, benign, background, 0, false, "", None and NaN are not (case-insensitive),
    nor is a label with one of the words normal, benign or background in it
    (``flow=From-Normal-V42-Grill``, ``flow=To-Background-UDP-Established``).
    """
    if positive is not None:
        wanted = {str(p) for p in positive}
        return np.array([v is not None and str(v) in wanted for v in values], dtype=bool)
    return np.array([_attack_like(v) for v in values], dtype=bool)


def _attack_like(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | float | np.integer | np.floating):
        return not math.isnan(value) and value != 0
    text = str(value).strip().lower()
    return text not in _NEGATIVE_WORDS and not _NEGATIVE_TOKENS.intersection(
        _TOKEN.findall(text))


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_report(result: dict[str, Any]) -> str:
    """A plain-text table of an ``evaluate`` result: one row per tenant, then overall."""
    header = ["tenant", "n", "attacks", "ROC-AUC", "AP"]
    for name, _ in _THRESHOLDS:
        header += [f"P@{name}", f"R@{name}"]
    rows: list[list[str]] = []
    named = [*sorted(result["tenants"].items()), ("overall", result["overall"])]
    for tenant, stats in named:
        row = [
            tenant,
            str(stats["n"]),
            str(stats["positives"]),
            _fmt(stats["roc_auc"]),
            _fmt(stats["average_precision"]),
        ]
        for name, _ in _THRESHOLDS:
            at = stats["at_level"][name]
            row += [_fmt(at["precision"]), _fmt(at["recall"])]
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        # Tenant names left-aligned, numbers right-aligned so the decimals line up.
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [line(header), rule, *(line(r) for r in rows[:-1])]
    if len(rows) > 1:
        out.append(rule)
    out.append(line(rows[-1]))
    notes = "P/R@level: precision/recall when events at that level or above are flagged"
    return "\n".join([*out, "", notes])
