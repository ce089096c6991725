"""CPU seconds of the consumer process per event, end to end, `stream run` against the note.

One backlog of generated events waits on the embedded broker, with 5 tenant
models and a global one in a real MLflow registry (SQLite). Each consumer
process reads it in a group of its own, at the default minimum level
(``medium``) and with every event emitted (``low``): ``stream run`` and the
design note's method as a plain batch consumer (``bench.design_note_consumer``).
CPU is the process's user + system time from ``/proc``, between the first
committed offset and the last (start-up excluded), divided by the events
committed between; wall events/s over the same span (the broker, the reader
and the consumer share 2 cores, so trust CPU per event).

    python -m bench.cpu_e2e [--events 150000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import workload
from bench.broker import (
    BASE_NAME,
    PARTITIONS,
    SESSION_TIMEOUT_MS,
    CommitWatch,
    count_records,
    produce_all,
    register_models,
)
from stream.kafka.embedded import EmbeddedBroker

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def one_run(kind: str, level: str, bootstrap: str, uri: str, topic: str, n: int,
            work: Path, tag: str, broker: EmbeddedBroker) -> dict[str, Any]:
    group, alerts = f"cpu-{tag}", f"alerts-{tag}"
    broker.create_topics([alerts], partitions=2)
    broker.create_topics([f"dlq-{tag}"], partitions=1)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}
    if kind == "stream run":
        env.update({
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "STREAM_INPUT_TOPIC": topic,
            "STREAM_ALERT_TOPIC": alerts, "STREAM_DLQ_TOPIC": f"dlq-{tag}",
            "KAFKA_GROUP_ID": group, "STREAM_MODEL_NAME": BASE_NAME,
            "KAFKA_SESSION_TIMEOUT_MS": str(SESSION_TIMEOUT_MS), "STREAM_MIN_LEVEL": level,
        })
        cmd = [sys.executable, "-m", "stream.cli", "run"]
    else:
        cmd = [sys.executable, "-m", "bench.design_note_consumer", bootstrap, topic, group,
               alerts, BASE_NAME, level]
    t_start = time.monotonic()
    log = open(work / f"{tag}.log", "wb")  # noqa: SIM115  (closed with the process)
    proc = subprocess.Popen(cmd, env={**env, "PYTHONPATH": str(Path(__file__).parents[1])},
                            cwd=work, stdout=log, stderr=subprocess.STDOUT)
    watch = CommitWatch(bootstrap, group, topic)
    try:
        deadline = time.monotonic() + 300
        first = 0
        while (first := watch.total()) == 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{kind} exited or never committed:\n"
                                   + (work / f"{tag}.log").read_text()[-2000:])
            time.sleep(0.02)
        startup = time.monotonic() - t_start
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        while (last := watch.total()) < n:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{kind} exited or stalled at {last} of {n}")
            time.sleep(0.02)
        cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
    finally:
        watch.close()
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    events = last - first
    return {"kind": kind, "level": level, "events": events, "startup_s": startup,
            "cpu_us_per_event": (cpu1 - cpu0) / events * 1e6,
            "eps": events / (t1 - t0), "alerts": count_records(bootstrap, alerts, 2, quiet=0.5)}


def measure(events: int = 150_000, wl: workload.Workload | None = None,
            kinds: tuple[str, ...] = ("stream run", "design note"),
            levels: tuple[str, ...] = ("medium", "low"), repeat: int = 1) -> list[dict[str, Any]]:
    wl = wl or workload.build(events, 5000)
    rows = []
    with tempfile.TemporaryDirectory(prefix="stream-cpu-") as tmp, EmbeddedBroker() as broker:
        work = Path(tmp)
        uri = f"sqlite:///{work / 'mlflow.db'}"
        register_models(wl, uri)
        broker.create_topics(["cpu-flows"], partitions=PARTITIONS)
        produce_all(broker.bootstrap, "cpu-flows", wl.values[:events])
        i = 0
        for _ in range(repeat):
            for level in levels:
                for kind in kinds:
                    i += 1
                    rows.append(one_run(kind, level, broker.bootstrap, uri, "cpu-flows",
                                        events, work, str(i), broker))
    return rows


def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Design-note CPU per event over ours, per minimum level."""
    by = {(r["kind"], r["level"]): r["cpu_us_per_event"] for r in rows}
    return {level: by[("design note", level)] / by[("stream run", level)]
            for level in ("medium", "low")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cpu_e2e",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=150_000)
    ap.add_argument("--stream-only", action="store_true", help="skip the design-note consumer")
    ap.add_argument("--level", action="append", choices=["medium", "low"],
                    help="only this minimum level (repeatable)")
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args(argv)
    rows = measure(args.events, kinds=("stream run",) if args.stream_only else
                   ("stream run", "design note"),
                   levels=tuple(args.level or ("medium", "low")), repeat=args.repeat)
    for r in rows:
        print(f"{r['kind']:<12} min level {r['level']:<7} {r['cpu_us_per_event']:7.2f} CPU us/event"
              f"  {r['eps']:>9,.0f} events/s  alerts {r['alerts']:>7,}  first commit "
              f"{r['startup_s']:.1f}s")
    if not args.stream_only and not args.level and args.repeat == 1:
        for level, x in ratios(rows).items():
            print(f"ratio at {level}: {x:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
