"""Argus (binetflow) and nfdump CSV files: detected by their headers, read into the flow
event's fields with their habits undone, every other column kept; train, score and
evaluate read them like any other format.

The part that needs a real broker, registry or child process; the rest, and what
it all means, is in ``tests/unit/ingest/test_flow_files.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from stream.cli import main

DATA = Path(__file__).resolve().parents[1] / "data"
ARGUS, NFDUMP, NFDUMP_LONG = (DATA / "flows.binetflow", DATA / "flows-nfdump.csv",
                              DATA / "flows-nfdump-long.csv")
















@pytest.mark.integration
def test_train_score_and_evaluate_read_argus(tmp_path: Path, tracking_uri: str) -> None:
    # The fixture's five flows, repeated a minute apart, as a baseline and as traffic.
    lines = ARGUS.read_text().splitlines()
    header, rows = lines[0], lines[1:6]
    out = [header]
    for k in range(60):
        for r in rows:
            minute = f"{k // 60 + 10:02d}:{k % 60:02d}"
            out.append(r.replace("10:00:", f"{minute}:", 1))
    path = tmp_path / "week.binetflow"
    path.write_text("\n".join(out) + "\n")
    base = "argus_" + tmp_path.name[-6:].replace("-", "_")
    r = CliRunner().invoke(main, ["train", "--input", str(path), "--tenant", "t",
                                  "--model-name", base, "--tracking-uri", tracking_uri,
                                  "--promote", "--json"])
    assert r.exit_code == 0, r.output
    trained = json.loads(r.stdout.strip().splitlines()[-1])
    assert trained["skipped"] == {}
    scored = tmp_path / "alerts.jsonl"
    r = CliRunner().invoke(main, ["score", str(path), "-o", str(scored), "--tenant", "t",
                                  "--min-level", "low", "--model-name", base,
                                  "--tracking-uri", tracking_uri])
    assert r.exit_code == 0, r.output
    alerts = [json.loads(x) for x in scored.read_text().splitlines()]
    assert len(alerts) == 300 and {a["event"]["protocol"] for a in alerts} == {"tcp", "udp",
                                                                               "icmp"}
    page = tmp_path / "report.html"
    r = CliRunner().invoke(main, ["evaluate", str(path), "--label-field", "Label",
                                  "--positive", "flow=Scan-SYN", "--tenant", "t",
                                  "--model-name", base, "--tracking-uri", tracking_uri,
                                  "--json", "--report", str(page)])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["overall"]["positives"] == 60 and report["overall"]["n"] == 300
    assert report["overall"]["roc_auc"] is not None
    # The HTML report of the same evaluation: every label value of the file, in a row.
    html = page.read_text()
    for label in ("flow=Normal-TLS", "flow=Normal-DNS", "flow=Scan-SYN", "flow=Normal-SSH"):
        assert f"<td>{label}</td><td>60</td>" in html
    assert html.count("data:image/png;base64,") == 3
