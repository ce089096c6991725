"""Measure what the consumer's registry watcher costs at registry scale.

Creates N registered models `PREFIX_tenant0000..` (one version each, alias
`production`) plus the global model `PREFIX`, all pointing at ONE logged sklearn
model, then measures:

- a full poll of every model's production/challenger version (seconds, HTTP requests),
  against asking each model's alias one request at a time;
- the consumer's start-up against that registry (``service.build_table`` +
  ``service.first_refresh``) next to a registry of 10 tenant models: seconds, HTTP
  requests and models loaded;
- one watcher poll with nothing to change, and the first sight of tenants (their
  models load lazily).

    python bench/registry_scale.py --tracking-uri http://127.0.0.1:5000 --models 1000
    python bench/registry_scale.py --server --models 1000 --threads 4   # throwaway server

``--server`` starts a throwaway `mlflow server` on the test PostgreSQL
(tests/servers.py). Re-running with the same prefix against the same
registry reuses the models that already exist.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import statistics
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests

# --- HTTP request counting --------------------------------------------------------------
# Every MLflow REST and artifact call goes through requests.Session.request (urllib3
# retries happen below it and are not counted: this counts logical requests).
_COUNTS: Counter[str] = Counter()
_original_request = requests.Session.request


def _counting_request(self: requests.Session, method: str, url: str, *args: Any, **kwargs: Any):
    _COUNTS[f"{method} {url.split('?', 1)[0].split('/', 3)[-1]}"] += 1
    return _original_request(self, method, url, *args, **kwargs)


requests.Session.request = _counting_request  # type: ignore[method-assign]


@contextlib.contextmanager
def counted() -> Iterator[Counter[str]]:
    """Count HTTP requests made inside the block, by method and path."""
    before = Counter(_COUNTS)
    seen: Counter[str] = Counter()
    try:
        yield seen
    finally:
        seen.update(_COUNTS - before)


# --- the poll under test ----------------------------------------------------------------


@dataclass(frozen=True)
class Assignment:
    """Which version of a tenant's model scores (production) and which shadows (challenger)."""

    production: str | None
    challenger: str | None


def _pick(rm: Any, alias: str, stage: str) -> str | None:
    # Aliases are the MLflow 2.9+ way; stages are deprecated but older registries use
    # them, so an alias wins and the latest version in the stage is the fallback.
    version = rm.aliases.get(alias)
    if version is not None:
        return str(version)  # the SQL store gives ints, the HTTP store strings
    for mv in rm.latest_versions or []:
        if mv.current_stage == stage:
            return str(mv.version)
    return None


def poll_assignments(client: Any, prefix: str, page_size: int = 1000) -> dict[str, Assignment]:
    """Production/challenger version of every registered model named PREFIX*.

    One search_registered_models page (up to 1,000 models, the server's maximum)
    carries each model's aliases and its latest version per stage, so a poll costs
    ceil(N / page_size) requests whatever N is.
    """
    out: dict[str, Assignment] = {}
    token: str | None = None
    while True:
        page = client.search_registered_models(
            filter_string=f"name LIKE '{prefix}%'", max_results=page_size, page_token=token
        )
        for rm in page:
            # '_' is a LIKE wildcard and there is no portable escape (PostgreSQL takes
            # a backslash, SQLite none), so the filter may over-match: check exactly here.
            if rm.name.startswith(prefix):
                out[rm.name] = Assignment(
                    production=_pick(rm, "production", "Production"),
                    challenger=_pick(rm, "challenger", "Staging"),
                )
        token = page.token or None
        if token is None:
            return out


# --- setup ------------------------------------------------------------------------------


def _log_one_model(experiment: str) -> tuple[str, str, str]:
    """Log one fitted Pipeline(StandardScaler, IsolationForest); returns (source, run, model id)."""
    import mlflow
    import mlflow.sklearn
    from sklearn.ensemble import IsolationForest
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from stream.registry import DEFAULT_FEATURES, TRUSTED_TYPES
    from stream.scoring.thresholds import DEFAULT_THRESHOLDS

    x = np.random.default_rng(0).lognormal(size=(1000, 3))
    pipe = Pipeline([("scale", StandardScaler()), ("iforest", IsolationForest(random_state=0))])
    pipe.fit(x)
    mlflow.set_experiment(experiment)
    with mlflow.start_run() as run:
        info = mlflow.sklearn.log_model(
            pipe,
            name="model",
            serialization_format="skops",
            skops_trusted_types=list(TRUSTED_TYPES),
            # What the consumer's loader reads: features and thresholds (stream.registry).
            metadata={
                "stream": {
                    "features": list(DEFAULT_FEATURES),
                    "thresholds": list(DEFAULT_THRESHOLDS),
                }
            },
        )
    return info.model_uri, run.info.run_id, info.model_id


def _register(client: Any, name: str, source: str, run_id: str, model_id: str) -> None:
    client.create_registered_model(name)
    # The server rejects a models:/m-... source unless model_id names that logged model.
    mv = client.create_model_version(
        name, source=source, run_id=run_id, model_id=model_id, await_creation_for=0
    )
    client.set_registered_model_alias(name, "production", str(mv.version))


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def _timed_polls(
    client: Any, prefix: str, polls: int, rows: list[tuple[str, float, int, str]], label: str
) -> dict[str, Assignment]:
    durations: list[float] = []
    requests_per_poll: list[int] = []
    result: dict[str, Assignment] = {}
    for _ in range(max(1, polls)):
        with counted() as seen:
            dt, result = _timed(lambda: poll_assignments(client, prefix))
        durations.append(dt)
        requests_per_poll.append(sum(seen.values()))
    with_production = sum(1 for a in result.values() if a.production is not None)
    rows.append(
        (
            f"poll all, page 1000{label} (median of {len(durations)})",
            statistics.median(durations),
            requests_per_poll[-1],
            f"{len(result)} models, {with_production} with production; "
            f"min {min(durations) * 1000:.0f} ms, max {max(durations) * 1000:.0f} ms",
        )
    )
    return result


def _ensure_models(
    client: Any,
    names: list[str],
    existing: set[str],
    logged: Callable[[], tuple[str, str, str]],
    threads: int,
    rows: list[tuple[str, float, int, str]],
) -> None:
    missing = [n for n in names if n not in existing]
    if not missing:
        return
    source, run_id, model_id = logged()
    with counted() as seen:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(lambda n: _register(client, n, source, run_id, model_id), missing))
        dt = time.perf_counter() - t0
    rows.append(
        (
            f"register {len(missing)} models (+version, alias)",
            dt,
            sum(seen.values()),
            f"{dt / len(missing) * 1000:.1f} ms/model, {threads} thread(s)",
        )
    )


def _startup(uri: str, base: str) -> tuple[Any, float, int]:
    """A consumer's model table, started as ``stream run`` starts it: (table, s, requests)."""
    from stream.config import Settings
    from stream.consumer import service

    table = service.build_table(Settings(tracking_uri=uri, model_name=base))
    with counted() as seen:
        dt, _ = _timed(lambda: service.first_refresh(table))
    return table, dt, sum(seen.values())


def _startups(
    uri: str, sizes: dict[str, int], rows: list[tuple[str, float, int, str]], reps: int
) -> None:
    """Start-up against registries of different tenant counts, interleaved, median of reps."""
    # One unmeasured start-up first: imports and the client's one-time requests.
    _startup(uri, next(iter(sizes)))[0].stop()
    runs: dict[str, list[tuple[float, int, int, int, int]]] = {b: [] for b in sizes}
    for _ in range(max(1, reps)):
        for base in sizes:
            table, dt, n = _startup(uri, base)
            runs[base].append(
                (dt, n, table.last_poll_requests, len(table.view.production), len(table.loaded()))
            )
            table.stop()
    for base, tenants in sizes.items():
        r = runs[base]
        dt = statistics.median(x[0] for x in r)
        _, n, poll_n, production, loaded = r[-1]
        rows.append(
            (
                f"consumer start-up, {tenants} tenant models (median of {len(r)})",
                dt,
                n,
                f"poll {poll_n} + global load {n - poll_n} requests; {production} production "
                f"models seen, {loaded} loaded; min {min(x[0] for x in r) * 1000:.0f} ms, "
                f"max {max(x[0] for x in r) * 1000:.0f} ms",
            )
        )


def _watching(
    uri: str, base: str, tenants: int, rows: list[tuple[str, float, int, str]], polls: int
) -> None:
    """An idle watcher poll and first-sight (lazy) loads, as the consumer does them."""
    table, _, _ = _startup(uri, base)
    try:
        durations, requests_per_poll = [], []
        for _ in range(max(1, polls)):
            with counted() as seen:
                dt, _ = _timed(table.refresh)
            durations.append(dt)
            requests_per_poll.append(sum(seen.values()))
        rows.append(
            (
                f"watcher poll, nothing changed (median of {len(durations)})",
                statistics.median(durations),
                max(requests_per_poll),
                f"{tenants} tenant models; max {max(durations) * 1000:.0f} ms",
            )
        )
        start = 0
        for n in (1, min(10, tenants - 1)):
            first = [f"tenant{i:04d}" for i in range(start, start + n)]
            start += n
            with counted() as seen:
                dt, got = _timed(lambda first=first: table.resolve(first))
            own = sum(1 for t, m in zip(first, got, strict=True) if m and m.name.endswith(t))
            rows.append(
                (
                    f"first sight of {n} tenant(s): lazy load",
                    dt,
                    sum(seen.values()),
                    f"{own}/{n} served by their own model",
                )
            )
    finally:
        table.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--tracking-uri", help="http://HOST:PORT or sqlite:///…")
    where.add_argument(
        "--server",
        action="store_true",
        help="start a throwaway mlflow server on the test PostgreSQL (tests/servers.py)",
    )
    parser.add_argument("--models", type=int, default=1000, help="registered models to create")
    parser.add_argument("--prefix", default="bench", help="model names are PREFIX_tenantNNNN")
    parser.add_argument("--polls", type=int, default=5, help="timed polls (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="parallel creation threads")
    parser.add_argument(
        "--per-model-sample",
        type=int,
        default=100,
        help="models to look up one by one (get_model_version_by_alias) for comparison",
    )
    parser.add_argument(
        "--pg-uri",
        help="the server's PostgreSQL database (postgresql://...): poll again after ANALYZE",
    )
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", args.prefix):
        parser.error("--prefix: letters, digits, '_', '.', '-' only (it goes into a filter)")

    warnings.filterwarnings("ignore")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.basicConfig(level=logging.WARNING)
    with contextlib.ExitStack() as stack:
        analyze: Callable[[], None] | None = None
        if args.server:
            # tests/ lives beside bench/: importable however this script was started.
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
            from tests.servers import MlflowServer

            server = stack.enter_context(MlflowServer())
            args.tracking_uri = server.uri
            analyze = server.analyze
        elif args.pg_uri:
            analyze = lambda: _analyze(args.pg_uri)  # noqa: E731
        _run(args, analyze)


def _analyze(pg_uri: str) -> None:
    import psycopg

    with psycopg.connect(pg_uri, autocommit=True) as conn:
        conn.execute("ANALYZE")


def _run(args: argparse.Namespace, analyze: Callable[[], None] | None) -> None:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(args.tracking_uri)
    client = MlflowClient()
    prefix = f"{args.prefix}_tenant"
    small_base = f"{args.prefix}small"
    names = [args.prefix, *(f"{prefix}{i:04d}" for i in range(args.models))]
    small_names = [small_base, *(f"{small_base}_tenant{i:04d}" for i in range(10))]
    rows: list[tuple[str, float, int, str]] = []

    logged: list[tuple[str, str, str]] = []

    def log_once() -> tuple[str, str, str]:
        if not logged:
            with counted() as seen:
                dt, info = _timed(lambda: _log_one_model(f"{args.prefix}-bench"))
            rows.append(("log + upload one sklearn model", dt, sum(seen.values()), ""))
            logged.append(info)
        return logged[0]

    existing = set(poll_assignments(client, args.prefix))
    _ensure_models(client, names, existing, log_once, args.threads, rows)
    _ensure_models(client, small_names, existing, log_once, args.threads, rows)

    result = _timed_polls(client, prefix, args.polls, rows, "")
    if analyze is not None:
        # Where autovacuum is off, tables filled since the server started have no planner
        # statistics; the latest-versions query then runs as a nested loop (seconds).
        analyze()
        result = _timed_polls(client, prefix, args.polls, rows, " after ANALYZE")

    with counted() as seen:
        dt, small = _timed(lambda: poll_assignments(client, prefix, page_size=100))
    rows.append(("poll all, page 100", dt, sum(seen.values()), f"{len(small)} models"))

    sample = sorted(result)[: args.per_model_sample]
    if sample:
        with counted() as seen:
            dt, _ = _timed(
                lambda: [client.get_model_version_by_alias(n, "production") for n in sample]
            )
        per = dt / len(sample)
        rows.append(
            (
                f"get_model_version_by_alias x{len(sample)}",
                dt,
                sum(seen.values()),
                f"{per * 1000:.1f} ms/model -> ~{per * len(result):.1f} s for all {len(result)}",
            )
        )

    _startups(args.tracking_uri, {small_base: 10, args.prefix: len(result)}, rows, args.polls)
    _watching(args.tracking_uri, args.prefix, len(result), rows, args.polls)

    print(f"\nregistry: {args.tracking_uri}  models: {prefix}* ({len(result)})")
    print(f"{'step':<50} {'seconds':>9} {'HTTP req':>9}  notes")
    for label, seconds, n_requests, note in rows:
        print(f"{label:<50} {seconds:>9.3f} {n_requests:>9}  {note}")


if __name__ == "__main__":
    main()
