"""The command line against a real SQLite registry: train, promote, models, generate."""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from stream.cli import main


@pytest.mark.integration
def test_train_promote_models_roundtrip(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()
    flows = tmp_path / "flows.jsonl"
    r = runner.invoke(
        main, ["generate", "--events", "3000", "--attack-rate", "0", "-o", str(flows)]
    )
    assert r.exit_code == 0, r.output
    assert sum(1 for _ in flows.open()) == 3000

    env = {"MLFLOW_TRACKING_URI": uri}
    r = runner.invoke(
        main,
        [
            "train",
            "--input",
            str(flows),
            "--tenant",
            "acme",
            "--json",
            "--calibrate",
            "--n-estimators",
            "50",
        ],
        env=env,
    )
    assert r.exit_code == 0, r.output
    first = orjson.loads(r.stdout.strip().splitlines()[-1])
    assert first["model_name"] == "isolation_forest_anomaly_detector_acme"
    assert first["version"] == "1" and not first["promoted"]
    assert first["thresholds"][0] < first["thresholds"][1] < first["thresholds"][2]

    r = runner.invoke(
        main, ["train", "--input", str(flows), "--tenant", "acme", "--json", "--promote"], env=env
    )
    assert r.exit_code == 0, r.output
    assert orjson.loads(r.stdout.strip().splitlines()[-1])["version"] == "2"

    r = runner.invoke(main, ["models", "--json"], env=env)
    rows = [orjson.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert rows == [
        {
            "name": "isolation_forest_anomaly_detector_acme",
            "production": "2",
            "challenger": None,
            "latest": "2",
            "aliases": {"production": "2"},
        }
    ]

    # Rollback to v1, and a challenger beside it.
    assert (
        runner.invoke(main, ["promote", "--tenant", "acme", "--version", "1"], env=env).exit_code
        == 0
    )
    r = runner.invoke(
        main, ["promote", "--tenant", "acme", "--version", "2", "--alias", "challenger"], env=env
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["models", "--json"], env=env)
    row = orjson.loads(next(x for x in r.stdout.splitlines() if x.startswith("{")))
    assert (row["production"], row["challenger"]) == ("1", "2")

    r = runner.invoke(main, ["demote", "--tenant", "acme"], env=env)
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["models", "--json"], env=env)
    row = orjson.loads(next(x for x in r.stdout.splitlines() if x.startswith("{")))
    assert row["production"] is None and row["challenger"] == "2"
    # Nothing left to demote: an error, not a success.
    r = runner.invoke(main, ["demote", "--tenant", "acme"], env=env)
    assert r.exit_code == 1 and "has no production version: nothing to demote" in r.output


@pytest.mark.integration
def test_train_rejects_bad_input_with_clear_errors(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'cli.db'}"
    runner = CliRunner()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"tenant_id": "acme", "bytes_transferred": 1, "packet_count": 2}\n')
    r = runner.invoke(main, ["train", "--input", str(bad)], env={"MLFLOW_TRACKING_URI": uri})
    assert r.exit_code == 2 and "connection_duration" in r.output
    r = runner.invoke(
        main,
        ["train", "--input", str(bad), "--tenant", "no/slash"],
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert r.exit_code == 2 and "tenant" in r.output
    # Nothing was trained, so the registry file was never made: promote says so.
    r = runner.invoke(main, ["promote", "--version", "7"], env={"MLFLOW_TRACKING_URI": uri})
    assert r.exit_code == 2 and "cli.db does not exist" in r.output, r.output
    (tmp_path / "cli.db").touch()
    r = runner.invoke(main, ["promote", "--version", "7"], env={"MLFLOW_TRACKING_URI": uri})
    assert r.exit_code == 1 and "cannot promote" in r.output


CONN_LOG = Path(__file__).resolve().parents[1] / "data" / "conn.log"


def test_train_reads_a_zeek_conn_log(tracking_uri: str, unique: str, tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"MLFLOW_TRACKING_URI": tracking_uri}
    # Flow names, not Zeek names: the Zeek mapping is applied as replay and score apply it.
    # (The S0 connection has no byte counts, so bytes_transferred cannot be a feature here.)
    args = ["--features", "packet_count,src_port,dst_port", "--n-estimators", "10", "--json",
            "--min-records", "5"]
    r = runner.invoke(
        main,
        ["train", "--input", str(CONN_LOG), "--tenant", "acme", "--model-name", unique, *args],
        env=env,
    )
    assert r.exit_code == 0, r.output
    result = orjson.loads(r.stdout.strip().splitlines()[-1])
    assert result["model_name"] == f"{unique}_acme"
    assert result["features"] == ["packet_count", "src_port", "dst_port"]
    assert result["metrics"]["training_samples"] == 6  # no tenant ids in the log: all of it
    assert "unreadable" not in r.stderr

    # Gzip under a name that says nothing, --format, and a broken line: skipped, reported once.
    lines = CONN_LOG.read_text().splitlines()
    capture = tmp_path / "capture.dat"
    capture.write_bytes(gzip.compress("\n".join([*lines[:9], "one\ttwo", *lines[9:]]).encode()))
    r = runner.invoke(
        main,
        ["train", "--input", str(capture), "--format", "zeek", "--model-name", unique, *args],
        env=env,
    )
    assert r.exit_code == 0, r.output
    result = orjson.loads(r.stdout.strip().splitlines()[-1])
    assert result["model_name"] == unique
    assert result["metrics"]["training_samples"] == 6
    report = [line for line in r.stderr.splitlines() if "unreadable" in line]
    assert report == [f"{capture}: skipped 1 unreadable line: line 10: expected 21 fields, got 2"]


@pytest.mark.integration
def test_train_on_a_plain_text_file_is_a_clear_usage_error(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'cli.db'}"}
    notes = tmp_path / "notes.txt"
    notes.write_text(
        "Notes from the incident call\n"
        "The firewall, the proxy and the VPN all looked fine.\n"
        "Next steps: collect flows, then train, then replay.\n"
    )
    r = runner.invoke(main, ["train", "--input", str(notes)], env=env)
    assert r.exit_code == 2, r.output
    assert isinstance(r.exception, SystemExit)  # a usage error, not a crash
    assert "Traceback" not in r.output
    # Plain text is no known format: said as such, naming the file and what was expected.
    assert (
        f"Error: cannot tell the format of {notes}: not JSON lines, Parquet, a Zeek log, Argus "
        "or nfdump flows, or CSV (a header row of field names separated by commas); name it "
        "with --format"
    ) in " ".join(r.stderr.split())

    r = runner.invoke(main, ["train", "--input", str(notes), "--tenant", "acme"], env=env)
    assert r.exit_code == 2, r.output
    assert f"cannot tell the format of {notes}" in r.stderr
    # Read as CSV on request, it has no usable record for the tenant, and says so.
    r = runner.invoke(main, ["train", "--input", str(notes), "--tenant", "acme",
                             "--format", "csv"], env=env)
    assert r.exit_code == 2, r.output
    assert f"no training records in {notes} for tenant acme" in r.stderr
    assert "None" not in r.stderr

    # Prose read as CSV on request is one-column rows: they lack every feature.
    notes.write_text("Notes from the incident call\nNothing here is a flow record\n")
    r = runner.invoke(main, ["train", "--input", str(notes), "--format", "csv"], env=env)
    assert r.exit_code == 2, r.output
    assert "'bytes_transferred' is absent from every training record" in " ".join(
        r.stderr.split())
    assert "Traceback" not in r.output

    # Too few usable records for a forest: refused with the reason, unless lowered.
    few = tmp_path / "few.jsonl"
    few.write_text("".join(
        f'{{"bytes_transferred": {i}, "packet_count": 2, "connection_duration": 0.5}}\n'
        for i in range(20)))
    r = runner.invoke(main, ["train", "--input", str(few)], env=env)
    assert r.exit_code == 2, r.output
    # The default recipe reads fields these records lack: said, with the ways out.
    said = " ".join(r.stderr.split())
    assert "field 'protocol' is absent from every training record (the default recipe, " \
        "network, reads the canonical flow fields" in said and "--features" in said
    r = runner.invoke(main, ["train", "--input", str(few), "--features",
                             "bytes_transferred,packet_count,connection_duration"], env=env)
    assert r.exit_code == 2, r.output
    assert "only 20 usable training records (fewer than 64; --min-records N overrides)" \
        in " ".join(r.stderr.split())
    r = runner.invoke(main, ["train", "--input", str(few), "--detector", "isolation_forest",
                             "--features", "bytes_transferred,packet_count"], env=env)
    assert r.exit_code == 2, r.output
    assert "only 20 usable training records (fewer than 256;" in " ".join(r.stderr.split())


@pytest.mark.integration
def test_mlflow_artifact_root_places_a_new_experiment(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The design note's MLFLOW_ARTIFACT_ROOT: where a new experiment keeps its artifacts."""
    import mlflow

    from stream import registry
    from stream.generate import training_flows

    root = tmp_path / "artifacts"
    monkeypatch.setenv("MLFLOW_ARTIFACT_ROOT", str(root))
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    registry.train(training_flows("x", 400, seed=1), uri=uri, experiment="art-root")
    exp = mlflow.MlflowClient(uri).get_experiment_by_name("art-root")
    assert exp.artifact_location == f"{root}/art-root"
    assert (root / "art-root").is_dir() and any((root / "art-root").iterdir())


@pytest.mark.integration
def test_train_with_json_logs_writes_only_json_lines_mlflow_prints_included(
    tmp_path: Path,
) -> None:
    """MLflow prints some lines ("Successfully registered model ...") instead of logging
    them: they come through our logging, as JSON, and only at DEBUG like MLflow's INFO."""
    import os
    import subprocess
    import sys

    flows = tmp_path / "flows.jsonl"
    r = CliRunner().invoke(
        main, ["generate", "--events", "1500", "--attack-rate", "0", "-o", str(flows)]
    )
    assert r.exit_code == 0, r.output
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'json.db'}"}
    env.pop("STREAM_LOG_FORMAT", None)
    for level, shown in (("INFO", False), ("DEBUG", True)):
        out = subprocess.run(
            [sys.executable, "-m", "stream.cli", "--log-format", "json", "--log-level", level,
             "train", "--input", str(flows), "--n-estimators", "20", "--promote"],
            env=env, capture_output=True, text=True, timeout=300,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        docs = [orjson.loads(line) for line in out.stderr.splitlines() if line.strip()]
        printed = [d["message"] for d in docs if d["logger"] == "mlflow.print"]
        if shown:
            assert any(m.startswith("Successfully registered model") or
                       m.startswith("Created version") for m in printed), printed
        else:
            assert printed == [] and "Successfully registered" not in out.stderr
