"""Wires settings, registry, model table, metrics and the loop into one consumer process.

``build`` returns a ready ``Pipeline`` (used by ``stream run``, the demo and the
tests); ``serve`` adds signal handling: SIGINT/SIGTERM finish the batch in
flight, deliver it, commit, and exit 0.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from stream import registry
from stream.config import Settings
from stream.consumer.loop import Pipeline, RunStats
from stream.errors import StreamError
from stream.kafka.clients import create_topics
from stream.models.table import ModelTable
from stream.ops import failures
from stream.ops.accounting import HealthSink
from stream.registry.model_store import ModelStore

if TYPE_CHECKING:  # imported when metrics are on (prometheus_client takes a while)
    from stream.ops.metrics import HealthServer, Metrics

log = logging.getLogger(__name__)


class Stopped(StreamError):
    """Asked to stop while still waiting for the broker or the registry."""


def build_table(settings: Settings, metrics: Metrics | None = None) -> ModelTable:
    """The model table for ``settings``, its loads and failures reported to ``metrics``."""
    applied = failures.mlflow_http_defaults()
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

    store = ModelStore(settings.model_storage_path) if settings.model_storage_path else None
    polled = [False]

    def poller() -> registry.RegistryView:
        try:
            view = registry.poll(base, uri=uri)
        except Exception as e:
            kept = store.load_view() if store is not None and not polled[0] else None
            if kept is None:
                raise
            production, challenger, saved = kept
            if not polled[0] and not getattr(poller, "warned", False):
                poller.warned = True  # type: ignore[attr-defined]
                log.warning(
                    "model registry unreachable (%s): serving the production versions it "
                    "named at %s, from the model store %s, until it answers",
                    failures.brief(e),
                    time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(saved)),
                    settings.model_storage_path,
                )
            return registry.RegistryView(production, challenger, 0)
        if not polled[0] and getattr(poller, "warned", False):
            log.info("model registry answering: its view replaces the model store's")
        polled[0] = True
        if store is not None:
            store.save_view(view)
        return view

    return ModelTable(
        base,
        poller=poller,
        loader=lambda name, version: registry.load_version(
            name, version, uri=uri, trusted=settings.trust_types, store=store
        ),
        schema=settings.input_schema,
        cache_size=settings.model_cache_size,
        on_swap=on_swap,
        on_failure=on_failure,
        uri=uri,
    )


def first_refresh(
    table: ModelTable, *, stop: threading.Event | None = None, timeout: float | None = None
) -> None:
    """Ask the registry once before consuming; wait while it is unreachable.

    A consumer must outlive an outage: it waits as long as it takes (``timeout`` bounds
    it, for callers that want a bound), saying so once and then at growing intervals,
    and raises ``Stopped`` as soon as ``stop`` is set.
    """
    stop = stop or threading.Event()
    outage = failures.OutageLog(f"model registry at {table.where}")
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 1.0
    while True:
        try:
            view = table.refresh()
        except Exception as e:
            if deadline is not None and time.monotonic() >= deadline:
                raise RuntimeError(f"model registry unreachable: {e}") from e
            outage.failed(failures.brief(e))
            if stop.wait(delay):
                raise Stopped() from None
            delay = min(delay * 2, 15.0)
            continue
        outage.recovered()
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
    metrics: Metrics | None = None,
    health: HealthSink | None = None,
    create_missing_topics: bool = False,
    stop: threading.Event | None = None,
    **kwargs: Any,
) -> Pipeline:
    """A pipeline with its model table refreshed and the registry watcher running.

    With ``stop``, it first waits for the broker and the registry for as long as they
    take (``Stopped`` when ``stop`` is set meanwhile).
    """
    if stop is not None:
        conf = settings.kafka_common()
        what = f"Kafka at {settings.bootstrap_servers}"

        def probe() -> str | None:
            problem = failures.kafka_problem(conf, settings.kafka_timeout,
                                             settings.connect_timeout)
            if problem and health is not None:
                # /readyz names the cause (a refused certificate, a wrong CA) while waiting.
                health.set_ready(False, f"waiting for {what}: {problem}")
            return problem

        reachable = failures.wait_until_reachable(probe, what, stop)
        if not reachable:
            raise Stopped()
    if create_missing_topics:
        topics = [settings.input_topic, settings.alert_topic, settings.dlq_topic]
        if settings.shadow_topic:
            topics.append(settings.shadow_topic)
        if settings.drift_topic:
            topics.append(settings.drift_topic)
        created = create_topics(
            settings.kafka_common(),
            topics,
            settings.topic_partitions,
            settings.topic_replication_factor,
        )
        # Keyed by incident id (entity alerts: by tenant and entity), the latest record per
        # key is what counts: compacted. (The
        # window changelog is created on first use, with the input topic's partitions.)
        created += create_topics(
            settings.kafka_common(),
            [t for t in (settings.incident_topic, settings.entity_alert_topic) if t],
            settings.topic_partitions,
            settings.topic_replication_factor,
            config={"cleanup.policy": "compact"},
        )
        if created:
            log.info("created topics %s", ", ".join(created))
    table = build_table(settings, metrics)
    # Subscribe first: the group join takes seconds on the broker's side (about half
    # the session timeout on the embedded broker, group.initial.rebalance.delay.ms on
    # Kafka) and runs in librdkafka's threads while MLflow is imported, the registry
    # asked and the models loaded. If the registry does not answer at once, the
    # consumer leaves again (its partitions go to members that can score) until it does.
    pipeline: Pipeline | None = Pipeline(settings, table, metrics=metrics, health=health,
                                         **kwargs)
    try:
        try:
            first_refresh(table, stop=stop, timeout=0)
        except RuntimeError:
            assert pipeline is not None
            pipeline.close()
            pipeline = None
            first_refresh(table, stop=stop)
        started = table.preload()
        if started:
            log.info("loading %d production models in the background", started)
        if pipeline is None:
            pipeline = Pipeline(settings, table, metrics=metrics, health=health, **kwargs)
    except BaseException:
        if pipeline is not None:
            pipeline.close()
        table.stop()
        raise
    table.start(settings.reload_interval)
    return pipeline


def serve(settings: Settings, *, create_missing_topics: bool = False) -> RunStats:
    """Run a consumer until SIGINT/SIGTERM; returns its totals.

    Signals are honoured from the start: while waiting for the broker or the registry,
    and while consuming (the batch in flight is finished first).
    """
    stop = threading.Event()
    running: list[Pipeline] = []

    def on_signal(signum: int, _frame: Any) -> None:
        log.info(
            "signal %s: finishing the batch in flight, then exiting", signal.Signals(signum).name
        )
        stop.set()
        for p in running:
            p.stop_event.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    metrics: Metrics | None = None
    health: HealthServer | None = None
    if settings.metrics_port:
        from stream.ops.metrics import HealthServer, Metrics

        metrics = Metrics()
        health = HealthServer(settings.metrics_port, metrics, host=settings.metrics_host)
        try:
            health.start()
        except OSError as e:
            raise failures.BadSetting(
                f"--metrics-port {settings.metrics_port}: cannot listen there "
                f"({e.strerror or e})"
            ) from None
        health.set_ready(False, "starting: waiting for the broker and the registry")
    try:
        pipeline = build(
            settings, metrics=metrics, health=health, create_missing_topics=create_missing_topics,
            stop=stop,
        )
    except Stopped:
        if health is not None:
            health.stop()
        log.info("stopped before consuming")
        return RunStats()
    running.append(pipeline)
    if stop.is_set():
        pipeline.stop_event.set()
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
