"""Failing fast and clearly: unreachable brokers and registries, quiet retries, prompt stops.

Every command that needs the broker or the registry, pointed at a closed local port:
one line naming what it tried and why, exit status 3, within 15 s. ``stream run``
instead waits (a consumer must outlive an outage): one WARNING, no librdkafka
line storm, and SIGTERM ends it at once. The outage log and the librdkafka
filter are checked on their own with a fake clock.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stream.ops import failures
from tests.servers import free_port

STREAM = [sys.executable, "-m", "stream.cli"]


def _run(args: list[str], env: dict[str, str] | None = None, timeout: float = 30
         ) -> tuple[int, str, float]:
    """A command in a child process, as a user runs it: (exit status, output, seconds)."""
    t0 = time.monotonic()
    p = subprocess.run([*STREAM, *args], capture_output=True, timeout=timeout,
                       env={**os.environ, **(env or {})})
    return p.returncode, (p.stdout + p.stderr).decode(), time.monotonic() - t0


def _cli(args: list[str]) -> tuple[int, str, float]:
    """A command in this process (the same code path, without a second start-up)."""
    from click.testing import CliRunner

    from stream.cli import main

    t0 = time.monotonic()
    r = CliRunner().invoke(main, args)
    return r.exit_code, r.output, time.monotonic() - t0


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("f") / "flows.jsonl"
    from stream.generate import generate_flows, write_jsonl

    write_jsonl(path, generate_flows(300, ("acme",), seed=1))
    return path


def test_registry_commands_fail_fast_with_one_line(events: Path) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    for args in (
        ["models"],
        ["promote", "--tenant", "acme", "--version", "1"],
        ["demote", "--tenant", "acme"],
        ["describe"],
        ["train", "--input", str(events)],
        ["score", str(events)],
        ["evaluate", str(events), "--label-field", "label"],
    ):
        run = _run if args == ["models"] else _cli  # one child process, the rest in process
        rc, out, took = run([*args, "--tracking-uri", uri])
        lines = [ln for ln in out.splitlines() if ln.strip()]
        assert rc == failures.EXIT_UNREACHABLE, (args, rc, out[-2000:])
        assert lines[-1] == f"Error: cannot reach the MLflow registry at {uri}: connection refused"
        assert "Traceback" not in out
        assert took < 15, (args, took)


def test_kafka_commands_fail_fast_with_one_line(events: Path) -> None:
    addr = f"127.0.0.1:{free_port()}"
    for args in (
        ["alerts"],
        ["alerts", "--follow"],
        ["replay", str(events), "--max"],
        ["feedback"],
    ):
        run = _run if args == ["alerts"] else _cli
        rc, out, took = run([*args, "--bootstrap-servers", addr])
        assert rc == failures.EXIT_UNREACHABLE, (args, rc, out[-2000:])
        last = out.strip().splitlines()[-1]
        assert last == f"Error: cannot reach Kafka at {addr}: connection refused"
        assert "Traceback" not in out and "FAIL" not in out
        assert took < 15, (args, took)


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([*STREAM, "run"], env={**os.environ, **env}, stdout=out,
                                stderr=subprocess.STDOUT)


def _stop(p: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> tuple[int, float]:
    t0 = time.monotonic()
    p.send_signal(sig)
    rc = p.wait(timeout=10)
    return rc, time.monotonic() - t0


def test_run_waits_for_an_unreachable_broker_quietly_and_stops_at_once(tmp_path: Path) -> None:
    import urllib.error
    import urllib.request

    addr = f"127.0.0.1:{free_port()}"
    log = tmp_path / "run.log"
    port = free_port()
    (tmp_path / "m.db").touch()  # an empty registry (a missing file is refused at once)
    p = _start({"KAFKA_BOOTSTRAP_SERVERS": addr, "STREAM_METRICS_PORT": str(port),
                "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/m.db"}, log)
    time.sleep(4)
    assert p.poll() is None, log.read_text()
    # Not ready while it waits, and the probe says why.
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5)
    assert answer.value.code == 503
    said = answer.value.read().decode()
    assert "waiting for Kafka at" in said and "connection refused" in said, said
    rc, took = _stop(p)
    text = log.read_text()
    print(f"\nstream run, broker down for 4 s: {len(text.splitlines())} log lines; "
          f"stopped {took:.2f} s after SIGTERM")
    assert rc == 0 and took < 2
    said = [line for line in text.splitlines()
            if f"Kafka at {addr}: connection refused; retrying until it answers" in line]
    assert len(said) == 1 and "WARNING" in said[0], text
    assert "FAIL" not in text and "Traceback" not in text
    assert len(text.splitlines()) <= 5




# ---- pure logic --------------------------------------------------------------------------


def test_outage_log_says_it_once_then_at_growing_intervals(caplog: pytest.LogCaptureFixture
                                                          ) -> None:
    now = [0.0]
    out = failures.OutageLog("Kafka at x:1", first=30, cap=300, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="stream.ops.failures"):
        for _ in range(1000):  # one try a second for 1000 s
            out.failed("connection refused")
            now[0] += 1
        out.recovered()
    times = [r.getMessage() for r in caplog.records]
    # At 0, 30, 90, 210, 450, 750: the gaps double up to the cap.
    assert out.lines == 6, times
    assert "answering again after 1000 s" in times[-1]


def test_librdkafka_lines_are_deduplicated_per_minute() -> None:
    now = [0.0]
    f = failures._Dedup(clock=lambda: now[0])

    def rec(msg: str) -> logging.LogRecord:
        return logging.LogRecord("k", logging.ERROR, "", 0, msg, (), None)

    line = "FAIL [thrd:x/bootstrap]: Connect to ipv4#127.0.0.1:1 failed: Connection refused"
    shown = []
    for _ in range(120):  # 20 a second for 6 s, then again after a minute
        r = rec(line + " (after 0ms in state CONNECT)")
        if f.filter(r):
            shown.append(r.getMessage())
        now[0] += 0.05
    now[0] += 60
    r = rec(line + " (after 1ms in state CONNECT)")
    assert f.filter(r)
    shown.append(r.getMessage())
    assert len(shown) == 2 and shown[1].endswith("(119 more like it)"), shown


def test_broker_exits_with_its_broker_on_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "broker.log"
    port = free_port()
    with log.open("wb") as out:
        p = subprocess.Popen([*STREAM, "broker", "--port", str(port)], stdout=out,
                             stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while "broker listening" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "broker listening" in log.read_text(), log.read_text()
    rc, took = _stop(p)
    assert rc == 0 and took < 5, (rc, took, log.read_text())
    import socket

    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the broker outlived its wrapper"


def test_a_busy_metrics_port_names_the_flag() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        # (--create: the registry check, which comes first, would refuse the missing
        # default file; the busy port is found before the registry is touched.)
        rc, out, took = _run(["run", "--create", "--metrics-port", str(port),
                              "--bootstrap-servers", f"127.0.0.1:{free_port()}"])
    assert rc == failures.EXIT_BAD_SETTING, out
    assert out.strip().splitlines()[-1].startswith(f"Error: --metrics-port {port}: cannot listen")
    assert "Traceback" not in out and took < 15








