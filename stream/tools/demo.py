"""``stream demo``: the whole system on one machine with nothing to set up.

Embedded broker on a free port, a local SQLite registry in a working
directory, synthetic flows for three tenants with injected attacks (one tenant
served by the global model), models trained with the default recipe (``network``:
sizes, rarity in the training traffic, novelty, fan-out and beacons) and detector
(``ensemble``: the forest and HBOS) and promoted,
the consumer run, the traffic pushed (keyed by tenant, so that each tenant's
windows see all of its events), and a summary printed: alerts per tenant and
level, and per attack kind the share of its events alerted, at the alert
threshold and at 1% false positives on normal events.
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
from confluent_kafka import TopicPartition
from rich.console import Console
from rich.table import Table

from stream import registry
from stream.config import Settings
from stream.consumer import service
from stream.features.recipes import DEFAULT_RECIPE, recipe
from stream.generate import ATTACK_LABELS, generate_flows
from stream.kafka.clients import new_consumer, new_producer, value_of
from stream.kafka.embedded import EmbeddedBroker
from stream.outcomes.records import LEVEL_NAMES
from stream.registry.training import DEFAULT_DETECTOR

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
            incident_topic="alerts.incidents",
        )
        broker.create_topics([settings.input_topic], partitions=3)
        broker.create_topics(
            [settings.alert_topic, settings.dlq_topic, settings.incident_topic], partitions=1
        )
        console.print(f"[bold]embedded broker[/] on {broker.bootstrap}; registry {uri}")

        rates = (0.002, 0.01, 0.03)
        spec = recipe(DEFAULT_RECIPE)
        with console.status("training models (global + per tenant)..."):
            # Normal traffic only, interleaved across tenants as the live stream is, so
            # the windows learn each tenant's real rates.
            mixed = list(generate_flows(9000, tenants, seed=seed + 10, attack_rate=0.0))
            own = list(generate_flows(20000, tenants, seed=seed + 1, attack_rate=0.0))
            trained = [
                registry.train(mixed, uri=uri, features=spec, detector=DEFAULT_DETECTOR,
                               calibrate=rates, do_promote=True)
            ]
            for t in OWN_MODEL_TENANTS:
                trained.append(
                    registry.train(
                        [r for r in own if r["tenant_id"] == t],
                        tenant=t,
                        uri=uri,
                        features=spec,
                        detector=DEFAULT_DETECTOR,
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
        alerted = _alerted(broker.bootstrap, settings.alert_topic)
        incident_records = _records(broker.bootstrap, settings.incident_topic)

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
        "attack_events_alerted": sum(1 for lab, _t, _s in alerted if lab != "normal"),
        "detection": detection(flows, alerted),
        "incident_records": len(incident_records),
        "incidents": len({r["incident_id"] for r in incident_records}),
        "actionable_alerts": sum(
            n for (_t, lv), n in stats.alerts_by.items() if lv in ("medium", "high", "critical")
        ),
        "seconds": round(elapsed, 1),
    }
    _print_summary(console, stats.alerts_by, summary, tenants)
    if stats.consumed != produced:
        raise RuntimeError(f"consumed {stats.consumed} of {produced} events before the deadline")
    return summary


def _produce(bootstrap: str, topic: str, flows: list[dict[str, Any]]) -> int:
    p = new_producer({"bootstrap.servers": bootstrap, "linger.ms": 10})
    values = [orjson.dumps(f) for f in flows]
    # Malformed records spread through the stream, to show they cost nothing but themselves.
    step = max(1, len(values) // (len(BAD_RECORDS) + 1))
    for k, bad in enumerate(BAD_RECORDS):
        values.insert((k + 1) * step, bad)
    keys: list[bytes | None] = [str(f["tenant_id"]).encode() for f in flows]
    for k in range(len(BAD_RECORDS)):
        keys.insert((k + 1) * step, None)
    for v, key in zip(values, keys, strict=True):
        while True:
            try:
                # Keyed by tenant: a tenant's events share a partition, so its windows
                # (which are per partition) see every one of them.
                p.produce(topic, v, key=key)
                break
            except BufferError:
                p.poll(0.1)
    p.flush(30)
    return len(values)


def detection(
    flows: list[dict[str, Any]], alerted: list[tuple[str, str, float]], fpr: float = 0.01
) -> dict[str, Any]:
    """Per attack kind, the share of its events alerted: at the alert threshold, and at
    ``fpr`` false positives on normal events (per tenant, the score cut that alerts that
    share of the tenant's normal events; the alerts carry the scores needed whenever
    at least that share of normal events was alerted, else every alert counts).
    """
    total: Counter[str] = Counter(f["label"] for f in flows)
    normal_by_tenant: Counter[str] = Counter(
        f["tenant_id"] for f in flows if f["label"] == "normal"
    )
    by_tenant: dict[str, list[tuple[float, str]]] = {}
    for label, tenant, score in alerted:
        by_tenant.setdefault(tenant, []).append((score, label))
    at_alert: Counter[str] = Counter(label for label, _t, _s in alerted)
    at_cut: Counter[str] = Counter()
    for tenant, items in by_tenant.items():
        normal_scores = sorted(s for s, lab in items if lab == "normal")
        k = int(fpr * normal_by_tenant[tenant])
        cut = normal_scores[k - 1] if 0 < k <= len(normal_scores) else float("inf")
        if k == 0:
            cut = min(s for s, _ in items) - 1.0
        for score, label in items:
            if score <= cut:
                at_cut[label] += 1
    kinds = [k for k in ATTACK_LABELS if total[k]]
    normal = total["normal"] or 1
    return {
        "recall_at_alert": {k: round(at_alert[k] / total[k], 3) for k in kinds},
        "recall_at_fpr": {k: round(at_cut[k] / total[k], 3) for k in kinds},
        "events": {k: total[k] for k in kinds},
        "fpr_at_alert": round(at_alert["normal"] / normal, 4),
        "fpr_at_cut": round(at_cut["normal"] / normal, 4),
        "fpr_target": fpr,
    }


def _alerted(bootstrap: str, topic: str) -> list[tuple[str, str, float]]:
    """(label, tenant, score) of each alert on the topic (events carry their label along)."""
    return [
        (str(a["event"].get("label", "?")), str(a["tenant_id"]), float(a["anomaly_score"]))
        for a in _records(bootstrap, topic)
    ]


def _records(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every record on the (one-partition) topic, decoded."""
    c = new_consumer({"bootstrap.servers": bootstrap, "group.id": "stream-demo-reader",
                      "enable.auto.commit": False})
    _low, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    c.assign([TopicPartition(topic, 0, 0)])
    out: list[dict[str, Any]] = []
    seen = 0
    deadline = time.monotonic() + 30
    while seen < high and time.monotonic() < deadline:
        for m in c.consume(5000, 1.0):
            if m.error():
                continue
            seen += 1
            out.append(orjson.loads(value_of(m)))
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
    det = summary["detection"]
    kinds = Table(title="detection per attack kind (share of its events alerted)")
    kinds.add_column("attack kind")
    kinds.add_column("events", justify="right")
    kinds.add_column("at alert threshold", justify="right")
    kinds.add_column(f"at {det['fpr_target']:.0%} false positives", justify="right")
    for k, n in det["events"].items():
        kinds.add_row(
            k, str(n), f"{det['recall_at_alert'][k]:.2f}", f"{det['recall_at_fpr'][k]:.2f}"
        )
    kinds.add_row(
        "normal (false positives)", "", f"{det['fpr_at_alert']:.2%}", f"{det['fpr_at_cut']:.2%}"
    )
    console.print(kinds)
    console.print(
        f"incidents: {summary['actionable_alerts']} alerts grouped into {summary['incidents']} "
        f"incidents ({summary['incident_records']} incident records, by source address)"
    )
    console.print(
        f"attack events alerted: {summary['attack_events_alerted']} of {summary['attack_events']}"
        f"; demo took {summary['seconds']} s"
    )
