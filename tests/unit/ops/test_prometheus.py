"""A real Prometheus against a running consumer, and the alert rules under promtool.

Prometheus and promtool come from Debian's ``prometheus`` package (``.ci/run``
installs it; by hand: ``apt-get install prometheus``). A consumer runs on the
embedded broker with its metrics endpoint on; Prometheus scrapes it every
second; then every query of the Grafana dashboard must return at least one
series. Series that only appear after rare events (a failed model load, a
challenger, evictions) are filled by calling every ``Metrics`` method once on
the consumer's own metrics, as ``tests/unit/ops/test_static_ops.py`` does for names.
``promtool check rules`` accepts deploy/prometheus/alerts.yml and ``promtool
test rules`` passes deploy/prometheus/alerts_test.yml.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "deploy" / "prometheus"

needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("promtool") is None,
    reason="Prometheus is not installed (apt-get install prometheus; .ci/run does it)",
)


@needs_prometheus
def test_promtool_accepts_and_unit_tests_the_alert_rules() -> None:
    check = subprocess.run(["promtool", "check", "rules", str(RULES / "alerts.yml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout
    unit = subprocess.run(["promtool", "test", "rules", "alerts_test.yml"], cwd=RULES,
                          capture_output=True, text=True, timeout=60)
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert "SUCCESS" in unit.stdout






