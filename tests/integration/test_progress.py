"""A consumer that cannot make progress says so, and resumes by itself when the cause goes.

The part that needs a real broker, registry or child process; the rest, and what
it all means, is in ``tests/unit/tools/test_progress.py``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from urllib.parse import urlparse

import orjson
import pytest
from click.testing import CliRunner

from stream import registry
from stream.cli import main
from stream.consumer import service
from stream.generate import generate_flows, training_flows, write_jsonl
from stream.kafka.embedded import EmbeddedBroker
from stream.ops.metrics import HealthServer, Metrics
from tests import faultutil as fu

# ---- Progress ------------------------------------------------------------------------------










# ---- the cause in words -----------------------------------------------------------------------






# ---- a fatal producer error: a new producer, the batch redone ------------------------------










# ---- on the real broker and registry ----------------------------------------------------------


@pytest.fixture(scope="module")
def model(tracking_uri: str) -> str:
    return fu.shared_model(tracking_uri)


def test_a_missing_alert_topic_is_named_and_progress_resumes_once_it_exists(
    broker: EmbeddedBroker, tracking_uri: str, model: str, unique: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    topics = fu.Topics(unique)
    topics.create(broker, 3)
    # The alert topic the consumer writes to is missing, and the broker must not make it
    # up on first use (a real cluster with auto-creation off; Tansu creates topics a
    # producer asks about unless told not to). (Tansu acknowledges writes to a topic
    # deleted after a producer first used it, so "deleted" cannot be played here.)
    topics.alerts += "-late"
    feed = fu.PacedProducer(broker.bootstrap, topics.input, fu.flow_values(60000, seed=31), 2000)
    feed.start()
    metrics = Metrics()
    health = HealthServer(0, metrics, host="127.0.0.1")
    health.start()
    s = fu.settings(broker.bootstrap, topics, tracking_uri, model, stall_after=3.0,
                    kafka_properties=(("allow.auto.create.topics", "false"),
                                      ("message.timeout.ms", "4000")))
    pipeline = service.build(s, metrics=metrics, health=health)
    thread = fu.start(pipeline)
    try:
        with caplog.at_level(logging.WARNING, logger="stream.ops.accounting"):
            fu.wait_until(lambda: health.readiness()[0] == 503 and "does not exist"
                          in health.readiness()[1], 60, "readiness to name the missing topic",
                          state=health.readiness)
        _status, text = health.readiness()
        assert f"topic '{topics.alerts}' does not exist" in text, text
        named = [r.getMessage() for r in caplog.records if "no progress" in r.getMessage()]
        # First that the batch waits (after --stall-after), then why, once librdkafka gives
        # the records up: one line each, not one per failed batch.
        assert any(f"topic '{topics.alerts}' does not exist" in m for m in named), named
        assert len(named) <= 3, named
        assert pipeline.stats.consumed == 0 and pipeline.stats.dead_letters == 0
        time.sleep(2)
        stalled = metrics.stalled._value.get()
        assert stalled > 0
        broker.create_topics([topics.alerts], partitions=3)
        created = time.monotonic()
        fu.wait_until(lambda: pipeline.stats.consumed > 0, 60, "batches to go through")
        resumed = time.monotonic() - created
        fu.wait_until(lambda: health.readiness()[0] == 200, 30, "ready again",
                      state=health.readiness)
        n = feed.stop()
        fu.wait_until(lambda: pipeline.stats.consumed >= n, 120, "the rest of the input")
    finally:
        feed.stop()
        fu.stop(pipeline, thread)
        health.stop()
    led = fu.ledger(broker.bootstrap, topics)
    assert len(led.inputs) == n and not led.lost and led.inexact() == []
    print(f"\nmissing alert topic: stalled {stalled:.1f} s counted before it was created, "
          f"first commit {resumed:.1f} s after; {n} events, lost 0, duplicates "
          f"{led.duplicates} (dead letters of redone batches)")


def _remove_artifacts(uri: str, name: str, version: str) -> None:
    """Delete a registered version's files from the artifact store (a lost bucket)."""
    c = registry.client(uri)
    location = c.get_model_version_download_uri(name, version)
    if location.startswith("models:/"):
        model_id = location.split("/")[1]
        location = c.get_logged_model(model_id).artifact_location
    path = Path(urlparse(location).path)
    assert path.is_dir(), location
    shutil.rmtree(path)


def test_models_that_do_not_load_hold_the_input_back_instead_of_dead_lettering_it(
    broker: EmbeddedBroker, tracking_uri: str, unique: str, tmp_path: Path,
) -> None:
    base = "gone_" + os.urandom(3).hex()
    flows = [r for t in fu.TENANTS for r in training_flows(t, 600, seed=4)]
    registry.train(flows, model_name=base, uri=tracking_uri, n_estimators=20, do_promote=True)
    _remove_artifacts(tracking_uri, base, "1")
    topics = fu.Topics(unique)
    topics.create(broker, 2)
    n = fu.fill(broker.bootstrap, topics.input, 3000, seed=5, hostile_every=10**9)
    metrics = Metrics()
    health = HealthServer(0, metrics, host="127.0.0.1")
    health.start()
    s = fu.settings(broker.bootstrap, topics, tracking_uri, base, reload_interval=1.0)
    pipeline = service.build(s, metrics=metrics, health=health)
    pipeline.table.retry_backoff = (0.5, 1.0)  # the watcher retries the load soon
    thread = fu.start(pipeline)
    try:
        fu.wait_until(lambda: "models not loaded" in health.readiness()[1], 60,
                      "readiness to say the model is not loaded", state=health.readiness)
        text = health.readiness()[1]
        assert f"{base} v1" in text and "download failed" in text, text
        assert tracking_uri.removeprefix("sqlite:///") in text, text  # where it looked
        time.sleep(3)  # batch after batch waits; none is scored, committed or dead-lettered
        assert pipeline.stats.consumed == 0 and pipeline.stats.dead_letters == 0
        assert all(o < 0 for o in fu.committed(broker.bootstrap, topics.group,
                                               topics.input).values())
        # A version that loads is promoted: the watcher swaps it in and the input flows.
        registry.train(flows, model_name=base, uri=tracking_uri, n_estimators=20,
                       do_promote=True)
        fu.wait_until(lambda: pipeline.stats.consumed >= n, 120, "the input scored")
        fu.wait_until(lambda: health.readiness()[0] == 200, 30, "ready again",
                      state=health.readiness)
    finally:
        fu.stop(pipeline, thread)
        health.stop()
    assert pipeline.stats.dead_letters == 0
    alerts = [orjson.loads(m.value()) for m in fu.read_topic(broker.bootstrap, topics.alerts)]
    assert {a["model"]["version"] for a in alerts} == {"2"} and len(alerts) >= n


def test_stream_score_says_which_model_it_could_not_load(
    tracking_uri: str, tmp_path: Path
) -> None:
    base = "gone_" + os.urandom(3).hex()
    flows = training_flows("acme", 600, seed=4)
    registry.train(flows, model_name=base, uri=tracking_uri, n_estimators=20, do_promote=True)
    _remove_artifacts(tracking_uri, base, "1")
    path = tmp_path / "flows.jsonl"
    write_jsonl(path, list(generate_flows(200, ("acme",), seed=6)))
    r = CliRunner().invoke(main, ["score", str(path), "-o", str(tmp_path / "out.jsonl"),
                                  "--model-name", base, "--tracking-uri", tracking_uri])
    assert r.exit_code == 1, r.output
    assert f"models not loaded from the registry at {tracking_uri}" in r.output
    assert f"{base} v1" in r.output and "download failed" in r.output
    assert "Traceback" not in r.output
