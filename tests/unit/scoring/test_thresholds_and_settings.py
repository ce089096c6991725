"""Unit tests of pure logic: threat levels, calibration, settings from flags and environment."""

from __future__ import annotations

import numpy as np
import pytest

from stream import config
from stream.scoring.thresholds import (
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

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    from stream.cli.base import settings_usage

    table = config.markdown_table(settings_usage())
    assert table in readme, "run: python scripts/readme_config.py"
    for name in config.env_vars():
        assert f"`{name}`" in readme


def test_the_compiled_forest_walk_was_built() -> None:
    # CI installs with a compiler: a build that silently fell back would be 3x slower.
    from stream.scoring import scorers as scoring

    assert scoring.compiled_forest is not None, scoring._COMPILED_MISSING


def test_a_missing_compiled_walk_falls_back_with_one_log_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from stream.registry import build_pipeline
    from stream.scoring import scorers as scoring

    X = np.random.default_rng(1).lognormal(3, 1, (500, 3))
    pipe = build_pipeline(n_estimators=10).fit(X)
    monkeypatch.setattr(scoring, "compiled_forest", None)
    monkeypatch.setattr(scoring, "_COMPILED_MISSING", "ImportError: no compiler")
    monkeypatch.setattr(scoring, "_warned_missing", False)
    with caplog.at_level("WARNING", logger="stream.scoring.scorers"):
        first = scoring.fast_isolation_forest(pipe)
        second = scoring.fast_isolation_forest(pipe)
    assert first is not None and second is not None and not first.compiled
    assert np.array_equal(first(X), pipe.decision_function(X))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "ImportError: no compiler" in lines[0], lines


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "numpy"])
def test_fast_isolation_forest_is_bit_identical_or_refused(compiled: bool) -> None:
    from functools import partial

    from sklearn.ensemble import IsolationForest
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import MinMaxScaler

    from stream.registry import build_pipeline
    from stream.scoring.scorers import fast_isolation_forest as fast_of

    fast_isolation_forest = partial(fast_of, compiled=compiled)
    rng = np.random.default_rng(3)
    X = rng.lognormal(3, 1, (2000, 3))
    pipe = build_pipeline(n_estimators=50).fit(X)
    fast = fast_isolation_forest(pipe, check=X[:100])
    assert fast is not None and fast.compiled is compiled
    # Rows with a missing input take Tree.apply's rules, beside rows that do not.
    holes = X[:300].copy()
    holes[::7, 1] = np.nan
    assert np.array_equal(fast(holes), pipe.decision_function(holes), equal_nan=True)
    Y = np.vstack([rng.lognormal(3, 2, (3000, 3)), [[0, 0, 0], [1e12, 1e9, 1e6]]])
    assert np.array_equal(fast(Y), pipe.decision_function(Y))
    assert np.array_equal(fast(Y[:1]), pipe.decision_function(Y[:1]))
    # Small calls walk all trees at once; large ones tree by tree: the same floats.
    small = np.concatenate([fast(Y[i : i + 37]) for i in range(0, len(Y), 37)])
    assert np.array_equal(small, pipe.decision_function(Y))
    # Calls of fewer rows than the compiled block walk trees side by side instead.
    tiny = np.concatenate([fast(Y[i : i + 5]) for i in range(0, 400, 5)])
    assert np.array_equal(tiny, pipe.decision_function(Y[:400]))
    with pytest.raises(ValueError, match="features"):
        fast(Y[:, :2])
    # Feature subsampling walks each tree on its own columns.
    sub = Pipeline([("scaler", build_pipeline()[0]),
                    ("isolation_forest", IsolationForest(n_estimators=20, max_features=2,
                                                         random_state=0))]).fit(X)
    fast_sub = fast_isolation_forest(sub)
    assert fast_sub is not None and np.array_equal(fast_sub(Y), sub.decision_function(Y))
    assert np.array_equal(np.concatenate([fast_sub(Y[i : i + 50]) for i in range(0, len(Y), 50)]),
                          sub.decision_function(Y))
    # A scaler without centring or scaling is followed too.
    forest = IsolationForest(n_estimators=20, random_state=0)
    plain = Pipeline([("scaler", build_pipeline()[0].set_params(with_mean=False)),
                      ("isolation_forest", forest)]).fit(X)
    fast_plain = fast_isolation_forest(plain)
    assert fast_plain is not None
    assert np.array_equal(fast_plain(Y[:20]), plain.decision_function(Y[:20]))
    # Anything else keeps the model's own decision_function.
    other = Pipeline([("scaler", MinMaxScaler()), ("f", IsolationForest(n_estimators=5))]).fit(X)
    assert fast_isolation_forest(other) is None
    assert fast_isolation_forest(IsolationForest(n_estimators=5).fit(X)) is None


def test_bool_and_range_settings_parse_as_users_expect() -> None:
    assert [config.parse_bool(v) for v in ("1", "true", "YES", "on", "0", "false", "No", "off")] \
        == [True] * 4 + [False] * 4
    with pytest.raises(ValueError, match="expected one of"):
        config.parse_bool("maybe")
    with pytest.raises(ValueError, match="STREAM_BATCH_SIZE: must be >= 1, got 0"):
        config.from_env({"STREAM_BATCH_SIZE": "0"})
    with pytest.raises(ValueError, match="--reload-interval: must be > 0"):
        config.from_env({}, reload_interval=0)
    with pytest.raises(ValueError, match="STREAM_METRICS_PORT: must be <= 65535"):
        config.from_env({"STREAM_METRICS_PORT": "70000"})
    assert config.from_env({"STREAM_TOPIC_REPLICATION_FACTOR": "-1"}).topic_replication_factor == -1


def test_every_command_takes_shared_settings_from_their_one_declaration() -> None:
    """No command redeclares a setting's flag with a literal default of its own."""
    from stream.cli.base import main, settings_usage

    settings = {f.name for f in config.FIELDS}
    for name, command in main.commands.items():
        for param in command.params:
            if param.name in settings:
                assert getattr(param, "stream_setting", False), (name, param.name)
                literal = isinstance(param.default, str | int | float | tuple)
                assert not literal or param.default == (), (name, param.name, param.default)
    used = settings_usage()
    assert set(used["tracking_uri"]) >= {"run", "train", "promote", "demote", "models", "score",
                                          "evaluate"}
    assert set(used["bootstrap_servers"]) >= {"run", "replay", "alerts"}
    assert set(used["kafka_properties"]) >= {"run", "replay", "alerts"}
