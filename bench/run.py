"""The side-by-side performance table: `python -m bench` (or `bash bench/run.sh`).

One run builds one workload (generated events, one fitted model, five
tenants), measures every row on it, and prints the table, the ratios against
the targets, peak memory, the 1,000-tenant run and the two-consumer run.
``--json PATH`` also writes every number.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import time
import warnings
from dataclasses import asdict
from typing import Any

import numpy as np

from bench import (
    alerts_compute,
    cpu_e2e,
    features_compute,
    forest_compute,
    offline,
    startup,
    windows_compute,
    workload,
)
from bench import broker as broker_rows
from stream.config import Settings
from stream.scoring.thresholds import threat_levels

TARGETS = {
    "(2)/(1)": 0.8,
    "(2)/(3)": 3.0,
    "(5)/(1)": 0.6,
}


def _mb(n: int | None) -> str:
    return "-" if not n else f"{n / 1e6:,.0f} MB"


def _fmt_eps(x: float) -> str:
    return f"{x:,.0f}" if math.isfinite(x) else "-"


def expected_alerts(wl: workload.Workload, values: list[bytes]) -> int:
    """Alerts the consumer must deliver for ``values``: the model's own scores, thresholded."""
    import orjson

    X = np.array([[orjson.loads(v)[f] for f in wl.features] for v in values], dtype=np.float64)
    levels = threat_levels(wl.estimator.decision_function(X), wl.thresholds)
    return int(np.count_nonzero(levels >= offline.MIN_LEVEL))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=60_000, help="events for the offline rows")
    ap.add_argument("--e2e-events", type=int, default=300_000,
                    help="backlog for the broker rows")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of rows 1-3")
    ap.add_argument("--latency-seconds", type=float, default=8.0)
    ap.add_argument("--scale-events", type=int, default=10_000)
    ap.add_argument("--consumer-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for the stream run processes, e.g. "
                         "STREAM_KAFKA_PROPERTIES=fetch.wait.max.ms=10 (repeatable)")
    ap.add_argument("--skip-broker", action="store_true", help="offline rows only")
    ap.add_argument("--skip-scale", action="store_true")
    ap.add_argument("--json", metavar="PATH", help="also write every number as JSON")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    for name in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    # sklearn warns from model-loader threads whatever the filters say (its helpers swap
    # the global filter list in other threads); the table is the output, so drop them.
    warnings.showwarning = lambda *_args, **_kwargs: None

    t_all = time.monotonic()
    batch_size = Settings().batch_size
    print(f"stream benchmark: {platform.machine()}, {_cpus()} CPUs, Python "
          f"{platform.python_version()}; micro-batch {batch_size} (stream run's default)")
    wl = workload.build(max(args.events, args.e2e_events), batch_size)
    offline_wl = workload.Workload(wl.values[: args.events], wl.tenants[: args.events],
                                   wl.estimator, wl.thresholds, batch_size, wl.train_seconds)
    print(f"workload: {len(wl.values):,} generated events (~{_avg_len(wl.values):.0f} B each), "
          f"{len(workload.TENANTS)} tenants, 1 model (100 trees, 3 features) trained in "
          f"{wl.train_seconds:.1f}s\n", flush=True)

    off = offline.run_offline(offline_wl, rounds=args.rounds)
    big = 4 * batch_size
    off_big = offline.run_offline(
        workload.Workload(offline_wl.values, offline_wl.tenants, wl.estimator, wl.thresholds,
                          big, wl.train_seconds),
        rounds=max(1, args.rounds - 2), details=False)
    feats = features_compute.measure()
    feats["windows"] = windows_compute.measure()
    feats["alerts"] = alerts_compute.measure()
    feats["forest"] = forest_compute.measure()
    print(f"offline rows done ({time.monotonic() - t_all:.0f}s)", flush=True)

    br = None
    cpu_rows: list[dict[str, Any]] = []
    starts: dict[str, Any] = {}
    if not args.skip_broker:
        e2e_values = wl.values[: args.e2e_events]
        extra = dict(kv.split("=", 1) for kv in args.consumer_env)
        br = broker_rows.run_broker(wl, e2e_values, expected_alerts(wl, e2e_values),
                                    latency_seconds=args.latency_seconds, consumer_env=extra)
        print(f"broker rows done ({time.monotonic() - t_all:.0f}s)", flush=True)
        cpu_rows = cpu_e2e.measure(min(150_000, len(wl.values)), wl=wl)
        starts = startup.measure(wl=wl)
        # A first start that fills a model store, then restarts from it.
        starts["restarts"] = startup.measure(wl=wl, model_store=True)
        print(f"CPU and start-up rows done ({time.monotonic() - t_all:.0f}s)", flush=True)

    scale = None
    if not args.skip_scale:
        scale = offline.run_scale(offline_wl, n_events=args.scale_events,
                                  big_batch=2 * batch_size)
        print(f"scale run done ({time.monotonic() - t_all:.0f}s)", flush=True)

    report = _report(args, wl, off, off_big, br, scale, time.monotonic() - t_all)
    report["data"]["features"] = feats
    report["data"]["cpu_e2e"] = cpu_rows
    report["data"]["startup"] = starts
    if cpu_rows:
        report["text"] += "\n\n" + _cpu_rows(cpu_rows, starts)
    report["text"] = report["text"].replace(FEATURES_MARK, _features_rows(feats))
    print(report["text"])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report["data"], fh, indent=2, default=float)
    return 0


CPU_TARGETS = {"medium": 3.0, "low": 2.5}
START_TARGET_S = 3.0


def _cpu_rows(rows: list[dict[str, Any]], starts: dict[str, Any]) -> str:
    out = ["end to end, CPU of the consumer process per event (first to last commit; "
           f"{rows[0]['events']:,} events, 5 tenant models):"]
    for r in rows:
        out.append(f"  11 {r['kind']:<12} min level {r['level']:<7}{r['cpu_us_per_event']:>8.2f} "
                   f"CPU us/event {r['eps']:>10,.0f} events/s  {r['alerts']:>8,} alerts  "
                   f"first commit {r['startup_s']:.1f}s")
    for level, x in cpu_e2e.ratios(rows).items():
        target = CPU_TARGETS[level]
        verdict = "met" if x >= target else f"missed by {target - x:.2f}"
        out.append(f"  design note / stream run at {level}: {x:.2f}x (target >= {target}x) "
                   f"{verdict}")
    first = starts["first_commit_s"]
    start_verdict = ("met" if first <= START_TARGET_S
                     else f"MISSED by {first - START_TARGET_S:.1f}s")
    out.append(f"  12 stream run, process start -> first committed batch: best {first:.2f}s of "
               f"{len(starts['runs'])} (session.timeout.ms {starts['session_timeout_ms']}); "
               f"target <= {START_TARGET_S:g}s: "
               f"{start_verdict}")
    again = starts.get("restarts") or {}
    if again.get("restart_s") is not None:
        r = again["restart_s"]
        verdict = "met" if r <= START_TARGET_S else f"MISSED by {r - START_TARGET_S:.1f}s"
        n = sum(x["kind"] == "restart" for x in again["runs"])
        out.append(f"  12b the same, restarted with its model store (MODEL_STORAGE_PATH, proved "
                   f"scorers kept): best {r:.2f}s of {n}; target <= {START_TARGET_S:g}s: "
                   f"{verdict}")
    out.append(f"  13 command start: stream --help {starts['help_s']:.2f}s, stream models "
               f"{starts['models_s']:.2f}s (whole process, best of {len(starts['runs'])})")
    return "\n".join(out)


FEATURES_MARK = "\x00features\x00"
FEATURE_TARGET_US = 1.0


def _features_rows(f: dict[str, float]) -> str:
    label = "feature stage: 6 expressions + 2 one-hot fields, decoded columns"
    us = f["compute_best_us"]
    ok = "met" if us <= FEATURE_TARGET_US else "MISSED"
    return (
        f"{'7':<4}{label:<62}{1e6 / us:>12,.0f}{us:>11.2f}{'-':>11}\n"
        f"{'7b':<4}{'the same from raw JSON values: decode + feature stage':<62}"
        f"{1e6 / f['decode_compute_best_us']:>12,.0f}{f['decode_compute_best_us']:>11.2f}"
        f"{'-':>11}\n"
        f"    row 7: {int(f['columns'])} model columns over {int(f['rows']):,} rows; target "
        f"<= {FEATURE_TARGET_US:g} us/event: {ok}\n"
        + _window_rows(f["windows"], f["alerts"]) + "\n" + _forest_rows(f["forest"])
    )


FOREST_TARGET_US = 1.0


def _forest_rows(f: dict[str, float]) -> str:
    us = f["compiled_us"]
    return (
        f"{'10':<4}{'compiled forest walk: 100 trees, 5,000-row calls':<62}"
        f"{1e6 / us:>12,.0f}{us:>11.3f}{'-':>11}\n"
        f"    row 10: target <= {FOREST_TARGET_US:g} us/event: "
        f"{'met' if us <= FOREST_TARGET_US else 'MISSED'}; numpy walk {f['numpy_us']:.2f}, "
        f"decision_function {f['decision_function_us']:.2f} us/event; one-row call: compiled "
        f"{f['compiled_one_row_us']:.1f} us, numpy {f['numpy_one_row_us']:.1f} us, "
        f"decision_function {f['decision_function_one_row_us'] / 1e3:.1f} ms"
    )


WINDOW_TARGET_US = 2.0
EXPLAIN_TARGET_US = 1.0


def _window_rows(w: dict[str, float], a: dict[str, float]) -> str:
    us = w["best_us"]
    ex = a["explain_us"]
    return (
        f"{'8':<4}{'window stage: 10 windows over 3 keys, 100k live entities':<62}"
        f"{1e6 / us:>12,.0f}{us:>11.2f}{'-':>11}\n"
        f"    row 8: target <= {WINDOW_TARGET_US:g} us/event: "
        f"{'met' if us <= WINDOW_TARGET_US else 'MISSED'}; memory per 100k entity states "
        f"{w['traced_mb_per_100k']:.1f} MiB (traced)\n"
        f"{'9':<4}{'explanations of 1% alerts, per event of the batch':<62}"
        f"{1e6 / ex:>12,.0f}{ex:>11.3f}{'-':>11}\n"
        f"    row 9: target <= {EXPLAIN_TARGET_US:g} us/event: "
        f"{'met' if ex <= EXPLAIN_TARGET_US else 'MISSED'}; incidents {a['incidents_us']:.3f}, "
        f"drift {a['drift_us']:.3f} us/event; {a['explanation_bytes']} bytes per explanation"
    )


def _report(args: argparse.Namespace, wl: workload.Workload, off: offline.OfflineResult,
            off_big: offline.OfflineResult, br: broker_rows.BrokerResult | None,
            scale: offline.ScaleResult | None, elapsed: float) -> dict[str, Any]:
    rows = off.rows
    lines = [""]
    hdr = f"{'row':<4}{'what':<62}{'events/s':>12}{'us/event':>11}{'peak mem':>11}"
    lines += [hdr, "-" * len(hdr)]
    for k in ("1", "1b", "2", "3", "4"):
        r = rows[k]
        peak = f"{r.peak_bytes / 1e6:.1f} MB" if r.peak_bytes else "-"
        lines.append(f"{k:<4}{r.label:<62}{_fmt_eps(r.eps):>12}{r.us_per_event:>11.2f}{peak:>11}")
    eps5 = br.eps if br else float("nan")
    if br:
        lines.append(f"{'5':<4}{'end to end: embedded broker, one stream run process':<62}"
                     f"{_fmt_eps(eps5):>12}{1e6 / eps5:>11.2f}{_mb(br.consumer_peak_rss):>11}")
        lat = (f"p50 {br.p50_ms:.0f} ms  p99 {br.p99_ms:.0f} ms  max {br.max_ms:.0f} ms"
               f"  at {br.latency_rate:,.0f} events/s")
        lines.append(f"{'6':<4}{'latency, produce -> alert delivered, at half of (5)':<62}")
        lines.append(f"{'':<8}{lat}")
    lines.append(FEATURES_MARK)
    lines.append("")
    lines.append(f"rows 1-3 (and 1b): fastest of {off.rounds} interleaved rounds over "
                 f"{rows['1'].events:,} events in micro-batches of {wl.batch_size}; peak mem = "
                 "largest")
    lines.append("  traced allocation while one micro-batch goes through the row; row 5: the "
                 "consumer's peak RSS")
    if br and args.consumer_env:
        lines.append(f"stream run processes had: {' '.join(args.consumer_env)}")
    lines.append(f"row 4: {rows['4'].note}; one decision_function call costs "
                 f"{off.per_call_ms:.1f} ms whatever its size")
    lines.append(f"alerts: {off.alerts:,} of {rows['2'].events:,} events "
                 f"({off.alert_rate:.2%}) at min level medium, calibrated thresholds")

    ratios = {
        "(2)/(1)": rows["2"].eps / rows["1"].eps,
        "(2)/(3)": rows["2"].eps / rows["3"].eps,
        "(5)/(1)": eps5 / rows["1"].eps if br else float("nan"),
    }
    lines += ["", "ratio      measured   target   "]
    lines.append(f"{'(2)/(1b)':<11}{rows['2'].eps / rows['1b'].eps:>8.2f}   (no target: our "
                 "pipeline against the scorer it calls)")
    for name, value in ratios.items():
        target = TARGETS[name]
        verdict = "met" if value >= target else (
            "-" if not math.isfinite(value) else f"missed by {target - value:.2f}")
        lines.append(f"{name:<11}{value:>8.2f}   >= {target:<5} {verdict}")
    max_wait = Settings().batch_max_wait_ms
    if br:
        verdict = ("met" if br.p99_ms <= max_wait + 50
                   else f"missed by {br.p99_ms - max_wait - 50:.0f} ms")
        lines.append(f"{'p99':<11}{br.p99_ms:>6.0f} ms   <= {max_wait + 50} ms "
                     f"(max-wait {max_wait} + 50)  {verdict}")

    b = off_big.rows
    lines += ["", f"same rows at micro-batch {4 * wl.batch_size} (fewer, larger model calls): "
                  f"(1) {_fmt_eps(b['1'].eps)}  (2) {_fmt_eps(b['2'].eps)}  "
                  f"(3) {_fmt_eps(b['3'].eps)} events/s; (2)/(1) {b['2'].eps / b['1'].eps:.2f}, "
                  f"(2)/(3) {b['2'].eps / b['3'].eps:.2f}"]
    if br:
        lines += ["", "end to end details:"]
        lines.append(f"  backlog {br.events:,} events; alerts delivered {br.alerts_delivered:,} "
                     f"(expected from the model's own scores: {br.alerts_expected:,}); "
                     f"dead letters {br.dead_letters}")
        lines.append(f"  consumer start-up to first commit {br.startup_seconds:.1f}s; one "
                     f"registry load_version {br.registry_load_s * 1e3:.0f} ms")
        lines.append(f"  latency: {br.latency_events:,} paced events, {br.latency_samples:,} "
                     "alerts timed after a 1 s warm-up")
        two = br.two_eps
        lines.append(f"  two stream run processes, one group, {broker_rows.PARTITIONS} partitions: "
                     f"{_fmt_eps(two)} events/s combined = {two / eps5:.2f} x one process "
                     f"(peak RSS {', '.join(_mb(x) for x in br.two_peak_rss)})")
        lines += [f"  note: {n}" for n in br.notes]

    if scale:
        lines += ["", f"scale: {scale.tenants:,} tenants, each its own model, Zipf-skewed "
                      f"traffic (top 3 tenants = {scale.top3_share:.0%} of events), "
                      f"{scale.events:,} events, micro-batch {scale.batch_size}"]
        lines.append(f"  distinct tenants per micro-batch: {scale.distinct_per_batch:.0f} -> "
                     "as many model calls")
        lines.append(f"  all models cached (cache {scale.tenants + 1}): "
                     f"{_fmt_eps(scale.eps_warm)} events/s warm; first pass with every lazy "
                     f"load: {_fmt_eps(scale.eps_first_pass)} events/s")
        lines.append(f"  micro-batch {scale.big_batch}: {scale.distinct_per_big_batch:.0f} "
                     f"distinct tenants per batch, {_fmt_eps(scale.eps_warm_big_batch)} "
                     "events/s warm")
        lines.append(f"  memory per loaded model: {scale.mb_per_model:.2f} MB (traced); one lazy "
                     f"load (skops, trusted types, scorer check): {scale.skops_load_ms:.0f} ms")
        lines.append(f"  from the scorer its trainer shipped (hashes, arrays, proof rows; the "
                     f"throughput rows above load so): {scale.shipped_load_ms:.1f} ms, "
                     f"{scale.mb_per_shipped_model:.2f} MB per model (traced)")
        lines.append(f"  default --model-cache-size {scale.default_cache}: "
                     f"{scale.loads_per_batch_default_cache:.0f} reloads per micro-batch; at "
                     f"{scale.skops_load_ms:.0f} ms each that is "
                     f"{_fmt_eps(scale.projected_eps_default_cache)} events/s, at "
                     f"{scale.shipped_load_ms:.1f} ms each "
                     f"{_fmt_eps(scale.projected_eps_default_cache_shipped)} (computed)")

    lines += ["", f"peak RSS of the benchmark process {_mb(workload.peak_rss_bytes())}; "
                  f"whole run {elapsed:.0f}s"]
    data = {
        "batch_size": wl.batch_size,
        "rows": {k: {"label": r.label, "events_per_s": r.eps, "us_per_event": r.us_per_event,
                     "seconds": r.seconds, "peak_bytes": r.peak_bytes}
                 for k, r in rows.items()},
        "ratios": ratios,
        "rows_big_batch": {k: r.eps for k, r in off_big.rows.items()},
        "alert_rate": off.alert_rate,
        "per_call_ms": off.per_call_ms,
        "broker": asdict(br) if br else None,
        "scale": asdict(scale) if scale else None,
        "elapsed_s": elapsed,
    }
    return {"text": "\n".join(lines), "data": data}


def _avg_len(values: list[bytes]) -> float:
    return sum(map(len, values[:10000])) / max(1, min(len(values), 10000))


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
