"""Hostile senders and cross-tenant paths: nothing an event carries ends the process, holds
its partition back, or reaches another tenant.

On the real broker and registry, in every alert format and both delivery modes: events
carrying numbers no typed field of ECS or OCSF can hold (1e20 bytes, a duration of
1e300 s, ports of -1 and 1e10), a 2 MB message, a record with a 100 KB key and hundreds
of headers, among ordinary events. The consumer stays up, every offset commits, each
hostile record is a dead letter with its reason (cut to fit when it would not), every
scoreable event is alerted. Then, without a broker: pair keys whose fields hold the
separator, keyed hashes, the memory cap against long keys, the metrics label cap, the
health server against idle connections, secrets in properties and URIs, expressions
nested to exhaust the parser, file names in alert JSON, duplicate tenant headers,
feedback naming another tenant, and model files pointing out of their directory.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.request

import pytest
from click.testing import CliRunner

from stream.cli import main
from stream.config import Settings, parse_properties
from stream.consumer.loop import _header
from stream.features import FeatureSpec, RecordColumns, SpecError, WindowStore
from stream.kafka.clients import redacted
from stream.ops.metrics import SERVER_THREADS, HealthServer, Metrics
from stream.state.keys import _key_hash_py, escape, key_hash, key_text

HUGE = 2_000_000










# ---- window state keys ------------------------------------------------------------------


def test_a_separator_inside_a_field_does_not_merge_pair_keys() -> None:
    spec = FeatureSpec.parse([("n", "count(by=src_ip>dst_ip, window=60s)")])
    rows = [{"timestamp": 1.0, "src_ip": "a>b", "dst_ip": "c"},
            {"timestamp": 2.0, "src_ip": "a", "dst_ip": "b>c"},
            {"timestamp": 3.0, "src_ip": "a>b", "dst_ip": "c"}]
    assert spec.compute(RecordColumns(rows), tenants=["t"] * 3).X[:, 0].tolist() == [1, 1, 2]
    assert key_text("p", "a>b", "c", True) != key_text("p", "a", "b>c", True)
    assert escape("a\\>") == "a\\\\\\>" and escape("plain") == "plain"
    # And through the changelog's form: the two keys come back as two.
    store = WindowStore(track=True)
    spec.compute(RecordColumns(rows), store=store, tenants=["t"] * 3)
    snap = store.snapshot(0)
    assert len(snap) == 2
    fresh = WindowStore()
    fresh.restore(0, [(n, k, v) for (n, k), v in snap.items()], store.clocks.of_scope(0))
    more = [{"timestamp": 4.0, "src_ip": "a", "dst_ip": "b>c"}]
    assert spec.compute(RecordColumns(more), store=fresh, tenants=["t"]).X[0, 0] == 2


def test_state_key_hashes_are_keyed_per_process() -> None:
    text = "0\x1eacme\x1f10.0.0.1>192.0.2.9"
    assert key_hash(text) == _key_hash_py(text)  # the compiled and Python forms agree
    code = f"from stream.state.keys import key_hash; print(key_hash({text!r}))"
    other = [int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout) for _ in range(2)]
    # Another process, another secret key: a text's hash cannot be known in advance, so
    # keys that collide with another tenant's cannot be computed.
    assert len({key_hash(text), *other}) == 3


def test_the_memory_cap_holds_against_long_keys() -> None:
    spec = FeatureSpec.parse([("c", "count(by=src_ip, window=10s)")])
    cap = 8 * 2**20
    store = WindowStore(max_bytes=cap)
    tracemalloc.start()
    try:
        for k in range(10):  # 100,000 keys of ~1 KB text: ~100 MB if nothing went
            rows = [{"timestamp": k + i * 1e-5, "src_ip": f"{k}-{i}-" + "x" * 1000}
                    for i in range(10_000)]
            spec.compute(RecordColumns(rows), store=store, tenants=["t"] * len(rows))
            store.maintain()
            del rows
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert store.bytes() <= cap, store.bytes()
    assert store.stats.evicted_cap > 90_000
    # What the store says it holds is what it holds (the key texts counted, not sampled).
    assert held < 2 * cap, held


# ---- metrics, health server, secrets ----------------------------------------------------


def test_every_tenant_goes_through_the_label_cap() -> None:
    m = Metrics(max_tenant_labels=10)
    m.record_tenants({f"_t{i}": 1 for i in range(300)}, {})
    labels = {s.labels["tenant"] for metric in m.registry.collect() for s in metric.samples
              if metric.name == "stream_tenant_events_consumed"}
    assert len(labels) <= 11 and "_other" in labels


def test_the_health_server_serves_with_few_threads_whatever_hangs_on_it() -> None:
    with HealthServer(0, Metrics()) as server:
        before = threading.active_count()
        # Connections that never send a request (a slow-loris client), held open.
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(100)]
        time.sleep(0.5)
        assert threading.active_count() - before <= SERVER_THREADS, threading.active_count()
        t0 = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=30) as r:
            assert r.status == 200
        # Each idle one is dropped after SERVER_TIMEOUT_S: a scrape gets through in seconds.
        assert time.monotonic() - t0 < 10
        for s in idle:
            s.close()
    assert Settings().metrics_host == "127.0.0.1"


def test_secrets_never_appear_in_logs_or_errors() -> None:
    conf = {"sasl.oauthbearer.config": "clientSecret=s3cret", "sasl.jaas.config": "pw",
            "sasl.username": "svc", "ssl.key.password": "k"}
    shown = redacted(conf)
    assert shown == {"sasl.oauthbearer.config": "***", "sasl.jaas.config": "***",
                     "sasl.username": "svc", "ssl.key.password": "***"}
    with pytest.raises(ValueError) as e:
        parse_properties(["sasl.password:TopSecret"])
    assert "TopSecret" not in str(e.value)
    r = CliRunner().invoke(main, ["models", "--tracking-uri",
                                  "http://alice:S3cretPw@127.0.0.1:1"])
    assert r.exit_code == 3 and "S3cretPw" not in r.output and "alice:***@" in r.output


def test_expressions_nested_past_reason_are_a_spec_error() -> None:
    for text in ("log(" * 3000 + "x" + ")" * 3000, "+".join(["x"] * 30000)):
        with pytest.raises(SpecError):
            FeatureSpec.parse([("f", text)])




# ---- tenants ------------------------------------------------------------------------------


def test_a_tenant_header_given_twice_is_no_tenant() -> None:
    assert _header([("tenant", b"acme")], "tenant") == "acme"
    assert _header([("tenant", b"acme"), ("tenant", b"globex")], "tenant") is None
    assert _header([("other", b"x")], "tenant") is None


def test_feedback_naming_another_tenant_moves_nothing() -> None:
    from stream.tools.feedback import FeedbackBook, parse

    book = FeedbackBook()
    book.add_alert({"alert_id": "flows/0/1", "tenant_id": "acme"})
    book.add_alert({"alert_id": "flows/0/2", "tenant_id": "globex"})
    for raw in (b'{"alert_id": "flows/0/1", "verdict": "false_positive", "tenant_id": "globex"}',
                b'{"alert_id": "flows/0/2", "verdict": "true_positive", "tenant_id": "globex"}',
                b'{"alert_id": "flows/0/9\\nforged line", "verdict": "benign"}'):
        v = parse(raw)
        assert not isinstance(v, str)
        book.add_verdict(v)
    assert book.verdicts == {"flows/0/2": "true_positive"}
    assert book.mismatched == 1 and book.unknown == 1
    strict = FeedbackBook(require_tenant=True)
    strict.add_alert({"alert_id": "flows/0/1", "tenant_id": "acme"})
    v = parse(b'{"alert_id": "flows/0/1", "verdict": "benign"}')
    assert not isinstance(v, str) and not strict.add_verdict(v)


def test_a_model_file_outside_the_model_directory_is_refused() -> None:
    from types import SimpleNamespace

    from stream.registry.loading import ModelLoadError, model_file

    for name in ("../../etc/passwd", "/etc/passwd", "~root/x", "a/../../b"):
        mlmodel = SimpleNamespace(flavors={"sklearn": {"pickled_model": name}})
        with pytest.raises(ModelLoadError, match="not inside the model's directory"):
            model_file(mlmodel, "models:/m/1")
    ok = SimpleNamespace(flavors={"sklearn": {"pickled_model": "model.skops"}})
    assert model_file(ok, "models:/m/1") == "model.skops"


def test_digest_of_a_cut_dead_letter_is_the_whole_original() -> None:
    from types import SimpleNamespace

    from stream.outcomes.records import dead_letter

    value = os.urandom(5000)
    m = SimpleNamespace(value=lambda: value, key=lambda: b"k", headers=lambda: [("a", b"b")],
                        topic=lambda: "t", partition=lambda: 0, offset=lambda: 7)
    v, k, h = dead_letter("oversize", "too big", m, 1000)
    hd = dict(h)
    assert v == value[:1000] and k == b"k" and h[0] == ("a", b"b")
    assert hd["stream.original.sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert [n for n, _ in h[-5:]] == ["reason", "detail", "source.topic", "source.partition",
                                      "source.offset"]
    assert int(hd["stream.original.size"]) == 5000
