"""Window functions and their state (stream.features.windows, stream.state.store).

The part that needs a real broker, registry or child process; the rest, and what
it all means, is in ``tests/unit/features/test_windows.py``.
"""

from __future__ import annotations

import tracemalloc

import pytest

from stream.features import FeatureSpec, RecordColumns, WindowStore

# ---- the reference: whole histories, looked back over per event ---------------------------












































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












