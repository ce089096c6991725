"""Deduplication (--dedup-window): one published alert per tenant, entity and leading
feature per window of event time; the rest unpublished but counted, still adding risk;
the same in any batching and across a restore of the window store."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from stream.consumer.batch import process_batch
from stream.features import WindowStore
from stream.outcomes.dedup import Dedup
from stream.outcomes.risk import Risk
from stream.registry import LoadedModel
from stream.scoring.thresholds import DEFAULT_THRESHOLDS


class ByBytes:
    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return 0.25 - X[:, 0] / 1000.0


MODEL = LoadedModel("m", "1", ("bytes_transferred",), np.asarray(DEFAULT_THRESHOLDS),
                    ByBytes())


def ev(t: float, src: str, tenant: str = "acme") -> bytes:
    return orjson.dumps({"tenant_id": tenant, "timestamp": t, "src_ip": src,
                         "bytes_transferred": 900})


# One host alerting every 10 s for 130 s, another host and another tenant beside it.
EVENTS = [ev(10.0 * k, "10.0.0.9") for k in range(14)] + [
    ev(5.0, "10.0.0.7"), ev(6.0, "10.0.0.9", tenant="globex")]
EVENTS.sort(key=lambda v: orjson.loads(v)["timestamp"])


DEDUP = Dedup(60.0)


def run(values: list[bytes], store: WindowStore, first: int = 0,
        dedup: Dedup | None = DEDUP) -> Any:
    n = len(values)
    return process_batch(values, lambda ts: [MODEL for _ in ts], topic="f",
                         partitions=np.zeros(n, dtype=np.int64),
                         offsets=np.arange(first, first + n, dtype=np.int64), min_level=0,
                         store=store, risk=Risk("src_ip", 600.0, 12.0), dedup=dedup)


def published(out: Any) -> list[dict[str, Any]]:
    return [orjson.loads(a) for a in out.alerts]


def test_one_alert_per_entity_and_window_says_what_the_previous_stood_for() -> None:
    out = run(EVENTS, WindowStore())
    got = published(out)
    nine = [a for a in got if a["event"]["src_ip"] == "10.0.0.9" and a["tenant_id"] == "acme"]
    # t = 0 opens a window; 10..50 are within 60 s of it; 60 opens the next; 120 the third.
    assert [a["event"]["timestamp"] for a in nine] == [0.0, 60.0, 120.0]
    assert nine[0]["dedup"] == {"window": 60.0}
    assert nine[1]["dedup"] == {"window": 60.0, "previous_alert_id": nine[0]["alert_id"],
                                "previous_count": 6}
    assert nine[2]["dedup"]["previous_count"] == 6
    # The other host and the other tenant are keys of their own.
    assert {(a["tenant_id"], a["event"]["src_ip"]) for a in got} == {
        ("acme", "10.0.0.9"), ("acme", "10.0.0.7"), ("globex", "10.0.0.9")}
    assert out.deduplicated == len(EVENTS) - len(got) == 11
    # Unpublished alerts still add risk: the third published one carries all 13 before it.
    risk = nine[2]["entity_risk"]["risk"]
    assert risk > 10 * 7  # thirteen criticals within a 600 s half-life, not three


def test_off_publishes_every_alert() -> None:
    out = run(EVENTS, WindowStore(), dedup=None)
    assert len(out.alerts) == len(EVENTS) and out.deduplicated == 0
    assert all("dedup" not in orjson.loads(a) for a in out.alerts)


def test_the_same_in_any_batching_and_across_a_restore() -> None:
    whole = published(run(EVENTS, WindowStore()))
    store = WindowStore(track=True)
    first = published(run(EVENTS[:7], store))
    changed, _gone = store.take_changes(0)
    restored = WindowStore(track=True)
    restored.restore(0, [(n, k, bytes(v)) for (n, k), v in changed.items()],
                     store.clocks.of_scope(0))
    rest = published(run(EVENTS[7:], restored, first=7))

    def strip(a: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in a.items() if k != "detected_at"}

    assert [strip(a) for a in first + rest] == [strip(a) for a in whole]
