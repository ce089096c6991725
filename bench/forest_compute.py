"""Cost of one model call: the compiled forest walk against numpy's and sklearn's.

One StandardScaler + IsolationForest pipeline of 100 trees on 3 inputs (the
consumer's default model), scored through ``fast_isolation_forest`` with the
compiled walk, with the numpy walk (what runs when the extension was not
built), and through the pipeline's own ``decision_function``; each on
5,000-row calls and on 1-row calls (a tenant with one event in a batch).
The best of several timed rounds; the scores are checked identical first.

    python -m bench.forest_compute
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from stream.registry import build_pipeline
from stream.scoring.scorers import fast_isolation_forest


def _best_us(fn: Callable[[np.ndarray], object], X: np.ndarray, rounds: int = 15) -> float:
    calls = max(3, 3000 // len(X))
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn(X)
        best = min(best, (time.perf_counter() - t0) / calls)
    return best * 1e6


def measure(trees: int = 100, rows: int = 5000) -> dict[str, float]:
    rng = np.random.default_rng(3)
    pipe = build_pipeline(n_estimators=trees).fit(rng.lognormal(3, 1, (20_000, 3)))
    Y = rng.lognormal(3, 1.3, (rows, 3))
    compiled = fast_isolation_forest(pipe)
    plain = fast_isolation_forest(pipe, compiled=False)
    if compiled is None or plain is None or not compiled.compiled:
        raise RuntimeError("the compiled forest walk is not available (see the install log)")
    expected = pipe.decision_function(Y)
    assert np.array_equal(compiled(Y), expected) and np.array_equal(plain(Y), expected)
    out = {"trees": trees, "rows": rows}
    for name, fn in (("compiled", compiled), ("numpy", plain),
                     ("decision_function", pipe.decision_function)):
        out[f"{name}_us"] = _best_us(fn, Y, rounds=5 if name == "decision_function" else 15) \
            / rows
        out[f"{name}_one_row_us"] = _best_us(fn, Y[:1], rounds=5 if name ==
                                             "decision_function" else 15)
    return out


if __name__ == "__main__":
    r = measure()
    for k, v in r.items():
        print(f"{k:<28}{v:>12.3f}")
