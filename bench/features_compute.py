"""Cost of ``FeatureSpec.compute`` alone: 6 arithmetic features + 2 one-hot fields, 5,000 rows.

The source hands out precomputed columns (as a decoder's would be, already
arrays), so the figure is the evaluator's own cost per row, excluding decode.

    python -m bench.features_compute [--rows 5000] [--repeat 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from stream.features import FeatureSpec, RecordColumns

SPEC = [
    ("ld", "log(duration + 0.1)"),
    ("lb", "log1p(add(orig_bytes, resp_bytes))"),
    ("ratio", "fill(orig_bytes, 0) / (fill(resp_bytes, 0) + 1)"),
    ("pps", "orig_pkts / max(duration, 0.001)"),
    ("bpp", "clip((orig_bytes + resp_bytes) / (orig_pkts + resp_pkts + 1), 0, 1e6)"),
    ("sd", "sqrt(fill(duration, 0)) * 2 - 1"),
    ("st", "onehot(conn_state, top=10)"),
    ("pr", 'onehot(proto, ["tcp", "udp", "icmp"])'),
]


class ArraySource:
    """A ColumnSource whose columns were built once, up front."""

    def __init__(self, source: RecordColumns, fields: dict[str, str]) -> None:
        self.n = source.n
        self._num = {p: source.numeric(p) for p, k in fields.items() if k != "string"}
        self._str = {p: source.strings(p) for p, k in fields.items() if k != "numeric"}

    def numeric(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        return self._num[path]

    def strings(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        return self._str[path]


def records(n: int, seed: int = 0) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    states = ["S0", "SF", "REJ", "RSTO", "RSTR", "SH", "S1", "OTH", "S2", "S3", "RSTOS0", "SHR"]
    out = []
    for i in range(n):
        r: dict[str, object] = {
            "duration": float(rng.exponential(2.0)),
            "orig_pkts": int(rng.integers(1, 100)),
            "resp_pkts": int(rng.integers(0, 100)),
            "conn_state": states[int(rng.zipf(1.5)) % len(states)],
            "proto": ("tcp", "udp", "icmp", "sctp")[i % 4],
        }
        if i % 50:  # every 50th flow is a scan: no byte counts at all
            r["orig_bytes"] = int(rng.integers(0, 1_000_000))
            r["resp_bytes"] = int(rng.integers(0, 1_000_000))
        out.append(r)
    return out


def measure(rows: int = 5000, repeat: int = 100) -> dict[str, float]:
    """Microseconds per row: the compute stage on decoded columns, and decode + compute
    from raw JSON message values (``DecodedBatch``, what the consumer does)."""
    import orjson

    from stream.ingest.decode import DecodedBatch

    recs = records(rows)
    spec = FeatureSpec.parse(SPEC).fit(RecordColumns(recs))
    source = ArraySource(RecordColumns(recs), spec.fields)
    spec.compute(source)  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        spec.compute(source)
        times.append(time.perf_counter() - t0)
    times.sort()
    values = [orjson.dumps({"tenant_id": "acme", **r}) for r in recs]
    spec.compute(DecodedBatch(values))  # the decoder learns the fields once
    decode = []
    for _ in range(max(3, repeat // 10)):
        t0 = time.perf_counter()
        spec.compute(DecodedBatch(values))
        decode.append(time.perf_counter() - t0)
    decode.sort()
    return {
        "rows": rows,
        "columns": len(spec.columns),
        "compute_best_us": times[0] / rows * 1e6,
        "compute_median_us": times[len(times) // 2] / rows * 1e6,
        "decode_compute_best_us": decode[0] / rows * 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    m = measure(args.rows, args.repeat)
    print(f"{len(SPEC)} features -> {m['columns']} columns, {args.rows:,} rows")
    print(f"compute: best {m['compute_best_us']:.3f} us/row, median "
          f"{m['compute_median_us']:.3f} us/row; decode + compute: best "
          f"{m['decode_compute_best_us']:.3f} us/row")


if __name__ == "__main__":
    main()
