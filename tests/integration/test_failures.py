"""Failing fast and clearly: unreachable brokers and registries, quiet retries, prompt stops.

The part that needs a real broker, registry or child process; the rest, and what
it all means, is in ``tests/unit/ops/test_failures.py``.
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

import pytest

from stream.ops import failures
from tests.servers import free_port
from tests.unit.ops import test_failures as unit_failures
from tests.unit.ops.test_failures import _cli, _start, _stop

#: The unit tests' file of flows (a fixture), for these tests too.
events = unit_failures.events


def test_run_waits_for_an_unreachable_registry_and_stops_at_once(
    broker: object, tmp_path: Path
) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    log = tmp_path / "run.log"
    p = _start({"KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,  # type: ignore[attr-defined]
                "MLFLOW_TRACKING_URI": uri}, log)
    deadline = time.monotonic() + 30
    while "model registry" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert p.poll() is None, log.read_text()
    rc, took = _stop(p, signal.SIGINT)  # Ctrl-C, as SIGTERM above
    text = log.read_text()
    assert rc == 0 and took < 2, text
    assert text.count(f"model registry at {uri}") == 1, text
    assert "Traceback" not in text


# ---- pure logic --------------------------------------------------------------------------










@pytest.mark.integration
def test_files_of_no_known_format_are_an_error_naming_them(tmp_path: Path,
                                                           tracking_uri: str) -> None:
    from tests.faultutil import shared_model

    model = shared_model(tracking_uri)
    text = tmp_path / "notes.txt"
    text.write_text("hello world\nthese are notes, not flows\n")
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)) * 4)
    for path in (text, blob):
        for args in (["score", str(path)], ["train", "--input", str(path)]):
            rc, out, _took = _cli([*args, "--tracking-uri", tracking_uri,
                                   "--model-name", model])
            assert rc == failures.EXIT_BAD_SETTING, (args, out[-1500:])
            assert out.strip().splitlines()[-1].startswith(
                f"Error: cannot tell the format of {path}: not JSON lines"), out[-1500:]
            assert "Traceback" not in out


@pytest.mark.integration
def test_a_consumer_started_while_the_registry_is_down_serves_from_the_model_store(
    broker: object, tracking_uri: str, unique: str, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """MODEL_STORAGE_PATH: the versions a consumer served, kept for a start without registry."""
    import threading

    from stream.consumer import service
    from tests import faultutil as fu
    from tests.kafkautil import produce

    model = fu.shared_model(tracking_uri)
    topics = fu.Topics(unique)
    topics.create(broker, input_partitions=1)  # type: ignore[arg-type]
    store = tmp_path / "models"
    s = fu.settings(broker.bootstrap, topics, tracking_uri, model,  # type: ignore[attr-defined]
                    model_storage_path=str(store))
    first = service.build(s)
    version = first.table.loaded()[model]
    first.table.stop()
    first.close()
    assert (store / model / version / "MLmodel").is_file()
    assert (store / "registry-view.json").is_file()

    down = fu.settings(broker.bootstrap, topics, f"http://127.0.0.1:{free_port()}",  # type: ignore[attr-defined]
                       model, model_storage_path=str(store))
    with caplog.at_level(logging.WARNING):
        pipeline = service.build(down, stop=threading.Event())
    assert pipeline.table.loaded() == {model: version}
    assert any("serving the production versions" in r.getMessage() for r in caplog.records)
    n = produce(broker.bootstrap, topics.input, fu.flow_values(500, seed=8))  # type: ignore[attr-defined]
    thread = fu.start(pipeline)
    fu.wait_until(lambda: pipeline.stats.consumed >= n, 60, "events scored from the store")
    fu.stop(pipeline, thread)
    assert pipeline.stats.scored == n


def test_stop_is_honoured_while_the_alert_producer_is_stuck(
    broker: object, tracking_uri: str, unique: str
) -> None:
    """A producer that never acknowledges (its broker link frozen) must not hold a stop
    for ``message.timeout.ms``: the batch is given up, uncommitted, within seconds."""
    from stream.consumer import service
    from tests import faultutil as fu
    from tests.kafkautil import produce

    model = fu.shared_model(tracking_uri)
    topics = fu.Topics(unique)
    topics.create(broker, input_partitions=1)  # type: ignore[arg-type]
    s = fu.settings(broker.bootstrap, topics, tracking_uri, model)  # type: ignore[attr-defined]
    pipeline = service.build(s)
    proxy = fu.Proxy(broker.bootstrap).start()  # type: ignore[attr-defined]
    try:
        fu.route_producer(pipeline, proxy.bootstrap)
        proxy.freeze()  # connections stay open; nothing is acknowledged
        produce(broker.bootstrap, topics.input, fu.flow_values(300, seed=4))  # type: ignore[attr-defined]
        thread = fu.start(pipeline)
        fu.wait_until(lambda: pipeline._batch is not None, 60, "a batch waiting on the producer")
        time.sleep(1.0)  # stuck for a while: a SIGTERM (the handler sets stop_event) arrives
        t0 = time.monotonic()
        pipeline.stop_event.set()
        thread.join(timeout=30)
        took = time.monotonic() - t0
        pipeline.table.stop()
        print(f"\nstop with the alert producer stuck: run() returned after {took:.2f} s")
        assert not thread.is_alive() and took < 5, f"took {took:.1f} s"
        assert pipeline.stats.consumed == 0, "the stuck batch must not count as done"
        offsets = fu.committed(broker.bootstrap, topics.group, topics.input)  # type: ignore[attr-defined]
        assert all(o < 0 for o in offsets.values()), offsets  # nothing committed
    finally:
        proxy.thaw()
        proxy.stop()


@pytest.mark.integration
def test_every_refusal_is_one_line_and_an_exit_code(tmp_path: Path, tracking_uri: str,
                                                    events: Path) -> None:
    """The issue's remaining cases, each: the exit code, the one line, no traceback."""
    from stream.generate import generate_flows, write_jsonl
    from tests.faultutil import shared_model

    model = shared_model(tracking_uri)
    reg = ["--tracking-uri", tracking_uri]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    five = tmp_path / "five.jsonl"
    write_jsonl(five, generate_flows(5, ("acme",), seed=2, attack_rate=0.0))
    all_bad = tmp_path / "bad.csv"  # a CSV whose every record lacks the model's inputs
    all_bad.write_text("tenant_id,src_ip\nacme,10.0.0.1\nacme,10.0.0.2\n")
    cases: list[tuple[list[str], int, str]] = [
        # Every setting range is checked at parse time: nothing starts.
        (["run", "--batch-size", "0"], 2, "batch"),
        (["run", "--batch-max-wait-ms", "0"], 2, "batch"),
        (["run", "--metrics-port", "70000"], 2, "65535"),
        # Tenant arguments are validated like tenant_id.
        (["promote", "--tenant", "bad tenant!", "--version", "1", *reg], 2, "tenant"),
        # Nothing to demote: exit 1.
        (["demote", "--tenant", "nobody", "--model-name", model, *reg], 1, "nothing to demote"),
        # Training: no records (global model), too few, named as such.
        (["train", "--input", str(empty), *reg], 2, "global model"),
        (["train", "--input", str(five), "--tenant", "acme", *reg], 2, "fewer than"),
        # A file that is not the format named.
        (["score", str(events), "--format", "parquet", "--model-name", model, *reg], 2,
         str(events)),
        # Nothing could be scored: exit 1 and why.
        (["score", str(all_bad), "--model-name", model, *reg], 1, "missing"),
    ]
    for args, code, says in cases:
        rc, out, took = _cli(args)
        last = out.strip().splitlines()[-1] if out.strip() else ""
        print(f"\n{' '.join(args[:3])}: rc {rc} in {took:.2f} s: {last[:160]}")
        assert rc == code, (args, out[-1500:])
        assert says in last, (args, out[-1500:])
        # One line says it, last (a summary or log lines of the work done may precede it).
        lines = out.strip().splitlines()
        assert [ln for ln in lines if ln.startswith("Error")] == [last], (args, out[-1500:])
        assert not any(ln.startswith(("Usage:", "Try ")) for ln in lines), (args, out[-1500:])
        assert "Traceback" not in out and "None" not in last, (args, out[-1500:])
    # The floor on training records is a default, not a wall.
    rc, out, _took = _cli(["train", "--input", str(five), "--tenant", "acme", "--min-records",
                           "5", "--n-estimators", "5", "--model-name", f"{model}_few", *reg])
    assert rc == 0, out[-1500:]
