"""Operators' views of the topics: ``stream dead-letters`` and ``stream alerts --summary``.

On the real embedded broker and registry: a run with good and bad records, then the
two commands read back what it published, as an operator would.
"""

from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner

from stream.cli import main
from stream.consumer import service
from tests import faultutil as fu
from tests.kafkautil import produce

pytestmark = pytest.mark.integration


def test_dead_letters_and_alert_summary_read_back_what_the_run_published(
    broker: fu.EmbeddedBroker, tracking_uri: str, unique: str
) -> None:
    model = fu.shared_model(tracking_uri)
    topics = fu.Topics(unique)
    topics.create(broker, input_partitions=1)
    bad = [b"{not json", b"[1, 2]", b'{"tenant_id": "acme", "bytes_transferred": "lots"}']
    good = fu.flow_values(400, seed=3, hostile_every=10**9)
    n = produce(broker.bootstrap, topics.input, [*good, *bad])
    s = fu.settings(broker.bootstrap, topics, tracking_uri, model)
    pipeline = service.build(s)
    thread = fu.start(pipeline)
    fu.wait_until(lambda: pipeline.stats.consumed >= n, 60, "all consumed")
    fu.stop(pipeline, thread)
    runner = CliRunner()

    r = runner.invoke(main, ["dead-letters", "--bootstrap-servers", broker.bootstrap,
                             "--topic", topics.dlq, "--json"])
    assert r.exit_code == 0, r.output
    rows = [orjson.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert sorted(x["reason"] for x in rows) == ["malformed_json", "non_numeric_feature",
                                                 "not_object"]
    by = {x["reason"]: x for x in rows}
    assert by["malformed_json"]["preview"] == "{not json"
    assert by["non_numeric_feature"]["source"].startswith(f"{topics.input}/0/")
    assert "bytes_transferred" in by["non_numeric_feature"]["detail"]
    r = runner.invoke(main, ["dead-letters", "--bootstrap-servers", broker.bootstrap,
                             "--topic", topics.dlq, "--summary", "--json"])
    assert orjson.loads(r.stdout.strip().splitlines()[-1]) == {
        "malformed_json": 1, "not_object": 1, "non_numeric_feature": 1}

    r = runner.invoke(main, ["alerts", "--bootstrap-servers", broker.bootstrap, "--topic",
                             topics.alerts, "--from-beginning", "--summary", "--json"])
    assert r.exit_code == 0, r.output
    per = orjson.loads(r.stdout.strip().splitlines()[-1])
    assert sum(sum(v.values()) for v in per.values()) == pipeline.stats.alerts
    for (tenant, level), count in pipeline.stats.alerts_by.items():
        assert per[tenant][level] == count
