"""Tests of stream.ops.metrics: metric values after each call, and the real HTTP endpoints."""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from stream.ops.metrics import EVENT_AGE_BUCKETS, OTHER, HealthServer, Metrics


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET, without raising on 5xx."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_record_batch_counts_events_and_observes_histograms() -> None:
    m = Metrics()
    m.record_batch(consumed=5000, scored=4990, seconds=0.3)
    m.record_batch(consumed=10, scored=10, seconds=0.004)
    assert value(m, "stream_events_consumed_total") == 5010
    assert value(m, "stream_events_scored_total") == 5000
    assert value(m, "stream_batch_size_count") == 2
    assert value(m, "stream_batch_size_sum") == 5010
    assert value(m, "stream_batch_size_bucket", le="10.0") == 1
    assert value(m, "stream_batch_size_bucket", le="5000.0") == 2
    assert value(m, "stream_batch_seconds_bucket", le="0.005") == 1
    assert value(m, "stream_batch_seconds_bucket", le="0.25") == 1
    assert value(m, "stream_batch_seconds_bucket", le="0.5") == 2
    assert value(m, "stream_batch_seconds_sum") == pytest.approx(0.304)
    assert value(m, "stream_last_batch_timestamp_seconds") > 0


def test_each_instance_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.record_delivery_failures(3)
    assert a.registry is not b.registry
    assert value(a, "stream_delivery_failures_total") == 3
    assert value(b, "stream_delivery_failures_total") == 0


def test_explicit_registry_is_used() -> None:
    reg = CollectorRegistry()
    m = Metrics(registry=reg)
    m.record_delivery_failures(2)
    assert reg.get_sample_value("stream_delivery_failures_total") == 2


def test_alerts_and_dead_letters_by_label() -> None:
    m = Metrics()
    m.record_alerts({("acme", "high"): 3, ("acme", "critical"): 1, ("globex", "medium"): 2})
    m.record_alerts({("acme", "high"): 2})
    m.record_dead_letters({"invalid_json": 4, "schema": 1})
    m.record_dead_letters({"invalid_json": 1})
    assert value(m, "stream_alerts_total", tenant="acme", level="high") == 5
    assert value(m, "stream_alerts_total", tenant="acme", level="critical") == 1
    assert value(m, "stream_alerts_total", tenant="globex", level="medium") == 2
    assert value(m, "stream_alerts_total", tenant="globex", level="high") is None
    assert value(m, "stream_dead_letters_total", reason="invalid_json") == 5
    assert value(m, "stream_dead_letters_total", reason="schema") == 1


def test_tenant_label_cap_keeps_first_tenants_and_folds_the_rest() -> None:
    m = Metrics(max_tenant_labels=3)
    tenants = [f"t{i:04d}" for i in range(1200)]
    labels = [m.tenant_label(t) for t in tenants]
    assert labels[:3] == ["t0000", "t0001", "t0002"]
    assert set(labels[3:]) == {OTHER}
    # An admitted tenant keeps its own series forever, even after the cap is reached.
    assert m.tenant_label("t0001") == "t0001"

    m.record_alerts({(t, "high"): 1 for t in tenants})
    m.record_shadow("t0999", 0.5, 0.1)
    samples = [
        s for fam in m.registry.collect() if fam.name == "stream_alerts"
        for s in fam.samples if s.name == "stream_alerts_total"
    ]
    assert {s.labels["tenant"] for s in samples} == {"t0000", "t0001", "t0002", OTHER}
    assert value(m, "stream_alerts_total", tenant=OTHER, level="high") == 1197
    assert value(m, "stream_shadow_agreement_ratio", tenant=OTHER) == 0.5


def test_model_labels_are_capped_too() -> None:
    m = Metrics(max_tenant_labels=2)
    for i in range(50):
        m.set_model(f"detector_t{i}", str(i + 1))
        m.record_reload(f"detector_t{i}", ok=True, seconds=0.1)
    series = {
        s.labels["model"] for fam in m.registry.collect() if fam.name == "stream_model_version"
        for s in fam.samples
    }
    assert series == {"detector_t0", "detector_t1", OTHER}
    assert value(m, "stream_model_reloads_total", model=OTHER) == 48


def test_dead_letter_reasons_are_bounded() -> None:
    m = Metrics()
    m.record_dead_letters({f"free text error {i}": 1 for i in range(500)})
    reasons = {
        s.labels["reason"] for fam in m.registry.collect() if fam.name == "stream_dead_letters"
        for s in fam.samples
    }
    assert OTHER in reasons
    assert len(reasons) <= 33


def test_vectorized_event_age_equals_per_value_observe() -> None:
    rng = np.random.default_rng(7)
    ages = np.concatenate([
        rng.exponential(3.0, 10_000),
        np.array(EVENT_AGE_BUCKETS),  # values exactly on a bound belong to that bucket (le)
        np.array([-2.0, 0.0, 1e9, math.inf]),
    ])
    m = Metrics()
    m.observe_event_age(ages[:6000])
    m.observe_event_age(ages[6000:])

    reference = CollectorRegistry()
    h = Histogram("ref_age_seconds", "reference", buckets=EVENT_AGE_BUCKETS, registry=reference)
    for a in ages:
        h.observe(float(a))

    for bound in [*EVENT_AGE_BUCKETS, math.inf]:
        le = "+Inf" if bound == math.inf else repr(float(bound))
        expected = reference.get_sample_value("ref_age_seconds_bucket", {"le": le})
        assert value(m, "stream_event_age_seconds_bucket", le=le) == expected, le
    assert value(m, "stream_event_age_seconds_count") == len(ages)
    # inf in the sum, as observe() would give; compare the finite part separately.
    assert value(m, "stream_event_age_seconds_sum") == math.inf
    finite = Metrics()
    finite.observe_event_age(ages[np.isfinite(ages)])
    assert value(finite, "stream_event_age_seconds_sum") == pytest.approx(
        float(np.sum(ages[np.isfinite(ages)])), rel=1e-9
    )


def test_event_age_skips_nan_and_accepts_empty() -> None:
    m = Metrics()
    m.observe_event_age(np.array([], dtype=np.float64))
    m.observe_event_age(np.array([np.nan, 0.2, np.nan]))
    assert value(m, "stream_event_age_seconds_count") == 1
    assert value(m, "stream_event_age_seconds_sum") == pytest.approx(0.2)


def test_event_age_is_vectorized_not_a_python_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    # A per-event Histogram.observe would be called 10k times; the collector must not.
    m = Metrics()
    calls = 0
    original = Histogram.observe

    def counting(self: Histogram, amount: float, exemplar: object = None) -> None:
        nonlocal calls
        calls += 1
        original(self, amount)

    monkeypatch.setattr(Histogram, "observe", counting)
    m.observe_event_age(np.linspace(0, 100, 10_000))
    assert calls == 0
    assert value(m, "stream_event_age_seconds_count") == 10_000


def test_lag_model_reload_shadow_and_delivery() -> None:
    m = Metrics()
    m.set_lag("flows", 0, 120)
    m.set_lag("flows", 1, 7)
    m.set_lag("flows", 0, 80)
    assert value(m, "stream_consumer_lag", topic="flows", partition="0") == 80
    assert value(m, "stream_consumer_lag", topic="flows", partition="1") == 7
    m.remove_lag("flows", 1)
    m.remove_lag("flows", 9)  # never set: must not raise
    assert value(m, "stream_consumer_lag", topic="flows", partition="1") is None

    m.set_model("detector_acme", "3")
    m.set_model("detector_acme", "4")
    assert value(m, "stream_model_version", model="detector_acme") == 4
    assert value(m, "stream_model_info", model="detector_acme", version="4") == 1
    # The old version's info series is replaced, not left behind.
    assert value(m, "stream_model_info", model="detector_acme", version="3") is None
    m.set_model("detector_x", "not-a-number")
    assert math.isnan(value(m, "stream_model_version", model="detector_x"))

    m.record_reload("detector_acme", ok=True, seconds=0.4)
    assert value(m, "stream_model_reload_failures_total", model="detector_acme") == 0
    m.record_reload("detector_acme", ok=False, seconds=12.0)
    assert value(m, "stream_model_reloads_total", model="detector_acme") == 2
    assert value(m, "stream_model_reload_failures_total", model="detector_acme") == 1
    assert value(m, "stream_model_load_seconds_count") == 1
    assert value(m, "stream_model_load_seconds_sum") == pytest.approx(0.4)

    m.record_shadow("acme", agreement=0.97, mean_score_diff=-0.012)
    assert value(m, "stream_shadow_agreement_ratio", tenant="acme") == pytest.approx(0.97)
    assert value(m, "stream_shadow_score_diff", tenant="acme") == pytest.approx(-0.012)

    m.record_delivery_failures(2)
    m.record_delivery_failures(1)
    assert value(m, "stream_delivery_failures_total") == 3


def test_remove_model_drops_its_series_but_never_the_shared_one() -> None:
    m = Metrics(max_tenant_labels=1)
    m.set_model("detector_acme", "3")
    m.set_model("detector_globex", "5")  # past the cap: shown as _other
    m.remove_model("detector_acme")
    assert value(m, "stream_model_version", model="detector_acme") is None
    assert value(m, "stream_model_info", model="detector_acme", version="3") is None
    m.remove_model("detector_globex")  # _other may stand for other models: kept
    assert value(m, "stream_model_version", model=OTHER) == 5
    m.remove_model("never_seen")  # must not raise, nor take a label
    m.set_model("detector_acme", "4")  # a re-promoted model gets its series back
    assert value(m, "stream_model_version", model="detector_acme") == 4


def test_no_created_series() -> None:
    # One ``_created`` sample per labelled series would double what the alerts export.
    m = Metrics()
    m.record_alerts({("acme", "high"): 1})
    m.record_batch(consumed=1, scored=1, seconds=0.1)
    names = {s.name for fam in m.registry.collect() for s in fam.samples}
    assert "stream_alerts_total" in names
    assert not [n for n in names if n.endswith("_created")]


def test_negative_label_cap_is_rejected() -> None:
    with pytest.raises(ValueError):
        Metrics(max_tenant_labels=-1)


@pytest.fixture
def server() -> Iterator[tuple[HealthServer, FakeClock, Metrics]]:
    clock = FakeClock()
    m = Metrics()
    srv = HealthServer(0, m, host="127.0.0.1", stale_after=30.0, clock=clock)
    srv.start()
    yield srv, clock, m
    srv.stop()


def test_http_metrics_scrape(server: tuple[HealthServer, FakeClock, Metrics]) -> None:
    srv, _, m = server
    assert srv.port != 0
    m.record_batch(consumed=42, scored=40, seconds=0.05)
    m.record_alerts({("acme", "critical"): 2})
    m.observe_event_age(np.array([0.3, 0.7]))
    status, ctype, body = get(f"http://127.0.0.1:{srv.port}/metrics")
    assert status == 200
    assert ctype.startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(body) for s in fam.samples
    }
    assert samples[("stream_events_consumed_total", ())] == 42
    assert samples[("stream_alerts_total", (("level", "critical"), ("tenant", "acme")))] == 2
    assert samples[("stream_event_age_seconds_bucket", (("le", "0.5"),))] == 1
    assert samples[("stream_event_age_seconds_count", ())] == 2


def test_http_metrics_openmetrics_negotiation(
    server: tuple[HealthServer, FakeClock, Metrics],
) -> None:
    srv, _, _ = server
    req = urllib.request.Request(
        f"http://127.0.0.1:{srv.port}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        assert resp.read().decode().rstrip().endswith("# EOF")


def test_http_healthz_goes_stale_without_heartbeat(
    server: tuple[HealthServer, FakeClock, Metrics],
) -> None:
    srv, clock, _ = server
    url = f"http://127.0.0.1:{srv.port}/healthz"
    assert get(url)[0] == 200  # startup counts as a heartbeat
    clock.now += 29.0
    assert get(url)[0] == 200
    clock.now += 2.0
    status, _, body = get(url)
    assert status == 503
    assert "stale" in body
    srv.heartbeat()
    assert get(url)[0] == 200


def test_http_readyz_reports_reason(server: tuple[HealthServer, FakeClock, Metrics]) -> None:
    srv, _, m = server
    url = f"http://127.0.0.1:{srv.port}/readyz"
    status, _, body = get(url)
    assert status == 503
    assert value(m, "stream_ready") == 0
    srv.set_ready(False, "no partitions assigned")
    status, _, body = get(url)
    assert (status, body.strip()) == (503, "not ready: no partitions assigned")
    srv.set_ready(True)
    assert get(url)[0] == 200
    assert value(m, "stream_ready") == 1
    srv.set_ready(False, "models not loaded")
    status, _, body = get(url)
    assert status == 503 and "models not loaded" in body


def test_http_unknown_path_is_404(server: tuple[HealthServer, FakeClock, Metrics]) -> None:
    srv, _, _ = server
    assert get(f"http://127.0.0.1:{srv.port}/nope")[0] == 404


def test_server_stop_releases_port() -> None:
    srv = HealthServer(0, Metrics(), host="127.0.0.1")
    srv.start()
    port = srv.port
    assert get(f"http://127.0.0.1:{port}/healthz")[0] == 200
    srv.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
    # A stopped server can be stopped again harmlessly.
    srv.stop()
