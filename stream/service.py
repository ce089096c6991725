"""Wires settings, registry, model table, metrics and the loop into one consumer process.

``build`` returns a ready ``Pipeline`` (used by ``stream run``, the demo and the
tests); ``serve`` adds signal handling: SIGINT/SIGTERM finish the batch in
flight, deliver it, commit, and exit 0.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import MutableMapping
from typing import Any

from stream import registry
from stream.config import Settings
from stream.kafka import create_topics
from stream.models import ModelTable
from stream.pipeline import Pipeline, RunStats

log = logging.getLogger(__name__)


# MLflow's HTTP client retries a failed request 7 times with exponential backoff and
# waits up to 120 s per attempt: a registry call to a server that is down takes about
# four minutes to fail. The watcher retries on its own schedule, so the client should
# fail fast instead: the watcher notices an outage within one poll and picks changes up
# again within a few polls of the registry's return. Each variable is only set when the
# user has not set it; the client reads them on every request.
MLFLOW_HTTP_DEFAULTS: dict[str, str] = {
    # One immediate retry absorbs a keep-alive connection the server closed meanwhile.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    # Seconds without an answer before a request fails: bounds a hung server.
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


def mlflow_http_defaults(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the consumer's MLflow HTTP client defaults where unset; returns what it set."""
    env = os.environ if environ is None else environ
    applied = {k: v for k, v in MLFLOW_HTTP_DEFAULTS.items() if k not in env}
    env.update(applied)
    return applied


def build_table(settings: Settings, metrics: Any | None = None) -> ModelTable:
    """The model table for ``settings``, its loads and failures reported to ``metrics``."""
    applied = mlflow_http_defaults()
    if applied:
        log.debug("MLflow HTTP client defaults: %s", applied)
    uri = settings.tracking_uri
    base = settings.model_name

    def on_swap(ev: Any) -> None:
        if metrics is None:
            return
        if ev.to_version is not None:
            metrics.set_model(ev.model, ev.to_version)
            metrics.record_reload(ev.model, True, ev.load_seconds)
        else:  # demoted: its tenant is back on the global model
            metrics.remove_model(ev.model)

    def on_failure(name: str, _version: str, _reason: str) -> None:
        if metrics is not None:
            metrics.record_reload(name, False, 0.0)

    return ModelTable(
        base,
        poller=lambda: registry.poll(base, uri=uri),
        loader=lambda name, version: registry.load_version(
            name, version, uri=uri, trusted=settings.trust_types
        ),
        schema=settings.input_schema,
        cache_size=settings.model_cache_size,
        on_swap=on_swap,
        on_failure=on_failure,
    )


def first_refresh(table: ModelTable, *, timeout: float = 120.0) -> None:
    """Ask the registry once before consuming; retry while it is unreachable."""
    deadline = time.monotonic() + timeout
    delay = 1.0
    while True:
        try:
            view = table.refresh()
        except Exception as e:
            if time.monotonic() > deadline:
                raise RuntimeError(f"model registry unreachable: {e}") from e
            log.warning("model registry unreachable (%s); retrying in %.0fs", str(e)[:200], delay)
            time.sleep(delay)
            delay = min(delay * 2, 15.0)
            continue
        if table.base_name not in view.production:
            log.warning(
                "no production version of the global model %r: events of tenants without "
                "their own model go to the dead-letter topic",
                table.base_name,
            )
        log.info(
            "registry: %d production models (%d registry requests)",
            len(view.production),
            view.requests,
        )
        return


def build(
    settings: Settings,
    *,
    metrics: Any | None = None,
    health: Any | None = None,
    create_missing_topics: bool = False,
    **kwargs: Any,
) -> Pipeline:
    """A pipeline with its model table refreshed and the registry watcher running."""
    if create_missing_topics:
        topics = [settings.input_topic, settings.alert_topic, settings.dlq_topic]
        if settings.shadow_topic:
            topics.append(settings.shadow_topic)
        created = create_topics(
            settings.kafka_common(),
            topics,
            settings.topic_partitions,
            settings.topic_replication_factor,
        )
        # Keyed by incident id, the latest record per key is what counts: compacted. (The
        # window changelog is created on first use, with the input topic's partitions.)
        created += create_topics(
            settings.kafka_common(),
            [settings.incident_topic] if settings.incident_topic else [],
            settings.topic_partitions,
            settings.topic_replication_factor,
            config={"cleanup.policy": "compact"},
        )
        if created:
            log.info("created topics %s", ", ".join(created))
    table = build_table(settings, metrics)
    first_refresh(table)
    table.start(settings.reload_interval)
    return Pipeline(settings, table, metrics=metrics, health=health, **kwargs)


def serve(settings: Settings, *, create_missing_topics: bool = False) -> RunStats:
    """Run a consumer until SIGINT/SIGTERM; returns its totals."""
    metrics = health = None
    if settings.metrics_port:
        from stream.metrics import HealthServer, Metrics

        metrics = Metrics()
        health = HealthServer(settings.metrics_port, metrics)
        health.start()
        health.set_ready(False, "starting")
    pipeline = build(
        settings, metrics=metrics, health=health, create_missing_topics=create_missing_topics
    )

    def stop(signum: int, _frame: Any) -> None:
        log.info(
            "signal %s: finishing the batch in flight, then exiting", signal.Signals(signum).name
        )
        pipeline.stop_event.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    log.info(
        "consuming %s -> alerts %s, dead letters %s (group %s, delivery %s, min level %s)",
        settings.input_topic,
        settings.alert_topic,
        settings.dlq_topic,
        settings.group_id,
        settings.delivery,
        settings.min_level,
    )
    try:
        stats = pipeline.run()
    finally:
        pipeline.table.stop()
        if health is not None:
            health.stop()
    log.info(
        "stopped: consumed %d, alerts %d, below threshold %d, dead letters %d",
        stats.consumed,
        stats.alerts,
        stats.below_threshold,
        stats.dead_letters,
    )
    return stats
