"""The design note's method as a plain batch consumer process, for the CPU comparison.

What a team would write from the note: ``consume(10000)`` batches, ``json.loads``
per message, events grouped by tenant, each tenant's production model loaded
once with ``mlflow.sklearn.load_model`` (global model when a tenant has none),
``detect_anomalies`` as the note writes it (``bench.design_note``), one JSON
alert produced per result at or above the minimum threat level (the note's own
cut-offs), then a synchronous commit. Not a product: the yardstick of
``bench.cpu_e2e``.

    python -m bench.design_note_consumer BOOTSTRAP TOPIC GROUP ALERT_TOPIC MODEL MIN_LEVEL
"""

from __future__ import annotations

import json
import signal
import sys
from collections import defaultdict
from typing import Any

LEVELS = ["low", "medium", "high", "critical"]


def main(argv: list[str]) -> int:
    bootstrap, topic, group, alert_topic, model_name, min_level = argv
    import mlflow
    from confluent_kafka import Consumer, Producer
    from mlflow import MlflowClient

    from bench.design_note import DesignNoteDetector

    stop = []
    signal.signal(signal.SIGTERM, lambda *_a: stop.append(1))
    client = MlflowClient()
    detectors: dict[str, DesignNoteDetector | None] = {}

    def detector(tenant: str) -> DesignNoteDetector | None:
        if tenant not in detectors:
            model = None
            for name in (f"{model_name}_{tenant}", model_name):
                try:
                    v = client.get_model_version_by_alias(name, "production")
                except Exception:
                    continue
                model = mlflow.sklearn.load_model(f"models:/{name}/{v.version}")
                break
            detectors[tenant] = DesignNoteDetector(model) if model is not None else None
        return detectors[tenant]

    floor = LEVELS.index(min_level)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False, "auto.offset.reset": "earliest",
                  "session.timeout.ms": 6000})
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    c.subscribe([topic])
    while not stop:
        msgs = [m for m in c.consume(10000, 0.2) if not m.error()]
        if not msgs:
            continue
        by_tenant: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for m in msgs:
            event = json.loads(m.value())
            by_tenant[str(event.get("tenant_id", ""))].append(event)
        for tenant, events in by_tenant.items():
            det = detector(tenant)
            if det is None:
                continue
            for r in det.detect_anomalies(events):
                if LEVELS.index(r["threat_level"]) >= floor:
                    p.produce(alert_topic, json.dumps(r, default=str).encode())
                    p.poll(0)
        p.flush(30)
        c.commit(asynchronous=False)
    c.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
