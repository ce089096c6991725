"""MLflow, split by job: ``training`` (fit, log, register), ``admin`` (promote, demote,
poll, list, resolve production), ``loading`` (trusted load and checks), ``model_store`` (the
model store on local disk), ``shipped`` (the proved compiled scorer a trainer ships
with a version), and ``client`` (URIs, names). Everything callers use is importable
from ``stream.registry``.
"""

from __future__ import annotations

from stream.registry.admin import (
    RegistryView,
    demote,
    list_models,
    poll,
    production_version,
    promote,
    resolve,
    set_challenger,
)
from stream.registry.client import (
    CHALLENGER_ALIAS,
    CHALLENGER_STAGE,
    PRODUCTION_ALIAS,
    PRODUCTION_STAGE,
    client,
    ensure_experiment,
    registered_name,
    tracking_uri,
    using_uri,
)
from stream.registry.loading import (
    TRUSTED_TYPES,
    LoadedModel,
    ModelLoadError,
    NotLoaded,
    check_trusted,
    load_version,
    model_spec,
    needed_types,
)
from stream.registry.training import (
    DEFAULT_FEATURES,
    DETECTORS,
    MIN_TRAINING_RECORDS,
    TrainingError,
    TrainResult,
    build_pipeline,
    feature_matrix,
    log_pipeline,
    train,
    training_matrix,
)

__all__ = [
    "CHALLENGER_ALIAS",
    "CHALLENGER_STAGE",
    "DEFAULT_FEATURES",
    "DETECTORS",
    "MIN_TRAINING_RECORDS",
    "PRODUCTION_ALIAS",
    "PRODUCTION_STAGE",
    "TRUSTED_TYPES",
    "LoadedModel",
    "ModelLoadError",
    "NotLoaded",
    "RegistryView",
    "TrainResult",
    "TrainingError",
    "build_pipeline",
    "check_trusted",
    "client",
    "demote",
    "ensure_experiment",
    "feature_matrix",
    "list_models",
    "load_version",
    "log_pipeline",
    "model_spec",
    "needed_types",
    "poll",
    "production_version",
    "promote",
    "registered_name",
    "resolve",
    "set_challenger",
    "tracking_uri",
    "train",
    "training_matrix",
    "using_uri",
]
