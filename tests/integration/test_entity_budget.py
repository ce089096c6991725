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


def test_stream_calibrate_sets_the_budget_of_a_registered_version(tmp_path: Path) -> None:
    """A version trained without a budget: ``stream calibrate`` on a baseline file sets
    its entity-alert threshold (a tag of the registered model: the version's artifacts
    stay as they were); ``describe`` shows it, ``score`` applies it, and a model table
    that had loaded the version before serves it after its next poll. A tag that is not
    a budget is ignored."""
    from stream.config import Settings
    from stream.consumer import service
    from stream.registry.admin import CALIBRATION_TAG
    from stream.registry.client import client

    uri = f"sqlite:///{tmp_path / 'calibrate.db'}"
    env = {"MLFLOW_TRACKING_URI": uri}
    runner = CliRunner()
    flows = tmp_path / "flows.jsonl"
    r = runner.invoke(main, ["generate", "--events", "20000", "--tenants", "acme",
                             "--seed", "5", "-o", str(flows)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["train", "--input", str(flows), "--n-estimators", "50",
                             "--entity-alerts-per-day", "off", "--promote"], env=env)
    assert r.exit_code == 0, r.output
    assert "no alert budget" in runner.invoke(main, ["describe"], env=env).stdout
    table = service.build_table(Settings(tracking_uri=uri))
    table.refresh()
    (loaded,) = table.resolve(["acme"])
    assert loaded is not None and "entity_budget" not in loaded.info

    r = runner.invoke(main, ["calibrate", str(flows), "--entity-alerts-per-day", "100",
                             "--json"], env=env)
    assert r.exit_code == 0, r.output
    budget = orjson.loads(r.stdout)["entity_budget"]
    assert budget["per_day"] == 100 and budget["threshold"] >= 10.0
    assert 0 < budget["raised_per_day"] <= 100
    described = orjson.loads(runner.invoke(main, ["describe", "--json"], env=env).stdout)
    assert described["entity_budget"] == budget
    entities = tmp_path / "entities.jsonl"
    r = runner.invoke(main, ["score", str(flows), "-o", str(tmp_path / "alerts.jsonl"),
                             "--entity-alerts", str(entities)], env=env)
    assert r.exit_code == 0, r.output
    records = [orjson.loads(line) for line in entities.read_bytes().splitlines()]
    assert records and all(rec["threshold"] == budget["threshold"] for rec in records)
    raised = sum(rec["status"] == "raised" for rec in records)
    assert raised / budget["days"] == pytest.approx(budget["raised_per_day"])
    # The table that loaded the version before: the budget from its next poll on.
    table.refresh()
    assert table.resolve(["acme"])[0].info["entity_budget"] == budget
    table.stop()
    # A tag that is no budget (anyone with write access to the registry can set one).
    version = described["version"]
    client(uri).set_registered_model_tag(described["model"],
                                         CALIBRATION_TAG + str(version), '{"threshold": -1}')
    again = orjson.loads(runner.invoke(main, ["describe", "--json"], env=env).stdout)
    assert "entity_budget" not in again
    text = runner.invoke(main, ["calibrate", str(flows), "--entity-alerts-per-day", "5"],
                         env=env).stdout
    assert "consumers apply it at their next registry poll" in text


def test_stream_train_sets_a_default_budget_of_20_a_day_per_1000_hosts(tmp_path: Path) -> None:
    """Without --entity-alerts-per-day, stream train budgets 20 entity alerts a day per
    1,000 active hosts (sources) of its training traffic, at least 20; a bad value is
    one line and exit 2."""
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'default.db'}"}
    runner = CliRunner()
    flows = tmp_path / "flows.jsonl"
    assert runner.invoke(main, ["generate", "--events", "5000", "--tenants", "acme",
                                "--seed", "9", "-o", str(flows)]).exit_code == 0
    r = runner.invoke(main, ["train", "--input", str(flows), "--n-estimators", "30",
                             "--promote"], env=env)
    assert r.exit_code == 0, r.output
    budget = orjson.loads(runner.invoke(main, ["describe", "--json"], env=env).stdout)[
        "entity_budget"]
    hosts = len({orjson.loads(line).get("src_ip") for line in flows.read_bytes().splitlines()})
    assert budget["per_day"] == pytest.approx(20.0 * max(1.0, hosts / 1000.0))
    assert budget["threshold"] >= 10.0 and budget["raised_per_day"] <= budget["per_day"]
    bad = runner.invoke(main, ["train", "--input", str(flows), "--entity-alerts-per-day",
                               "lots"], env=env)
    assert bad.exit_code == 2 and "is not a positive number, auto or off" in bad.output
