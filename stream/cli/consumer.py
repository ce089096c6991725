"""``stream run``, ``stream broker`` and ``stream demo``: the consumer, the embedded broker, the
whole system on one machine.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import click

from stream.cli.base import create_option, load_settings, log, main, settings_options
from stream.ops import logs


@main.command()
@settings_options()
@click.option(
    "--create-topics",
    is_flag=True,
    help="Create missing topics before consuming (--topic-partitions, "
    "--topic-replication-factor).",
)
@create_option
def run(create_topics: bool, create: bool, **kwargs: Any) -> None:
    """Consume flow events, score them with each tenant's production model, publish alerts."""
    from stream.consumer import service
    from stream.ops.failures import redact_uri, require_existing_registry

    settings = load_settings(**kwargs)
    log.info("registry %s", redact_uri(settings.tracking_uri))
    if not create:
        require_existing_registry(settings.tracking_uri, can_create=True)
    if kwargs.get("log_format"):  # `stream run --log-format` overrides the group-level option
        logs.setup(settings.log_format, logging.getLogger().level)
    service.serve(settings, create_missing_topics=create_topics)


@main.command()
@click.option("--port", default=9092, show_default=True, type=int)
@click.option(
    "--topics",
    default="flows,alerts,flows.dlq,alerts.feedback,alerts.incidents",
    show_default=True,
    help="Topics to create at start (comma-separated; empty for none): by default the "
    "input, alert, dead-letter, feedback and incident topics of the default settings.",
)
@click.option("--partitions", default=3, show_default=True, type=int)
def broker(port: int, topics: str, partitions: int) -> None:
    """Run the embedded Kafka-compatible broker (memory only) in the foreground."""
    import signal

    from stream.kafka.embedded import EmbeddedBroker, PortInUse
    from stream.ops.failures import BadSetting

    try:
        b = EmbeddedBroker(port, silent=False).start()
    except PortInUse as e:
        raise BadSetting(f"--port {port}: cannot listen there ({e}: is a broker running "
                         "already?)") from None
    names = [t for t in topics.split(",") if t]
    if names:
        b.create_topics(names, partitions=partitions)
    click.echo(
        f"broker listening on {b.bootstrap} (topics: {', '.join(names) or 'none'}); Ctrl-C stops it"
    )
    # The handler only signals the broker; the wait below returns once it has exited.
    signal.signal(signal.SIGTERM, lambda *_: b.terminate())
    try:
        b.wait()
    except KeyboardInterrupt:
        pass
    finally:
        b.stop()


@main.command()
@click.option("--events", default=20000, show_default=True, type=click.IntRange(100, 10_000_000))
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the local registry goes [default: a temporary directory].",
)
@click.option("--seed", default=7, show_default=True, type=int)
def demo(events: int, workdir: str | None, seed: int) -> None:
    """Everything locally: embedded broker, SQLite registry, trained models, traffic, alerts."""
    from stream.tools.demo import run_demo

    if workdir:
        run_demo(Path(workdir), events=events, seed=seed)
        return
    with tempfile.TemporaryDirectory(prefix="stream-demo-") as tmp:
        run_demo(Path(tmp), events=events, seed=seed)
