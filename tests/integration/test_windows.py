"""Window functions and their state (stream.features.windows, stream.state.store).

Pure unit tests, no broker. Every function is checked against ``reference``, a
plain per-event evaluator written from the rules in the windows module
docstring (keep each key's whole history, look back over it per event), on
hand-made cases and on random event streams (hypothesis). Batching, state
round trips through the changelog format, late events, TTL and the memory cap
are checked on the store itself.
"""

from __future__ import annotations

import tracemalloc

import pytest

from stream.features import FeatureSpec, RecordColumns, WindowStore

# ---- the reference: whole histories, looked back over per event ---------------------------










CASES = [
    ("count", None, "window=5s", False, 5.0),
    ("count", None, "decay=2s", True, 2.0),
    ("sum", "x", "window=4s", False, 4.0),
    ("sum", "x", "decay=3s", True, 3.0),
    ("mean", "x", "window=4s", False, 4.0),
    ("mean", "x", "decay=3s", True, 3.0),
    ("std", "x", "window=6s", False, 6.0),
    ("std", "x", "decay=3s", True, 3.0),
    ("distinct", "dst", "window=3s", False, 3.0),
    ("interval_mean", None, "window=10s", False, 10.0),
    ("interval_mean", None, "decay=5s", True, 5.0),
    ("interval_std", None, "window=10s", False, 10.0),
    ("interval_std", None, "decay=5s", True, 5.0),
    ("since", None, "window=6s", False, 6.0),
    ("first_seen", None, "window=7s", False, 7.0),
    ("beacon", "x", "window=12s", False, 12.0),
    ("spread", "dst", "window=8s", False, 8.0),
]


































@pytest.mark.slow
def test_a_million_distinct_sources_stay_under_the_memory_cap() -> None:
    cap = 32 * 2**20
    spec = FeatureSpec.parse([("c", "count(by=src, window=60s)")])
    # Everything the store allocates is counted: the kernels take their memory from
    # Python's raw allocator, which tracemalloc traces, as it traces numpy's arrays.
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        store = WindowStore(max_bytes=cap, ttl=1e9)
        n, batch = 1_000_000, 50_000
        for k in range(0, n, batch):
            rows = [{"timestamp": (k + i) * 1e-4,
                     "src": f"10.{(k + i) >> 16}.{(k + i) & 0xFFFF}"} for i in range(batch)]
            spec.compute(RecordColumns(rows), store=store)
            del rows
            store.maintain()
            assert store.bytes() <= cap
        held = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    print(f"\n1M distinct sources: {store.entities:,} kept, {store.stats.evicted_cap:,} evicted, "
          f"estimate {store.bytes() / 2**20:.1f} MiB, traced {held / 2**20:.1f} MiB "
          f"(cap 32 MiB)")
    assert store.entities + store.stats.evicted_cap == n
    assert store.stats.evicted_cap > n / 2
    assert held <= 1.1 * cap












