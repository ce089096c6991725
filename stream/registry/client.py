"""The MLflow connection: tracking URI, client, registered-model names, alias/stage names.

Shared by training, the registry admin and loading; nothing here talks to MLflow
until a function is called (MLflow is imported lazily: it costs seconds).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, cast

from stream.config import DEFAULT_TRACKING_URI

PRODUCTION_ALIAS, PRODUCTION_STAGE = "production", "Production"

CHALLENGER_ALIAS, CHALLENGER_STAGE = "challenger", "Staging"


def tracking_uri() -> str:
    """The tracking URI from ``MLFLOW_TRACKING_URI``, else the local SQLite default."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def registered_name(model_name: str, tenant: str | None) -> str:
    """``NAME_T`` for a tenant model, ``NAME`` for the global one (the design note's scheme)."""
    return f"{model_name}_{tenant}" if tenant else model_name


def client(uri: str | None = None) -> Any:
    """An MlflowClient bound to ``uri`` (tracking and registry alike)."""
    from mlflow.tracking import MlflowClient

    from stream.ops.logs import route_mlflow_prints

    route_mlflow_prints()
    uri = uri or tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


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

    from stream.ops.logs import route_mlflow_prints

    route_mlflow_prints()
    env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    old_tracking = getattr(tracking_utils, "_tracking_uri", None)
    old_registry = getattr(registry_utils, "_registry_uri", None)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        # None puts back "unset" (MLflow's own default); its annotations say str only.
        mlflow.set_tracking_uri(cast(str, old_tracking))
        mlflow.set_registry_uri(cast(str, old_registry))
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def ensure_experiment(name: str) -> str:
    """The experiment's id, creating it if needed.

    A new experiment stores its artifacts under ``MLFLOW_ARTIFACT_ROOT`` when that is
    set (the design note's variable: e.g. ``s3://bucket/mlflow`` or a shared path),
    else where the tracking server or store puts them by default.
    """
    import mlflow

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return str(exp.experiment_id)
    root = os.environ.get("MLFLOW_ARTIFACT_ROOT") or None
    location = f"{root.rstrip('/')}/{name}" if root else None
    try:
        return str(mlflow.create_experiment(name, artifact_location=location))
    except Exception:  # created concurrently by another process
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return str(exp.experiment_id)
