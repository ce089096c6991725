"""Training: fit the detector on records, log it to MLflow with its spec, register a version.

A registered model here is ONE sklearn Pipeline (StandardScaler + IsolationForest)
so the scaler always travels with the forest. Its MLmodel metadata records the
feature list and the threat thresholds (``metadata["stream"]``); models are
serialized with skops and the types it must trust (``TRUSTED_TYPES``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from stream.config import DEFAULT_EXPERIMENT, DEFAULT_MODEL_NAME
from stream.outcomes import DEFAULT_THRESHOLDS
from stream.registry.admin import promote
from stream.registry.client import ensure_experiment, registered_name, tracking_uri, using_uri
from stream.registry.loading import TRUSTED_TYPES
from stream.scoring import calibrate_thresholds, check_thresholds, decision_scores

DEFAULT_FEATURES: tuple[str, ...] = ("bytes_transferred", "packet_count", "connection_duration")

@dataclass(frozen=True)
class TrainResult:
    run_id: str
    model_name: str
    version: str
    features: tuple[str, ...]
    thresholds: tuple[float, float, float]
    metrics: dict[str, float]
    promoted: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "model_name": self.model_name,
            "version": self.version,
            "features": list(self.features),
            "thresholds": list(self.thresholds),
            "metrics": self.metrics,
            "promoted": self.promoted,
        }

def build_pipeline(
    n_estimators: int = 100,
    contamination: float | str = 0.1,
    random_state: int = 42,
    max_samples: str | int = "auto",
) -> Any:
    """The design note's StandardScaler + IsolationForest, as one fitted-together Pipeline."""
    from sklearn.ensemble import IsolationForest
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline(
        [
            ("scaler", StandardScaler()),
            (
                "isolation_forest",
                IsolationForest(
                    n_estimators=n_estimators,
                    contamination=contamination,
                    max_samples=max_samples,
                    random_state=random_state,
                ),
            ),
        ]
    )

def feature_matrix(records: Sequence[dict[str, Any]], features: Sequence[str]) -> np.ndarray:
    """Training matrix from records; a record missing a feature is an error, not a zero."""
    X = np.empty((len(records), len(features)), dtype=np.float64)
    for j, f in enumerate(features):
        try:
            X[:, j] = [r[f] for r in records]
        except KeyError as e:
            raise ValueError(f"training data lacks feature {f!r} in some records") from e
        except (TypeError, ValueError) as e:
            raise ValueError(f"training feature {f!r} has non-numeric values") from e
    if not np.all(np.isfinite(X)):
        raise ValueError("training data has NaN or infinite feature values")
    return X

def log_pipeline(
    pipeline: Any,
    X: np.ndarray,
    *,
    features: Sequence[str],
    registered: str,
    thresholds: Sequence[float],
    params: dict[str, Any],
    tags: dict[str, str],
    experiment: str,
    uri: str | None = None,
) -> TrainResult:
    """Log a fitted pipeline with its metrics, features and thresholds; register a version."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    uri = uri or tracking_uri()
    thr = check_thresholds(thresholds)
    scores = decision_scores(pipeline, X)
    metrics = {
        "training_samples": float(len(X)),
        "training_anomaly_rate": float(np.mean(scores < 0)),
        **{f"score_p{q}": float(np.percentile(scores, q)) for q in (1, 5, 50, 95, 99)},
    }
    for lvl, t in zip(("critical", "high", "medium"), thr.tolist(), strict=True):
        metrics[f"training_rate_{lvl}_or_above"] = float(np.mean(scores < t))
    example = pd.DataFrame(X[:5], columns=list(features))
    signature = infer_signature(example, scores[:5])
    with using_uri(uri), mlflow.start_run(experiment_id=ensure_experiment(experiment)) as run:
        mlflow.set_tags({"training_date": datetime.now(UTC).isoformat(), **tags})
        mlflow.log_params(
            {**params, "features": ",".join(features), "thresholds": ",".join(map(str, thr))}
        )
        mlflow.log_metrics(metrics)
        with warnings.catch_warnings():
            # The pipeline is fitted on arrays; MLflow's input-example check passes a frame.
            warnings.filterwarnings("ignore", message="X has feature names")
            info = mlflow.sklearn.log_model(
                pipeline,
                name="model",
                registered_model_name=registered,
                signature=signature,
                input_example=example,
                serialization_format="skops",
                skops_trusted_types=list(TRUSTED_TYPES),
                metadata={"stream": {"features": list(features), "thresholds": thr.tolist()}},
            )
        run_id = run.info.run_id
    version = str(info.registered_model_version)
    return TrainResult(
        run_id=run_id,
        model_name=registered,
        version=version,
        features=tuple(features),
        thresholds=(float(thr[0]), float(thr[1]), float(thr[2])),
        metrics=metrics,
    )

def train(
    records: Sequence[dict[str, Any]],
    *,
    tenant: str | None = None,
    model_name: str = DEFAULT_MODEL_NAME,
    features: Sequence[str] = DEFAULT_FEATURES,
    n_estimators: int = 100,
    contamination: float | str = 0.1,
    random_state: int = 42,
    thresholds: Sequence[float] | None = None,
    calibrate: Sequence[float] | None = None,
    experiment: str | None = None,
    uri: str | None = None,
    do_promote: bool = False,
) -> TrainResult:
    """Fit StandardScaler + IsolationForest on ``records`` and register it as one model.

    ``calibrate`` (target cumulative alert rates for critical, high+, medium+)
    derives thresholds from the training score distribution instead of the
    design note's fixed cut-offs.
    """

    if not records:
        raise ValueError("no training records")
    X = feature_matrix(records, features)
    pipe = build_pipeline(n_estimators, contamination, random_state)
    pipe.fit(X)
    if calibrate is not None:
        thresholds = calibrate_thresholds(decision_scores(pipe, X), calibrate)
    name = registered_name(model_name, tenant)
    result = log_pipeline(
        pipe,
        X,
        features=features,
        registered=name,
        thresholds=thresholds or DEFAULT_THRESHOLDS,
        params={
            "model_type": "Pipeline(StandardScaler, IsolationForest)",
            "n_estimators": n_estimators,
            "contamination": contamination,
            "random_state": random_state,
            "max_samples": "auto",
            "calibrated": calibrate is not None,
        },
        tags={"model_name": model_name, "tenant_id": tenant or "global"},
        experiment=experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT,
        uri=uri,
    )
    if do_promote:
        promote(result.model_name, result.version, uri=uri)
        result = TrainResult(**{**result.__dict__, "promoted": True})
    return result
