"""MLflow: train, log and register a model; promote; ask for production versions; load safely.

A registered model here is ONE sklearn Pipeline (StandardScaler + IsolationForest)
so the scaler always travels with the forest. Its MLmodel metadata records the
feature list and the threat thresholds (``metadata["stream"]``). Models are
serialized with skops and loaded only when the types they ask to trust are in
``TRUSTED_TYPES``; pickle-format models are refused, never unpickled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from stream.config import DEFAULT_EXPERIMENT, DEFAULT_MODEL_NAME, DEFAULT_TRACKING_URI
from stream.scoring import (
    DEFAULT_THRESHOLDS,
    check_thresholds,
    decision_scores,
    fast_isolation_forest,
)

log = logging.getLogger(__name__)

DEFAULT_FEATURES: tuple[str, ...] = ("bytes_transferred", "packet_count", "connection_duration")
# The only non-default types an IsolationForest pipeline needs skops to trust.
TRUSTED_TYPES: tuple[str, ...] = ("sklearn.tree._tree.Tree",)
PRODUCTION_ALIAS, PRODUCTION_STAGE = "production", "Production"
CHALLENGER_ALIAS, CHALLENGER_STAGE = "challenger", "Staging"


class ModelLoadError(RuntimeError):
    """A model version that cannot be served: untrusted, malformed or failing its checks."""


def tracking_uri() -> str:
    """The tracking URI from ``MLFLOW_TRACKING_URI``, else the local SQLite default."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def registered_name(model_name: str, tenant: str | None) -> str:
    """``NAME_T`` for a tenant model, ``NAME`` for the global one (the design note's scheme)."""
    return f"{model_name}_{tenant}" if tenant else model_name


def client(uri: str | None = None) -> Any:
    """An MlflowClient bound to ``uri`` (tracking and registry alike)."""
    from mlflow.tracking import MlflowClient

    uri = uri or tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


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


@contextlib.contextmanager
def using_uri(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking and registry URIs at ``uri``, then restore them.

    ``log_model`` and ``start_run`` only use the process-wide URIs; setting them
    for good would leak into later calls (and, through the environment variables
    MLflow also sets, into child processes).
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    old_tracking = getattr(tracking_utils, "_tracking_uri", None)
    old_registry = getattr(registry_utils, "_registry_uri", None)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(old_tracking)
        mlflow.set_registry_uri(old_registry)  # type: ignore[arg-type]
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def ensure_experiment(name: str) -> str:
    import mlflow

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    try:
        return str(mlflow.create_experiment(name))
    except Exception:  # created concurrently by another process
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return str(exp.experiment_id)


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


def promote(name: str, version: str | int, *, uri: str | None = None) -> None:
    """Point alias ``production`` at ``version`` and move stage ``Production`` there too.

    Both are set so that modern (alias) and legacy (stage) readers agree; the
    previous Production version is archived.
    """
    c = client(uri)
    version = str(version)
    c.get_model_version(name, version)  # fails clearly for an unknown model/version
    # The alias first: it is what the consumer's watcher reads, so the change is one
    # atomic step for it whatever happens to the stage calls below.
    c.set_registered_model_alias(name, PRODUCTION_ALIAS, version)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        c.transition_model_version_stage(name, version, PRODUCTION_STAGE)
        # Archived one by one: archive_existing_versions=True makes a PostgreSQL-backed
        # tracking server fail the call (it compares the integer version column with a
        # string parameter), while plain transitions work on every backend.
        for mv in c.search_model_versions(f"name='{name}'"):
            if mv.current_stage == PRODUCTION_STAGE and str(mv.version) != version:
                c.transition_model_version_stage(name, str(mv.version), "Archived")


def set_challenger(name: str, version: str | int, *, uri: str | None = None) -> None:
    """Point alias ``challenger`` (and stage ``Staging``) at ``version``: shadow-scored only."""
    c = client(uri)
    version = str(version)
    c.get_model_version(name, version)
    c.set_registered_model_alias(name, CHALLENGER_ALIAS, version)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        c.transition_model_version_stage(name, version, CHALLENGER_STAGE)


def demote(name: str, *, uri: str | None = None) -> None:
    """Remove a model's production alias and stage (its tenant falls back to the global model)."""
    c = client(uri)
    try:
        mv = c.get_model_version_by_alias(name, PRODUCTION_ALIAS)
        c.delete_registered_model_alias(name, PRODUCTION_ALIAS)
        versions = [mv.version]
    except Exception:
        versions = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for mv in c.search_model_versions(f"name='{name}'"):
            if mv.current_stage == PRODUCTION_STAGE or mv.version in versions:
                c.transition_model_version_stage(name, mv.version, "Archived")


@dataclass(frozen=True)
class RegistryView:
    """One poll of the registry: production and challenger version per model name."""

    production: dict[str, str] = field(default_factory=dict)
    challenger: dict[str, str] = field(default_factory=dict)
    requests: int = 0


def poll(base_name: str, *, uri: str | None = None, page_size: int = 1000) -> RegistryView:
    """Production/challenger versions of ``base_name`` and every ``base_name_*`` model.

    Uses paged ``search_registered_models``, whose results carry each model's
    aliases and latest per-stage versions, so the request count grows with
    pages (1,000 models a page), not with models.
    """
    c = client(uri)
    production: dict[str, str] = {}
    challenger: dict[str, str] = {}
    token: str | None = None
    requests = 0
    # LIKE's '_' is a wildcard; the exact-prefix check below filters the extras.
    filt = "name LIKE '{}%'".format(base_name.replace("'", "''"))
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            page = c.search_registered_models(
                filter_string=filt, max_results=page_size, page_token=token
            )
        requests += 1
        for rm in page:
            if rm.name != base_name and not rm.name.startswith(base_name + "_"):
                continue
            aliases = dict(getattr(rm, "aliases", None) or {})
            stages = {mv.current_stage: str(mv.version) for mv in (rm.latest_versions or [])}
            prod = aliases.get(PRODUCTION_ALIAS) or stages.get(PRODUCTION_STAGE)
            if prod is not None:
                production[rm.name] = str(prod)
            chal = aliases.get(CHALLENGER_ALIAS) or stages.get(CHALLENGER_STAGE)
            if chal is not None:
                challenger[rm.name] = str(chal)
        token = page.token
        if not token:
            break
    return RegistryView(production=production, challenger=challenger, requests=requests)


def list_models(*, uri: str | None = None) -> list[dict[str, Any]]:
    """Every registered model with its production and challenger versions."""
    c = client(uri)
    out: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            page = c.search_registered_models(max_results=1000, page_token=token)
        for rm in page:
            aliases = {k: str(v) for k, v in (getattr(rm, "aliases", None) or {}).items()}
            stages = {mv.current_stage: str(mv.version) for mv in (rm.latest_versions or [])}
            latest = max((int(mv.version) for mv in (rm.latest_versions or [])), default=None)
            out.append(
                {
                    "name": rm.name,
                    "production": aliases.get(PRODUCTION_ALIAS) or stages.get(PRODUCTION_STAGE),
                    "challenger": aliases.get(CHALLENGER_ALIAS) or stages.get(CHALLENGER_STAGE),
                    "latest": str(latest) if latest is not None else None,
                    "aliases": aliases,
                }
            )
        token = page.token
        if not token:
            break
    return sorted(out, key=lambda m: m["name"])


@dataclass(frozen=True)
class LoadedModel:
    """A servable model version: the fitted pipeline plus what it was trained on."""

    name: str
    version: str
    features: tuple[str, ...]
    thresholds: np.ndarray
    estimator: Any
    load_seconds: float = 0.0
    # The estimator's decision_function without sklearn's per-call overhead, when it has
    # proved bit-identical at load (scoring.fast_isolation_forest); None otherwise.
    scorer: Any = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.version)

    def score(self, X: np.ndarray) -> np.ndarray:
        if self.scorer is not None:
            return self.scorer(X)
        return decision_scores(self.estimator, X)


def check_trusted(mlmodel: Any, source: str) -> None:
    """Refuse a model whose sklearn flavor is pickled or asks skops to trust unknown types."""
    flavor = mlmodel.flavors.get("sklearn")
    if flavor is None:
        raise ModelLoadError(f"{source}: not an sklearn-flavor model")
    fmt = flavor.get("serialization_format")
    if fmt != "skops":
        raise ModelLoadError(
            f"{source}: serialized with {fmt!r}; only skops models are loaded "
            "(pickle could run arbitrary code)"
        )
    asked = set(flavor.get("skops_trusted_types") or [])
    extra = asked - set(TRUSTED_TYPES)
    if extra:
        raise ModelLoadError(
            f"{source}: asks to trust types outside the allow-list: {sorted(extra)}"
        )


def model_spec(mlmodel: Any, source: str) -> tuple[tuple[str, ...], np.ndarray]:
    """Features and thresholds recorded with the model (the design note's defaults if absent)."""
    meta = (getattr(mlmodel, "metadata", None) or {}).get("stream") or {}
    features = meta.get("features")
    if features is None:
        sig = getattr(mlmodel, "signature", None)
        features = sig.inputs.input_names() if sig is not None and sig.inputs else None
    if not features or not all(isinstance(f, str) and f for f in features):
        raise ModelLoadError(f"{source}: records no usable feature list")
    try:
        thresholds = check_thresholds(meta.get("thresholds") or DEFAULT_THRESHOLDS)
    except ValueError as e:
        raise ModelLoadError(f"{source}: {e}") from e
    return tuple(features), thresholds


def load_version(name: str, version: str, *, uri: str | None = None) -> LoadedModel:
    """Download one model version, check it is trusted, load it. One artifact download."""
    import mlflow
    from mlflow.models import Model

    uri = uri or tracking_uri()
    t0 = time.perf_counter()
    source = f"models:/{name}/{version}"
    with tempfile.TemporaryDirectory(prefix="stream-model-") as tmp:
        try:
            # URIs passed explicitly: this runs on loader threads and must not change the
            # process-wide default tracking URI under anyone else's feet. The version's own
            # artifact location is asked of OUR registry: MLflow resolves "models:/N/V"
            # through the process-wide registry URI whatever registry_uri says.
            location = client(uri).get_model_version_download_uri(name, version)
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=tmp, tracking_uri=uri
            )
        except Exception as e:
            raise ModelLoadError(f"{source}: download failed: {e}") from e
        mlmodel = Model.load(Path(local))
        check_trusted(mlmodel, source)
        features, thresholds = model_spec(mlmodel, source)
        try:
            estimator = mlflow.sklearn.load_model(local)
        except Exception as e:
            raise ModelLoadError(f"{source}: load failed: {e}") from e
    if not hasattr(estimator, "decision_function"):
        raise ModelLoadError(f"{source}: model has no decision_function")
    return LoadedModel(
        name=name,
        version=str(version),
        features=features,
        thresholds=thresholds,
        estimator=estimator,
        load_seconds=time.perf_counter() - t0,
        scorer=fast_isolation_forest(estimator),
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
    from stream.scoring import calibrate_thresholds

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
