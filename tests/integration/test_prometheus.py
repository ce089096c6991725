"""A real Prometheus against a running consumer, and the alert rules under promtool.

The part that needs a real broker, registry or child process; the rest, and what
it all means, is in ``tests/unit/ops/test_prometheus.py``.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from stream.consumer import service
from stream.ops.metrics import HealthServer, Metrics
from tests import faultutil as fu
from tests.kafkautil import produce
from tests.servers import free_port
from tests.unit.ops.test_prometheus import RULES, needs_prometheus
from tests.unit.ops.test_static_ops import DASHBOARD, dashboard_exprs, exercise_all

ROOT = Path(__file__).resolve().parents[2]





def _query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def _grafana_vars(expr: str) -> str:
    """The dashboard's template variables, as Grafana would fill them."""
    return (expr.replace("$__rate_interval", "30s").replace("$__interval", "5s")
            .replace("$__range", "5m"))


@needs_prometheus
@pytest.mark.integration
def test_every_dashboard_query_returns_data_from_a_real_prometheus(
    broker: fu.EmbeddedBroker, tracking_uri: str, unique: str, tmp_path: Path
) -> None:
    model = fu.shared_model(tracking_uri)
    topics = fu.Topics(unique)
    topics.create(broker, input_partitions=2)
    metrics = Metrics()
    health = HealthServer(0, metrics, host="127.0.0.1")
    health.start()
    web = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: ['{RULES / 'alerts.yml'}']\n"
        "scrape_configs:\n"
        "  - job_name: stream\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{health.port}']}}]\n"
    )
    prom = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{web}"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    base = f"http://127.0.0.1:{web}"
    try:
        s = fu.settings(broker.bootstrap, topics, tracking_uri, model, metrics_port=health.port)
        pipeline = service.build(s, metrics=metrics, health=health)
        thread = fu.start(pipeline)
        n = produce(broker.bootstrap, topics.input, fu.flow_values(3000, seed=4))
        fu.wait_until(lambda: pipeline.stats.consumed >= n, 60, "all consumed")

        def scraped() -> bool:
            try:
                return bool(_query(base, 'up{job="stream"} == 1'))
            except OSError:
                return False

        fu.wait_until(scraped, 60, "Prometheus scraping the consumer")
        # The series of rare events (a failed load, a challenger, an eviction), twice, a
        # few scrapes apart, so that rate() and increase() have two samples.
        exercise_all(metrics)
        time.sleep(2.5)
        exercise_all(metrics)
        metrics.set_model("detector_acme", "8")  # a reload: the dashboard's annotation
        more = produce(broker.bootstrap, topics.input, fu.flow_values(2000, seed=5))
        fu.wait_until(lambda: pipeline.stats.consumed >= n + more, 60, "second burst consumed")
        time.sleep(3)
        exprs = dashboard_exprs(json.loads(DASHBOARD.read_text()))
        empty = [e for e in exprs if not _query(base, _grafana_vars(e))]
        print(f"\n{len(exprs)} dashboard queries against a real Prometheus: "
              f"{len(exprs) - len(empty)} return data")
        assert not empty, empty
        consumed = _query(base, "sum(stream_events_consumed_total)")
        # What the consumer counted, plus the 2 x 100 events exercise_all reports.
        assert float(consumed[0]["value"][1]) == pipeline.stats.consumed + 200
        fu.stop(pipeline, thread)
    finally:
        prom.terminate()
        prom.wait(timeout=30)
        health.stop()
