"""ModelTable logic with an in-memory registry: routing, lazy LRU, swaps, checks, backoff.

Pure logic: the poller and loader are small fakes standing in for the MLflow
registry, so every race and failure path can be driven deterministically. The
real registry and broker paths are covered by tests/integration/test_hot_reload.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from stream.models.table import ModelTable
from stream.ops import failures
from stream.registry import LoadedModel, ModelLoadError, RegistryView

BASE = "m"
FEATURES = ("bytes_transferred", "packet_count", "connection_duration")


class Estimator:
    """Scores every row with one constant (or NaN), after checking the column count."""

    def __init__(self, n_features: int, value: float) -> None:
        self.n_features = n_features
        self.value = value

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        if X.shape[1] != self.n_features:
            raise ValueError(f"expected {self.n_features} features, got {X.shape[1]}")
        return np.full(len(X), self.value)


@dataclass
class Spec:
    features: tuple[str, ...] = FEATURES
    value: float = 0.1
    error: str | None = None  # the loader raises ModelLoadError(error)
    delay: float = 0.0
    gate: threading.Event | None = None  # the loader blocks until set


class FakeRegistry:
    """Production/challenger assignments and loadable versions, with call records."""

    def __init__(self) -> None:
        self.production: dict[str, str] = {}
        self.challenger: dict[str, str] = {}
        self.specs: dict[tuple[str, str], Spec] = {}
        self.down = False
        self.polls = 0
        self.loads: list[tuple[str, str, str]] = []  # (name, version, thread name)
        self._lock = threading.Lock()

    def add(self, name: str, version: str, spec: Spec | None = None, *, promote: bool = True):
        self.specs[(name, version)] = spec or Spec()
        if promote:
            self.production[name] = version

    def poll(self) -> RegistryView:
        if self.down:
            raise ConnectionError("registry down")
        self.polls += 1
        return RegistryView(dict(self.production), dict(self.challenger), requests=1)

    def load(self, name: str, version: str) -> LoadedModel:
        with self._lock:
            self.loads.append((name, version, threading.current_thread().name))
        spec = self.specs[(name, version)]
        if spec.gate is not None:
            spec.gate.wait(10)
        if spec.delay:
            time.sleep(spec.delay)
        if spec.error:
            raise ModelLoadError(spec.error)
        return LoadedModel(
            name=name,
            version=version,
            features=spec.features,
            thresholds=np.array([-0.5, -0.2, 0.0]),
            estimator=Estimator(len(spec.features), spec.value),
            load_seconds=spec.delay,
        )

    def loads_of(self, name: str) -> list[str]:
        return [v for n, v, _ in self.loads if n == name]


@pytest.fixture
def reg() -> FakeRegistry:
    r = FakeRegistry()
    r.add(BASE, "1")
    return r


class FakeClock:
    """The table's clock for retry backoff: moved by the test, never slept through."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_table(reg: FakeRegistry, clock: FakeClock) -> Iterator:
    tables: list[ModelTable] = []

    def make(**kw) -> ModelTable:
        kw.setdefault("retry_backoff", (0.2, 0.8))
        kw.setdefault("clock", clock)
        t = ModelTable(BASE, poller=reg.poll, loader=reg.load, **kw)
        tables.append(t)
        return t

    yield make
    for t in tables:
        t.stop()


def event(tenant: str, **extra: float) -> dict:
    return {
        "tenant_id": tenant,
        "bytes_transferred": 100,
        "packet_count": 3,
        "connection_duration": 0.5,
        **extra,
    }


def remember(table: ModelTable, *events: dict) -> None:
    """What the consumer hands the table after a batch: tenants and decoded events."""
    table.remember([e["tenant_id"] for e in events], list(events))


def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert condition()


def served(table: ModelTable, *tenants: str) -> list[tuple[str, str] | None]:
    return [m.key if m is not None else None for m in table.resolve(list(tenants))]


def test_routes_tenant_to_own_model_else_global(reg: FakeRegistry, make_table) -> None:
    reg.add("m_acme", "3")
    table = make_table()
    table.refresh()
    assert served(table, "acme", "initech", "") == [("m_acme", "3"), ("m", "1"), ("m", "1")]


def test_startup_loads_only_global_and_tenants_load_on_first_sight(
    reg: FakeRegistry, make_table
) -> None:
    for i in range(1000):
        reg.add(f"m_t{i:04d}", "1")
    table = make_table(cache_size=10)
    table.refresh()
    assert reg.loads_of(BASE) == ["1"]
    assert len(reg.loads) == 1, "start-up must not load tenant models"
    assert served(table, "t0001", "t0002") == [("m_t0001", "1"), ("m_t0002", "1")]
    assert len(reg.loads) == 3
    served(table, "t0001")
    assert len(reg.loads) == 3, "a loaded model is not loaded again"


def test_lru_evicts_least_recently_used_tenant_never_global(reg: FakeRegistry, make_table) -> None:
    for t in ("a", "b", "c"):
        reg.add(f"m_{t}", "1")
    table = make_table(cache_size=3)  # the global model + two tenant models
    table.refresh()
    served(table, "a")
    served(table, "b")
    served(table, "a")  # a is now more recent than b
    served(table, "c")
    assert set(table.loaded()) == {"m", "m_a", "m_c"}
    assert table.evictions == 1
    assert served(table, "b") == [("m_b", "1")]  # loaded again, lazily
    assert reg.loads_of("m_b") == ["1", "1"]
    assert "m" in table.loaded()


def test_batch_with_more_tenants_than_cache_still_gets_every_model(
    reg: FakeRegistry, make_table
) -> None:
    for t in ("a", "b", "c", "d"):
        reg.add(f"m_{t}", "1")
    table = make_table(cache_size=2)
    table.refresh()
    assert served(table, "a", "b", "c", "d") == [(f"m_{t}", "1") for t in "abcd"]
    assert len(table.loaded()) == 2


def test_first_sight_load_into_a_full_cache_keeps_the_batchs_other_models(
    reg: FakeRegistry, make_table
) -> None:
    reg.add("m_a", "1")
    reg.add("m_b", "1")
    table = make_table(cache_size=2)  # the global model + one tenant model
    table.refresh()
    served(table, "a")
    # Loading b evicts a; the batch that asked for both still gets both.
    assert served(table, "a", "b") == [("m_a", "1"), ("m_b", "1")]


def test_promotion_and_rollback_swap_between_resolves(reg: FakeRegistry, make_table) -> None:
    reg.add("m_acme", "1")
    reg.add("m_acme", "2", promote=False)
    table = make_table()
    table.refresh()
    before = table.resolve(["acme"])
    reg.production["m_acme"] = "2"
    table.refresh()
    assert before[0] is not None and before[0].version == "1"  # a resolved batch keeps v1
    assert served(table, "acme") == [("m_acme", "2")]
    reg.production["m_acme"] = "1"  # rollback is just another change of production
    table.refresh()
    assert served(table, "acme") == [("m_acme", "1")]
    swaps = [(s.model, s.from_version, s.to_version) for s in table.swaps]
    assert swaps[-2:] == [("m_acme", "1", "2"), ("m_acme", "2", "1")]
    assert all(t.startswith("model-load") for n, v, t in reg.loads if v == "2")


def test_new_tenant_model_is_preloaded_by_the_watcher_not_the_hot_path(
    reg: FakeRegistry, make_table
) -> None:
    table = make_table()
    table.refresh()
    assert served(table, "acme") == [("m", "1")]  # no model of its own yet
    reg.add("m_acme", "1")
    table.refresh()  # the watcher's poll sees it and loads it for the tenant it serves
    n_loads = len(reg.loads)
    assert table.loaded().get("m_acme") == "1"
    assert served(table, "acme") == [("m_acme", "1")]
    assert len(reg.loads) == n_loads, "the consumer thread loaded nothing"


def test_demoted_tenant_model_falls_back_to_global(reg: FakeRegistry, make_table) -> None:
    reg.add("m_acme", "2")
    table = make_table()
    table.refresh()
    assert served(table, "acme") == [("m_acme", "2")]
    del reg.production["m_acme"]
    table.refresh()
    assert served(table, "acme") == [("m", "1")]
    assert "m_acme" not in table.loaded()
    last = table.swaps[-1]
    assert (last.model, last.from_version, last.to_version) == ("m_acme", "2", None)
    reg.production["m_acme"] = "2"  # promoted again: picked up by the next poll
    table.refresh()
    assert served(table, "acme") == [("m_acme", "2")]


def test_version_failing_its_check_is_not_swapped_and_retried_with_backoff(
    reg: FakeRegistry, make_table, clock: FakeClock
) -> None:
    reg.add("m", "2", Spec(features=(*FEATURES, "entropy")), promote=False)
    failures: list[tuple[str, str, str]] = []
    table = make_table(on_failure=lambda *f: failures.append(f))
    table.refresh()
    remember(table, event("acme"), event("globex"))
    reg.production["m"] = "2"
    table.refresh()
    assert served(table, "acme") == [("m", "1")]  # v1 keeps serving
    assert table.failure_count == 1
    f = table.failures[-1]
    assert (f.model, f.version, f.attempt) == ("m", "2", 1)
    assert "entropy" in f.reason and "none of 2 recent events" in f.reason
    assert failures == [("m", "2", f.reason)]
    table.refresh()  # within the backoff: not tried again
    assert reg.loads_of("m") == ["1", "2"]
    clock.advance(0.19)
    table.refresh()  # still within the 0.2 s backoff
    assert reg.loads_of("m") == ["1", "2"]
    clock.advance(0.02)
    table.refresh()  # backoff over: second attempt, backoff doubled
    assert reg.loads_of("m") == ["1", "2", "2"]
    assert table.failures[-1].attempt == 2
    assert table.failures[-1].retry_in == pytest.approx(0.4)
    assert served(table, "m") == [("m", "1")]


def test_tenant_canary_prefers_the_tenants_own_events(reg: FakeRegistry, make_table) -> None:
    # acme's model needs a field only acme's events carry: checked on acme's events.
    reg.add("m_acme", "1", Spec(features=(*FEATURES, "dns_queries")), promote=False)
    table = make_table()
    table.refresh()
    remember(table, *[event("globex")] * 5, event("acme", dns_queries=4))
    reg.production["m_acme"] = "1"
    table.refresh()
    assert served(table, "acme") == [("m_acme", "1")]
    assert table.failure_count == 0


def test_non_finite_or_raising_versions_are_refused(reg: FakeRegistry, make_table) -> None:
    reg.add("m", "2", Spec(value=float("nan")), promote=False)
    reg.add("m", "3", Spec(error="asks to trust types outside the allow-list"), promote=False)
    table = make_table()
    table.refresh()
    remember(table, event("acme"))
    for v in ("2", "3"):
        reg.production["m"] = v
        table.refresh()
        assert served(table, "x") == [("m", "1")]
    reasons = [f.reason for f in table.failures]
    assert "not 1 finite numbers" in reasons[0]
    assert "allow-list" in reasons[1]


def test_first_sight_failure_falls_back_and_only_the_watcher_retries(
    reg: FakeRegistry, make_table, clock: FakeClock
) -> None:
    reg.add("m_acme", "1", Spec(error="download failed"))
    table = make_table()
    table.refresh()
    assert served(table, "acme") == [("m", "1")]
    assert reg.loads_of("m_acme") == ["1"]
    for _ in range(3):
        assert served(table, "acme") == [("m", "1")]
    assert reg.loads_of("m_acme") == ["1"], "the hot path must not retry a failed load"
    reg.specs[("m_acme", "1")] = Spec()  # e.g. the artifact store is back
    clock.advance(0.25)
    table.refresh()
    assert [t for n, _, t in reg.loads if n == "m_acme"][-1].startswith("model-load")
    assert served(table, "acme") == [("m_acme", "1")]


def test_registry_down_keeps_serving_and_defers_first_sight_loads(
    reg: FakeRegistry, make_table
) -> None:
    reg.add("m_acme", "1")
    table = make_table()
    table.refresh()
    reg.down = True
    with pytest.raises(ConnectionError):
        table.refresh()
    assert not table.registry_reachable
    assert served(table, "acme", "x") == [("m", "1"), ("m", "1")]
    assert reg.loads_of("m_acme") == [], "no load attempt while the registry is down"
    reg.down = False
    table.refresh()
    assert table.registry_reachable
    assert served(table, "acme") == [("m_acme", "1")]


def test_preload_loads_production_models_up_to_the_cache_size_in_the_background(
    reg: FakeRegistry, make_table
) -> None:
    for i in range(20):
        reg.add(f"m_t{i:02d}", "1")
    table = make_table(cache_size=8)
    table.refresh()
    assert table.preload() == 7  # the global model holds the eighth slot
    wait_until(lambda: len(table.loaded()) == 8)
    assert len(reg.loads) == 8 and all(thread.startswith("model-load") for *_n, thread in
                                       reg.loads)
    assert table.preload() == 0, "a full cache starts nothing more"


def test_a_first_batch_joins_the_preloads_of_its_tenants(reg: FakeRegistry, make_table) -> None:
    gate = threading.Event()
    tenants = ("a", "b", "c", "d", "e")
    for t in tenants:
        reg.add(f"m_{t}", "1", Spec(gate=gate))
    table = make_table(load_wait=5, load_workers=4)
    table.refresh()
    assert table.preload() == 5  # one more than the loader threads: one waits in the queue
    got: list = []
    first = threading.Thread(target=lambda: got.extend(served(table, *tenants)))
    first.start()  # its models are loading already: it waits for those loads, not the global
    time.sleep(0.1)
    gate.set()
    first.join(5)
    assert got == [(f"m_{t}", "1") for t in tenants]
    assert sorted(n for n, _v, _t in reg.loads) == ["m", *(f"m_{t}" for t in tenants)], \
        "the running loads were joined, not repeated"


def test_slow_first_sight_load_does_not_hold_the_batch(reg: FakeRegistry, make_table) -> None:
    reg.add("m_acme", "1", Spec(delay=0.5))
    table = make_table(load_wait=0.05)
    table.refresh()
    t0 = time.monotonic()
    assert served(table, "acme") == [("m", "1")]
    assert time.monotonic() - t0 < 0.3
    wait_until(lambda: "m_acme" in table.loaded())  # finished in the background, installed
    assert served(table, "acme") == [("m_acme", "1")]
    assert reg.loads_of("m_acme") == ["1"]


def test_new_tenants_do_not_wait_behind_a_load_backlog(reg: FakeRegistry, make_table) -> None:
    gate = threading.Event()
    for t in ("a", "b", "c"):
        reg.add(f"m_{t}", "1", Spec(gate=gate))
    table = make_table(load_wait=5, load_workers=2)
    table.refresh()
    first = threading.Thread(target=lambda: served(table, "a", "b"))
    first.start()  # waits (up to 5 s) for a and b, which occupy both loader threads
    deadline = time.monotonic() + 5
    while len(reg.loads) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.monotonic()
    assert served(table, "c") == [("m", "1")]  # c is queued behind them: no wait
    assert time.monotonic() - t0 < 1.0
    gate.set()
    first.join(5)
    deadline = time.monotonic() + 5
    while "m_c" not in table.loaded() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert served(table, "a", "b", "c") == [("m_a", "1"), ("m_b", "1"), ("m_c", "1")]


def test_load_overtaken_by_a_newer_production_version_is_dropped(
    reg: FakeRegistry, make_table
) -> None:
    gate = threading.Event()
    reg.add("m_acme", "1", Spec(gate=gate))
    reg.add("m_acme", "2", promote=False)
    table = make_table(load_wait=5)
    table.refresh()
    result: list = []
    consumer = threading.Thread(target=lambda: result.append(served(table, "acme")))
    consumer.start()
    deadline = time.monotonic() + 5
    while not reg.loads_of("m_acme") and time.monotonic() < deadline:
        time.sleep(0.01)
    reg.production["m_acme"] = "2"  # promoted while v1 is still loading
    table.refresh()
    gate.set()
    consumer.join(5)
    assert result == [[("m", "1")]], "a version the registry moved away from is never served"
    assert "m_acme" not in table.loaded()
    table.refresh()  # the tenant is pending: the watcher loads the current version
    assert served(table, "acme") == [("m_acme", "2")]


def test_challenger_loaded_beside_production_and_dropped_with_its_alias(
    reg: FakeRegistry, make_table
) -> None:
    reg.add("m", "2", promote=False)
    reg.add("m", "3", promote=False)
    reg.add("m_acme", "1")
    reg.challenger["m_acme"] = "2"
    reg.add("m_acme", "2", promote=False)
    table = make_table()
    table.refresh()
    prod = table.resolve(["x"])[0]
    assert prod is not None and table.challenger_for(prod) is None
    reg.challenger["m"] = "3"
    table.refresh()
    ch = table.challenger_for(prod)
    assert ch is not None and ch.version == "3"
    # A tenant model loaded on first sight gets its challenger at the next poll.
    acme = table.resolve(["acme"])[0]
    assert acme is not None and table.challenger_for(acme) is None
    table.refresh()
    ch = table.challenger_for(acme)
    assert ch is not None and ch.version == "2"
    reg.production["m"] = "3"  # challenger promoted: nothing left to compare
    table.refresh()
    prod = table.resolve(["x"])[0]
    assert prod is not None and prod.version == "3"
    assert table.challenger_for(prod) is None
    del reg.challenger["m"]
    table.refresh()
    assert table.challengers() == {"m_acme": "2"}


def test_watcher_survives_outage_and_resumes(reg: FakeRegistry, make_table) -> None:
    table = make_table()
    table.refresh()
    reg.down = True
    table.start(0.02)
    deadline = time.monotonic() + 5
    while table.poll_errors < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert table.poll_errors >= 3
    reg.add("m", "2")
    reg.down = False
    deadline = time.monotonic() + 5
    # The swap and the error counter's reset happen in one refresh, not at one instant:
    # wait for both.
    while ((table.loaded().get("m") != "2" or table.poll_errors != 0)
           and time.monotonic() < deadline):
        time.sleep(0.01)
    assert table.loaded()["m"] == "2"
    assert table.poll_errors == 0 and table.poll_errors_total >= 3


def test_concurrent_resolve_and_refresh_never_mix_versions(reg: FakeRegistry, make_table) -> None:
    """While the watcher flips every model between two versions, each batch (one resolve)
    is scored by exactly one version of each model it uses."""
    tenants = [f"t{i}" for i in range(20)]
    reg.add(BASE, "2", promote=False)
    for t in tenants:
        reg.add(f"m_{t}", "1")
        reg.add(f"m_{t}", "2", promote=False)
    table = make_table(cache_size=8)
    table.refresh()
    stop = threading.Event()
    errors: list[BaseException] = []

    def watcher() -> None:
        v = 1
        while not stop.is_set():
            v = 3 - v
            reg.production[BASE] = str(v)
            for t in tenants:
                reg.production[f"m_{t}"] = str(v)
            try:
                table.refresh()
            except BaseException as e:  # pragma: no cover - reported below
                errors.append(e)

    w = threading.Thread(target=watcher)
    w.start()
    # Every tenant twice, plus tenants without a model of their own (the global model's):
    # within one batch a model name must always come with one version.
    batch_tenants = [*tenants, *tenants, "unknown1", "unknown2", "unknown3"]
    batches = mixed_batches = 0
    versions_seen: set[str] = set()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        got = table.resolve(batch_tenants)
        by_name: dict[str, set[str]] = {}
        for t, m in zip(batch_tenants, got, strict=True):
            assert m is not None and m.name in (f"m_{t}", BASE)
            by_name.setdefault(m.name, set()).add(m.version)
        mixed_batches += any(len(v) > 1 for v in by_name.values())
        versions_seen |= {v for vs in by_name.values() for v in vs}
        batches += 1
    stop.set()
    w.join(5)
    assert not errors
    assert batches > 10 and reg.polls > 10
    assert versions_seen == {"1", "2"}, "both versions served over the run"
    assert mixed_batches == 0, f"{mixed_batches} of {batches} batches mixed two versions"
    assert len(table.loaded()) <= 8


def test_challenger_loads_in_the_same_poll_as_its_production_model(
    reg: FakeRegistry, make_table
) -> None:
    reg.add("m", "2", promote=False)
    reg.challenger["m"] = "2"
    table = make_table()
    table.refresh()  # start-up: global and its challenger, so the first batch is shadowed
    assert table.challengers() == {"m": "2"}


def test_remember_keeps_a_bounded_canary() -> None:
    table = ModelTable(BASE, poller=RegistryView, loader=lambda n, v: None, canary_size=4)  # type: ignore[arg-type,return-value]
    try:
        remember(table, *[event("a")] * 10)
        assert len(table.canary) == 4
        assert len(table.canary.by_tenant["a"]) == 8
    finally:
        table.stop()


def test_mlflow_http_defaults_only_fill_what_the_user_left_unset() -> None:
    env = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
    applied = failures.mlflow_http_defaults(env)
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in applied
    assert env["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "60"
    assert env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
    assert env["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "0"
    assert env["MLFLOW_HTTP_POOL_MAXSIZE"] == "32"


def test_made_up_tenants_cannot_push_a_served_tenants_canary_out() -> None:
    from stream.models import canary as models_mod

    view = RegistryView({f"{BASE}_acme": "1"})
    table = ModelTable(BASE, poller=lambda: view, loader=lambda n, v: None)  # type: ignore[arg-type,return-value]
    try:
        table._view = view
        remember(table, event("acme"))
        for k in range(models_mod.MAX_CANARY_TENANTS + 100):
            remember(table, event(f"made-up-{k}"))
        assert "acme" in table.canary.by_tenant
        assert len(table.canary.by_tenant) == models_mod.MAX_CANARY_TENANTS
    finally:
        table.stop()
