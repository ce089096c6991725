"""Metrics of stream.tools.evaluate on inputs small enough to work out by hand."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from stream.tools.evaluate import evaluate, format_report, labels_from_field

# Tenant "a": negated scores 0.3 (attack), 0.1, -0.1 (attack), -0.2.
# Of the 4 attack/normal pairs the attack ranks higher in 3 -> ROC-AUC 0.75.
# Ranked list P N P N -> AP = (1/1 + 2/3) / 2 = 0.8333.
# Tenant "b" has no attacks at all.
TENANTS = np.array(["a", "a", "a", "a", "b", "b"])
SCORES = np.array([-0.3, -0.1, 0.1, 0.2, 0.1, 0.2])
LEVELS = np.array([3, 1, 0, 0, 0, 0])
LABELS = np.array([True, False, True, False, False, False])


@pytest.fixture()
def result() -> dict:
    return evaluate(TENANTS, SCORES, LEVELS, LABELS)


def test_per_tenant_auc_and_ap_by_hand(result: dict) -> None:
    a = result["tenants"]["a"]
    assert a["n"] == 4
    assert a["positives"] == 2
    assert a["roc_auc"] == pytest.approx(0.75)
    assert a["average_precision"] == pytest.approx((1 + 2 / 3) / 2)


def test_overall_auc_counts_ties_as_half(result: dict) -> None:
    # Attacks 0.3 and -0.1 against normals 0.1, -0.2, -0.1, -0.2:
    # 0.3 beats all 4; -0.1 beats both -0.2, ties -0.1 (0.5), loses to 0.1 -> 6.5 / 8.
    assert result["overall"]["n"] == 6
    assert result["overall"]["positives"] == 2
    assert result["overall"]["roc_auc"] == pytest.approx(6.5 / 8)


def test_single_class_tenant_reports_none(result: dict) -> None:
    b = result["tenants"]["b"]
    assert b["n"] == 2
    assert b["positives"] == 0
    assert b["roc_auc"] is None
    assert b["average_precision"] is None
    # Nothing flagged and nothing to find: precision and recall are both undefined.
    assert b["at_level"]["medium"]["precision"] is None
    assert b["at_level"]["medium"]["recall"] is None


def test_all_attack_tenant_reports_none() -> None:
    out = evaluate(np.array(["x", "x"]), np.array([-0.5, 0.1]), np.array([2, 0]), np.array([1, 1]))
    assert out["overall"]["roc_auc"] is None
    assert out["overall"]["average_precision"] is None
    assert out["overall"]["at_level"]["high"]["recall"] == pytest.approx(0.5)


def test_precision_recall_at_levels(result: dict) -> None:
    a = result["tenants"]["a"]["at_level"]
    # medium: levels >= 1 flags rows 0 (attack) and 1 (normal).
    assert a["medium"] == {
        "threshold": 1,
        "predicted": 2,
        "true_positives": 1,
        "precision": 0.5,
        "recall": 0.5,
        "f1": 0.5,
    }
    # high and critical flag only row 0 (level 3).
    for name in ("high", "critical"):
        assert a[name]["predicted"] == 1
        assert a[name]["precision"] == 1.0
        assert a[name]["recall"] == 0.5
    assert set(a) == {"medium", "high", "critical"}


def test_auc_matches_pairwise_definition_with_lower_is_more_anomalous() -> None:
    rng = np.random.default_rng(3)
    labels = rng.random(60) < 0.3
    # Attacks get lower scores on average, as IsolationForest gives them.
    scores = np.round(rng.normal(0, 1, 60) - labels * 1.0, 1)
    pos, neg = scores[labels], scores[~labels]
    wins = sum(1.0 if p < q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
    out = evaluate(np.full(60, "t"), scores, np.zeros(60, dtype=int), labels)
    assert out["overall"]["roc_auc"] == pytest.approx(wins / (pos.size * neg.size))
    assert out["overall"]["roc_auc"] > 0.6


def test_nan_scores_are_left_out_of_ranking_only() -> None:
    scores = np.array([-0.3, np.nan, 0.1, 0.2])
    out = evaluate(np.full(4, "t"), scores, np.array([3, 3, 0, 0]), np.array([1, 1, 0, 0]))
    assert out["overall"]["n"] == 4
    assert out["overall"]["scored"] == 3
    assert out["overall"]["roc_auc"] == 1.0
    assert out["overall"]["at_level"]["critical"]["recall"] == 1.0


def test_result_is_json_serializable(result: dict) -> None:
    text = json.dumps(result)
    assert json.loads(text) == result
    assert isinstance(result["tenants"]["a"]["n"], int)
    assert isinstance(result["tenants"]["a"]["roc_auc"], float)


def test_mismatched_lengths_raise() -> None:
    with pytest.raises(ValueError, match="equal length"):
        evaluate(TENANTS, SCORES[:-1], LEVELS, LABELS)


def test_format_report_shows_every_tenant_and_overall(result: dict) -> None:
    text = format_report(result)
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["tenant", "n", "attacks", "ROC-AUC", "AP"]
    rows = {line.split()[0]: line.split() for line in lines if line.split()}
    assert rows["a"][:5] == ["a", "4", "2", "0.750", "0.833"]
    assert rows["b"][3:5] == ["-", "-"]
    assert rows["overall"][3] == "0.812"
    assert "P@medium" in lines[0] and "R@critical" in lines[0]


def test_labels_from_field_default_negative_words() -> None:
    values = ["normal", "Benign", "port_scan", None, 0, 1, "0", "FALSE", "", math.nan, True, "x"]
    got = labels_from_field(values).tolist()
    assert got == [False, False, True, False, False, True, False, False, False, False, True, True]


def test_labels_of_the_public_captures_read_without_positive() -> None:
    # Zeek/Stratosphere and CTU-13 binetflow labels: the attacks are Malicious, Botnet.
    values = ["Malicious", "Benign", "Background", "flow=From-Botnet-V42-TCP-CC6",
              "flow=From-Normal-V42-Grill", "flow=To-Background-UDP-Established",
              "External-Attack-to-Device", "Normal-Google"]
    got = labels_from_field(values).tolist()
    assert got == [True, False, False, True, False, False, True, False]


def test_labels_from_field_with_positive_list() -> None:
    values = ["normal", "port_scan", None, "ddos_burst", 1]
    got = labels_from_field(values, positive=["port_scan", "ddos_burst", "1"]).tolist()
    assert got == [False, True, False, True, True]
    assert labels_from_field([], positive=["x"]).dtype == bool


def test_recall_table_per_label_by_hand() -> None:
    from stream.tools.report import recall_table

    # 100 normal events with anomaly 0..99 (score = -anomaly): the 1% cut is the 99th
    # percentile, 98.01; a scan at 120 (alerted) and 50 (not), a beacon at 99 (above).
    normal = np.arange(100, dtype=float)
    scores = -np.concatenate([normal, [120.0, 50.0, 99.0]])
    levels = np.array([0] * 100 + [2, 0, 1])
    labels = np.array([False] * 100 + [True, True, True])
    names = ["normal"] * 100 + ["scan", "scan", "beacon"]
    rows = {r["label"]: r for r in recall_table(scores, levels, labels, names)}
    assert recall_table(scores, levels, labels, names)[0]["label"] == "normal"
    assert rows["scan"]["events"] == 2 and rows["scan"]["flagged_at_alert"] == 0.5
    assert rows["scan"]["above_1pct_fp"] == 0.5 and rows["beacon"]["above_1pct_fp"] == 1.0
    assert rows["normal"]["above_1pct_fp"] == 0.01 and rows["normal"]["median_anomaly"] == 49.5
    assert rows["normal"]["attack"] is False and rows["scan"]["attack"] is True


def test_the_html_report_is_one_self_contained_page() -> None:
    import base64
    import re
    from html.parser import HTMLParser

    from stream.tools.report import html_report

    rng = np.random.default_rng(3)
    n = 400
    labels = np.zeros(n, dtype=bool)
    labels[:40] = True
    scores = np.where(labels, rng.normal(-0.3, 0.1, n), rng.normal(0.1, 0.1, n))
    levels = np.where(scores < -0.1, 1, 0)
    names = ["port_scan<script>" if x else "normal" for x in labels]
    tenants = np.full(n, "acme")
    result = evaluate(tenants, scores, levels, labels)
    page = html_report(result, tenants, scores, levels, labels, names, title="t",
                       label_field="label")

    srcs: list[str] = []

    class Refs(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            assert tag not in ("script", "link", "iframe")
            srcs.extend(v or "" for k, v in attrs if k in ("src", "href"))

    Refs().feed(page)
    # Three pictures (ROC, precision-recall, histograms), each a PNG inside the page.
    assert len(srcs) == 3 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert all(base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n" for s in srcs)
    # Label values are text, never markup; the AUC is the evaluation's.
    assert "port_scan&lt;script&gt;" in page and "<script>" not in page
    assert f"{result['overall']['roc_auc']:.3f}" in page
    from stream.tools.report import recall_table

    (scan,) = [r for r in recall_table(scores, levels, labels, names) if r["attack"]]
    row = re.search(r"<tr class=attack><td>port_scan&lt;script&gt;</td><td>40</td>"
                    r"<td>([\d.]+)%</td>", page)
    assert row is not None and float(row[1]) == round(100 * scan["flagged_at_alert"], 1)
