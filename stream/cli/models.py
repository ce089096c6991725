"""``stream train``, ``promote``, ``demote``, ``models`` and ``describe``: model versions in
the registry.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import click
import orjson

from stream.cli.base import (
    check_registry,
    create_option,
    format_option,
    input_mapping,
    load_settings,
    main,
    settings_options,
    tenant_option,
)


def _model_version(s: Any, tenant: str | None, version: str | None) -> tuple[str, Any]:
    """(registered name, loaded model) of a tenant's version (default: its production one);
    one clear line when there is none or it cannot be loaded."""
    from stream import registry

    name = registry.registered_name(s.model_name, tenant)
    try:
        version = version or registry.production_version(name, uri=s.tracking_uri)
        if version is None:
            raise click.ClickException(f"{name} has no production version (give --version)")
        return name, registry.load_version(name, version, uri=s.tracking_uri,
                                           trusted=s.trust_types)
    except registry.ModelLoadError as e:
        raise click.ClickException(str(e)) from e


def _feature_spec(
    features: str | None,
    exprs: tuple[str, ...],
    path: str | None,
    recipe: str | None = None,
    timestamp_field: str | None = None,
) -> Any:
    """The feature spec from --features, --feature, --feature-file or --recipe (one of them)."""
    spec = _base_spec(features, exprs, path, recipe)
    if timestamp_field:
        spec = spec.with_timestamp_field(timestamp_field)
    return spec


def _base_spec(
    features: str | None, exprs: tuple[str, ...], path: str | None, recipe: str | None
) -> Any:
    from stream.features import FeatureSpec, SpecError
    from stream.features.recipes import DEFAULT_RECIPE
    from stream.features.recipes import recipe as named_recipe

    given = sum(bool(x) for x in (features, exprs, path, recipe))
    if given > 1:
        raise click.UsageError(
            "choose one of --features, --feature, --feature-file and --recipe"
        )
    try:
        if recipe:
            return named_recipe(recipe)
        if exprs:
            return FeatureSpec.from_cli(list(exprs))
        if path:
            return FeatureSpec.from_file(path)
        names = [f.strip() for f in (features or "").split(",") if f.strip()]
        # Nothing named: the recipe for real sensor data (README: the network recipe).
        return FeatureSpec.from_fields(names) if names else named_recipe(DEFAULT_RECIPE)
    except SpecError as e:
        hint = "--feature-file" if path else ("--feature" if exprs else "--features")
        raise click.BadParameter(str(e), param_hint=hint) from e


def _default_min_records(detector: str) -> int:
    # IsolationForest draws up to 256 samples per tree: fewer records make a forest
    # of near-identical trees whose scores say little. The ensemble's histograms read a
    # few dozen records well (a baseline of a quiet hour of one host is that small), and
    # its forest member is calibrated against its own training scores.
    if detector == "isolation_forest":
        return 256
    return 64 if detector == "ensemble" else 2


def _floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError as e:
        raise click.BadParameter(f"{what}: expected comma-separated numbers, got {text!r}") from e


@main.command()
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Training flows: JSONL, CSV, Parquet, Zeek conn.log (TSV or JSON); gzip ok.",
)
@format_option
@click.option(
    "--map",
    "maps",
    multiple=True,
    metavar="TARGET=EXPR",
    help="Field mapping, as replay, score and evaluate read files: EXPR is a column or a "
    "sum of columns (a+b). Zeek conn.log fields are mapped automatically.",
)
@tenant_option("Tenant id (omit for the global model).")
@settings_options("model_name", "tracking_uri", "experiment_name", "input_schema", "trust_types",
                  "where", "lateness", "state_ttl", "risk_by", "risk_half_life")
@click.option(
    "--features",
    default=None,
    help="Comma-separated plain feature fields, e.g. "
    "bytes_transferred,packet_count,connection_duration [default: --recipe network].",
)
@click.option(
    "--feature",
    "feature_exprs",
    multiple=True,
    metavar="NAME=EXPR",
    help="A named feature expression (repeatable), e.g. 'ld=log(fill(duration, 0) + 0.1)'. "
    "See the README's Features section for the grammar.",
)
@click.option(
    "--feature-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="A YAML feature spec: features: {NAME: EXPR, ...}.",
)
@click.option(
    "--recipe",
    type=click.Choice(["network", "flows"]),
    default=None,
    help="A feature spec that ships with the tool: network (the default when no feature "
    "option is given) = sizes, rarity in the training traffic, novelty, fan-out and "
    "beacons, for any sensor; flows = the demo's earlier recipe, tuned to its generator "
    "(README: Recipes).",
)
@click.option(
    "--timestamp-field",
    default=None,
    metavar="FIELD",
    help="Where window functions read event time (ISO 8601 or epoch seconds) "
    "[default: timestamp].",
)
@click.option(
    "--detector",
    type=click.Choice(["ensemble", "isolation_forest", "hbos", "lof", "ocsvm", "elliptic"]),
    default="ensemble",
    show_default=True,
    help="The detector after the StandardScaler; all are scored with decision_function. "
    "hbos: the sum of each input's tail evidence; ensemble: the forest and hbos, each "
    "calibrated, the surer one (README: Models and the registry).",
)
@click.option(
    "--min-records",
    type=click.IntRange(1),
    default=None,
    help="Refuse fewer usable training records than this [default: 256, the forest's "
    "sample size, for isolation_forest; 64 for ensemble; 2 for other detectors].",
)
@click.option("--n-estimators", default=100, show_default=True, type=click.IntRange(1, 10000))
@click.option(
    "--contamination",
    default="0.1",
    show_default=True,
    help="IsolationForest contamination: a fraction in (0, 0.5] or 'auto'.",
)
@click.option("--random-state", default=42, show_default=True, type=int)
@click.option(
    "--thresholds",
    default=None,
    help="Cut points critical,high,medium for decision scores [default: -0.5,-0.2,0].",
)
@click.option(
    "--calibrate",
    "calibrate",
    default=None,
    is_flag=False,
    flag_value="0.001,0.005,0.02",
    help="Derive thresholds from training scores: target rates of critical, high+, "
    "medium+ alerts on training traffic (flag alone: 0.001,0.005,0.02).",
)
@click.option(
    "--alert-budget", type=click.FloatRange(min=0, min_open=True), default=None,
    metavar="PER_HOUR",
    help="Thresholds for at most this many medium+ alerts per hour at the training "
    "traffic's rate (critical a tenth, high+ a third of it).",
)
@click.option(
    "--labels", "labels_path", type=click.Path(exists=True, dir_okay=False), default=None,
    help="Reviewed alerts (stream feedback --export), for --target-precision.",
)
@click.option(
    "--target-precision", type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None, help="Thresholds for this precision on the --labels alerts at medium+.",
)
@click.option(
    "--entity-alerts-per-day", default="auto", show_default=True, metavar="N|auto|off",
    help="Set the entity-alert threshold (stored with the version, in place of the "
    "consumers' --risk-threshold for its tenants) so that the training traffic would "
    "raise at most N entity alerts per day (by --risk-by, with --risk-half-life); auto: "
    "20 a day per 1,000 active hosts of the training traffic (at least 20); off: the "
    "consumers' --risk-threshold.",
)
@click.option("--promote", is_flag=True, help="Promote the new version to production.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def train(
    input_path: str,
    fmt: str | None,
    maps: tuple[str, ...],
    tenant: str | None,
    model_name: str | None,
    tracking_uri: str | None,
    experiment_name: str | None,
    input_schema: str | None,
    trust_types: tuple[str, ...],
    where: str | None,
    lateness: float | None,
    state_ttl: float | None,
    risk_by: str | None,
    risk_half_life: float | None,
    features: str | None,
    feature_exprs: tuple[str, ...],
    feature_file: str | None,
    recipe: str | None,
    timestamp_field: str | None,
    detector: str,
    min_records: int | None,
    n_estimators: int,
    contamination: str,
    random_state: int,
    thresholds: str | None,
    calibrate: str | None,
    alert_budget: float | None,
    labels_path: str | None,
    target_precision: float | None,
    entity_alerts_per_day: str,
    promote: bool,
    as_json: bool,
) -> None:
    """Fit a feature spec and StandardScaler + detector; log and register it in MLflow."""
    from stream import registry
    from stream.ingest.files import load_records
    from stream.registry.training import WindowClock

    s = load_settings(
        model_name=model_name, tracking_uri=tracking_uri, experiment_name=experiment_name,
        input_schema=input_schema, trust_types=trust_types, where=where, lateness=lateness,
        state_ttl=state_ttl, risk_by=risk_by, risk_half_life=risk_half_life,
    )
    budget_arg = entity_alerts_per_day.strip().lower()
    per_day: float | None = None
    if budget_arg not in ("auto", "off"):
        try:
            per_day = float(budget_arg)
        except ValueError:
            per_day = -1.0
        if not per_day > 0 or per_day == float("inf"):
            raise click.BadParameter(f"{entity_alerts_per_day!r} is not a positive number, "
                                     "auto or off", param_hint="--entity-alerts-per-day")
        if not s.risk_by:
            raise click.UsageError("--entity-alerts-per-day needs a --risk-by field")
    spec = _feature_spec(features, feature_exprs, feature_file, recipe, timestamp_field)
    check_registry(s.tracking_uri, s)
    # The readers of replay and score: every format, bad lines reported. A sensor schema
    # named explicitly maps the raw records (the Zeek mapping is the default for Zeek files).
    loaded = load_records(input_path, fmt=fmt, mapping=input_mapping(maps),
                          raw=s.input_schema != "native")
    records = loaded.records
    # Here --tenant filters (replay and score set tenant_id instead): a file with tenant
    # ids trains on that tenant's rows; a file without them is all that tenant's.
    if tenant is not None and any("tenant_id" in r for r in records):
        records = [r for r in records if r.get("tenant_id", tenant) == tenant]
    if s.where and records:
        # The records the consumer would score, as it reads them (the sensor schema).
        from stream.features import RecordColumns
        from stream.ingest.view import columns_for
        from stream.ingest.where import Where

        keep = Where.parse(s.where).mask(columns_for(RecordColumns(records), s.input_schema))
        left = len(records) - int(keep.sum())
        records = [r for r, k in zip(records, keep.tolist(), strict=True) if k]
        if left:
            click.echo(f"{input_path}: --where left out {left} records", err=True)
    if not records:
        whose = "the global model" if tenant is None else f"tenant {tenant}"
        raise click.UsageError(
            f"no training records in {input_path} for {whose} "
            f"(read as {loaded.format}; {loaded.describe_unreadable()})"
        )
    if loaded.unreadable:
        click.echo(f"{input_path}: skipped {loaded.describe_unreadable()}", err=True)
    if budget_arg == "auto" and s.risk_by:
        from stream.features import RecordColumns
        from stream.ingest.view import columns_for
        from stream.outcomes.risk import default_per_day

        per_day = default_per_day(columns_for(RecordColumns(records), s.input_schema),
                                  s.risk_by)
    cont: float | str = contamination if contamination == "auto" else float(contamination)
    try:
        # With a tracking server MLflow writes "View run ... at: URL" lines to stdout;
        # they go to stderr so that stdout carries only the result (one object with --json).
        with contextlib.redirect_stdout(sys.stderr):
            result = registry.train(
                records,
                tenant=tenant,
                model_name=s.model_name,
                features=spec,
                detector=detector,
                input_schema=s.input_schema,
                trusted_types=s.trust_types,
                min_records=min_records or _default_min_records(detector),
                n_estimators=n_estimators,
                contamination=cont,
                random_state=random_state,
                thresholds=_floats(thresholds, "--thresholds"),
                calibrate=_floats(calibrate, "--calibrate"),
                alert_budget=alert_budget,
                labels=load_records(labels_path).records if labels_path else None,
                target_precision=target_precision,
                uri=s.tracking_uri,
                experiment=s.experiment_name,
                do_promote=promote,
                clock=WindowClock(s.lateness, s.state_ttl),
                entity_alerts_per_day=per_day,
                risk_by=s.risk_by,
                risk_half_life=s.risk_half_life,
            )
    except ValueError as e:
        text = str(e)
        if not (features or feature_exprs or feature_file or recipe) and \
                "is absent from every training record" in text:
            from stream.features.recipes import DEFAULT_RECIPE

            # The user named no features: say which recipe read the field, and the ways out.
            text += (f" (the default recipe, {DEFAULT_RECIPE}, reads the canonical flow "
                     "fields: name the sensor with --input-schema, map fields with --map, "
                     "or choose the features with --features or --recipe)")
        raise click.UsageError(text) from e
    if result.skipped:
        click.echo(
            f"{input_path}: left out {sum(result.skipped.values())} records the features "
            f"cannot use: {result.skipped}",
            err=True,
        )
    for note in result.warnings:
        if budget_arg == "auto" and note.startswith("--entity-alerts-per-day"):
            continue  # the default, not asked for: the consumers' --risk-threshold applies
        click.echo(f"warning: {note}", err=True)
    if as_json:
        click.echo(orjson.dumps(result.as_dict()).decode())
    else:
        click.echo(f"run id:     {result.run_id}")
        click.echo(f"model:      {result.model_name}")
        click.echo(f"version:    {result.version}{' (promoted to production)' if promote else ''}")
        click.echo(f"detector:   {result.detector} (the name above is a routing key, "
                   "--model-name)" if result.detector != "isolation_forest"
                   else f"detector:   {result.detector}")
        click.echo(f"thresholds: {', '.join(f'{t:.6g}' for t in result.thresholds)}")
        m = result.metrics
        click.echo(
            "training traffic flagged: "
            f"{m['training_rate_medium_or_above']:.2%} medium or above, "
            f"{m['training_rate_high_or_above']:.2%} high or above, "
            f"{m['training_rate_critical_or_above']:.2%} critical "
            f"(the detector's own outlier rate, score < 0: {m['training_anomaly_rate']:.2%})"
        )


@main.command()
@tenant_option("Tenant id (omit for the global model).")
@settings_options("model_name", "tracking_uri")
@click.option("--version", required=True, help="Model version to promote.")
@click.option(
    "--alias",
    type=click.Choice(["production", "challenger"]),
    default="production",
    show_default=True,
    help="challenger = shadow-scored beside production.",
)
def promote(
    tenant: str | None,
    model_name: str | None,
    tracking_uri: str | None,
    version: str,
    alias: str,
) -> None:
    """Point alias production (and stage Production) at a version; or set the challenger."""
    from stream import registry

    s = load_settings(model_name=model_name, tracking_uri=tracking_uri)
    check_registry(s.tracking_uri, s, create=None)
    name = registry.registered_name(s.model_name, tenant)
    try:
        if alias == "production":
            registry.promote(name, version, uri=s.tracking_uri)
        else:
            registry.set_challenger(name, version, uri=s.tracking_uri)
    except Exception as e:
        raise click.ClickException(f"cannot promote {name} v{version}: {e}") from e
    click.echo(f"{name} v{version} is now {alias}")


@main.command()
@tenant_option("Tenant id (omit for the global model).")
@settings_options("model_name", "tracking_uri")
def demote(tenant: str | None, model_name: str | None, tracking_uri: str | None) -> None:
    """Remove alias production (and stage Production): the tenant falls back to the global model."""
    from stream import registry

    s = load_settings(model_name=model_name, tracking_uri=tracking_uri)
    check_registry(s.tracking_uri, s, create=None)
    name = registry.registered_name(s.model_name, tenant)
    try:
        was = registry.demote(name, uri=s.tracking_uri)
    except Exception as e:
        raise click.ClickException(f"cannot demote {name}: {e}") from e
    if not was:
        raise click.ClickException(f"{name} has no production version: nothing to demote")
    versions = ", ".join(map(str, was))
    click.echo(f"{name}: version {versions} demoted; it has no production version now")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
@settings_options("tracking_uri")
@create_option
def models(as_json: bool, tracking_uri: str | None, create: bool) -> None:
    """List registered models with their production (and challenger) versions."""
    from rich.console import Console
    from rich.table import Table

    from stream import registry

    uri = load_settings(tracking_uri=tracking_uri).tracking_uri
    check_registry(uri, create=create)
    rows = registry.list_models(uri=uri)
    if as_json:
        for r in rows:
            click.echo(orjson.dumps(r).decode())
        return
    table = Table()
    for col in ("model", "production", "challenger", "latest"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["production"] or "-", r["challenger"] or "-", r["latest"] or "-")
    Console().print(table)


@main.command()
@tenant_option("Tenant id (omit for the global model).")
@click.option("--version", default=None, help="Model version [default: the production one].")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@settings_options("model_name", "tracking_uri", "trust_types")
@create_option
def describe(
    tenant: str | None,
    version: str | None,
    as_json: bool,
    model_name: str | None,
    tracking_uri: str | None,
    trust_types: tuple[str, ...],
    create: bool,
) -> None:
    """Show a model version's feature spec, detector, thresholds and what it learned."""

    s = load_settings(model_name=model_name, tracking_uri=tracking_uri, trust_types=trust_types)
    check_registry(s.tracking_uri, s, create=create)
    name, model = _model_version(s, tenant, version)
    version = model.version
    if as_json:
        click.echo(orjson.dumps({
            "model": name, "version": model.version, **model.info,
            "thresholds": model.thresholds.tolist(), "columns": list(model.spec.columns),
            "spec": model.spec.to_dict(),
        }).decode())
        return
    click.echo(f"model:      {name} v{model.version}")
    click.echo(f"detector:   {model.info.get('estimator')} (after a StandardScaler)")
    click.echo(f"trained on: input schema {model.info.get('input_schema')}")
    click.echo(f"thresholds: critical < {model.thresholds[0]:.4f} <= high < "
               f"{model.thresholds[1]:.4f} <= medium < {model.thresholds[2]:.4f} <= low")
    budget = model.info.get("entity_budget")
    if budget:
        click.echo(f"entities:   risk by {budget['by']} (half-life {budget['half_life']:g} s) "
                   f"raises an entity alert at {budget['threshold']:g}, set for at most "
                   f"{budget['per_day']:g} a day: the training traffic raised "
                   f"{budget['raised_per_day']:.2f} a day ({budget['alerts']} alerts, "
                   f"{budget['entities']} entities, {budget['days']:.2f} days)")
    else:
        click.echo("entities:   no alert budget: the consumers' --risk-threshold applies")
    click.echo(model.spec.describe())


@main.command()
@click.argument("files", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@format_option
@click.option("--map", "maps", multiple=True, metavar="TARGET=EXPR",
              help="Field mapping, as stream score takes it.")
@tenant_option("The tenant whose model is calibrated, and of the file's records (omit "
               "for the global model).")
@click.option("--version", default=None, help="Model version [default: the production one].")
@click.option(
    "--entity-alerts-per-day", type=click.FloatRange(min=0, min_open=True), required=True,
    metavar="N",
    help="Set the version's entity-alert threshold so that the files' traffic, scored by "
    "it, would raise at most N entity alerts per day (by --risk-by, with "
    "--risk-half-life).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@settings_options("model_name", "tracking_uri", "trust_types", "input_schema", "risk_by",
                  "risk_half_life", "lateness", "state_ttl")
@create_option
def calibrate(
    files: tuple[Path, ...],
    fmt: str | None,
    maps: tuple[str, ...],
    tenant: str | None,
    version: str | None,
    entity_alerts_per_day: float,
    as_json: bool,
    model_name: str | None,
    tracking_uri: str | None,
    trust_types: tuple[str, ...],
    input_schema: str | None,
    risk_by: str | None,
    risk_half_life: float | None,
    lateness: float | None,
    state_ttl: float | None,
    create: bool,
) -> None:
    """Set the entity-alert threshold of a registered version from a baseline file."""
    from stream.registry.admin import set_calibration
    from stream.tools.calibrate import calibrate as run_calibration

    s = load_settings(model_name=model_name, tracking_uri=tracking_uri,
                      trust_types=trust_types, input_schema=input_schema, risk_by=risk_by,
                      risk_half_life=risk_half_life, lateness=lateness, state_ttl=state_ttl)
    if not s.risk_by:
        raise click.UsageError("--entity-alerts-per-day needs a --risk-by field")
    check_registry(s.tracking_uri, s, create=create)
    name, model = _model_version(s, tenant, version)
    version = model.version
    budget, summary = run_calibration(list(files), model, s, entity_alerts_per_day, fmt=fmt,
                                      mapping=input_mapping(maps), tenant=tenant)
    if budget is None:
        raise click.ClickException(
            f"no alert of the {summary.scored} events scored has a readable {s.risk_by} and "
            "timestamp: nothing to calibrate on")
    set_calibration(name, version, budget.as_dict(), uri=s.tracking_uri)
    if as_json:
        click.echo(orjson.dumps({"model": name, "version": version,
                                 "entity_budget": budget.as_dict()}).decode())
        return
    click.echo(f"{name} v{version}: an entity alert at risk {budget.threshold:g} (by "
               f"{budget.by}, half-life {budget.half_life:g} s): the {summary.scored} events "
               f"raised {budget.raised_per_day:.2f} a day ({budget.alerts} alerts, "
               f"{budget.entities} entities, {budget.days:.2f} days), for at most "
               f"{budget.per_day:g}; consumers apply it at their next registry poll")
