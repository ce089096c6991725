"""Measure what one poll of every tenant's production model version costs at registry scale.

Creates N registered models `PREFIX_tenant0000..` (one version each, alias
`production`) that all point at ONE logged sklearn model, then times a full poll of
the production/challenger assignment of every model and counts its HTTP requests.

    python bench/registry_scale.py --tracking-uri http://127.0.0.1:5000 --models 1000

Re-running with the same prefix reuses the models that already exist.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import re
import statistics
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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

    x = np.random.default_rng(0).normal(size=(1000, 3))
    pipe = Pipeline([("scale", StandardScaler()), ("iforest", IsolationForest(random_state=0))])
    pipe.fit(x)
    mlflow.set_experiment(experiment)
    with mlflow.start_run() as run:
        info = mlflow.sklearn.log_model(
            pipe,
            name="model",
            skops_trusted_types=["sklearn.tree._tree.Tree"],
            metadata={"features": ["bytes", "packets", "duration"]},
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True, help="http://HOST:PORT or sqlite:///…")
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
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(args.tracking_uri)
    client = MlflowClient()
    prefix = f"{args.prefix}_tenant"
    names = [f"{prefix}{i:04d}" for i in range(args.models)]
    rows: list[tuple[str, float, int, str]] = []

    existing = set(poll_assignments(client, prefix))
    missing = [n for n in names if n not in existing]
    if missing:
        with counted() as seen:
            dt, (source, run_id, model_id) = _timed(lambda: _log_one_model(f"{args.prefix}-bench"))
        rows.append(("log + upload one sklearn model", dt, sum(seen.values()), ""))
        with counted() as seen:
            t0 = time.perf_counter()
            with ThreadPoolExecutor(max_workers=args.threads) as pool:
                list(pool.map(lambda n: _register(client, n, source, run_id, model_id), missing))
            dt = time.perf_counter() - t0
        rows.append(
            (
                f"register {len(missing)} models (+version, alias)",
                dt,
                sum(seen.values()),
                f"{dt / len(missing) * 1000:.1f} ms/model, {args.threads} thread(s)",
            )
        )

    result = _timed_polls(client, prefix, args.polls, rows, "")
    if args.pg_uri:
        # Where autovacuum is off, tables filled since the server started have no planner
        # statistics; the latest-versions query then runs as a nested loop (seconds).
        import psycopg

        with psycopg.connect(args.pg_uri, autocommit=True) as conn:
            conn.execute("ANALYZE")
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

    print(f"\nregistry: {args.tracking_uri}  models: {prefix}* ({len(result)})")
    print(f"{'step':<50} {'seconds':>9} {'HTTP req':>9}  notes")
    for label, seconds, n_requests, note in rows:
        print(f"{label:<50} {seconds:>9.3f} {n_requests:>9}  {note}")


if __name__ == "__main__":
    main()
