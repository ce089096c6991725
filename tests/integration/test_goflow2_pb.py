"""goflow2's protobuf (-format=bin): the same flows as its JSON, the same records and the
same scores; a record that is not a FlowMessage is a dead letter with its own reason.

The part that needs a real broker, registry or child process; the rest, and what
it all means, is in ``tests/unit/ingest/test_goflow2_pb.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from stream.cli import main
from tests.unit.ingest.test_goflow2_pb import _json_records, _maker

DATA = Path(__file__).resolve().parents[1] / "data"


















@pytest.mark.integration
def test_train_on_json_and_score_protobuf_the_same(tmp_path: Path, tracking_uri: str) -> None:
    """The offline path: a goflow2 model trained on the JSON scores the protobuf file of
    the same flows exactly as it scores the JSON file."""
    maker = _maker()
    js = _json_records()
    # Twenty copies a minute apart: enough records to train on.
    many = [{**r, "time_flow_start_ns": r["time_flow_start_ns"] + k * 60 * 10**9,
             "time_flow_end_ns": r["time_flow_end_ns"] + k * 60 * 10**9}
            for k in range(20) for r in js]
    jpath, ppath = tmp_path / "flows.jsonl", tmp_path / "flows.pb"
    jpath.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in many))
    ppath.write_bytes(b"".join(maker.message(r) for r in many))
    base = "gpb_" + os.urandom(3).hex()
    r = CliRunner().invoke(main, ["train", "--input", str(jpath), "--tenant", "acme",
                                  "--input-schema", "goflow2", "--model-name", base,
                                  "--tracking-uri", tracking_uri, "--promote"])
    assert r.exit_code == 0, r.output
    scores = {}
    for path, schema in ((jpath, "goflow2"), (ppath, "goflow2-pb")):
        out = tmp_path / f"{schema}.alerts.jsonl"
        r = CliRunner().invoke(main, ["score", str(path), "-o", str(out), "--tenant", "acme",
                                      "--input-schema", schema, "--min-level", "low",
                                      "--model-name", base, "--tracking-uri", tracking_uri])
        assert r.exit_code == 0, r.output
        scores[schema] = [a["anomaly_score"] for a in map(orjson.loads,
                                                            out.read_bytes().splitlines())]
    assert len(scores["goflow2"]) == len(many)
    assert scores["goflow2-pb"] == scores["goflow2"]


