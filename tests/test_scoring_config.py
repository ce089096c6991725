"""Unit tests of pure logic: threat levels, calibration, settings from flags and environment."""

from __future__ import annotations

import numpy as np
import pytest

from stream import config
from stream.scoring import (
    DEFAULT_THRESHOLDS,
    calibrate_thresholds,
    check_thresholds,
    score_to_threat_level,
    threat_levels,
)


def test_levels_match_design_note_cutoffs_at_the_boundaries() -> None:
    scores = np.array([-0.9, -0.5, -0.500001, -0.2, -0.21, -0.0001, 0.0, 0.3])
    want = ["critical", "high", "critical", "medium", "high", "medium", "low", "low"]
    names = ["low", "medium", "high", "critical"]
    got = threat_levels(scores, np.asarray(DEFAULT_THRESHOLDS))
    assert [names[i] for i in got] == want
    assert [score_to_threat_level(s) for s in scores] == want


def test_thresholds_must_increase() -> None:
    with pytest.raises(ValueError):
        check_thresholds([-0.2, -0.5, 0.0])
    with pytest.raises(ValueError):
        check_thresholds([-0.5, 0.0])
    with pytest.raises(ValueError):
        check_thresholds([-0.5, float("nan"), 0.0])


def test_calibration_hits_target_rates_on_training_scores() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(0.1, 0.05, 100_000)
    t = calibrate_thresholds(scores, (0.001, 0.01, 0.05))
    levels = threat_levels(scores, np.asarray(t))
    assert abs(np.mean(levels == 3) - 0.001) < 0.0005
    assert abs(np.mean(levels >= 2) - 0.01) < 0.002
    assert abs(np.mean(levels >= 1) - 0.05) < 0.005
    with pytest.raises(ValueError):
        calibrate_thresholds(scores, (0.1, 0.01, 0.05))


def test_settings_from_env_and_overrides() -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
        "STREAM_BATCH_SIZE": "123",
        "STREAM_MIN_LEVEL": "high",
        "STREAM_KAFKA_PROPERTIES": "security.protocol=SSL,a=b",
    }
    s = config.from_env(env, batch_size=456, min_level=None)
    assert s.bootstrap_servers == "k1:9092,k2:9092"
    assert s.batch_size == 456  # a flag beats the environment
    assert s.min_level == "high"
    assert s.kafka_common()["security.protocol"] == "SSL"
    with pytest.raises(ValueError, match="STREAM_MIN_LEVEL"):
        config.from_env({"STREAM_MIN_LEVEL": "severe"})
    with pytest.raises(ValueError, match="key=value"):
        config.parse_properties(["nonsense"])


def test_readme_configuration_table_is_generated_from_config() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert config.markdown_table() in readme, "run: python scripts/readme_config.py"
    for name in config.env_vars():
        assert f"`{name}`" in readme
