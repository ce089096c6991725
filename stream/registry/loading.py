"""Loading a model version safely: trusted types only, its recorded spec, load-time checks.

A version is downloaded once, refused unless its sklearn flavor is skops **and**
the types it asks skops to trust are in ``TRUSTED_TYPES`` (pickle could run
arbitrary code), and loaded with the features and thresholds recorded in its
MLmodel metadata. The fast forest scorer is attached only once it has proved
bit-identical to the model's own ``decision_function``. A version that ships
the scorer its trainer proved (``stream.registry.shipped``), or whose proved
scorer the model store kept, is served from it after the same checks of its
MLmodel, without loading the estimator (``_Deferred`` loads it if asked).
"""

from __future__ import annotations

import importlib
import logging
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from stream.errors import StreamError
from stream.features import FeatureSpec, SpecError
from stream.ops.failures import brief
from stream.registry import shipped
from stream.registry.client import client, tracking_uri
from stream.scoring.baseline import Baseline
from stream.scoring.scorers import compiled_scorer, decision_scores, fast_isolation_forest
from stream.scoring.thresholds import DEFAULT_THRESHOLDS, check_thresholds

log = logging.getLogger(__name__)

#: Types beyond skops' own defaults (scikit-learn estimators, numpy, scipy) that a model
#: may ask to trust. Each is one of scikit-learn's compiled data structures, rebuilt by
#: skops from plain numpy arrays and numbers: loading one runs no code named by the file.
#: - ``sklearn.tree._tree.Tree``: the trees of IsolationForest;
#: - ``sklearn.neighbors._kd_tree.KDTree`` / ``_ball_tree.BallTree``: LocalOutlierFactor's
#:   neighbour index;
#: - ``sklearn.metrics._dist_metrics.EuclideanDistance64`` (and the Manhattan/Minkowski
#:   variants): the distance the neighbour index uses.
#: - ``stream.scoring.detectors.HistogramOutlier`` and ``stream.scoring.detectors.Ensemble``: this
#:   tool's own detectors (numpy arrays, floats and the estimators above; their methods
#:   are this package's code, not the file's).
#: ``--trust-type`` (train and run) extends the list for a deployment that needs more.
TRUSTED_TYPES: tuple[str, ...] = (
    "sklearn.tree._tree.Tree",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.metrics._dist_metrics.ManhattanDistance64",
    "sklearn.metrics._dist_metrics.MinkowskiDistance64",
    "stream.scoring.detectors.HistogramOutlier",
    "stream.scoring.detectors.Ensemble",
)

#: Where this tool's own detectors lived before the stage packages, as the model
#: versions trained then name them: those names are trusted as the current ones, and
#: the old module names are aliased when a model loads, so those versions still serve.
LEGACY_MODULES: Final = {"stream.detectors": "stream.scoring.detectors"}


def current_type(name: str) -> str:
    """``name`` with a legacy module (``LEGACY_MODULES``) read as its current one."""
    module, _, cls = name.rpartition(".")
    return f"{LEGACY_MODULES[module]}.{cls}" if module in LEGACY_MODULES else name


def _alias_legacy_modules() -> None:
    for old, new in LEGACY_MODULES.items():
        sys.modules.setdefault(old, importlib.import_module(new))


def needed_types(estimator: Any) -> set[str]:
    """The non-default types skops must trust to load ``estimator`` (checked at training,
    so a model that could never be served is never registered)."""
    import skops.io as sio

    return set(sio.get_untrusted_types(data=sio.dumps(estimator)))


class ModelLoadError(StreamError, RuntimeError):
    """A model version that cannot be served: untrusted, malformed or failing its checks."""


@dataclass(frozen=True)
class NotLoaded:
    """A production version that should score a tenant but is not loaded (yet, or its load
    failed): the tenant's events wait for it; they are never dead-lettered for that."""

    name: str
    version: str
    why: str

    def __str__(self) -> str:
        return f"{self.name} v{self.version} ({self.why})"


@dataclass(frozen=True)
class LoadedModel:
    """A servable model version: the fitted pipeline plus what it was trained on."""

    name: str
    version: str
    features: tuple[str, ...]  # the model's input columns (the spec's output columns)
    thresholds: np.ndarray
    estimator: Any
    load_seconds: float = 0.0
    # The estimator's decision_function without sklearn's per-call overhead, when it has
    # proved bit-identical at load (scoring.fast_isolation_forest); None otherwise.
    scorer: Any = None
    # How the inputs are computed from an event; plain field references of ``features``
    # when not given (models trained before feature specs).
    spec: FeatureSpec = None  # type: ignore[assignment]
    # What training recorded beside the spec: detector, input schema (for `stream describe`).
    info: Mapping[str, Any] = field(default_factory=dict)
    # The training data's medians, spreads and bins (explanations, drift); None for
    # models trained before it was recorded.
    baseline: Baseline | None = None
    # How it scores, for the line that says it loaded ("" for the model itself).
    served_from: str = ""

    def __post_init__(self) -> None:
        if self.spec is None:
            object.__setattr__(self, "spec", FeatureSpec.from_fields(list(self.features)))

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.version)

    @property
    def fitted(self) -> Any:
        """The fitted estimator itself (loaded now if it was deferred: a proved scorer
        serves the version without it)."""
        est = self.estimator
        return est() if isinstance(est, _Deferred) else est

    def evidence(self, X: np.ndarray) -> np.ndarray | None:
        """Per row and input, the detector's own tail evidence (``hbos``, ``ensemble``:
        what carried the score); None for a detector without one."""
        est = self.estimator
        if isinstance(est, _Deferred):
            return None  # a forest served by its shipped scorer: no per-input evidence
        last = est[-1] if hasattr(est, "steps") else est
        fn = getattr(last, "evidence", None)
        if fn is None:
            return None
        if len(X) == 0:
            return np.empty((0, X.shape[1] if X.ndim == 2 else 0))
        out = fn(est[:-1].transform(X) if hasattr(est, "steps") else X)
        return None if out is None else np.asarray(out, dtype=np.float64)

    def score(self, X: np.ndarray) -> np.ndarray:
        if self.scorer is not None:
            return self.scorer(X)
        return decision_scores(self.estimator, X)


def check_trusted(mlmodel: Any, source: str, extra: Sequence[str] = ()) -> None:
    """Refuse a model whose sklearn flavor is pickled or asks skops to trust unknown types
    (``TRUSTED_TYPES`` plus ``extra``)."""
    flavor = mlmodel.flavors.get("sklearn")
    if flavor is None:
        raise ModelLoadError(f"{source}: not an sklearn-flavor model")
    fmt = flavor.get("serialization_format")
    if fmt != "skops":
        raise ModelLoadError(
            f"{source}: serialized with {fmt!r}; only skops models are loaded "
            "(pickle could run arbitrary code)"
        )
    model_file(mlmodel, source)
    asked = {current_type(t) for t in flavor.get("skops_trusted_types") or []}
    outside = asked - set(TRUSTED_TYPES) - set(extra)
    if outside:
        raise ModelLoadError(
            f"{source}: asks to trust types outside the allow-list: {sorted(outside)} "
            "(add one with --trust-type only if you know it is safe)"
        )


def model_file(mlmodel: Any, source: str) -> str:
    """The model file the sklearn flavor names, as a plain name inside the model directory;
    ModelLoadError for a path that leads anywhere else (``../``, an absolute path)."""
    name = str(mlmodel.flavors["sklearn"].get("pickled_model") or "model.skops")
    parts = Path(name).parts
    if not parts or Path(name).is_absolute() or ".." in parts or "\\" in name or \
            any(p.startswith("~") for p in parts):
        raise ModelLoadError(f"{source}: its model file {name[:100]!r} is not inside the "
                             "model's directory")
    return name


def model_spec(mlmodel: Any, source: str) -> tuple[FeatureSpec, np.ndarray]:
    """The feature spec and thresholds recorded with the model.

    Models from before feature specs record only a feature list (or just a signature):
    their spec is plain field references, which behave exactly as those models did.
    """
    meta = (getattr(mlmodel, "metadata", None) or {}).get("stream") or {}
    try:
        thresholds = check_thresholds(meta.get("thresholds") or DEFAULT_THRESHOLDS)
    except ValueError as e:
        raise ModelLoadError(f"{source}: {e}") from e
    if meta.get("spec") is not None:
        try:
            return FeatureSpec.from_dict(meta["spec"]), thresholds
        except (SpecError, ValueError, KeyError, TypeError) as e:
            raise ModelLoadError(f"{source}: its feature spec does not load: {e}") from e
    features = meta.get("features")
    if features is None:
        sig = getattr(mlmodel, "signature", None)
        features = sig.inputs.input_names() if sig is not None and sig.inputs else None
    if not features or not all(isinstance(f, str) and f for f in features):
        raise ModelLoadError(f"{source}: records no usable feature list")
    return FeatureSpec.from_fields(list(features)), thresholds


def load_version(
    name: str,
    version: str,
    *,
    uri: str | None = None,
    trusted: Sequence[str] = (),
    store: Any = None,
) -> LoadedModel:
    """Download one model version, check it is trusted, load it. One artifact download.

    With ``store`` (a ``ModelStore``, ``MODEL_STORAGE_PATH``) the downloaded version is
    kept there, and a version the registry cannot deliver is loaded from there. An
    entity-alert threshold ``stream calibrate`` set for the version (a registered-model
    tag) takes the place of the one its training set.
    """
    model = _load_version(name, version, uri=uri, trusted=trusted, store=store)
    try:
        from stream.registry.admin import calibration

        rm = client(uri or tracking_uri()).get_registered_model(name)
        apply_calibration(model, calibration(getattr(rm, "tags", None) or {}, version))
    except Exception as e:  # the model serves either way, with its training's threshold
        log.warning("%s v%s: its calibration could not be read (%s)", name, version, brief(e))
    return model


def apply_calibration(model: LoadedModel, budget: Mapping[str, Any] | None) -> bool:
    """Serve ``budget`` (``stream calibrate``'s, checked) as the model's entity-alert
    threshold in place of its training's; True if that changed anything."""
    if budget is None or model.info.get("entity_budget") == budget:
        return False
    info = model.info
    if isinstance(info, dict):
        info["entity_budget"] = dict(budget)
        return True
    return False


def _load_version(
    name: str,
    version: str,
    *,
    uri: str | None = None,
    trusted: Sequence[str] = (),
    store: Any = None,
) -> LoadedModel:

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
            proved = store.proved(name, version, location) if store is not None else None
            if proved is not None:
                kept, parts, info = proved
                model = load_proved(kept, parts, info, name, version, trusted=trusted, t0=t0)
                if model is not None:
                    return model
            local = _download(location, uri, tmp)
            registered = shipped.registered_hashes(client(uri), name, version)
        except ModelLoadError:
            raise  # the kept copy itself is refused: not a download failure
        except Exception as e:
            kept = store.path(name, version) if store is not None else None
            if kept is None:
                raise ModelLoadError(f"{source}: download failed: {brief(e, 300)}") from e
            log.warning("%s: download failed (%s); loading the copy in the model store",
                        source, brief(e))
            return load_directory(kept, name, version, trusted=trusted, t0=t0)
        if store is not None:
            store.keep(name, version, local)
        kept = store.path(name, version) if store is not None else None
        # Served from the shipped scorer, the estimator loads only if asked for: from the
        # store's copy, else downloaded again then (not kept on disk meanwhile: 256 cached
        # tenant models would hold their files in the temporary directory).
        model = load_shipped(local, name, version, trusted=trusted, t0=t0,
                             later=kept or (location, uri), registered=registered)
        if model is None:
            model = load_directory(local, name, version, trusted=trusted, t0=t0)
        if store is not None:
            parts = getattr(model.scorer, "parts", None)
            if parts is not None:
                store.keep_proved(name, version, location, parts, dict(model.info))
        return model


def load_shipped(
    local: Path, name: str, version: str, *, trusted: Sequence[str] = (),
    t0: float | None = None, later: Path | tuple[str, str] | None = None,
    registered: str | None = None,
) -> LoadedModel | None:
    """A downloaded version served by the scorer its trainer shipped and proved
    (``stream.registry.shipped``), once it proves identical here too; None otherwise.

    The same checks of its MLmodel as a full load; no sklearn or skops import. The
    estimator is loaded when first asked for, from ``later``: a directory that stays
    (the model store's copy), or (location, tracking URI) to download it again;
    by default from ``local``. ``registered``: the scorer's hashes as the registry holds
    them for the version (``shipped.TAG``; "" when it holds none); None when there is no
    registry to ask (a directory the caller vouches for).
    """
    t0 = time.perf_counter() if t0 is None else t0
    source = f"models:/{name}/{version}"
    mlmodel, spec, thresholds = _checked(read_mlmodel(local), source, trusted)
    deferred = _Deferred(local if later is None else later, name, version, trusted)
    found = shipped.read(local, model_file(mlmodel, source), deferred, source, registered)
    if found is None:
        return None
    scorer, estimator_name = found
    meta = (getattr(mlmodel, "metadata", None) or {}).get("stream") or {}
    model = _served(mlmodel, spec, thresholds, scorer, deferred, _info(meta, estimator_name),
                    name, version, t0, "the compiled scorer its trainer shipped")
    if model is None:
        log.warning("%s: its shipped scorer takes other inputs than its spec; loading the model",
                    source)
    else:
        log.debug("%s: scoring with the compiled scorer its trainer shipped (proved here, "
                  "no model load)", source)
    return model


def _served(mlmodel: Any, spec: FeatureSpec, thresholds: np.ndarray, scorer: Any,
            deferred: _Deferred, info: Mapping[str, Any], name: str, version: str,
            t0: float, served_from: str) -> LoadedModel | None:
    """A version served by a proved compiled scorer, its estimator deferred; None when
    the scorer takes another number of inputs than the version's spec makes."""
    if int(scorer.parts["constants"][2]) != len(spec.columns):
        return None
    return LoadedModel(
        baseline=_baseline(mlmodel, spec, f"models:/{name}/{version}"),
        name=name,
        version=str(version),
        features=spec.columns,
        spec=spec,
        info=dict(info),
        thresholds=thresholds,
        estimator=deferred,
        load_seconds=time.perf_counter() - t0,
        scorer=scorer,
        served_from=served_from,
    )


def _info(meta: Mapping[str, Any], estimator_name: str) -> dict[str, Any]:
    """What ``stream describe`` shows of a version's training: detector, schema, estimator,
    and the entity-alert threshold an alert budget set (``stream train
    --entity-alerts-per-day``)."""
    info = {
        "detector": meta.get("detector", "isolation_forest"),
        "input_schema": meta.get("input_schema", "native"),
        "estimator": estimator_name,
    }
    budget = meta.get("entity_budget")
    if isinstance(budget, Mapping) and isinstance(budget.get("threshold"), int | float) \
            and budget["threshold"] > 0:
        info["entity_budget"] = dict(budget)  # the entity-alert threshold its budget set
    return info


def _download(location: str, uri: str, dst: str) -> Path:
    """A version's model directory, downloaded from its artifact ``location`` into ``dst``."""
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=dst,
                                                    tracking_uri=uri))


class _Deferred:
    """A proved model's sklearn estimator, loaded when first needed (a row the compiled
    walk hands back, or a caller that asks for the estimator): from a model directory
    that stays, or downloaded again from (location, tracking URI)."""

    def __init__(self, where: Path | tuple[str, str], name: str, version: str,
                 trusted: Sequence[str]) -> None:
        self._args = (where, name, version, trusted)
        self._estimator: Any = None
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        with self._lock:
            if self._estimator is None:
                where, name, version, trusted = self._args
                if isinstance(where, Path):
                    self._estimator = load_directory(where, name, version,
                                                     trusted=trusted).estimator
                else:
                    self._estimator = self._download(*where)
            return self._estimator

    def _download(self, location: str, uri: str) -> Any:
        _where, name, version, trusted = self._args
        with tempfile.TemporaryDirectory(prefix="stream-model-") as tmp:
            try:
                local = _download(location, uri, tmp)
            except Exception as e:
                raise ModelLoadError(f"models:/{name}/{version}: download failed: {e}") from e
            return load_directory(local, name, version, trusted=trusted).estimator

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):
            raise AttributeError(attr)
        return getattr(self(), attr)


def load_proved(
    path: Path, parts: dict[str, Any], info: Mapping[str, Any], name: str, version: str, *,
    trusted: Sequence[str] = (), t0: float | None = None,
) -> LoadedModel | None:
    """A kept version served by the scorer it proved at an earlier load (no sklearn import).

    The same checks of its MLmodel as a full load (flavor, trusted types, spec,
    thresholds, baseline); None when its scorer's arrays do not rebuild.
    """
    t0 = time.perf_counter() if t0 is None else t0
    source = f"models:/{name}/{version}"
    mlmodel, spec, thresholds = _checked(read_mlmodel(path), source, trusted)
    deferred = _Deferred(path, name, version, trusted)
    scorer = compiled_scorer(parts, deferred)
    model = None if scorer is None else _served(mlmodel, spec, thresholds, scorer, deferred,
                                                 info, name, version, t0,
                                                 "the compiled scorer it proved when kept")
    if model is not None:
        log.debug("%s: scoring with the compiled scorer it proved when kept (no model load)",
                  source)
    return model


def read_mlmodel(local: Path) -> Any:
    """The MLmodel file of a local model directory, parsed with libyaml when PyYAML has it.

    ``mlflow.models.Model.load`` copies the file to a temporary directory and parses it
    with the pure-Python YAML loader: 50-120 ms for a model whose metadata holds its
    feature spec and training baseline (some 14,000 YAML nodes), per load. The C safe
    loader builds the same plain data (safe: no tags that construct objects).
    """
    import yaml
    from mlflow.models import Model

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        with open(Path(local) / "MLmodel", encoding="utf-8") as f:
            return Model.from_dict(yaml.load(f, Loader=loader))
    except (OSError, yaml.YAMLError) as e:
        raise ModelLoadError(f"{local}: its MLmodel file does not load: {e}") from e


def _checked(
    mlmodel: Any, source: str, trusted: Sequence[str]
) -> tuple[Any, FeatureSpec, np.ndarray]:
    """A version's MLmodel once trusted, with its feature spec and thresholds."""
    check_trusted(mlmodel, source, trusted)
    spec, thresholds = model_spec(mlmodel, source)
    return mlmodel, spec, thresholds


def _baseline(mlmodel: Any, spec: FeatureSpec, source: str) -> Baseline | None:
    meta = (getattr(mlmodel, "metadata", None) or {}).get("stream") or {}
    baseline = None
    if meta.get("baseline") is not None:
        try:
            baseline = Baseline.from_dict(meta["baseline"])
        except (KeyError, TypeError, ValueError) as e:
            log.warning("%s: its training baseline does not load (%s): no explanations", source, e)
        if baseline is not None and baseline.columns != tuple(spec.columns):
            log.warning("%s: its training baseline is for other columns: no explanations", source)
            baseline = None
    return baseline


def load_directory(
    local: Path, name: str, version: str, *, trusted: Sequence[str] = (), t0: float | None = None
) -> LoadedModel:
    """Check and load a model version from a local MLflow model directory."""
    import mlflow

    t0 = time.perf_counter() if t0 is None else t0
    source = f"models:/{name}/{version}"
    mlmodel, spec, thresholds = _checked(read_mlmodel(local), source, trusted)
    try:
        _alias_legacy_modules()
        estimator = mlflow.sklearn.load_model(str(local))
    except Exception as e:
        raise ModelLoadError(f"{source}: load failed: {e}") from e
    if not hasattr(estimator, "decision_function"):
        raise ModelLoadError(f"{source}: model has no decision_function")
    n_in = getattr(estimator, "n_features_in_", None)
    if n_in is not None and n_in != len(spec.columns):
        raise ModelLoadError(
            f"{source}: the model takes {n_in} inputs but its feature spec makes "
            f"{len(spec.columns)}"
        )
    meta = (getattr(mlmodel, "metadata", None) or {}).get("stream") or {}
    return LoadedModel(
        baseline=_baseline(mlmodel, spec, source),
        name=name,
        version=str(version),
        features=spec.columns,
        spec=spec,
        info=_info(meta, type(estimator[-1] if hasattr(estimator, "steps")
                              else estimator).__name__),
        thresholds=thresholds,
        estimator=estimator,
        load_seconds=time.perf_counter() - t0,
        scorer=fast_isolation_forest(estimator),
        served_from=_ensemble_walks(estimator),
    )


def _ensemble_walks(estimator: Any) -> str:
    """An ensemble's forest members scored by the compiled walk, each proved
    bit-identical to its own ``decision_function`` (``fast_isolation_forest``, behind an
    identity scaler: the members read the pipeline's scaled inputs); what the load line
    says of it ("" for any other model)."""
    last = estimator[-1] if hasattr(estimator, "steps") else None
    members = getattr(last, "fitted_", None)
    if members is None or not hasattr(last, "use_scorers"):
        return ""
    from sklearn.ensemble import IsolationForest
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    walks = {}
    for name, est in members:
        if type(est) is not IsolationForest:
            continue
        identity = StandardScaler()
        d = int(est.n_features_in_)
        identity.mean_, identity.scale_ = np.zeros(d), np.ones(d)
        identity.var_, identity.n_features_in_, identity.n_samples_seen_ = np.ones(d), d, 1
        fast = fast_isolation_forest(Pipeline([("scaler", identity), (name, est)]))
        if fast is not None:
            walks[name] = fast
    assert last is not None  # it has members
    last.use_scorers(walks)
    if not walks:
        return ""
    how = "compiled" if all(getattr(w, "compiled", False) for w in walks.values()) else "numpy"
    return f"the ensemble, its forest walked by the {how} scorer proved identical here"
