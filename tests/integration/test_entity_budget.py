"""An alert budget end to end, against a real SQLite registry: ``stream train
--entity-alerts-per-day`` stores the entity-alert threshold with the version, ``stream
describe`` shows it, and ``stream score`` of the training traffic raises exactly as many
entity alerts as training counted, within the budget."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from stream.cli import main

pytestmark = pytest.mark.integration


def test_a_budget_set_at_training_holds_when_the_traffic_is_scored(tmp_path: Path) -> None:
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'budget.db'}"}
    runner = CliRunner()
    flows = tmp_path / "flows.jsonl"
    r = runner.invoke(main, ["generate", "--events", "20000", "--tenants", "acme",
                             "--seed", "5", "-o", str(flows)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["train", "--input", str(flows), "--json", "--n-estimators", "50",
                             "--entity-alerts-per-day", "200", "--promote"], env=env)
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["describe", "--json"], env=env)
    assert r.exit_code == 0, r.output
    budget = orjson.loads(r.stdout)["entity_budget"]
    assert budget["per_day"] == 200 and budget["by"] == "src_ip" and budget["alerts"] > 0
    assert budget["threshold"] >= 10.0 and 0 < budget["raised_per_day"] <= 200
    text = runner.invoke(main, ["describe"], env=env).stdout
    assert f"raises an entity alert at {budget['threshold']:g}" in text

    entities = tmp_path / "entities.jsonl"
    r = runner.invoke(main, ["score", str(flows), "-o", str(tmp_path / "alerts.jsonl"),
                             "--entity-alerts", str(entities)], env=env)
    assert r.exit_code == 0, r.output
    records = [orjson.loads(line) for line in entities.read_bytes().splitlines()]
    assert records and all(rec["threshold"] == budget["threshold"] for rec in records)
    raised = sum(rec["status"] == "raised" for rec in records)
    assert raised / budget["days"] == pytest.approx(budget["raised_per_day"])
    assert 0 < raised <= 200 * budget["days"]
