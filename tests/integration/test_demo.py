"""`stream demo` end to end, as the README's first command runs it."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

# Real broker, registry or child processes: not part of the fast unit run.
pytestmark = pytest.mark.integration


def test_demo_exits_zero_prints_summary_and_catches_every_attack_kind() -> None:
    """The demo's own tenants, seed and size: recall >= 0.90 per kind at <= 1% FPR."""
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "demo"], capture_output=True, timeout=300
    )
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert "alerts per tenant and threat level" in out
    for tenant in ("acme", "globex", "initech"):
        assert tenant in out
    assert "global (fallback)" in out
    assert "dead letters 5" in out
    assert "detection per attack kind" in out and "at 1% false positives" in out
    # A clean shutdown prints no librdkafka errors.
    assert "FAIL" not in proc.stderr.decode() and "FAIL" not in out
    kinds = "port_scan|data_exfiltration|ddos_burst|beaconing"
    rows = {m[1]: (int(m[2]), float(m[3]), float(m[4])) for m in re.finditer(
        rf"│ ({kinds})\s+│\s+(\d+) │\s+([\d.]+) │\s+([\d.]+) │", out)}
    print(f"\ndetection (events, at alert threshold, at 1% FPR): {rows}")
    assert set(rows) == {"port_scan", "data_exfiltration", "ddos_burst", "beaconing"}
    for kind, (_n, _at_alert, at_cut) in rows.items():
        assert at_cut >= 0.90, (kind, rows)
    fpr = re.search(r"│ normal \(false\s+│\s+│\s+([\d.]+)% │\s+([\d.]+)% │", out)
    assert fpr is not None and float(fpr[2]) <= 1.0, out[-2000:]
    assert re.search(r"incidents: \d+ alerts grouped into \d+", out.replace("\n", " "))
    print(f"demo took {time.monotonic() - t0:.1f}s")
