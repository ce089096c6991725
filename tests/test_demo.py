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
