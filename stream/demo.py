"""``stream demo``: the whole system on one machine with nothing to set up.

Embedded broker on a free port, a local SQLite registry in a working
directory, synthetic flows for three tenants with injected attacks (one tenant
served by the global model), models trained and promoted, the consumer run,
the traffic pushed, and a summary of alerts per tenant and level printed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition
from rich.console import Console
from rich.table import Table

from stream import registry, service
from stream.config import Settings
from stream.embedded import EmbeddedBroker
from stream.generate import generate_flows, training_flows
from stream.outcomes import LEVEL_NAMES

log = logging.getLogger(__name__)

OWN_MODEL_TENANTS = ("acme", "globex")
FALLBACK_TENANT = "initech"
BAD_RECORDS = (
    b"{not json",
    b"[1, 2, 3]",
    b'{"bytes_transferred": 10, "packet_count": 1, "connection_duration": 0.1}',
    b'{"tenant_id": "acme", "bytes_transferred": "lots", "packet_count": 3, '
    b'"connection_duration": 1.0}',
    b'{"tenant_id": "no such tenant!", "bytes_transferred": 1}',
)


def run_demo(
    workdir: Path,
    *,
    events: int = 20000,
    seed: int = 7,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the demo end to end; returns the summary it prints."""
    console = console or Console()
    t_start = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{(workdir / 'mlflow.db').resolve()}"
    tenants = (*OWN_MODEL_TENANTS, FALLBACK_TENANT)
    with EmbeddedBroker() as broker:
        settings = Settings(
            bootstrap_servers=broker.bootstrap,
            tracking_uri=uri,
            group_id="stream-demo",
            session_timeout_ms=6000,
            batch_max_wait_ms=100,
            reload_interval=2.0,
        )
        broker.create_topics([settings.input_topic], partitions=3)
        broker.create_topics([settings.alert_topic, settings.dlq_topic], partitions=1)
        console.print(f"[bold]embedded broker[/] on {broker.bootstrap}; registry {uri}")

        rates = (0.002, 0.01, 0.03)
        with console.status("training models (global + per tenant)..."):
            mixed = [r for t in tenants for r in training_flows(t, 3000, seed=seed)]
            trained = [registry.train(mixed, uri=uri, calibrate=rates, do_promote=True)]
            for t in OWN_MODEL_TENANTS:
                trained.append(
                    registry.train(
                        training_flows(t, 3000, seed=seed + 1),
                        tenant=t,
                        uri=uri,
                        calibrate=rates,
                        do_promote=True,
                    )
                )
        for r in trained:
            console.print(f"trained and promoted [cyan]{r.model_name}[/] v{r.version}")

        pipeline = service.build(replace(settings))
        runner = threading.Thread(target=pipeline.run, name="consumer", daemon=True)
        runner.start()

        flows = list(generate_flows(events, tenants, seed=seed))
        produced = _produce(broker.bootstrap, settings.input_topic, flows)
        console.print(f"produced {produced} events ({len(BAD_RECORDS)} of them malformed)")
        deadline = time.monotonic() + 120
        with console.status("scoring..."):
            while pipeline.stats.consumed < produced and time.monotonic() < deadline:
                time.sleep(0.2)
        pipeline.stop_event.set()
        runner.join(timeout=30)
        pipeline.table.stop()
        stats = pipeline.stats
        labels = _alert_labels(broker.bootstrap, settings.alert_topic)

    elapsed = time.perf_counter() - t_start
    summary = {
        "produced": produced,
        "consumed": stats.consumed,
        "alerts": stats.alerts,
        "below_threshold": stats.below_threshold,
        "dead_letters": stats.dead_letters,
        "dead_letter_reasons": dict(stats.dead_by),
        "alerts_by_tenant_level": {
            f"{t}/{lv}": n for (t, lv), n in sorted(stats.alerts_by.items())
        },
        "attack_events": sum(1 for f in flows if f["label"] != "normal"),
        "attack_events_alerted": sum(n for lab, n in labels.items() if lab != "normal"),
        "seconds": round(elapsed, 1),
    }
    _print_summary(console, stats.alerts_by, summary, tenants)
    if stats.consumed != produced:
        raise RuntimeError(f"consumed {stats.consumed} of {produced} events before the deadline")
    return summary


def _produce(bootstrap: str, topic: str, flows: list[dict[str, Any]]) -> int:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 10})
    values = [orjson.dumps(f) for f in flows]
    # Malformed records spread through the stream, to show they cost nothing but themselves.
    step = max(1, len(values) // (len(BAD_RECORDS) + 1))
    for k, bad in enumerate(BAD_RECORDS):
        values.insert((k + 1) * step, bad)
    for v in values:
        while True:
            try:
                p.produce(topic, v)
                break
            except BufferError:
                p.poll(0.1)
    p.flush(30)
    return len(values)


def _alert_labels(bootstrap: str, topic: str) -> Counter[str]:
    """Labels of the events behind the alerts on the topic (attacks carry their label along)."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "stream-demo-reader",
            "enable.auto.commit": False,
        }
    )
    _low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    c.assign([TopicPartition(topic, 0, 0)])
    out: Counter[str] = Counter()
    seen = 0
    deadline = time.monotonic() + 30
    while seen < high and time.monotonic() < deadline:
        for m in c.consume(5000, 1.0):
            if m.error():
                continue
            seen += 1
            out[str(orjson.loads(m.value())["event"].get("label", "?"))] += 1
    c.close()
    return out


def _print_summary(
    console: Console,
    alerts_by: Counter[tuple[str, str]],
    summary: dict[str, Any],
    tenants: tuple[str, ...],
) -> None:
    table = Table(title="alerts per tenant and threat level")
    table.add_column("tenant")
    table.add_column("model")
    for lv in reversed(LEVEL_NAMES[1:]):
        table.add_column(lv, justify="right")
    table.add_column("total", justify="right")
    for t in tenants:
        row = [alerts_by.get((t, lv), 0) for lv in reversed(LEVEL_NAMES[1:])]
        model = "own" if t in OWN_MODEL_TENANTS else "global (fallback)"
        table.add_row(t, model, *map(str, row), str(sum(row)))
    console.print(table)
    console.print(
        f"events {summary['produced']}: alerts {summary['alerts']}, below threshold "
        f"{summary['below_threshold']}, dead letters {summary['dead_letters']} "
        f"{summary['dead_letter_reasons']}"
    )
    console.print(
        f"attack events alerted: {summary['attack_events_alerted']} of {summary['attack_events']}"
        f"; demo took {summary['seconds']} s"
    )
