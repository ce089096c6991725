"""Window functions and their state (stream.features.windows, stream.state.store).

Pure unit tests, no broker. Every function is checked against ``reference``, a
plain per-event evaluator written from the rules in the windows module
docstring (keep each key's whole history, look back over it per event), on
hand-made cases and on random event streams (hypothesis). Batching, state
round trips through the changelog format, late events, TTL and the memory cap
are checked on the store itself.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.features import FeatureSpec, RecordColumns, SpecError, WindowStore
from stream.features.recipes import RECIPES, recipe
from stream.features.windows import MAX_EVENTS, dump_state, load_state
from stream.outcomes.reasons import BAD_TIMESTAMP, MISSING_FEATURE, OK
from stream.state import codec as state_codec

# ---- the reference: whole histories, looked back over per event ---------------------------


def _moments(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    mean = sum(xs) / n
    var = sum(x * x for x in xs) / n - mean * mean
    return mean, math.sqrt(var) if var > 0 else 0.0


def reference(fn: str, events: list[dict[str, Any]], *, by: str, span: float, decay: bool,
              value: str | None = None) -> list[float]:
    """The value per event, from each key's full history (no incremental state)."""
    hist: dict[str, list[tuple[float, Any]]] = {}
    newest: dict[str, float] = {}
    out = []
    for e in events:
        key = "|".join(str(e[p]) for p in by.split(">"))
        t = max(float(e["timestamp"]), newest.get(key, -math.inf))  # clamped to the newest
        newest[key] = t
        v = e[value] if value else 0.0
        h = hist.setdefault(key, [])
        h.append((t, v))
        if fn in ("since", "first_seen"):
            before = [a for a, _ in h[:-1] if a > t - span]
            gap = min(t - before[-1], span) if before else span
            out.append(gap if fn == "since" else float(gap >= span))
            continue
        if fn == "spread":
            inside = [(a, x) for a, x in h if a > t - span][-32:]
            out.append(float(len({x for _, x in inside})))
            continue
        if fn == "beacon":
            inside = [(a, x) for a, x in h if a > t - span][-32:]
            if len(inside) < 4:
                out.append(0.0)
                continue
            times = [a for a, _ in inside]
            gaps = [times[k + 1] - times[k] for k in range(len(times) - 1)]
            out.append((_rita(gaps) + _rita([x for _, x in inside])) / 2)
            continue
        if fn in ("interval_mean", "interval_std"):
            times = [a for a, _ in h]
            if decay:
                gaps = [(times[k], times[k] - times[k - 1]) for k in range(1, len(times))]
                if len(gaps) < 2:
                    out.append(span)
                    continue
                w = [math.exp(-math.log(2) / span * (t - a)) for a, _ in gaps]
                n = sum(w)
                s = sum(wi * g for wi, (_, g) in zip(w, gaps, strict=True))
                q = sum(wi * g * g for wi, (_, g) in zip(w, gaps, strict=True))
                mean = s / n
                var = q / n - mean * mean
                std = math.sqrt(var) if var > 0 else 0.0
            else:
                inside = [a for a in times if a > t - span]
                gaps = [inside[k] - inside[k - 1] for k in range(1, len(inside))]
                if len(gaps) < 2:
                    out.append(span)
                    continue
                mean, std = _moments(gaps)
            out.append(mean if fn == "interval_mean" else std)
            continue
        if decay:
            w = [math.exp(-math.log(2) / span * (t - a)) for a, _ in h]
            n = sum(w)
            s = sum(wi * x for wi, (_, x) in zip(w, h, strict=True))
            q = sum(wi * x * x for wi, (_, x) in zip(w, h, strict=True))
        else:
            inside = [(a, x) for a, x in h if a > t - span]
            if fn in ("distinct", "cardinality"):  # cardinality: exact up to 64 values
                out.append(float(len({x for _, x in inside})))
                continue
            n = float(len(inside))
            s = sum(x for _, x in inside)
            q = sum(x * x for _, x in inside)
        if fn == "count":
            out.append(n)
        elif fn == "sum":
            out.append(s)
        else:
            mean = s / n
            var = q / n - mean * mean
            std = math.sqrt(var) if var > 0 else 0.0
            out.append(mean if fn == "mean" else std)
    return out


def _rita(x: list[float]) -> float:
    """RITA's regularity of a series: mean of 1 - |Bowley skew| and (median - MAD) / median,
    from numpy's quartiles (linear interpolation); skew 0 where a quartile meets the
    median or the quartiles meet."""
    q1, q2, q3 = np.percentile(x, [25, 50, 75])
    skew = (q1 + q3 - 2 * q2) / (q3 - q1) if q3 > q1 and q2 not in (q1, q3) else 0.0
    mad = float(np.median(np.abs(np.asarray(x) - q2)))
    mad_score = max((q2 - mad) / q2, 0.0) if q2 > 0 else 0.0
    return (max(1 - abs(skew), 0.0) + mad_score) / 2


def events_of(times: list[float], keys: list[str], values: list[float]) -> list[dict[str, Any]]:
    return [
        {"timestamp": t, "src": k, "dst": f"d{int(v) % 4}", "x": v}
        for t, k, v in zip(times, keys, values, strict=True)
    ]


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
    ("cardinality", "dst", "window=9s", False, 9.0),
]


def _expr(fn: str, arg: str | None, span: str, by: str = "src") -> str:
    head = f"{arg}, " if arg else ""
    return f"{fn}({head}by={by}, {span})"


@pytest.mark.parametrize(("fn", "arg", "span", "decay", "secs"), CASES)
def test_each_function_matches_the_reference(fn, arg, span, decay, secs) -> None:  # type: ignore[no-untyped-def]
    times = [0.0, 0.5, 1.0, 1.0, 2.5, 4.0, 4.2, 7.0, 9.5, 9.6, 15.0, 15.1, 15.2, 30.0]
    keys = ["a", "a", "b", "a", "a", "b", "a", "a", "b", "a", "a", "a", "b", "a"]
    values = [3.0, 1.0, 2.0, 5.0, 5.0, 1.0, 7.0, 0.0, 2.0, 4.0, 1.0, 6.0, 3.0, 2.0]
    events = events_of(times, keys, values)
    spec = FeatureSpec.parse([("w", _expr(fn, arg, span))])
    got = spec.compute(RecordColumns(events)).X[:, 0]
    want = reference(fn, events, by="src", span=secs, decay=decay, value=arg)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_beacons_score_near_one_and_jittered_traffic_lower() -> None:
    """A check-in every 60 s of 300 bytes scores 1 once four are seen; the same host's
    browsing (random gaps and sizes) scores lower; since() reads the gap."""
    rng = np.random.default_rng(5)
    regular = [{"timestamp": 60.0 * i, "src": "bot", "dst": "c2", "x": 300.0}
               for i in range(12)]
    browsing = [{"timestamp": float(t), "src": "pc", "dst": "web", "x": float(x)}
                for t, x in zip(np.cumsum(rng.exponential(60.0, 12)),
                                rng.lognormal(8, 1.5, 12), strict=True)]
    events = sorted(regular + browsing, key=lambda e: e["timestamp"])
    spec = FeatureSpec.parse([("b", "beacon(x, by=src>dst, window=1h)"),
                              ("s", "since(by=src>dst, window=1d)")])
    X = spec.compute(RecordColumns(events)).X
    bot = np.array([e["src"] == "bot" for e in events])
    assert X[bot, 0].tolist() == [0.0] * 3 + [1.0] * 9
    assert X[~bot, 0][3:].max() < 0.9
    assert X[bot, 1].tolist() == [86400.0] + [60.0] * 11
    # spread(): distinct values among the last 32 events, not growing past them.
    scan = [{"timestamp": 0.01 * i, "src": "scanner", "dst": f"port{i}", "x": 60.0}
            for i in range(100)] + [{"timestamp": 2.0, "src": "scanner", "dst": "port0",
                                     "x": 60.0}]
    spec = FeatureSpec.parse([("s", "spread(dst, by=src, window=1m)")])
    assert spec.compute(RecordColumns(scan)).X[:, 0].tolist() == \
        [float(min(i + 1, 32)) for i in range(100)] + [32.0]
    assert spec.compute(RecordColumns(regular)).X[:, 0].tolist() == [1.0] * 12


def test_cardinality_is_exact_to_64_values_then_a_sketch_the_same_in_both_kernels(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """cardinality(): exact while a key has at most 64 distinct values in its window, then
    a HyperLogLog within its documented error; the Python and compiled kernels agree bit
    for bit, in any batching, and a sketch survives the changelog's binary form."""
    import stream.features.windows as windows_mod

    rng = np.random.default_rng(7)
    n = 6000
    times = np.cumsum(rng.exponential(0.05, n)).tolist()
    keys = rng.choice(["scan", "quiet"], n, p=[0.7, 0.3]).tolist()
    vals = [f"p{rng.integers(0, 3000)}" if k == "scan" else f"p{rng.integers(0, 20)}"
            for k in keys]
    events = [{"timestamp": t, "src": k, "dst": v}
              for t, k, v in zip(times, keys, vals, strict=True)]
    spec = FeatureSpec.parse([("c", "cardinality(dst, by=src, window=2m)")])
    got = spec.compute(RecordColumns(events)).X[:, 0]
    monkeypatch.setattr(windows_mod, "FORCE_PYTHON", True)
    assert spec.compute(RecordColumns(events)).X[:, 0].tolist() == got.tolist()
    monkeypatch.setattr(windows_mod, "FORCE_PYTHON", False)
    exact = np.array(reference("distinct", events, by="src", span=120.0, decay=False,
                               value="dst"))
    quiet = np.array([k == "quiet" for k in keys])
    assert got[quiet].tolist() == exact[quiet].tolist()  # 20 values: never sketched
    scan = ~quiet
    small = scan & (exact <= 64)
    assert got[small][:64].tolist() == exact[small][:64].tolist()
    big = scan & (exact > 1000)
    rel = np.abs(got[big] - exact[big]) / exact[big]
    assert big.sum() > 1000 and float(np.median(rel)) < 0.15, float(np.median(rel))
    # Batches over a store, with the state through the changelog's bytes between them.
    store = WindowStore(track=True)
    first = spec.compute(RecordColumns(events[:4000]), store=store).X[:, 0]
    changed, _gone = store.take_changes(0)
    restored = WindowStore(track=True)
    restored.restore(0, [(nm, key, bytes(v)) for (nm, key), v in changed.items()],
                     store.clocks.of_scope(0))
    rest = spec.compute(RecordColumns(events[4000:]), store=restored).X[:, 0]
    assert np.concatenate([first, rest]).tolist() == got.tolist()
    # The Python kernel writes the same bytes, and reads the compiled kernel's.
    monkeypatch.setattr(windows_mod, "FORCE_PYTHON", True)
    py_store = WindowStore(track=True)
    spec.compute(RecordColumns(events[:4000]), store=py_store)
    assert py_store.take_changes(0)[0] == changed
    py_restored = WindowStore(track=True)
    py_restored.restore(0, [(nm, key, bytes(v)) for (nm, key), v in changed.items()],
                        store.clocks.of_scope(0))
    assert spec.compute(RecordColumns(events[4000:]), store=py_restored).X[:, 0].tolist() \
        == rest.tolist()
    monkeypatch.setattr(windows_mod, "FORCE_PYTHON", False)
    (kernel, table), = store.kernels.values()
    dumped = kernel.dump(table.slot_of(0, "scan"))
    assert dumped[0] == "_Card" and dumped[1][1] is True  # the sketch form
    assert dump_state(load_state(orjson.loads(orjson.dumps(dumped)))) == dumped


def test_regularity_scores_hourly_check_ins_over_a_day_where_the_last_32_cannot(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """regularity(): RITA's score over every event of a key, damped, from quantile
    sketches of gaps and sizes: check-ins an hour apart (jittered 1%) score 1 once four
    are in; random browsing scores far lower; a key with thousands of distinct sizes stays
    within 64 entries. The Python and compiled kernels agree bit for bit, in any
    batching and through the changelog's bytes. Exact windows are refused."""
    import stream.features.windows as windows_mod

    rng = np.random.default_rng(11)
    evs = [{"timestamp": 3600.0 * k + rng.normal(0, 30), "src": "bot", "dst": "c2",
            "x": 300.0 + rng.normal(0, 3)} for k in range(30)]
    t = 0.0
    for _ in range(1500):
        t += float(rng.exponential(60))
        evs.append({"timestamp": t, "src": "pc", "dst": "web", "x": float(rng.lognormal(8, 1.5))})
    evs += [{"timestamp": 40.0 * k, "src": "wide", "dst": "x", "x": float(rng.uniform(1, 1e8))}
            for k in range(2000)]
    evs.sort(key=lambda e: e["timestamp"])
    spec = FeatureSpec.parse([("r", "regularity(x, by=src>dst, decay=1d)")])
    got = spec.compute(RecordColumns(evs)).X[:, 0]
    src = np.array([e["src"] for e in evs])
    bot = got[src == "bot"]
    assert bot[:3].tolist() == [0.0] * 3 and bot[4:].min() > 0.99
    assert got[src == "pc"][-100:].max() < 0.7
    monkeypatch.setattr(windows_mod, "FORCE_PYTHON", True)
    assert spec.compute(RecordColumns(evs)).X[:, 0].tolist() == got.tolist()
    py = WindowStore(track=True)
    spec.compute(RecordColumns(evs[:1700]), store=py)
    py_changed, _g = py.take_changes(0)
    monkeypatch.setattr(windows_mod, "FORCE_PYTHON", False)
    store = WindowStore(track=True)
    first = spec.compute(RecordColumns(evs[:1700]), store=store).X[:, 0]
    changed, _gone = store.take_changes(0)
    assert changed == py_changed  # the same bytes from both kernels
    restored = WindowStore(track=True)
    restored.restore(0, [(n, k, bytes(v)) for (n, k), v in changed.items()],
                     store.clocks.of_scope(0))
    rest = spec.compute(RecordColumns(evs[1700:]), store=restored).X[:, 0]
    assert np.concatenate([first, rest]).tolist() == got.tolist()
    (kernel, table), = store.kernels.values()
    dumped = kernel.dump(table.slot_of(0, "wide>x"))
    assert dumped[0] == "_Sketch" and len(dumped[1][1]) <= 64
    assert dump_state(load_state(orjson.loads(orjson.dumps(dumped)))) == dumped
    with pytest.raises(SpecError, match="damped"):
        FeatureSpec.parse([("r", "regularity(x, by=src, window=1h)")])


@pytest.mark.parametrize("python", [False, True])
def test_a_state_record_that_does_not_fit_its_window_restores_as_a_fresh_key(
        python: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A changelog state claiming a sketch it does not hold (or more exact values than
    the window keeps) is refused at restore: that key starts afresh, counted and logged;
    the batch and the other keys go on."""
    import stream.features.windows as windows_mod

    monkeypatch.setattr(windows_mod, "FORCE_PYTHON", python)
    spec = FeatureSpec.parse([("c", "cardinality(dst, by=src, window=1m)")])
    events = [{"timestamp": float(i), "src": k, "dst": f"d{i}"}
              for i, k in enumerate(["a", "b"] * 3)]
    store = WindowStore(track=True)
    spec.compute(RecordColumns(events), store=store)
    changed, _gone = store.take_changes(0)
    items = []
    for (name, key), v in changed.items():
        blob = bytearray(v)
        if key == "a":  # the state's head sits after the blob head and the signature
            _newest, states = state_codec.split(bytes(blob))
            _sig, off, _size = states[0]
            blob[off + 2] = 1  # "saturated": the sketch form, with three events only
        items.append((name, key, bytes(blob)))
    restored = WindowStore(track=True)
    restored.restore(0, items, store.clocks.of_scope(0))
    with caplog.at_level("WARNING"):
        got = spec.compute(RecordColumns([{"timestamp": 10.0, "src": "a", "dst": "x"},
                                          {"timestamp": 10.0, "src": "b", "dst": "x"}]),
                           store=restored).X[:, 0]
    assert got.tolist() == [1.0, 4.0]  # a afresh; b's three values and this one
    assert restored.stats.unfit == 1
    assert "not restored" in caplog.text and "'a'" in caplog.text


def test_hand_checked_values() -> None:
    events = events_of([0, 1, 2, 3, 10], ["a", "a", "a", "b", "a"], [1, 2, 3, 4, 5])
    spec = FeatureSpec.parse([
        ("c", "count(by=src, window=2s)"),
        ("d", "distinct(dst, by=src, window=100s)"),
        ("im", "interval_mean(by=src, window=100s)"),
    ])
    X = spec.compute(RecordColumns(events)).X
    # (t-2, t]: at t=2 the event at 0 is out, 1 and 2 are in.
    assert X[:, 0].tolist() == [1, 2, 2, 1, 1]
    assert X[:, 1].tolist() == [1, 2, 3, 1, 3]  # a's dst: d1 d2 d3 d1
    # Gaps of a: 1, 1, 8: the mean shows once two gaps exist; before, the window length.
    assert X[:, 2].tolist() == [100, 100, 1, 100, 10 / 3]


def test_pair_keys_and_tenants_keep_entities_apart() -> None:
    events = [
        {"timestamp": 0, "src": "a", "dst": "x"},
        {"timestamp": 1, "src": "a", "dst": "y"},
        {"timestamp": 2, "src": "a", "dst": "x"},
        {"timestamp": 3, "src": "a", "dst": "x"},
    ]
    spec = FeatureSpec.parse([("p", "count(by=src>dst, window=60s)")])
    assert spec.compute(RecordColumns(events)).X[:, 0].tolist() == [1, 1, 2, 3]
    by_tenant = spec.compute(RecordColumns(events), tenants=["t1", "t2", "t1", "t2"])
    assert by_tenant.X[:, 0].tolist() == [1, 1, 2, 1]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    gaps=st.lists(st.floats(0.0, 3.0, allow_nan=False), min_size=1, max_size=60),
    keys=st.lists(st.sampled_from("abc"), min_size=60, max_size=60),
    values=st.lists(st.integers(0, 9), min_size=60, max_size=60),
    case=st.sampled_from(CASES),
    cut=st.integers(0, 60),
)
def test_random_streams_match_the_reference_in_any_batching(gaps, keys, values, case, cut):  # type: ignore[no-untyped-def]
    fn, arg, span, decay, secs = case
    times = np.cumsum(gaps).tolist()
    n = len(times)
    events = events_of(times, keys[:n], [float(v) for v in values[:n]])
    spec = FeatureSpec.parse([("w", _expr(fn, arg, span))])
    whole = spec.compute(RecordColumns(events)).X[:, 0]
    want = reference(fn, events, by="src", span=secs, decay=decay, value=arg)
    np.testing.assert_allclose(whole, want, rtol=1e-7, atol=1e-7)
    # Two batches over one store give exactly (bit for bit) what one pass gives.
    store = WindowStore()
    k = min(cut, n)
    first = spec.compute(RecordColumns(events[:k]), store=store).X[:, 0] if k else np.empty(0)
    rest = spec.compute(RecordColumns(events[k:]), store=store).X[:, 0] if k < n else np.empty(0)
    assert np.concatenate([first, rest]).tolist() == whole.tolist()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    gaps=st.lists(st.floats(0.0, 3.0, allow_nan=False), min_size=1, max_size=120),
    keys=st.lists(st.sampled_from("ab"), min_size=120, max_size=120),
    values=st.lists(st.floats(0.0, 1e9, allow_nan=False), min_size=120, max_size=120),
    cut=st.integers(0, 120),
)
def test_sketch_kernels_agree_on_random_streams_in_any_batching(gaps, keys, values, cut):  # type: ignore[no-untyped-def]
    """regularity() has no whole-history reference (it is a sketch): the Python form is
    the specification, and the compiled kernel must give its floats, whatever the
    values (zeros, a billion, ties) and the batching."""
    import stream.features.windows as windows_mod

    times = np.cumsum(gaps).tolist()
    n = len(times)
    events = [{"timestamp": t, "src": k, "x": v}
              for t, k, v in zip(times, keys[:n], values[:n], strict=True)]
    spec = FeatureSpec.parse([("r", "regularity(x, by=src, decay=5s)")])
    whole = spec.compute(RecordColumns(events)).X[:, 0]
    windows_mod.FORCE_PYTHON = True
    try:
        py = spec.compute(RecordColumns(events)).X[:, 0]
    finally:
        windows_mod.FORCE_PYTHON = False
    assert py.tolist() == whole.tolist()
    store = WindowStore()
    k = min(cut, n)
    first = spec.compute(RecordColumns(events[:k]), store=store).X[:, 0] if k else np.empty(0)
    rest = spec.compute(RecordColumns(events[k:]), store=store).X[:, 0] if k < n else np.empty(0)
    assert np.concatenate([first, rest]).tolist() == whole.tolist()


def test_state_survives_the_changelog_format_bit_for_bit() -> None:
    rng = np.random.default_rng(3)
    times = np.cumsum(rng.exponential(0.3, 400)).tolist()
    keys = rng.choice(list("abcdef"), 400).tolist()
    values = rng.normal(5, 2, 400).round(3).tolist()
    events = events_of(times, keys, values)
    spec = FeatureSpec.parse([(f"f{i}", _expr(fn, arg, span)) for i, (fn, arg, span, _d, _s)
                              in enumerate(CASES)])
    whole = spec.compute(RecordColumns(events)).X
    store = WindowStore(track=True)
    first = spec.compute(RecordColumns(events[:250]), store=store).X
    changed, gone = store.take_changes(0)
    assert not gone and changed
    # One value per key of each `by` (here one: src), holding all 13 windows' states.
    assert {name for name, _key in changed} == {"src"} and len(changed) == 6
    assert all(len(state_codec.split(v)[1]) == len(CASES) for v in changed.values())
    # What a restore reads back: the values as bytes, into a fresh store.
    items = [(name, key, bytes(v)) for (name, key), v in changed.items()]
    restored = WindowStore(track=True)
    restored.restore(0, items, store.clocks.of_scope(0))
    assert restored.snapshot(0) == {}  # no window has been evaluated yet: states pending
    second = spec.compute(RecordColumns(events[250:]), store=restored).X
    assert np.array_equal(np.vstack([first, second]), whole)
    # Loaded back, every state writes the same bytes.
    again = WindowStore(track=True)
    again.restore(0, items, store.clocks.of_scope(0))
    spec.compute(RecordColumns([]), store=again)
    assert again.snapshot(0) == changed


def test_the_earlier_json_form_of_the_changelog_still_restores() -> None:
    """Changelogs written before the binary form: one JSON list per window and key."""
    spec = FeatureSpec.parse([(f"f{i}", _expr(fn, arg, span)) for i, (fn, arg, span, _d, _s)
                              in enumerate(CASES)])
    events = events_of([0.0, 0.5, 1.0, 3.0, 3.5, 4.0], list("ababab"), [1, 2, 3, 4, 5, 6])
    whole = spec.compute(RecordColumns(events)).X
    import stream.features.windows as windows_mod

    store = WindowStore()
    first = spec.compute(RecordColumns(events[:3]), store=store).X
    legacy = []
    for sig, (kernel, table) in store.kernels.items():
        for key in ("a", "b"):
            slot = table.slot_of(0, key)
            dumped = kernel.dump(slot)
            if dumped[0] == "_DistinctH":  # the earlier form held the values themselves
                values = [e["dst"] for e in events[:3] if e["src"] == key]
                assert [windows_mod.hash_text(v) for v in values] == dumped[1][3]
                dumped = ["_Distinct", [*dumped[1][:3], values]]
            legacy.append((sig, key, orjson.loads(orjson.dumps(dumped))))
    restored = WindowStore()
    restored.restore(0, legacy, store.clocks.of_scope(0))
    second = spec.compute(RecordColumns(events[3:]), store=restored).X
    assert np.array_equal(np.vstack([first, second]), whole)
    for _sig, _key, d in legacy:
        assert dump_state(load_state(d))[1][:2] == d[1][:2]

    # The first commit after such a restore migrates: every key in the binary form, and a
    # tombstone for each record of the earlier form (it would be restored at every start).
    migrating = WindowStore(track=True)
    migrating.restore(0, legacy, store.clocks.of_scope(0))
    spec.compute(RecordColumns([]), store=migrating)
    changed, gone = migrating.take_changes(0)
    assert gone == {(sig, key) for sig, key, _d in legacy}
    assert {key for _name, key in changed} == {"a", "b"}
    assert all(state_codec.is_blob(v) for v in changed.values())
    assert migrating.take_changes(0) == ({}, set())
    migrated = WindowStore()
    migrated.restore(0, [(n, k, v) for (n, k), v in changed.items()], store.clocks.of_scope(0))
    third = spec.compute(RecordColumns(events[3:]), store=migrated).X
    assert np.array_equal(third, second)


def test_late_events_are_scored_but_change_nothing() -> None:
    spec = FeatureSpec.parse([("c", "count(by=src, window=60s)")])
    store = WindowStore(lateness=5.0)
    on_time = [{"timestamp": t, "src": "a"} for t in (100, 101, 102)]
    assert spec.compute(RecordColumns(on_time), store=store).X[:, 0].tolist() == [1, 2, 3]
    # 3 s out of order: within the lateness, applied (at the key's newest time).
    c = spec.compute(RecordColumns([{"timestamp": 99, "src": "a"}]), store=store)
    assert c.X[:, 0].tolist() == [4] and c.late == 0
    # 60 s too old: scored against the state (which it would have joined), not applied.
    c = spec.compute(RecordColumns([{"timestamp": 40, "src": "a"}]), store=store)
    assert c.X[:, 0].tolist() == [5] and c.late == 1 and store.stats.late == 1
    c = spec.compute(RecordColumns([{"timestamp": 103, "src": "a"}]), store=store)
    assert c.X[:, 0].tolist() == [5]


def test_bad_and_missing_timestamps_and_keys() -> None:
    spec = FeatureSpec.parse([
        ("c", "count(by=src, window=60s)"),
        ("f", "fill(count(by=dst, window=60s), 0)"),
    ])
    rows = [
        {"timestamp": "2025-01-01T00:00:00Z", "src": "a", "dst": "x"},
        {"timestamp": "2025-01-01T00:00:01+00:00", "src": "a"},
        {"timestamp": "yesterday", "src": "a", "dst": "x"},
        {"src": "a", "dst": "x"},
        {"timestamp": 1735689602.0, "dst": "x"},
    ]
    c = spec.compute(RecordColumns(rows))
    assert c.reason.tolist() == [OK, OK, BAD_TIMESTAMP, BAD_TIMESTAMP, MISSING_FEATURE]
    assert c.X[:2].tolist() == [[1, 1], [2, 0]]  # a missing dst is filled, not counted
    assert c.detail[2] == "feature 'c': bad_timestamp (timestamp)"
    assert c.detail[4] == "feature 'c': missing_feature (src)"


def test_spec_records_the_timestamp_field() -> None:
    spec = FeatureSpec.parse([("c", "count(by=src, window=60s)")]).with_timestamp_field("ts")
    back = FeatureSpec.from_dict(orjson.loads(orjson.dumps(spec.to_dict())))
    assert back.timestamp_field == "ts" and back.windowed
    assert back.fields["ts"] == "both"
    rows = [{"ts": 1, "src": "a"}, {"ts": 2, "src": "a"}]
    assert back.compute(RecordColumns(rows)).X[:, 0].tolist() == [1, 2]
    assert "event time: ts" in back.describe()
    plain = FeatureSpec.parse([("x", "log1p(x)")])
    assert "timestamp_field" not in plain.to_dict() and not plain.windowed


def test_dry_runs_read_the_state_without_changing_it() -> None:
    spec = FeatureSpec.parse([("c", "count(by=src, window=60s)")])
    store = WindowStore()
    spec.compute(RecordColumns([{"timestamp": 1, "src": "a"}]), store=store)
    dry = spec.compute(RecordColumns([{"timestamp": 2, "src": "a"}]), store=store, dry=True)
    assert dry.X[:, 0].tolist() == [2]
    again = spec.compute(RecordColumns([{"timestamp": 2, "src": "a"}]), store=store)
    assert again.X[:, 0].tolist() == [2]


def test_a_busy_key_keeps_at_most_max_events() -> None:
    spec = FeatureSpec.parse([("c", "count(by=src, window=1h)")])
    n = MAX_EVENTS + 10
    rows = [{"timestamp": i * 0.001, "src": "a"} for i in range(n)]
    X = spec.compute(RecordColumns(rows)).X[:, 0]
    assert X[MAX_EVENTS - 1] == MAX_EVENTS and X[-1] == MAX_EVENTS


def test_ttl_and_memory_cap_bound_the_state() -> None:
    spec = FeatureSpec.parse([("c", "count(by=src, window=10s)")])
    store = WindowStore(ttl=60.0, track=True)
    spec.compute(RecordColumns([{"timestamp": 0, "src": "old"}, {"timestamp": 100, "src": "new"}]),
                 store=store)
    store.maintain()
    assert store.entities == 1 and store.stats.evicted_ttl == 1
    _changed, gone = store.take_changes(0)
    assert {k for _s, k in gone} == {"old"}

    cap = WindowStore(max_bytes=2**20)
    rows = [{"timestamp": i * 1e-4, "src": f"h{i}"} for i in range(50_000)]
    spec.compute(RecordColumns(rows), store=cap)
    cap.maintain()
    assert cap.bytes() <= 2**20 and cap.stats.evicted_cap > 0
    assert cap.entities + cap.stats.evicted_cap == 50_000
    # The most recently updated keys are the ones kept.
    assert cap.holds(0, spec.window_signatures[0], "h49999")


def test_window_spec_errors() -> None:
    for text, message in [
        ("count(by=src)", "needs exactly one of window=DURATION or decay="),
        ("count(by=src, window=5s, decay=1s)", "needs exactly one of"),
        ("distinct(dst, by=src, decay=1s)", "has no damped form"),
        ("count(by=src, window=5)", "takes a positive duration here"),
        ("mean(by=src, window=5s)", "'mean' takes 1 argument, got 0"),
        ("count(by=a>b>c, window=5s)", "position"),
    ]:
        with pytest.raises(SpecError) as info:
            FeatureSpec.parse([("w", text)])
        assert message in str(info.value), (text, str(info.value))


def test_the_flows_recipe_parses_and_reads_the_canonical_fields() -> None:
    spec = recipe("flows")
    assert spec.windowed and len(spec) == len(RECIPES["flows"])
    assert set(spec.fields) >= {"src_ip", "dst_ip", "dst_port", "timestamp"}
    with pytest.raises(KeyError, match="known: flows"):
        recipe("nope")




def test_keys_with_one_event_round_trip_through_the_changelog() -> None:
    """A key seen once has no gap yet (its time is -inf)."""
    spec = FeatureSpec.parse([(f"f{i}", _expr(fn, arg, span)) for i, (fn, arg, span, _d, _s)
                              in enumerate(CASES)])
    events = events_of([0.0, 0.5, 3.0, 3.5], ["a", "b", "a", "b"], [1.0, 2.0, 3.0, 4.0])
    whole = spec.compute(RecordColumns(events)).X
    store = WindowStore(track=True)
    first = spec.compute(RecordColumns(events[:2]), store=store).X
    changed, _gone = store.take_changes(0)
    items = [(name, key, bytes(v)) for (name, key), v in changed.items()]
    marks = orjson.loads(orjson.dumps(store.clocks.of_scope(0)))
    restored = WindowStore()
    restored.restore(0, items, {t: -math.inf if m is None else m for t, m in marks.items()})
    second = spec.compute(RecordColumns(events[2:]), store=restored).X
    assert np.array_equal(np.vstack([first, second]), whole)


def _engine_run(python: bool, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every CASE over one messy stream, with the compiled kernels or the Python ones.

    TTL evictions, not the memory cap: what the cap evicts follows each form's own
    estimate of its bytes.
    """
    import stream.features.windows as windows_mod
    import stream.state.store as store_mod

    with monkeypatch.context() as m:
        m.setattr(windows_mod, "FORCE_PYTHON", python)
        if python:
            m.setattr(store_mod, "_KeyIndex", store_mod.PyKeyIndex)
            m.setattr(store_mod, "_late_rows", store_mod._late_py)
        rng = np.random.default_rng(11)
        n = 1500
        # Out of order by up to 8 s (the lateness is 5 s), in bursts, over 40 keys.
        times = (np.cumsum(rng.exponential(0.2, n)) + rng.uniform(-8, 0, n)).tolist()
        keys = rng.choice([f"k{i}" for i in range(40)], n).tolist()
        values = rng.normal(5, 3, n).round(2).tolist()
        events = events_of(times, keys, values)
        for e, miss in zip(events, rng.random(n) < 0.03, strict=True):
            if miss:
                del e["x"]
        spec = FeatureSpec.parse(
            [(f"f{i}", f"fill({_expr(fn, arg, span)}, -1)") for i, (fn, arg, span, _d, _s)
             in enumerate(CASES)]
            + [(f"p{i}", _expr(fn, arg, span, by="src>dst")) for i, (fn, arg, span, _d, _s)
               in enumerate(CASES[::3])])
        store = WindowStore(track=True, ttl=30.0)
        out = []
        for k in range(0, n, 300):
            part = events[k : k + 300]
            scopes = np.array([hash(e["src"]) % 2 for e in part])
            tenants = [("t1", "t2")[int(e["x"]) % 2] if "x" in e else "t1" for e in part]
            out.append(spec.compute(RecordColumns(part), store=store, scopes=scopes,
                                    tenants=tenants, dry=k == 600).X)
            changed, _gone = store.take_changes(0)
            out.append(changed)  # the changelog values: the same bytes from both forms
            if k == 900:  # scope 0 goes through the changelog's form into a fresh store
                items = [(name, key, bytes(v)) for (name, key), v in changed.items()]
                fresh = WindowStore(track=True, ttl=30.0)
                fresh.restore(0, items, store.clocks.of_scope(0))
                store = fresh
            store.maintain()
        out.append(np.array([store.entities, store.stats.evicted_ttl, store.stats.evicted_cap,
                             store.stats.late]))
        return out


def test_compiled_and_python_kernels_agree_bit_for_bit(monkeypatch: pytest.MonkeyPatch) -> None:
    import stream.features.windows as windows_mod

    if windows_mod._wincore is None:
        pytest.skip("the compiled window kernels are not built here")
    compiled = _engine_run(False, monkeypatch)
    python = _engine_run(True, monkeypatch)
    for a, b in zip(compiled, python, strict=True):
        if isinstance(a, dict):
            assert a == b
        else:
            assert np.array_equal(a, b, equal_nan=True)
    rows = sum(len(a) for a in compiled[:-1] if not isinstance(a, dict))
    print(f"\nkernels agree on {rows} rows; entities, TTL and "
          f"cap evictions, late rows: {compiled[-1].tolist()}")
    assert compiled[-1][1] > 0 and compiled[-1][3] > 0  # (the cap estimates bytes per form)


def test_distinct_hashes_are_the_same_in_both_forms() -> None:
    import stream.features.windows as windows_mod

    texts = ["", "a", "10.0.0.1", "ünïcode", "443", None]
    py = [windows_mod._hash_text_py(t) for t in texts]
    assert len(set(py)) == len(py)
    if windows_mod._wincore is not None:
        assert windows_mod._wincore.hash_texts(texts).tolist() == py


def test_without_the_compiled_kernels_one_line_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import stream.features.windows as windows_mod

    monkeypatch.setattr(windows_mod, "_wincore", None)
    monkeypatch.setattr(windows_mod, "_said", False)
    spec = FeatureSpec.parse([("c", "count(by=src, window=60s)"),
                              ("d", "distinct(dst, by=src, window=60s)")])
    rows = [{"timestamp": t, "src": "a", "dst": d} for t, d in ((1, "x"), (2, "y"), (3, "x"))]
    with caplog.at_level("WARNING", logger="stream.features.windows"):
        X = spec.compute(RecordColumns(rows)).X
        spec.compute(RecordColumns(rows))
    assert X.tolist() == [[1, 1], [2, 2], [3, 2]]
    said = [r.getMessage() for r in caplog.records if "compiled window kernels" in r.getMessage()]
    assert len(said) == 1 and "Python kernels" in said[0]


def test_training_windows_take_the_lateness_run_and_score_are_given() -> None:
    """`stream train --lateness` computes windows as `run` and `score` do with the same
    flag: an event 30 s out of order is late at 5 s and counts at 60 s."""
    from stream.registry.training import WindowClock, _training_rows

    events = events_of([0.0, 40.0, 10.0, 50.0], ["a", "a", "a", "a"], [1.0, 2.0, 3.0, 4.0])
    spec = FeatureSpec.parse([("n", "count(by=src, window=60s)")])
    _, at5, *_ = _training_rows(events, spec, "native", WindowClock(lateness=5.0))
    _, at60, *_ = _training_rows(events, spec, "native", WindowClock(lateness=60.0))
    assert at5[:, 0].tolist() == [1.0, 2.0, 3.0, 3.0]  # the late one is scored, not applied
    assert at60[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0]
    # What `stream score` computes with the same lateness.
    for lateness, got in ((5.0, at5), (60.0, at60)):
        want = spec.compute(RecordColumns(events), store=WindowStore(lateness=lateness)).X
        assert got.tolist() == want.tolist()
