"""Tenants never meet in window state: a tenant's features are those of its events alone.

Pure unit tests, no broker. Two (or three) tenants share one scope (an input
partition, or one file), their events interleaved at random and cut into random
batches, with events out of order (within and past the lateness) and gaps past the
TTL; the store is bounded between batches (TTL pass, compaction) and part of the way
through goes through the changelog's form into a fresh store. Each tenant's values
must be, bit for bit, those its own events get alone in one pass. The consumer and
``stream score`` compute windows with this very store, so this is their isolation
too (end to end: ``tests/integration/test_offline.py`` and
``tests/integration/test_windows_e2e.py``).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.features import FeatureSpec, RecordColumns, WindowStore
from stream.features.recipes import recipe

#: Every kind of window, exact and damped, on a key and on a pair.
SPEC = FeatureSpec.parse([
    ("c", "count(by=src, window=5s)"),
    ("cd", "count(by=src, decay=2s)"),
    ("s", "sum(x, by=src, window=4s)"),
    ("m", "mean(x, by=src, decay=3s)"),
    ("sd", "std(x, by=src, window=6s)"),
    ("d", "distinct(dst, by=src, window=3s)"),
    ("im", "interval_mean(by=src>dst, window=10s)"),
    ("isd", "interval_std(by=src>dst, decay=5s)"),
])
TTL = 30.0


def _stream(rng: np.random.Generator, n: int, tenant: str) -> list[dict[str, Any]]:
    """One tenant's events: bursts, long silences (past the TTL), out of order."""
    gaps = rng.choice([0.0, 0.1, 0.7, 2.0, 45.0], size=n, p=[0.1, 0.4, 0.3, 0.15, 0.05])
    times = np.cumsum(gaps) + rng.uniform(-8, 0, n)  # the lateness is 5 s: some are late
    return [
        {"tenant_id": tenant, "timestamp": float(t), "src": f"h{rng.integers(4)}",
         "dst": f"d{rng.integers(3)}", "x": float(rng.integers(10))}
        for t in times
    ]


def _alone(events: list[dict[str, Any]]) -> np.ndarray:
    """One tenant's values when its events are all a fresh store ever sees, in one pass."""
    tenants = [e["tenant_id"] for e in events]
    store = WindowStore(ttl=TTL)
    return SPEC.compute(RecordColumns(events), store=store, tenants=tenants).X


def _shared(events: list[dict[str, Any]], cuts: list[int], restore_at: int) -> np.ndarray:
    """Every tenant's events through one store, in ``cuts`` batches, with a TTL pass after
    each and a restore from the changelog's form at batch ``restore_at``."""
    store = WindowStore(ttl=TTL, track=True)
    out = []
    bounds = [0, *sorted(set(cuts)), len(events)]
    for k, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        part = events[lo:hi]
        if not part:
            continue
        tenants = [e["tenant_id"] for e in part]
        out.append(SPEC.compute(RecordColumns(part), store=store, tenants=tenants).X)
        store.maintain()
        if k == restore_at:
            items = [(name, key, bytes(v)) for (name, key), v in store.snapshot(0).items()]
            fresh = WindowStore(ttl=TTL, track=True)
            fresh.restore(0, items, store.clocks.of_scope(0))
            store = fresh
    return np.vstack(out)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), tenants=st.integers(2, 3),
       cuts=st.lists(st.integers(0, 300), max_size=6), restore_at=st.integers(0, 6))
def test_each_tenant_gets_the_values_of_its_events_alone(seed, tenants, cuts, restore_at):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    names = [f"t{i}" for i in range(tenants)]
    streams = {t: _stream(rng, int(rng.integers(40, 120)), t) for t in names}
    # A random interleaving that keeps each tenant's own order.
    order = rng.permutation(np.repeat(np.arange(tenants), [len(streams[t]) for t in names]))
    pos = dict.fromkeys(names, 0)
    events = []
    for k in order.tolist():
        t = names[k]
        events.append(streams[t][pos[t]])
        pos[t] += 1
    shared = _shared(events, [c for c in cuts if c < len(events)], restore_at)
    tenant_of = np.array([e["tenant_id"] for e in events])
    for t in names:
        alone = _alone(streams[t])
        mine = shared[tenant_of == t]
        assert mine.shape == alone.shape
        # Bit for bit (NaN where a window has no value, in both).
        assert np.array_equal(mine, alone, equal_nan=True), t


def test_one_tenant_far_ahead_makes_no_other_late_nor_expires_its_keys() -> None:
    """A tenant an hour ahead (a live feed beside another's replay): nothing of B changes."""
    a = [{"tenant_id": "a", "timestamp": 3600.0 + i, "src": "h", "dst": "d", "x": 1.0}
         for i in range(5)]
    b = [{"tenant_id": "b", "timestamp": float(i), "src": "h", "dst": "d", "x": 2.0}
         for i in range(5)]
    store = WindowStore(ttl=TTL)
    mixed = a + b
    X = SPEC.compute(RecordColumns(mixed), store=store, tenants=[e["tenant_id"] for e in mixed])
    assert X.late == 0
    assert np.array_equal(X.X[5:], _alone(b), equal_nan=True)
    # Each tenant's clock is its own newest event.
    assert store.clocks.of_scope(0) == {"a": 3604.0, "b": 4.0}


def test_late_rows_are_counted_per_tenant_in_a_batch() -> None:
    from stream.ingest.decode import DecodedBatch, compute_rows

    rows = [{"tenant_id": "a", "timestamp": 100.0, "src": "h", "dst": "d", "x": 1.0},
            {"tenant_id": "a", "timestamp": 10.0, "src": "h", "dst": "d", "x": 1.0},
            {"tenant_id": "b", "timestamp": 10.0, "src": "h", "dst": "d", "x": 1.0}]
    import orjson

    batch = DecodedBatch([orjson.dumps(r) for r in rows], 10_000)
    _X, good = compute_rows(batch, batch, np.arange(3), SPEC, store=WindowStore(),
                           scopes=np.zeros(3, dtype=np.int64))
    assert len(good) == 3
    assert batch.late == 1 and dict(batch.late_by) == {"a": 1}


def test_the_flows_recipe_gives_a_number_for_flows_that_share_a_timestamp() -> None:
    """Two flows of one pair at the same time: gaps of 0, a regularity of log(0.05)."""
    spec = recipe("flows")
    row = {"tenant_id": "a", "timestamp": 5.0, "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2",
           "dst_port": 443, "bytes_transferred": 10, "packet_count": 1,
           "connection_duration": 0.1}
    rows = [dict(row) for _ in range(4)]
    computed = spec.compute(RecordColumns(rows), tenants=["a"] * 4)
    assert (computed.reason == 0).all()
    assert np.isfinite(computed.X).all()
    regularity = computed.X[:, spec.names.index("pair_regularity")]
    assert regularity[-1] == math.log(0.05)
