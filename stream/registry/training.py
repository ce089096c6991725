"""Training: fit the detector on records, log it to MLflow with its spec, register a version.

A registered model here is ONE sklearn Pipeline (StandardScaler + IsolationForest)
so the scaler always travels with the forest. Its MLmodel metadata records the
feature list and the threat thresholds (``metadata["stream"]``); models are
serialized with skops and the types it must trust (``TRUSTED_TYPES``).
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from stream.config import DEFAULT_EXPERIMENT, DEFAULT_MODEL_NAME
from stream.errors import StreamError
from stream.features import FeatureSpec, RecordColumns, SpecError, WindowStore
from stream.ingest.view import columns_for
from stream.ops.failures import brief
from stream.outcomes.reasons import OK, REASONS
from stream.outcomes.risk import EntityBudget, budget_threshold
from stream.registry import shipped
from stream.registry.admin import promote
from stream.registry.client import (
    client,
    ensure_experiment,
    registered_name,
    tracking_uri,
    using_uri,
)
from stream.registry.loading import TRUSTED_TYPES, needed_types
from stream.scoring.baseline import Baseline
from stream.scoring.scorers import decision_scores
from stream.scoring.thresholds import (
    DEFAULT_CALIBRATION,
    DEFAULT_THRESHOLDS,
    calibrate_thresholds,
    check_thresholds,
    threat_levels,
)
from stream.state.store import DEFAULT_LATENESS_S, DEFAULT_TTL_S

log = logging.getLogger(__name__)

DEFAULT_FEATURES: tuple[str, ...] = ("bytes_transferred", "packet_count", "connection_duration")

#: Detectors ``stream train --detector`` builds, each as StandardScaler + the detector in
#: one Pipeline; every one is scored with ``decision_function`` (lower = more anomalous).
DETECTORS: tuple[str, ...] = ("isolation_forest", "hbos", "ensemble", "lof", "ocsvm",
                              "elliptic")
#: The detector ``stream train`` and the demo fit when none is named (``train()`` keeps
#: the design note's IsolationForest as its own default).
DEFAULT_DETECTOR: str = "ensemble"
#: Fewer usable training records than this is refused unless the caller lowers it.
MIN_TRAINING_RECORDS = 2


class TrainingError(StreamError, ValueError):
    """Training data or options that cannot make a model (a clear one-line reason)."""


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    model_name: str
    version: str
    features: tuple[str, ...]
    thresholds: tuple[float, float, float]
    metrics: dict[str, float]
    promoted: bool = False
    detector: str = "isolation_forest"
    # Training records the feature spec could not use, by reason (they were left out).
    skipped: dict[str, int] = field(default_factory=dict)
    # What the trainer should hear about the model (thresholds resting on a handful of
    # training records, say): one sentence each.
    warnings: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "model_name": self.model_name,
            "version": self.version,
            "features": list(self.features),
            "thresholds": list(self.thresholds),
            "metrics": self.metrics,
            "promoted": self.promoted,
            "detector": self.detector,
            "skipped": self.skipped,
            "warnings": list(self.warnings),
        }


def build_pipeline(
    n_estimators: int = 100,
    contamination: float | str = 0.1,
    random_state: int = 42,
    max_samples: str | int = "auto",
    *,
    detector: str = "isolation_forest",
    tails: Sequence[int] | None = None,
) -> Any:
    """StandardScaler + a detector as one fitted-together Pipeline (the design note's
    StandardScaler + IsolationForest by default). ``tails``: per input, which way its
    values are unusual (``FeatureSpec.tails``), for the histogram detector; the scaler
    keeps the order, so the direction holds after it."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if detector == "isolation_forest":
        from sklearn.ensemble import IsolationForest

        step: tuple[str, Any] = (
            "isolation_forest",
            IsolationForest(
                n_estimators=n_estimators,
                contamination=contamination,
                max_samples=max_samples,
                random_state=random_state,
            ),
        )
    elif detector == "hbos":
        from stream.scoring.detectors import HistogramOutlier

        step = ("hbos", HistogramOutlier(contamination=contamination, tails=_tails(tails)))
    elif detector == "ensemble":
        from sklearn.ensemble import IsolationForest

        from stream.scoring.detectors import Ensemble, HistogramOutlier

        # The forest sees how inputs go together, the histograms one strong input alone.
        step = ("ensemble", Ensemble([
            ("isolation_forest", IsolationForest(
                n_estimators=n_estimators, contamination=contamination,
                max_samples=max_samples, random_state=random_state)),
            ("hbos", HistogramOutlier(contamination=contamination, tails=_tails(tails))),
        ], contamination=contamination))
    elif detector == "lof":
        from sklearn.neighbors import LocalOutlierFactor

        # novelty=True: the fitted model scores new events (decision_function).
        step = ("lof", LocalOutlierFactor(novelty=True, contamination=contamination))
    elif detector == "ocsvm":
        from sklearn.svm import OneClassSVM

        nu = 0.1 if contamination == "auto" else float(contamination)
        step = ("ocsvm", OneClassSVM(nu=nu, gamma="scale"))
    elif detector == "elliptic":
        from sklearn.covariance import EllipticEnvelope

        cont = 0.1 if contamination == "auto" else float(contamination)
        step = ("elliptic", EllipticEnvelope(contamination=cont, random_state=random_state))
    else:
        raise TrainingError(f"unknown detector {detector!r}; one of {', '.join(DETECTORS)}")
    return Pipeline([("scaler", StandardScaler()), step])


def training_matrix(
    records: Sequence[Mapping[str, Any]],
    spec: FeatureSpec,
    *,
    schema: str = "native",
) -> tuple[FeatureSpec, np.ndarray, dict[str, int]]:
    """Fit ``spec`` on ``records`` (read through the sensor ``schema``) and compute it.

    Returns the fitted spec, the matrix of the records it can use, and the count of
    the others by reason. The same ``FeatureSpec.compute`` scores the stream.
    """
    fitted, X, skipped, _used, _served = _training_rows(records, spec, schema, WindowClock())
    return fitted, X, skipped


@dataclass(frozen=True)
class WindowClock:
    """How windows treat event time in training: as ``run`` and ``score`` are told to
    (``--lateness``, ``--state-ttl``), so a late row is late in all three."""

    lateness: float = DEFAULT_LATENESS_S
    ttl: float = DEFAULT_TTL_S


def _training_rows(
    records: Sequence[Mapping[str, Any]], spec: FeatureSpec, schema: str, clock: WindowClock
) -> tuple[FeatureSpec, np.ndarray, dict[str, int], np.ndarray, np.ndarray]:
    """``training_matrix``, which records it used (a mask), and those records' inputs as
    the stream would compute them (their own counts in: what the baseline of drift and
    explanations compares the stream with; the same matrix when nothing is counted)."""
    source = columns_for(RecordColumns(records), schema)
    try:
        fitted = spec.fit(source)
    except SpecError as e:
        raise TrainingError(str(e)) from e
    # Windows are per tenant in the stream, so they are here too (records in file order).
    tenants = [str(r.get("tenant_id", "")) for r in records] if fitted.windowed else None
    store = WindowStore(lateness=clock.lateness, ttl=clock.ttl) if fitted.windowed else None
    computed = fitted.compute(source, store=store, tenants=tenants, training=True)
    ok = computed.reason == OK
    skipped: dict[str, int] = {}
    if not ok.all():
        codes, counts = np.unique(computed.reason[~ok], return_counts=True)
        skipped = {REASONS[int(c)]: int(k) for c, k in zip(codes, counts, strict=True)}
    if not ok.any():
        first = next(iter(computed.detail.values()), "")
        raise TrainingError(
            f"no usable training records: all {len(records)} rejected by the features "
            f"({first}; {skipped})"
        )
    served = computed.X[ok]
    if fitted.leaves_own_out:
        again = WindowStore(lateness=clock.lateness, ttl=clock.ttl) if fitted.windowed else None
        served = fitted.compute(source, store=again, tenants=tenants).X[ok]
    return fitted, computed.X[ok], skipped, ok, served


def _ladder(medium_rate: float) -> tuple[float, float, float]:
    """Critical, high+ and medium+ rates for a medium+ rate (a tenth and a third of it)."""
    r = min(max(medium_rate, 3e-6), 0.5)
    return (r / 10, r / 3, r)


#: Fewer training records than this above the medium cut: the cuts are a few extremes.
FEW_ABOVE = 10


def _threshold_warnings(scores: np.ndarray, thresholds: Sequence[float],
                        rates: Sequence[float] | None, records: Sequence[Mapping[str, Any]]
                        | None, schema: str) -> tuple[str, ...]:
    """Sentences on thresholds that will not hold up: cuts that rest on a handful of
    training records, cuts that coincide, a budget from a short span of traffic."""
    out = []
    n = len(scores)
    above = int(np.count_nonzero(np.asarray(scores) < thresholds[2]))
    if rates is not None and rates[2] * n < FEW_ABOVE:
        out.append(f"the medium cut asks for {rates[2]:.2e} of traffic, {rates[2] * n:.1f} of "
                   f"the {n} training records: the three cuts rest on the {max(above, 1)} most "
                   "extreme training scores (train on more traffic for steadier cuts)")
    t0, t2 = float(thresholds[0]), float(thresholds[2])
    if t2 - t0 <= 4 * abs(float(np.spacing(t0))):  # equal but for the nudge apart
        out.append(f"the cuts coincide ({', '.join(f'{t:.6g}' for t in thresholds)}): "
                   "critical, high and medium are in effect one level")
    if records is not None:
        from stream.state.store import event_times

        times, codes = event_times(columns_for(RecordColumns(records), schema), "timestamp")
        ok = times[codes == OK]
        span = float(ok.max() - ok.min()) if len(ok) > 1 else 0.0
        if span < 3600:
            out.append(f"--alert-budget is per hour, and the training records span "
                       f"{span:.0f} s: the traffic's hourly rate is a guess from them")
    spread = float(np.subtract(*np.percentile(scores, [75, 25]))) if n > 3 else 0.0
    if spread > 0 and abs(thresholds[0] - np.median(scores)) > 1000 * spread:
        out.append(f"the critical cut ({thresholds[0]:.6g}) is over 1000 interquartile "
                   f"ranges ({spread:.3g}) from the median training score: this detector's "
                   "scores have extreme tails on this data (duplicate rows?); isolation_forest "
                   "is steadier")
    return tuple(out)


def budget_rates(
    records: Sequence[Mapping[str, Any]], per_hour: float, schema: str = "native"
) -> tuple[float, float, float]:
    """Alert rates for at most ``per_hour`` medium+ alerts per hour at the training
    traffic's own rate (its event times say how many events an hour brings)."""
    from stream.state.store import event_times

    if per_hour <= 0:
        raise TrainingError("--alert-budget must be a positive number of alerts per hour")
    times, codes = event_times(columns_for(RecordColumns(records), schema), "timestamp")
    ok = times[codes == OK]
    span = float(ok.max() - ok.min()) if len(ok) > 1 else 0.0
    if span <= 0:
        raise TrainingError("--alert-budget needs training records with timestamps that "
                            "span some time")
    per_hour_events = len(ok) / span * 3600.0
    return _ladder(per_hour / per_hour_events)


def precision_rates(
    pipe: Any,
    spec: FeatureSpec,
    labels: Sequence[Mapping[str, Any]],
    target: float,
    train_scores: np.ndarray,
    schema: str = "native",
) -> tuple[float, float, float]:
    """Alert rates whose medium+ cut keeps the precision on the reviewed alerts >= ``target``.

    The reviewed events (``stream feedback --export``) are scored by the new model; the
    cut is the highest score at which the alerts below it are at least ``target``
    true positives. (Window features of the reviewed events are computed over those
    events alone, without the traffic around them: for a windowed spec the cut is
    approximate, and ``--alert-budget`` is the surer tool.)
    """
    if not 0 < target < 1:
        raise TrainingError("--target-precision must be in (0, 1)")
    source = columns_for(RecordColumns(labels), schema)
    tenants = [str(r.get("tenant_id", "")) for r in labels] if spec.windowed else None
    computed = spec.compute(source, tenants=tenants)
    ok = computed.reason == OK
    truth = np.array([r.get("label") == "attack" for r in labels])[ok]
    if not truth.any():
        raise TrainingError("--labels has no usable true-positive verdicts")
    s = decision_scores(pipe, computed.X[ok])
    order = np.argsort(s, kind="stable")
    tp = np.cumsum(truth[order])
    precision = tp / np.arange(1, len(order) + 1)
    good = np.flatnonzero(precision >= target)
    if not len(good):
        raise TrainingError(f"no score cut reaches precision {target} on the reviewed alerts")
    cut = float(np.nextafter(s[order][good[-1]], np.inf))
    return _ladder(float(np.mean(train_scores < cut)))


def feature_matrix(records: Sequence[dict[str, Any]], features: Sequence[str]) -> np.ndarray:
    """Training matrix of plain feature fields; a record missing one is an error, not a zero."""
    _fitted, X, skipped = training_matrix(records, FeatureSpec.from_fields(list(features)))
    if skipped:
        raise TrainingError(f"training data cannot use some records: {skipped}")
    return X


def log_pipeline(
    pipeline: Any,
    X: np.ndarray,
    *,
    spec: FeatureSpec,
    registered: str,
    thresholds: Sequence[float],
    params: dict[str, Any],
    tags: dict[str, str],
    experiment: str,
    uri: str | None = None,
    trusted_types: Sequence[str] = (),
    extra_meta: Mapping[str, Any] | None = None,
    tenants: Sequence[str] | None = None,
    served: np.ndarray | None = None,
) -> TrainResult:
    """Log a fitted pipeline with its metrics, feature spec and thresholds; register a version.

    The spec (``spec.to_dict()``, what it learned included) goes into the model's MLmodel
    metadata, so it is versioned with the model and every scorer rebuilds the same one.
    ``tenants`` (one per row of ``X``) gives the baseline each tenant's own bins, which
    drift of a model serving several tenants compares each of them with. ``served``:
    the same rows as the stream computes them (``X`` is what the detector was fitted on,
    training records leaving their own counts out); the baseline is taken from it.
    """
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    uri = uri or tracking_uri()
    thr = check_thresholds(thresholds)
    needed = needed_types(pipeline)
    outside = needed - set(TRUSTED_TYPES) - set(trusted_types)
    if outside:
        raise TrainingError(
            f"the model needs skops to trust {sorted(outside)}, which are not in the "
            "allow-list: it could never be served (add each with --trust-type, on train "
            "and run, only if you know it is safe)"
        )
    scores = decision_scores(pipeline, X)
    metrics = {
        "training_samples": float(len(X)),
        "training_anomaly_rate": float(np.mean(scores < 0)),
        **{f"score_p{q}": float(np.percentile(scores, q)) for q in (1, 5, 50, 95, 99)},
    }
    for lvl, t in zip(("critical", "high", "medium"), thr.tolist(), strict=True):
        metrics[f"training_rate_{lvl}_or_above"] = float(np.mean(scores < t))
    features = list(spec.columns)
    example = pd.DataFrame(X[:5], columns=features)
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
                # No input example: MLflow would load the model back through pyfunc to
                # check it (the MLmodel parsed by the pure-Python YAML loader, seconds for
                # a spec with rarity tables); the signature says the same. The
                # requirements are this package's (inferring them runs a subprocess).
                pip_requirements=_requirements(),
                serialization_format="skops",
                skops_trusted_types=sorted(needed),
                metadata={
                    "stream": {
                        "features": features,
                        "spec": spec.to_dict(),
                        "thresholds": thr.tolist(),
                        # Medians, spreads and bins of the training inputs and scores:
                        # what explanations and drift compare against.
                        "baseline": Baseline.fit(
                            X if served is None else served,
                            scores if served is None else decision_scores(pipeline, served),
                            features, tenants=tenants).to_dict(),
                        **(extra_meta or {}),
                    }
                },
            )
        _ship_scorer(pipeline, X, info, uri, registered)
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


def _tails(tails: Sequence[int] | None) -> list[int] | None:
    """A plain list for the estimator's parameters (None: every input both ways)."""
    return None if tails is None or not any(tails) else [int(t) for t in tails]


def _requirements() -> list[str]:
    """What a served model needs, pinned to this install (MLflow's own inference imports
    the model in a subprocess: ~5 s per training)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in ("mlflow", "scikit-learn", "skops", "numpy", "scipy"):
        try:
            out.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:  # pragma: no cover - each is a dependency
            out.append(dist)
    return out


def _ship_scorer(pipeline: Any, X: np.ndarray, info: Any, uri: str, registered: str) -> None:
    """Log the proved compiled scorer into the version's model directory
    (``stream.registry.shipped``), so a consumer serves it without loading sklearn.

    A pipeline without one (another detector, no compiled extension) ships nothing;
    a failure to upload is logged, and consumers then load the model the usual way.
    """
    import mlflow

    model_file = str(info.flavors["sklearn"].get("pickled_model") or "model.skops")
    try:
        root = client(uri).get_logged_model(info.model_id).artifact_location
        with tempfile.TemporaryDirectory(prefix="stream-scorer-") as tmp:
            saved = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{root.rstrip('/')}/{model_file}", dst_path=tmp, tracking_uri=uri
            )
            out = Path(tmp) / "scorer"
            out.mkdir()
            if shipped.write(pipeline, X, Path(saved).read_bytes(), out):
                client(uri).log_model_artifacts(info.model_id, str(out))
                if registered:
                    # The hashes in the registry too: files alone could be rewritten.
                    meta = orjson.loads((out / shipped.META).read_bytes())
                    shipped.register_hashes(client(uri), registered,
                                            str(info.registered_model_version), meta)
    except Exception as e:  # the model is registered and serves either way
        log.warning("the compiled scorer was not shipped with the model (%s); consumers "
                    "will load it with scikit-learn", brief(e))


def _entity_budget(records: Sequence[Mapping[str, Any]], used: np.ndarray,
                   train_scores: np.ndarray, thresholds: Sequence[float], schema: str,
                   clock: WindowClock, per_day: float, by: str, half_life: float,
                   ) -> EntityBudget | None:
    """The entity-alert threshold for ``per_day`` raises on the used training records, at
    the levels the new model gives them, in file order (as a replay would send them)."""
    kept = [r for r, u in zip(records, used.tolist(), strict=True) if u]
    levels = threat_levels(train_scores, np.asarray(thresholds, dtype=np.float64))
    source = columns_for(RecordColumns(kept), schema)
    return budget_threshold(source, levels, [str(r.get("tenant_id", "")) for r in kept],
                            WindowStore(lateness=clock.lateness, ttl=clock.ttl),
                            by=by, half_life=half_life, per_day=per_day)


def train(
    records: Sequence[dict[str, Any]],
    *,
    tenant: str | None = None,
    model_name: str = DEFAULT_MODEL_NAME,
    features: Sequence[str] | FeatureSpec = DEFAULT_FEATURES,
    n_estimators: int = 100,
    contamination: float | str = 0.1,
    random_state: int = 42,
    thresholds: Sequence[float] | None = None,
    calibrate: Sequence[float] | None = None,
    experiment: str | None = None,
    uri: str | None = None,
    do_promote: bool = False,
    detector: str = "isolation_forest",
    input_schema: str = "native",
    trusted_types: Sequence[str] = (),
    min_records: int = MIN_TRAINING_RECORDS,
    alert_budget: float | None = None,
    labels: Sequence[Mapping[str, Any]] | None = None,
    target_precision: float | None = None,
    clock: WindowClock = WindowClock(),
    entity_alerts_per_day: float | None = None,
    risk_by: str = "src_ip",
    risk_half_life: float = 3600.0,
) -> TrainResult:
    """Fit the feature spec and StandardScaler + detector on ``records``; register one model.

    ``features`` is a FeatureSpec or a list of plain field names. ``calibrate`` (target
    cumulative alert rates for critical, high+, medium+) derives thresholds from the
    training score distribution instead of the design note's fixed cut-offs; a detector
    other than IsolationForest is always calibrated unless ``thresholds`` are given,
    since those cut-offs are on IsolationForest's score scale. ``entity_alerts_per_day``
    sets the entity-alert threshold (``stream.outcomes.risk.budget_threshold``) that the
    training traffic, at the new model's levels, would reach at most that often; it is
    stored with the version and serves its tenants' risk.
    """
    if not records:
        raise TrainingError("no training records")
    spec = (
        features if isinstance(features, FeatureSpec)
        else FeatureSpec.from_fields(list(features))
    )
    fitted, X, skipped, used, served = _training_rows(records, spec, input_schema, clock)
    if len(X) < min_records:
        raise TrainingError(
            f"only {len(X)} usable training records (fewer than {min_records}; "
            "--min-records N overrides)"
        )
    pipe = build_pipeline(n_estimators, contamination, random_state, detector=detector,
                          tails=fitted.tails)
    pipe.fit(X)
    if calibrate is None and thresholds is None and detector != "isolation_forest":
        calibrate = DEFAULT_CALIBRATION
    train_scores = decision_scores(pipe, X)
    if alert_budget is not None:
        calibrate = budget_rates(records, alert_budget, input_schema)
    if target_precision is not None:
        if not labels:
            raise TrainingError("--target-precision needs --labels (stream feedback --export)")
        calibrate = precision_rates(pipe, fitted, labels, target_precision, train_scores,
                                    input_schema)
    if calibrate is not None:
        thresholds = calibrate_thresholds(train_scores, calibrate)
    notes = _threshold_warnings(train_scores, thresholds or DEFAULT_THRESHOLDS, calibrate,
                                records if alert_budget is not None else None, input_schema)
    extra_meta: dict[str, Any] = {"detector": detector, "input_schema": input_schema}
    if entity_alerts_per_day is not None:
        # At the levels the stream will give the training traffic (its served inputs).
        budget = _entity_budget(records, used, decision_scores(pipe, served),
                                thresholds or DEFAULT_THRESHOLDS, input_schema, clock,
                                entity_alerts_per_day, risk_by, risk_half_life)
        if budget is None:
            notes = (*notes, f"--entity-alerts-per-day: no training alert has a readable "
                     f"{risk_by} and timestamp; the consumers' --risk-threshold applies")
        else:
            extra_meta["entity_budget"] = budget.as_dict()
    name = registered_name(model_name, tenant)
    result = log_pipeline(
        pipe,
        X,
        spec=fitted,
        registered=name,
        thresholds=thresholds or DEFAULT_THRESHOLDS,
        params={
            "model_type": f"Pipeline(StandardScaler, {type(pipe[-1]).__name__})",
            "detector": detector,
            "n_estimators": n_estimators,
            "contamination": contamination,
            "random_state": random_state,
            "max_samples": "auto",
            "calibrated": calibrate is not None,
            "input_schema": input_schema,
            "training_records_skipped": sum(skipped.values()),
        },
        tags={"model_name": model_name, "tenant_id": tenant or "global"},
        experiment=experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT,
        uri=uri,
        trusted_types=trusted_types,
        extra_meta=extra_meta,
        tenants=[str(r.get("tenant_id", "")) for r, u in zip(records, used.tolist(),
                                                              strict=True) if u],
        served=served,
    )
    result = replace(result, detector=detector, skipped=skipped, warnings=notes)
    if do_promote:
        promote(result.model_name, result.version, uri=uri)
        result = replace(result, promoted=True)
    return result
