"""Cost of what makes alerts actionable: explanations, incidents and drift, per event.

A model on the ``flows`` recipe scores generator traffic; for micro-batches of
5,000 events with 1% of them actionable alerts, the three stages are timed on
their own: ``Baseline.explain`` of the alert rows, ``Incidents.add`` of the
batch, and ``DriftWatch``-style counting (``Drift.add``) of every scored row.
Amortized over all events of the batch, as the consumer pays them.

    python -m bench.alerts_compute [--rows 5000] [--rate 0.01] [--repeat 50]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from stream.features import RecordColumns
from stream.features.recipes import recipe
from stream.generate import generate_flows
from stream.ops.drift import Drift
from stream.outcomes.incidents import Incidents
from stream.outcomes.records import explanation_member
from stream.registry import build_pipeline
from stream.scoring.baseline import Baseline


class _Outcome:
    """The parts of a BatchOutcome that incidents read."""

    def __init__(self, n: int, rows: np.ndarray, X: np.ndarray, ex: dict[int, Any]) -> None:
        self.topic = "flows"
        self.alert_rows = rows
        self.levels = np.zeros(n, dtype=np.int8)
        self.levels[rows] = 2
        self.scores = np.full(n, -0.3)
        self.partitions = np.zeros(n, dtype=np.int64)
        self.offsets = np.arange(n, dtype=np.int64)
        self.model_index = np.zeros(n, dtype=np.int32)
        self.models = [type("M", (), {"name": "m", "version": "1"})()]
        self.explanations = ex
        self.decoded = type("D", (), {"tenants": ["acme"] * n})()


def measure(rows: int = 5000, rate: float = 0.01, repeat: int = 50) -> dict[str, float]:
    normal = list(generate_flows(6000, ("acme",), seed=5, attack_rate=0.0))
    spec = recipe("flows").fit(RecordColumns(normal))
    X = spec.compute(RecordColumns(normal), tenants=["acme"] * len(normal)).X
    pipe = build_pipeline(100, 0.1, 42)
    pipe.fit(X)
    baseline = Baseline.fit(X, pipe.decision_function(X), spec.columns)
    events = list(generate_flows(rows, ("acme",), seed=9, attack_rate=0.04))
    source = RecordColumns(events)
    Xb = spec.compute(source, tenants=["acme"] * rows).X
    scores = pipe.decision_function(Xb)
    alert_rows = np.argsort(scores)[: max(1, int(rate * rows))]
    alert_rows.sort()
    timings: dict[str, list[float]] = {"explain": [], "incidents": [], "drift": []}
    size = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        ex = baseline.explain(Xb[alert_rows])
        members = [explanation_member(e) for e in ex]
        t1 = time.perf_counter()
        inc = Incidents()
        inc.add(_Outcome(rows, alert_rows, Xb, dict(zip(alert_rows.tolist(), ex, strict=True))),
                source)
        inc.commit()
        t2 = time.perf_counter()
        Drift(baseline, window=10 * rows).add(Xb, scores, len(alert_rows))
        t3 = time.perf_counter()
        timings["explain"].append(t1 - t0)
        timings["incidents"].append(t2 - t1)
        timings["drift"].append(t3 - t2)
        size = int(np.mean([len(m) for m in members]))
    out = {f"{k}_us": min(v) / rows * 1e6 for k, v in timings.items()}
    out.update({"rows": rows, "alerts": len(alert_rows), "explanation_bytes": size})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--rate", type=float, default=0.01)
    ap.add_argument("--repeat", type=int, default=50)
    a = ap.parse_args()
    m = measure(a.rows, a.rate, a.repeat)
    print(f"{m['alerts']} alerts in a batch of {m['rows']:,} events "
          f"({m['alerts'] / m['rows']:.1%}), per event of the batch:")
    print(f"explanations {m['explain_us']:.3f} us (target <= 1), incidents "
          f"{m['incidents_us']:.3f} us, drift {m['drift_us']:.3f} us; an explanation adds "
          f"{m['explanation_bytes']} bytes to its alert")


if __name__ == "__main__":
    main()
