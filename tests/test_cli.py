"""The command line against a real SQLite registry: train, promote, models, generate."""

from __future__ import annotations

from pathlib import Path

import orjson
from click.testing import CliRunner

from stream.cli import main


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
    r = runner.invoke(main, ["promote", "--version", "7"], env={"MLFLOW_TRACKING_URI": uri})
    assert r.exit_code == 1 and "cannot promote" in r.output
