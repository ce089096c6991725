"""Start-up rows: process start to first committed batch, and each command's start time.

- ``stream run`` with 5 tenant models and a global one in a real MLflow registry
  (SQLite), a backlog waiting on the embedded broker: seconds from the process
  start to the group's first committed offset, with the moments its log lines
  appeared (imports, registry, partitions assigned, models loaded).
- with ``--model-store``, the same with one ``MODEL_STORAGE_PATH`` for every run:
  the first start fills it, each later one is a restart from it;
- ``stream --help`` and ``stream models`` (a registry command): wall seconds of
  the whole process, best of a few runs.

    python -m bench.startup [--session-timeout-ms 4000] [--runs 3] [--registry-uri URL]
                            [--model-store]
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
    PARTITIONS,
    CommitWatch,
    produce_all,
    register_models,
    start_consumer,
)
from stream.kafka.embedded import EmbeddedBroker

# Log lines whose first appearance marks a phase of the start.
PHASES = {
    "registry answered": "registry:",
    "consuming": "consuming ",
    "partitions assigned": "partitions assigned:",
    "first model loaded": "loaded ",
}


def command_seconds(args: list[str], env: dict[str, str], runs: int) -> float:
    """Best wall time of ``stream ARGS`` as a fresh process."""
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "stream.cli", *args], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - t0)
    return best


def measure(session_timeout_ms: int = 4000, runs: int = 3,
            wl: workload.Workload | None = None, registry_uri: str = "",
            model_store: bool = False) -> dict[str, Any]:
    """First-commit times of fresh ``stream run`` processes.

    With ``model_store`` every run keeps its models in one ``MODEL_STORAGE_PATH``: the
    first run fills it (a first start), the others restart from it.
    """
    wl = wl or workload.build(20_000, 5000)
    out: dict[str, Any] = {"session_timeout_ms": session_timeout_ms, "runs": []}
    with tempfile.TemporaryDirectory(prefix="stream-start-") as tmp, \
            EmbeddedBroker() as broker:
        work = Path(tmp)
        # A SQLite registry by default; an `mlflow server` when given (the consumer then
        # needs no SQLAlchemy store of its own, a second less of imports).
        uri = registry_uri or f"sqlite:///{work / 'mlflow.db'}"
        register_models(wl, uri)
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONUNBUFFERED": "1"}
        out["help_s"] = command_seconds(["--help"], env, runs)
        out["models_s"] = command_seconds(["models"], env, runs)
        for i in range(runs):
            topic = f"start{i}"
            broker.create_topics([topic], partitions=PARTITIONS)
            broker.create_topics([f"alerts{i}"], partitions=2)
            broker.create_topics([f"flows.dlq{i}"], partitions=1)
            produce_all(broker.bootstrap, topic, wl.values[:20_000])
            t0 = time.monotonic()
            extra = {"KAFKA_SESSION_TIMEOUT_MS": str(session_timeout_ms),
                     "STREAM_LOG_LEVEL": "INFO"}
            if model_store:
                extra["MODEL_STORAGE_PATH"] = str(work / "model-store")
            run = start_consumer(broker.bootstrap, uri, topic, f"start-{i}", work, str(i),
                                 extra)
            watch = CommitWatch(broker.bootstrap, f"start-{i}", topic)
            try:
                watch.wait_for(1, timeout=120, proc=run)
                first = time.monotonic() - t0
            finally:
                watch.close()
                run.stop()
            phases = {name: next((t - t0 for t, line in run.lines if mark in line), None)
                      for name, mark in PHASES.items()}
            out["runs"].append({"first_commit_s": first, **phases,
                                "kind": ("restart" if i else "first start") if model_store
                                else "no model store"})
            out["log"] = [(round(t - t0, 2), line[:160]) for t, line in run.lines]
    out["first_commit_s"] = min(r["first_commit_s"] for r in out["runs"])
    restarts = [r["first_commit_s"] for r in out["runs"] if r["kind"] == "restart"]
    out["restart_s"] = min(restarts) if restarts else None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.startup",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--session-timeout-ms", type=int, default=4000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--registry-uri", default="",
                    help="an mlflow server to register the models in (default: SQLite)")
    ap.add_argument("--model-store", action="store_true",
                    help="one MODEL_STORAGE_PATH for every run: the first fills it, the "
                         "others restart from it")
    args = ap.parse_args(argv)
    r = measure(args.session_timeout_ms, args.runs, registry_uri=args.registry_uri,
                model_store=args.model_store)
    print(f"stream --help {r['help_s']:.2f}s; stream models {r['models_s']:.2f}s (best of "
          f"{args.runs})")
    for run in r["runs"]:
        marks = ", ".join(f"{k} {v:.2f}s" for k, v in run.items()
                          if k not in ("first_commit_s", "kind") and v is not None)
        print(f"stream run ({run['kind']}), session.timeout.ms {args.session_timeout_ms}: "
              f"first commit {run['first_commit_s']:.2f}s ({marks})")
    if os.environ.get("BENCH_STARTUP_LOG"):
        for t, line in r["log"]:
            print(f"{t:6.2f} {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
