"""The design note's API (``MLModelManager``, ``MLflowAnomalyDetector``), working on MLflow 3.

Thin facades over ``registry`` and ``scoring`` so the note's usage examples
keep working, with its defects fixed:

- ``log_model`` takes the artifact name as ``name=`` (MLflow 3) and models are
  serialized with skops and explicitly trusted types, never pickle;
- the StandardScaler is fitted and saved together with the IsolationForest as
  one Pipeline, so a detector loaded in a fresh process scores correctly;
- ``detect_anomalies`` scores a batch once (``predict`` is derived from the
  same scores) instead of calling the model twice;
- the tracking URI defaults to ``MLFLOW_TRACKING_URI`` (else a local SQLite
  registry) instead of a hard-coded server address.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from stream import registry
from stream.config import DEFAULT_EXPERIMENT, DEFAULT_MODEL_NAME
from stream.features import FeatureSpec, RecordColumns
from stream.outcomes.records import LEVEL_NAMES, is_anomaly
from stream.scoring.thresholds import DEFAULT_THRESHOLDS, score_to_threat_level, threat_levels

log = logging.getLogger(__name__)


FeaturesArg = Sequence[str] | Mapping[str, str] | FeatureSpec | None


def as_spec(features: FeaturesArg, default: Sequence[str]) -> FeatureSpec:
    """A FeatureSpec from what the design note's API accepts (see ``train_model``)."""
    if features is None:
        return FeatureSpec.from_fields(list(default))
    if isinstance(features, FeatureSpec):
        return features
    if isinstance(features, Mapping):
        return FeatureSpec.parse(list(features.items()))
    items = list(features)
    if any("=" in f for f in items):
        return FeatureSpec.from_cli(items)
    return FeatureSpec.from_fields(items)


class MLModelManager:
    """Train, log, load, promote and compare models in the MLflow registry."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        import mlflow

        self.tracking_uri = tracking_uri or registry.tracking_uri()
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        self.client = registry.client(self.tracking_uri)
        self.experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        self.experiment_id = registry.ensure_experiment(self.experiment_name)

    def train_and_log_model(
        self,
        model: Any,
        X_train: Any,
        y_train: Any,
        model_name: str,
        tenant_id: str | None = None,
        hyperparameters: dict[str, Any] | None = None,
    ) -> str:
        """Fit ``model``, log params/metrics/model/metadata, register it; returns the run id."""
        import mlflow

        registered = registry.registered_name(model_name, tenant_id)
        with mlflow.start_run(experiment_id=self.experiment_id) as run:
            mlflow.set_tag("model_name", model_name)
            mlflow.set_tag("tenant_id", tenant_id or "global")
            mlflow.set_tag("training_date", datetime.now(UTC).isoformat())
            if hyperparameters:
                mlflow.log_params(hyperparameters)
            mlflow.log_param("model_type", type(model).__name__)
            mlflow.log_param("training_samples", len(X_train))
            mlflow.log_param(
                "feature_count",
                X_train.shape[1] if hasattr(X_train, "shape") else len(X_train[0]),
            )
            model.fit(X_train, y_train)
            if y_train is not None and hasattr(model, "score"):
                mlflow.log_metric("training_accuracy", float(model.score(X_train, y_train)))
            mlflow.sklearn.log_model(
                model,
                name="model",
                registered_model_name=registered,
                serialization_format="skops",
                skops_trusted_types=list(registry.TRUSTED_TYPES),
            )
            self._log_model_metadata(model, model_name, tenant_id)
            run_id = run.info.run_id
        log.info("model logged to MLflow with run_id %s", run_id)
        return run_id

    def load_production_model(self, model_name: str, tenant_id: str | None = None) -> Any | None:
        """The production model (alias ``production``, else stage ``Production``, else latest).

        Returns None when nothing is registered, as the design note did.
        """
        name = registry.registered_name(model_name, tenant_id)
        version = self._production_version(name)
        if version is None:
            log.error("no model found for %s", name)
            return None
        return registry.load_version(name, version, uri=self.tracking_uri).fitted

    def _production_version(self, name: str) -> str | None:
        """Alias production, else stage Production, else (logged) the latest version."""
        return registry.production_version(name, uri=self.tracking_uri, fallback_to_latest=True)

    def promote_model_to_production(
        self, model_name: str, version: str | int, tenant_id: str | None = None
    ) -> None:
        """Alias ``production`` and stage ``Production`` both point at ``version``."""
        name = registry.registered_name(model_name, tenant_id)
        registry.promote(name, version, uri=self.tracking_uri)
        log.info("model %s v%s promoted to production", name, version)

    def get_model_metrics(self, run_id: str) -> dict[str, Any]:
        return dict(self.client.get_run(run_id).data.metrics)

    def compare_models(self, run_ids: list[str]) -> dict[str, dict[str, Any]]:
        out = {}
        for run_id in run_ids:
            run = self.client.get_run(run_id)
            out[run_id] = {
                "metrics": dict(run.data.metrics),
                "params": dict(run.data.params),
                "tags": dict(run.data.tags),
            }
        return out

    def _log_model_metadata(self, model: Any, model_name: str, tenant_id: str | None) -> None:
        import mlflow

        metadata = {
            "model_name": model_name,
            "tenant_id": tenant_id or "global",
            "training_timestamp": datetime.now(UTC).isoformat(),
            "model_class": type(model).__name__,
        }
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "metadata.json"
            path.write_text(json.dumps(metadata, indent=2))
            mlflow.log_artifact(str(path), "metadata")


class MLflowAnomalyDetector:
    """The design note's detector: train, load and detect with a scaler that travels along."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        self.model_manager = MLModelManager(tracking_uri)
        self.model: Any | None = None
        self.model_name = DEFAULT_MODEL_NAME
        self.features: tuple[str, ...] = registry.DEFAULT_FEATURES
        self.spec: FeatureSpec = FeatureSpec.from_fields(list(registry.DEFAULT_FEATURES))
        self.thresholds = np.asarray(DEFAULT_THRESHOLDS)
        self.version: str | None = None

    @property
    def scaler(self) -> Any | None:
        """The fitted StandardScaler inside the loaded pipeline (None before load/train)."""
        return None if self.model is None else self.model.named_steps["scaler"]

    def train_model(
        self,
        network_data: list[dict[str, Any]],
        tenant_id: str | None = None,
        features: FeaturesArg = None,
    ) -> str:
        """Fit the features and StandardScaler + IsolationForest on ``network_data``; log,
        register and load it; returns the run id.

        ``features``: plain field names (the note's default: bytes, packets, duration),
        ``"NAME=EXPR"`` strings, a ``{name: expr}`` mapping, or a ``FeatureSpec``. With
        plain names a missing value counts as 0, as in the note.
        """
        spec = as_spec(features, self.features)
        records = network_data
        if spec.is_plain:
            records = [{f: r.get(f) or 0 for f in spec.plain_fields} for r in network_data]
        result = registry.train(
            records,
            tenant=tenant_id,
            model_name=self.model_name,
            features=spec,
            n_estimators=100,
            contamination=0.1,
            random_state=42,
            uri=self.model_manager.tracking_uri,
            experiment=self.model_manager.experiment_name,
        )
        loaded = registry.load_version(
            result.model_name, result.version, uri=self.model_manager.tracking_uri
        )
        self._use(loaded)
        return result.run_id

    def load_model(self, tenant_id: str | None = None) -> bool:
        """Load the tenant's (or global) production model; False when there is none."""
        name = registry.registered_name(self.model_name, tenant_id)
        version = self.model_manager._production_version(name)
        if version is None:
            log.error("no model found for %s", name)
            return False
        try:
            self._use(registry.load_version(name, version, uri=self.model_manager.tracking_uri))
        except registry.ModelLoadError as e:
            log.error("cannot load %s v%s: %s", name, version, e)
            return False
        return True

    def _use(self, loaded: registry.LoadedModel) -> None:
        self.model = loaded.estimator
        self.spec = loaded.spec
        self.features = loaded.features
        self.thresholds = loaded.thresholds
        self.version = loaded.version

    def detect_anomalies(self, network_data: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One result per record: index, is_anomaly, anomaly_score, threat_level, original_data."""
        if self.model is None:
            raise ValueError("Model not loaded. Call load_model() first.")
        if not self.spec.is_plain:
            return self._detect_with_spec(network_data)
        X = self._extract_features(network_data)
        scores = np.asarray(self.model.decision_function(X), dtype=np.float64)
        levels = threat_levels(scores, self.thresholds)
        return [
            {
                "index": i,
                "is_anomaly": flag,
                "anomaly_score": s,
                "threat_level": LEVEL_NAMES[lv],
                "original_data": rec,
            }
            for i, (s, flag, lv, rec) in enumerate(
                zip(
                    scores.tolist(),
                    is_anomaly(scores).tolist(),
                    levels.tolist(),
                    network_data,
                    strict=True,
                )
            )
        ]

    def _detect_with_spec(self, network_data: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Scores from the model's feature spec (the one module the stream uses); a record it
        cannot compute gets no score and says why (``error``)."""
        computed = self.spec.compute(RecordColumns(network_data))
        ok = np.flatnonzero(computed.reason == 0)
        scores = np.full(len(network_data), np.nan)
        if len(ok):
            assert self.model is not None
            scores[ok] = self.model.decision_function(computed.X[ok])
        levels = threat_levels(scores, self.thresholds)
        out: list[dict[str, Any]] = []
        for i, rec in enumerate(network_data):
            if computed.reason[i]:
                out.append({"index": i, "is_anomaly": None, "anomaly_score": None,
                            "threat_level": None, "error": computed.detail.get(i, ""),
                            "original_data": rec})
            else:
                s = float(scores[i])
                out.append({"index": i, "is_anomaly": s < 0, "anomaly_score": s,
                            "threat_level": LEVEL_NAMES[int(levels[i])], "original_data": rec})
        return out

    def _extract_features(self, network_data: list[dict[str, Any]]) -> np.ndarray:
        """The model's features in its order; missing values count as 0 (the note's fillna(0))."""
        X = np.zeros((len(network_data), len(self.features)), dtype=np.float64)
        for j, f in enumerate(self.features):
            X[:, j] = [r.get(f) or 0 for r in network_data]
        return X

    def _score_to_threat_level(self, score: float) -> str:
        return score_to_threat_level(score, tuple(self.thresholds.tolist()))
