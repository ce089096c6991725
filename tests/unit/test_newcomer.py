"""What a newcomer following the README met: defaults that mislead, messages that say too
little or too much, workflow steps that were missing. Each case with its message and
exit code (the issue's points 3 to 6; tenant isolation, stalls and models not loaded
have their own files: test_tenant_isolation, test_progress, test_redrive).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from confluent_kafka.admin import AdminClient

from stream.features import RecordColumns
from stream.ingest.where import Where, WhereError
from stream.kafka.embedded import free_port
from stream.ops.failures import brief, missing_sqlite, redact_uri

DATA = Path(__file__).resolve().parents[1] / "data"
STREAM = [sys.executable, "-m", "stream.cli"]


def _run(args: list[str], cwd: Path | None = None, timeout: float = 60
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*STREAM, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env={k: v for k, v in os.environ.items()
                                        if k != "MLFLOW_TRACKING_URI"})


# ---- the registry a command uses ------------------------------------------------------------


def test_read_commands_refuse_a_registry_file_that_is_not_there(tmp_path: Path) -> None:
    """Run from another directory, the relative default names a file that does not exist:
    said in one line (exit 2) instead of an empty registry made on the spot."""
    for args, can_create in ((["models"], True), (["describe"], True),
                             (["run", "--bootstrap-servers", f"127.0.0.1:{free_port()}"], True),
                             (["promote", "--version", "1"], False)):
        out = _run(args, cwd=tmp_path)
        assert out.returncode == 2, (args, out.stderr)
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith(f"Error: no registry at sqlite:///mlflow.db: {tmp_path}/mlflow.db "
                               "does not exist"), last
        assert ("--create starts an empty one" in last) == can_create, last
        assert "Traceback" not in out.stderr
        # Every command names the registry it uses, the file as an absolute path.
        assert f"registry sqlite:///mlflow.db ({tmp_path}/mlflow.db)" in out.stderr
    assert not (tmp_path / "mlflow.db").exists()
    made = _run(["models", "--create", "--json"], cwd=tmp_path)
    assert made.returncode == 0 and made.stdout == "", made.stderr


def test_uris_are_shown_without_passwords_and_errors_in_one_readable_line() -> None:
    assert redact_uri("http://alice:S3cretPw@mlflow:5000") == "http://alice:***@mlflow:5000"
    assert redact_uri("postgresql://u:pw@db/x").startswith("postgresql://u:***@db")
    assert redact_uri("sqlite:///m.db") == f"sqlite:///m.db ({os.path.abspath('m.db')})"
    assert missing_sqlite("sqlite:////nowhere/m.db") == "/nowhere/m.db"
    assert missing_sqlite("http://x") is None
    chain = ("API request to http://127.0.0.1:5000/api/2.0/mlflow/registered-models/search?"
             "max_results=1000 failed with exception HTTPConnectionPool(host='127.0.0.1', "
             "port=5000): Max retries exceeded with url: /api/2.0/mlflow/registered-models/"
             "search?max_results=1000 (Caused by NewConnectionError(\"HTTPConnection(host="
             "'127.0.0.1', port=5000): Failed to establish a new connection: [Errno 111] "
             "Connection refused\"))")
    assert brief(chain) == ("API request to http://127.0.0.1:5000/api/2.0/mlflow/"
                            "registered-models/search failed: connection refused")
    long = "artifacts from " + "/tmp/stream-model-abcdef/" * 20
    cut = brief(long, 80)
    assert cut.endswith("…") and len(cut) <= 81 and cut.startswith("artifacts from /tmp/")


def test_a_library_error_logs_one_line_not_its_traceback() -> None:
    """MLflow logs SQLAlchemy's whole chain at ERROR before raising; the commands' logging
    (set up before MLflow is imported, as the command line does) keeps its one line."""
    code = (
        "import logging\n"
        "from stream.ops import logs\n"
        "logs.setup('text', logging.INFO)\n"
        "try:\n"
        "    raise RuntimeError('no such table: registered_models\\n[SQL: SELECT ...]')\n"
        "except RuntimeError:\n"
        "    logging.getLogger('mlflow.store.db.utils').exception('SQLAlchemy database error.')\n"
        "    logging.getLogger('stream.x').exception('ours keeps it')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert "SQLAlchemy database error." in out.stderr, out.stderr
    assert out.stderr.count("Traceback") == 1, out.stderr  # only ours
    assert "[SQL: SELECT" not in out.stderr.split("ours keeps it")[0], out.stderr


# ---- stream broker ------------------------------------------------------------------------


def test_broker_on_a_busy_port_is_one_line_and_exit_2() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = _run(["broker", "--port", str(port)], timeout=30)
    assert out.returncode == 2, out
    text = (out.stdout + out.stderr).strip()
    assert text.splitlines()[-1] == (f"Error: --port {port}: cannot listen there (127.0.0.1:"
                                     f"{port} is already in use: is a broker running already?)")
    assert "panicked" not in text and "listening" not in text


def test_broker_creates_the_feedback_and_incident_topics_by_default() -> None:
    port = free_port()
    proc = subprocess.Popen([*STREAM, "broker", "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = ""
        deadline = time.monotonic() + 30
        while "listening" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
        topics = set(AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"})
                     .list_topics(timeout=10).topics)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert {"flows", "alerts", "flows.dlq", "alerts.feedback", "alerts.incidents"} <= topics


# ---- stream alerts ------------------------------------------------------------------------










# ---- stream feedback add ---------------------------------------------------------------------




# ---- --where, train --map -------------------------------------------------------------------


def test_where_parses_and_selects_rows() -> None:
    rows = [{"event_type": "flow", "proto": "TCP", "dst_port": 53},
            {"event_type": "dns", "proto": "UDP", "dst_port": 53},
            {"event_type": "flow", "proto": "ICMP"},
            {"proto": "TCP"}]
    src = RecordColumns(rows)

    def keep(text: str) -> list[bool]:
        return Where.parse(text).mask(src).tolist()

    assert keep('event_type == "flow"') == [True, False, True, False]
    assert keep("event_type != 'flow'") == [False, True, False, True]
    assert keep('event_type == "flow" and proto != "ICMP"') == [True, False, False, False]
    assert keep('event_type in ("dns", "http") or dst_port == 53') == [True, True, False, False]
    assert keep('(event_type == "dns" or proto == "ICMP") and dst_port not in (80)') == \
        [False, True, True, False]
    for bad in ("event_type = flow", "event_type ==", "and x == 1"):
        with pytest.raises(WhereError):
            Where.parse(bad)


def test_filtered_records_are_skipped_not_dead_lettered() -> None:
    from stream.consumer.batch import process_batch
    from stream.outcomes.reasons import FILTERED

    values = [orjson.dumps(r) for r in (
        {"tenant_id": "a", "event_type": "dns"},
        {"tenant_id": "a", "event_type": "flow", "bytes_transferred": 1, "packet_count": 1,
         "connection_duration": 1.0})]
    outcome = process_batch(values, lambda tenants: [None] * len(tenants), topic="t",
                            partitions=np.zeros(2, dtype=np.int64),
                            offsets=np.arange(2, dtype=np.int64),
                            where=Where.parse('event_type == "flow"'))
    assert outcome.decoded.reason.tolist()[0] == FILTERED and outcome.filtered == 1
    assert outcome.rejected_rows.tolist() == [1]  # the flow: no model here
    assert dict(outcome.reason_counts()) == {"no_model": 1}






# ---- score and evaluate say what they could not do -------------------------------------------








