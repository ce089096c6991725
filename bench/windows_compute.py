"""Cost of window features: 10 windows over 3 keys, with 100,000 live entities.

The spec is the issue's shape: per source, per destination and per source>destination
pair; exact windows and damped ones; counts, sums, moments, distinct values and
inter-arrival gaps. The store is first filled with events of 100,000 distinct
sources (each with its own destinations), then batches of live traffic are timed
through ``FeatureSpec.compute`` on precomputed columns (the decode is row 7b's),
and apart from it what each commit adds with the changelog on: taking the
changed states in their changelog form, and the TTL and memory bounds.
Memory: the store's own estimate and tracemalloc's count per 100,000 entities.

    python -m bench.windows_compute [--entities 100000] [--rows 5000] [--repeat 10]
                                    [--spec short|long|sketch]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from bench.features_compute import ArraySource
from stream.features import FeatureSpec, RecordColumns, WindowStore

SPEC = [
    ("src_n", "count(by=src_ip, window=60s)"),
    ("src_ports", "distinct(dst_port, by=src_ip, window=60s)"),
    ("src_bytes", "sum(bytes, by=src_ip, decay=10s)"),
    ("dst_mean", "mean(bytes, by=dst_ip, window=60s)"),
    ("dst_std", "std(bytes, by=dst_ip, window=60s)"),
    ("dst_rate", "count(by=dst_ip, decay=10s)"),
    ("dst_srcs", "distinct(src_ip, by=dst_ip, window=60s)"),
    ("pair_n", "count(by=src_ip>dst_ip, window=60s)"),
    ("pair_gap", "interval_mean(by=src_ip>dst_ip, window=60s)"),
    ("pair_jitter", "interval_std(by=src_ip>dst_ip, decay=10s)"),
]

#: ``--spec long``: windows from a minute to a day, the network recipe's kinds (novelty,
#: fan-out over the last 32 flows, beacons) and damped statistics at several half-lives.
SPEC_LONG = [
    ("pair_novelty", "since(by=src_ip>dst_ip, window=1d)"),
    ("src_port_spread", "spread(dst_port, by=src_ip, window=10m)"),
    ("src_dst_spread", "spread(dst_ip, by=src_ip, window=10m)"),
    ("dst_src_spread", "spread(src_ip, by=dst_ip, window=10m)"),
    ("pair_beacon", "beacon(bytes, by=src_ip>dst_ip, window=1h)"),
    ("src_rate_1h", "count(by=src_ip, decay=1h)"),
    ("src_bytes_10m", "mean(bytes, by=src_ip, decay=10m)"),
    ("dst_rate_1m", "count(by=dst_ip, decay=1m)"),
    ("dst_bytes_1h", "std(bytes, by=dst_ip, decay=1h)"),
    ("pair_gap_1h", "interval_mean(by=src_ip>dst_ip, decay=1h)"),
]
#: ``--spec sketch``: the long spec with the sketches: fan-out over a day where ``spread``
#: saw the last 32 flows (``cardinality``: exact to 64 values, then HyperLogLog panes; in
#: this traffic every destination has about 500 sources a day, so its key is a sketch),
#: and ``regularity``'s damped quantile sketches of each pair's gaps and sizes over a day
#: in place of the mean gap.
SPEC_SKETCH = [
    (name, expr) for name, expr in SPEC_LONG
    if name not in ("src_port_spread", "dst_src_spread", "pair_gap_1h")
] + [
    ("src_ports_1d", "cardinality(dst_port, by=src_ip, window=1d)"),
    ("dst_srcs_1d", "cardinality(src_ip, by=dst_ip, window=1d)"),
    ("pair_regularity_1d", "regularity(bytes, by=src_ip>dst_ip, decay=1d)"),
]
SPECS = {"short": SPEC, "long": SPEC_LONG, "sketch": SPEC_SKETCH}


def flows(n: int, sources: int, start: float, rate: float, seed: int) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    src = rng.integers(0, sources, n)
    t = start + np.cumsum(rng.exponential(1.0 / rate, n))
    return [
        {
            "timestamp": float(t[i]),
            "src_ip": f"10.{s // 65536}.{s // 256 % 256}.{s % 256}",
            "dst_ip": f"192.0.2.{s % 200}",
            "dst_port": int(rng.integers(1, 1024)),
            "bytes": int(rng.integers(40, 100_000)),
        }
        for i, s in enumerate(src.tolist())
    ]


def measure(entities: int = 100_000, rows: int = 5000, repeat: int = 10,
            which: str = "short") -> dict[str, float]:
    """Microseconds per event through the window stage, and bytes per 100k entities."""
    spec = FeatureSpec.parse(SPECS[which])
    store = WindowStore(max_bytes=2**34, track=True)
    # Fill: every source once (so `entities` live source keys), within the TTL.
    fill = flows(entities, entities, 0.0, entities / 50.0, seed=1)
    for i, s in enumerate(fill):
        s["src_ip"] = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for k in range(0, len(fill), rows):
        part = fill[k : k + rows]
        spec.compute(ArraySource(RecordColumns(part), spec.fields), store=store)
        store.take_changes(0)
    traced = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    live_sources = store.live(spec.window_signatures[0])
    times, commits, records = [], [], 0
    t_next = 50.0
    for r in range(repeat + 1):
        batch = flows(rows, entities, t_next, 2000.0, seed=10 + r)
        t_next = float(batch[-1]["timestamp"])  # type: ignore[arg-type]
        src = ArraySource(RecordColumns(batch), spec.fields)
        t0 = time.perf_counter()
        spec.compute(src, store=store)
        t1 = time.perf_counter()
        # What a commit adds with the changelog on: the changes, then the bounds.
        changed, gone = store.take_changes(0)
        store.maintain()
        if r:  # the first batch warms up
            times.append(t1 - t0)
            commits.append(time.perf_counter() - t1)
            records += len(changed) + len(gone)
    times.sort()
    commits.sort()
    return {
        "windows": len(SPECS[which]),
        "rows": rows,
        "live_sources": live_sources,
        "entities": store.entities,
        "best_us": times[0] / rows * 1e6,
        "median_us": times[len(times) // 2] / rows * 1e6,
        "commit_us": commits[len(commits) // 2] / rows * 1e6,
        "records_per_event": records / (repeat * rows),
        "estimate_mb_per_100k": store.bytes() / store.entities * 100_000 / 2**20,
        "traced_mb_per_100k": traced / store.entities * 100_000 / 2**20,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entities", type=int, default=100_000)
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--spec", choices=sorted(SPECS), default="short",
                    help="short: 60 s exact and 10 s damped windows (row 8); long: a minute "
                         "to a day, the network recipe's kinds (target <= 3 us/event)")
    args = ap.parse_args()
    m = measure(args.entities, args.rows, args.repeat, args.spec)
    print(f"{m['windows']} windows over 3 keys; {m['live_sources']:,} live sources, "
          f"{m['entities']:,} entity states in all; batches of {args.rows:,}")
    target = 2 if args.spec == "short" else 3
    print(f"window stage: best {m['best_us']:.2f} us/event, median {m['median_us']:.2f} "
          f"us/event (target <= {target})")
    print(f"per commit (changelog on): changes and bounds {m['commit_us']:.2f} us/event "
          f"(median), {m['records_per_event']:.2f} changelog records per event")
    print(f"memory per 100k entity states: {m['traced_mb_per_100k']:.1f} MiB traced, "
          f"{m['estimate_mb_per_100k']:.1f} MiB by the store's estimate")


if __name__ == "__main__":
    main()
