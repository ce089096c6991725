"""`stream demo` end to end, as the README's first command runs it."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

# Real broker, registry or child processes: not part of the fast unit run.
pytestmark = pytest.mark.integration


def test_demo_exits_zero_and_prints_summary() -> None:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "demo", "--events", "8000"],
        capture_output=True,
        timeout=300,
    )
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert "alerts per tenant and threat level" in out
    for tenant in ("acme", "globex", "initech"):
        assert tenant in out
    assert "global (fallback)" in out
    assert "dead letters 5" in out
    print(f"demo took {time.monotonic() - t0:.1f}s")


def test_demo_catches_every_attack_kind_at_one_percent_false_positives(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The demo's own tenants, seed and size: recall >= 0.90 per kind at <= 1% FPR."""
    import io

    from rich.console import Console

    from stream.demo import run_demo

    out = io.StringIO()
    summary = run_demo(tmp_path, console=Console(file=out, width=120))
    det = summary["detection"]
    print(det)
    assert set(det["recall_at_fpr"]) == {
        "port_scan", "data_exfiltration", "ddos_burst", "beaconing"
    }
    for kind, recall in det["recall_at_fpr"].items():
        assert recall >= 0.90, (kind, det)
    assert det["fpr_at_cut"] <= 0.01
    assert "detection per attack kind" in out.getvalue()
    assert "at 1% false positives" in out.getvalue()
