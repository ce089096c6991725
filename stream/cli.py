"""Command line: run, train, promote, models, broker, demo, generate, replay, score, ...

Every option that is a setting (``stream.config.FIELDS``: broker address, topics,
registry URI, model name, ``-X``, ...) is generated from its one declaration by
``settings_options``, whatever the command, so flags, environment variables,
defaults, ranges and the README table never disagree.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import orjson

from stream import config, logs

log = logging.getLogger("stream")

F = Callable[..., Any]


def settings_options(*names: str, aliases: dict[str, str] | None = None) -> Callable[[F], F]:
    """Options for the ``Settings`` fields ``names`` (every field when none is given).

    Each option's default is None ("not given"): ``load_settings`` then takes the
    environment variable, else the declared default. ``aliases`` adds a second flag to
    a field (``stream replay --topic`` for ``--input-topic``).
    """
    fields = [f for f in config.FIELDS if not names or f.name in names]
    unknown = set(names) - {f.name for f in fields}
    if unknown:
        raise ValueError(f"no such settings: {sorted(unknown)}")
    aliases = aliases or {}

    def decorate(func: F) -> F:
        for f in reversed(fields):
            default = f.default if f.default not in ("", ()) else "(empty)"
            help_text = f"{f.metadata['help']} [env: {f.metadata['env']}; default: {default}]"
            if f.name == "kafka_properties":
                func = click.option(
                    "-X", "--kafka-property", "kafka_properties", multiple=True,
                    metavar="KEY=VALUE", help=help_text,
                )(func)
            elif f.name == "trust_types":
                func = click.option(
                    "--trust-type", "trust_types", multiple=True, metavar="MODULE.TYPE",
                    help=help_text,
                )(func)
            else:
                flags = ["--" + f.name.replace("_", "-")]
                if f.name in aliases:
                    flags.append(aliases[f.name])
                func = click.option(
                    *flags, f.name, type=_click_type(f), default=None, help=help_text
                )(func)
            func.__click_params__[-1].stream_setting = True  # type: ignore[attr-defined]
        return func

    return decorate


def _click_type(f: Any) -> Any:
    """The click type of a setting: its choices, or its type with its declared range."""
    choices = f.metadata.get("choices")
    if choices:
        return click.Choice(choices)
    typ = type(f.default)
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    if typ is int and (lo is not None or hi is not None):
        return click.IntRange(lo, hi)
    if typ is float and (lo is not None or hi is not None):
        return click.FloatRange(lo, hi, min_open=bool(f.metadata.get("min_open")))
    if typ is bool:
        return click.BOOL
    return typ


def settings_usage() -> dict[str, list[str]]:
    """Setting name -> the commands that take it as an option (for the README table)."""
    used: dict[str, list[str]] = {}
    for name, command in sorted(main.commands.items()):
        for param in command.params:
            if getattr(param, "stream_setting", False) and param.name:
                used.setdefault(param.name, []).append(name)
    return used


def load_settings(**kwargs: Any) -> config.Settings:
    try:
        s = config.from_env(**kwargs)
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    if s.where:
        from stream.where import Where, WhereError

        try:
            Where.parse(s.where)
        except WhereError as e:
            raise click.BadParameter(str(e).removeprefix(f"--where {s.where!r}: "),
                                     param_hint="--where") from None
    return s


def _check_tenant(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from stream.events import valid_tenant

    if value is not None and not valid_tenant(value):
        raise click.BadParameter(
            f"{value!r}: tenant ids are 1-64 characters of [A-Za-z0-9_.-]"
        )
    return value


def _tenant_option(help_text: str) -> Callable[[F], F]:
    return click.option("--tenant", default=None, callback=_check_tenant, help=help_text)


class _Main(click.Group):
    """The command group: every expected failure is one line and an exit status.

    A broker or registry that cannot be reached: exit 3. A bad flag or value of a
    command, a setting that cannot work, a file of no known format: exit 2.
    """

    def invoke(self, ctx: click.Context) -> Any:
        from stream.failures import (
            EXIT_BAD_SETTING,
            EXIT_UNREACHABLE,
            BadSetting,
            ModelsNotLoaded,
            Unreachable,
        )

        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            # click would print the usage and a hint on lines of their own: one line instead.
            where = e.ctx.command_path if e.ctx is not None else ctx.command_path
            click.echo(f"Error: {e.format_message()} (see '{where} --help')", err=True)
            ctx.exit(e.exit_code)
        except Unreachable as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(EXIT_UNREACHABLE)
        except BadSetting as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(EXIT_BAD_SETTING)
        except ModelsNotLoaded as e:
            click.echo(f"Error: {e}", err=True)
            ctx.exit(1)
        except ValueError as e:
            from stream.sources.detect import UnknownFormat

            if not isinstance(e, UnknownFormat):
                raise
            click.echo(f"Error: {e}", err=True)
            ctx.exit(EXIT_BAD_SETTING)


def _kafka(s: config.Settings) -> None:
    """Fail fast, in one line, when the broker cannot be reached."""
    from stream.failures import require_kafka

    require_kafka(s.kafka_common(), s.kafka_timeout, s.connect_timeout)


def _registry(uri: str, s: config.Settings | None = None, *, create: bool | None = True
              ) -> None:
    """Say which registry a command uses; fail fast, in one line, when it cannot be reached
    or, for a command that reads it (``create`` False, or None without a ``--create``
    flag), when it is a SQLite file that does not exist."""
    from stream.failures import redact_uri, require_existing_registry, require_registry

    log.info("registry %s", redact_uri(uri))
    if not create:
        require_existing_registry(uri, can_create=create is False)
    require_registry(uri, (s or load_settings()).connect_timeout)


def _create_option(func: F) -> F:
    return click.option(
        "--create", "--create-registry", "create", is_flag=True,
        help="Start an empty registry when the --tracking-uri SQLite file does not exist "
        "(without it, that is an error: a wrong directory, or a mistyped path).",
    )(func)


@click.group(cls=_Main,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    help="Log format [env: STREAM_LOG_FORMAT; default: text].",
)
@click.version_option(package_name="stream")
def main(log_level: str, log_format: str | None) -> None:
    """Streaming anomaly detection for network telemetry: flows -> MLflow models -> alerts."""
    import os

    from stream.failures import mlflow_http_defaults

    # A registry that is down fails a command in seconds, not after MLflow's 4 minutes.
    mlflow_http_defaults()
    # MLflow's own INFO lines ("Updating database tables") only with --log-level DEBUG,
    # and through our handlers (so in JSON with --log-format json), not MLflow's own.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    if log_level.upper() != "DEBUG":
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        # A WARNING per HTTP retry, with the whole exception chain: the commands say what
        # failed in one line of their own (failures.brief).
        logging.getLogger("urllib3").setLevel(logging.ERROR)
    logs.setup(
        log_format or os.environ.get("STREAM_LOG_FORMAT") or "text",
        getattr(logging, log_level.upper()),
    )


@main.command()
@settings_options()
@click.option(
    "--create-topics",
    is_flag=True,
    help="Create missing topics before consuming (--topic-partitions, "
    "--topic-replication-factor).",
)
@_create_option
def run(create_topics: bool, create: bool, **kwargs: Any) -> None:
    """Consume flow events, score them with each tenant's production model, publish alerts."""
    from stream import service
    from stream.failures import redact_uri, require_existing_registry

    settings = load_settings(**kwargs)
    log.info("registry %s", redact_uri(settings.tracking_uri))
    if not create:
        require_existing_registry(settings.tracking_uri, can_create=True)
    if kwargs.get("log_format"):  # `stream run --log-format` overrides the group-level option
        logs.setup(settings.log_format, logging.getLogger().level)
    service.serve(settings, create_missing_topics=create_topics)


def _format_option(func: F) -> F:
    from stream.sources import FORMATS

    return click.option(
        "--format",
        "fmt",
        default=None,
        type=click.Choice(FORMATS),
        help="Input format [default: from suffix and content].",
    )(func)


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
@_format_option
@click.option(
    "--map",
    "maps",
    multiple=True,
    metavar="TARGET=EXPR",
    help="Field mapping, as replay, score and evaluate read files: EXPR is a column or a "
    "sum of columns (a+b). Zeek conn.log fields are mapped automatically.",
)
@_tenant_option("Tenant id (omit for the global model).")
@settings_options("model_name", "tracking_uri", "experiment_name", "input_schema", "trust_types",
                  "where", "lateness", "state_ttl")
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
    promote: bool,
    as_json: bool,
) -> None:
    """Fit a feature spec and StandardScaler + detector; log and register it in MLflow."""
    from stream import registry
    from stream.registry.training import WindowClock
    from stream.sources import load_records

    s = load_settings(
        model_name=model_name, tracking_uri=tracking_uri, experiment_name=experiment_name,
        input_schema=input_schema, trust_types=trust_types, where=where, lateness=lateness,
        state_ttl=state_ttl,
    )
    spec = _feature_spec(features, feature_exprs, feature_file, recipe, timestamp_field)
    _registry(s.tracking_uri, s)
    # The readers of replay and score: every format, bad lines reported. A sensor schema
    # named explicitly maps the raw records (the Zeek mapping is the default for Zeek files).
    loaded = load_records(input_path, fmt=fmt, mapping=_mapping(maps),
                          raw=s.input_schema != "native")
    records = loaded.records
    # Here --tenant filters (replay and score set tenant_id instead): a file with tenant
    # ids trains on that tenant's rows; a file without them is all that tenant's.
    if tenant is not None and any("tenant_id" in r for r in records):
        records = [r for r in records if r.get("tenant_id", tenant) == tenant]
    if s.where and records:
        # The records the consumer would score, as it reads them (the sensor schema).
        from stream.features import RecordColumns
        from stream.sources.view import columns_for
        from stream.where import Where

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
@_tenant_option("Tenant id (omit for the global model).")
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
    _registry(s.tracking_uri, s, create=None)
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
@_tenant_option("Tenant id (omit for the global model).")
@settings_options("model_name", "tracking_uri")
def demote(tenant: str | None, model_name: str | None, tracking_uri: str | None) -> None:
    """Remove alias production (and stage Production): the tenant falls back to the global model."""
    from stream import registry

    s = load_settings(model_name=model_name, tracking_uri=tracking_uri)
    _registry(s.tracking_uri, s, create=None)
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
@_create_option
def models(as_json: bool, tracking_uri: str | None, create: bool) -> None:
    """List registered models with their production (and challenger) versions."""
    from rich.console import Console
    from rich.table import Table

    from stream import registry

    uri = load_settings(tracking_uri=tracking_uri).tracking_uri
    _registry(uri, create=create)
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
@_tenant_option("Tenant id (omit for the global model).")
@click.option("--version", default=None, help="Model version [default: the production one].")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@settings_options("model_name", "tracking_uri", "trust_types")
@_create_option
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
    from stream import registry

    s = load_settings(model_name=model_name, tracking_uri=tracking_uri, trust_types=trust_types)
    _registry(s.tracking_uri, s, create=create)
    name = registry.registered_name(s.model_name, tenant)
    try:
        version = version or registry.production_version(name, uri=s.tracking_uri)
        if version is None:
            raise click.ClickException(f"{name} has no production version (give --version)")
        model = registry.load_version(name, version, uri=s.tracking_uri, trusted=s.trust_types)
    except registry.ModelLoadError as e:
        raise click.ClickException(str(e)) from e
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
    click.echo(model.spec.describe())


@main.command()
@click.option("--port", default=9092, show_default=True, type=int)
@click.option(
    "--topics",
    default="flows,alerts,flows.dlq,alerts.feedback,alerts.incidents",
    show_default=True,
    help="Topics to create at start (comma-separated; empty for none): by default the "
    "input, alert, dead-letter, feedback and incident topics of the default settings.",
)
@click.option("--partitions", default=3, show_default=True, type=int)
def broker(port: int, topics: str, partitions: int) -> None:
    """Run the embedded Kafka-compatible broker (memory only) in the foreground."""
    import signal

    from stream.embedded import EmbeddedBroker, PortInUse
    from stream.failures import BadSetting

    try:
        b = EmbeddedBroker(port, silent=False).start()
    except PortInUse as e:
        raise BadSetting(f"--port {port}: cannot listen there ({e}: is a broker running "
                         "already?)") from None
    names = [t for t in topics.split(",") if t]
    if names:
        b.create_topics(names, partitions=partitions)
    click.echo(
        f"broker listening on {b.bootstrap} (topics: {', '.join(names) or 'none'}); Ctrl-C stops it"
    )
    # The handler only signals the broker; the wait below returns once it has exited.
    signal.signal(signal.SIGTERM, lambda *_: b.terminate())
    try:
        b.wait()
    except KeyboardInterrupt:
        pass
    finally:
        b.stop()


@main.command()
@click.option("--events", default=20000, show_default=True, type=click.IntRange(100, 10_000_000))
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the local registry goes [default: a temporary directory].",
)
@click.option("--seed", default=7, show_default=True, type=int)
def demo(events: int, workdir: str | None, seed: int) -> None:
    """Everything locally: embedded broker, SQLite registry, trained models, traffic, alerts."""
    from stream.demo import run_demo

    if workdir:
        run_demo(Path(workdir), events=events, seed=seed)
        return
    with tempfile.TemporaryDirectory(prefix="stream-demo-") as tmp:
        run_demo(Path(tmp), events=events, seed=seed)


@main.command()
@click.option("--events", default=10000, show_default=True, type=click.IntRange(1, 100_000_000))
@click.option("--tenants", default="acme,globex,initech", show_default=True)
@click.option("--seed", default=42, show_default=True, type=int)
@click.option("--attack-rate", default=0.02, show_default=True, type=click.FloatRange(0, 1))
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False),
    default="-",
    help="JSONL file (.gz ok) or - for stdout.",
)
def generate(events: int, tenants: str, seed: int, attack_rate: float, output: str) -> None:
    """Synthetic labelled flows (port scans, exfiltration, DDoS bursts, beaconing)."""
    from stream.generate import generate_flows, write_jsonl

    names = [t for t in tenants.split(",") if t]
    flows = generate_flows(events, names, seed=seed, attack_rate=attack_rate)
    if output == "-":
        out = sys.stdout.buffer
        for f in flows:
            out.write(orjson.dumps(f) + b"\n")
        return
    n = write_jsonl(Path(output), flows)
    click.echo(f"wrote {n} flows to {output}", err=True)


def _replay_inputs(func: F) -> F:
    func = click.argument(
        "files",
        nargs=-1,
        required=True,
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
    )(func)
    func = _format_option(func)
    func = click.option(
        "--map",
        "maps",
        multiple=True,
        metavar="TARGET=EXPR",
        help="Field mapping: EXPR is a column or a sum of columns (a+b). "
        "Zeek conn.log fields are mapped automatically.",
    )(func)
    func = _tenant_option("Set or override tenant_id.")(func)
    return func


def _mapping(maps: tuple[str, ...]) -> Any:
    from stream.sources import MappingError, parse_mapping

    try:
        return parse_mapping(maps) if maps else None
    except MappingError as e:
        raise click.BadParameter(str(e), param_hint="--map") from e


@main.command()
@_replay_inputs
@settings_options(
    "bootstrap_servers", "input_topic", "kafka_properties", "input_schema",
    aliases={"input_topic": "--topic"},
)
@click.option(
    "--speed",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Keep recorded gaps (from --timestamp-field), X times faster.",
)
@click.option(
    "--rate", type=click.FloatRange(min=0, min_open=True), default=None, help="Pace at N events/s."
)
@click.option("--max", "as_fast", is_flag=True, help="As fast as the broker takes them (default).")
@click.option("--timestamp-field", default="timestamp", show_default=True)
@click.option("--strict", is_flag=True, help="Abort on the first bad line.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def replay(
    files: tuple[Path, ...],
    fmt: str | None,
    maps: tuple[str, ...],
    tenant: str | None,
    bootstrap_servers: str | None,
    input_topic: str | None,
    kafka_properties: tuple[str, ...],
    input_schema: str | None,
    speed: float | None,
    rate: float | None,
    as_fast: bool,
    timestamp_field: str,
    strict: bool,
    no_progress: bool,
) -> None:
    """Produce recorded flows (JSONL/.gz, CSV, Parquet, Zeek conn.log) to the input topic."""
    from stream import replay as rp

    s = load_settings(
        bootstrap_servers=bootstrap_servers,
        input_topic=input_topic,
        kafka_properties=kafka_properties,
        input_schema=input_schema,
    )
    if sum(x is not None and x is not False for x in (speed, rate, as_fast or None)) > 1:
        raise click.UsageError("choose one of --speed, --rate, --max")
    _kafka(s)
    pacing = (
        rp.Pacing.at_speed(speed)
        if speed
        else rp.Pacing.at_rate(rate)
        if rate
        else rp.Pacing.unlimited()
    )
    try:
        summary = rp.replay(
            list(files),
            bootstrap=s.bootstrap_servers,
            topic=s.input_topic,
            pacing=pacing,
            tenant=tenant,
            mapping=_mapping(maps),
            strict=strict,
            fmt=fmt,
            progress=not no_progress,
            producer_config=dict(s.kafka_properties),
            # A sensor schema named explicitly: records go out in the sensor's own form,
            # for a consumer run with the same --input-schema.
            raw=s.input_schema != "native",
            timestamp_field=timestamp_field,
        )
    except rp.ReplayError as e:
        raise click.ClickException(str(e)) from e
    for path, line, reason in summary.rejected[:50]:
        click.echo(f"rejected {path}:{line}: {reason}", err=True)
    if len(summary.rejected) > 50:
        click.echo(f"... and {len(summary.rejected) - 50} more rejected lines", err=True)
    click.echo(
        f"sent {summary.sent} events in {summary.elapsed_s:.1f}s ({summary.rate:,.0f}/s); "
        f"rejected {len(summary.rejected)} lines; delivery failures {summary.delivery_failures}",
        err=True,
    )
    if summary.delivery_failures:
        sys.exit(1)


def _offline_table(**given: Any) -> Any:
    """Settings and a refreshed model table for ``score`` and ``evaluate``."""
    from stream import service
    from stream.failures import redact_uri

    settings = load_settings(**given)
    _registry(settings.tracking_uri, settings, create=None)
    if settings.tenant_source.kind in ("key", "header"):
        raise click.BadParameter(
            "files have no message keys or headers: use field:NAME or const:TENANT",
            param_hint="--tenant-from",
        )
    table = service.build_table(settings)
    view = table.refresh()
    if not view.production:
        raise click.ClickException(
            f"no production model named {settings.model_name}[_TENANT] in "
            f"{redact_uri(settings.tracking_uri)}"
        )
    return settings, table


@main.command()
@_replay_inputs
@click.option("--output", "-o", default="-", show_default=True, help="Alerts JSONL file or -.")
@settings_options(
    "min_level", "model_name", "tracking_uri", "max_message_bytes", "input_schema",
    "tenant_from", "trust_types", "where", "risk_by", "risk_half_life", "risk_threshold",
)
@click.option(
    "--dead-letters",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write rejected records (with reasons) to this JSONL file.",
)
@click.option(
    "--entity-alerts",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write entity alerts (alerts whose entity's risk is at or above --risk-threshold, "
    "as the entity alert topic gets them) to this JSONL file.",
)
def score(
    files: tuple[Path, ...],
    fmt: str | None,
    maps: tuple[str, ...],
    tenant: str | None,
    output: str,
    min_level: str | None,
    model_name: str | None,
    tracking_uri: str | None,
    max_message_bytes: int | None,
    input_schema: str | None,
    tenant_from: str | None,
    trust_types: tuple[str, ...],
    where: str | None,
    risk_by: str | None,
    risk_half_life: float | None,
    risk_threshold: float | None,
    dead_letters: str | None,
    entity_alerts: str | None,
) -> None:
    """Score files with the production models, no broker: alerts as JSON lines."""
    from stream.offline import score_to_file

    settings, table = _offline_table(
        min_level=min_level, model_name=model_name, tracking_uri=tracking_uri,
        max_message_bytes=max_message_bytes, input_schema=input_schema,
        tenant_from=tenant_from, trust_types=trust_types, where=where, risk_by=risk_by,
        risk_half_life=risk_half_life, risk_threshold=risk_threshold,
    )
    summary = score_to_file(
        list(files),
        table,
        settings,
        output,
        dead_letters=dead_letters,
        entity_alerts=entity_alerts,
        min_level=settings.min_level,
        fmt=fmt,
        mapping=_mapping(maps),
        tenant=tenant,
    )
    table.stop()
    click.echo(
        f"records {summary.records}: scored {summary.scored}, alerts {summary.alerts} "
        f"{dict(summary.alerts_by_level)}, dead letters {sum(summary.dead_letters.values())} "
        f"{dict(summary.dead_letters)}, unreadable lines {len(summary.unreadable)}"
        + (f", left out by --where {summary.filtered}" if summary.filtered else ""),
        err=True,
    )
    _report_dead_letters(summary, tenant_given=tenant is not None)
    _report_late(summary)
    _nothing_scored(summary, files)


def _report_dead_letters(summary: Any, tenant_given: bool) -> None:
    """Per reason, what its most common detail says (the feature and field behind a
    missing_feature, say), and how to give files a tenant when they have none."""
    for reason, _n in summary.dead_letters.most_common():
        top = [(d, k) for (r, d), k in summary.details.most_common() if r == reason][:2]
        said = "; ".join(f"{d or '(no detail)'} x{k}" for d, k in top)
        click.echo(f"  {reason}: {said}", err=True)
    missing = sum(k for (r, d), k in summary.details.items()
                  if r == "invalid_tenant" and d.startswith("missing"))
    if missing and not tenant_given:
        click.echo(f"  {missing} records carry no tenant: give --tenant NAME (or "
                   "--tenant-from const:NAME, or field:NAME for the field that holds it)",
                   err=True)


def _report_late(summary: Any) -> None:
    """One line on stderr when some records were late (by tenant, the largest few)."""
    if not summary.late:
        return
    from stream.accounting import LATE_WHAT

    top = dict(summary.late.most_common(10))
    more = f" and {len(summary.late) - len(top)} more" if len(summary.late) > len(top) else ""
    click.echo(f"{LATE_WHAT}: {sum(summary.late.values())} records {top}{more}", err=True)


def _nothing_scored(summary: Any, files: tuple[Path, ...]) -> None:
    """Exit 1, saying why, when not one record could be scored (garbage never passes)."""
    if summary.scored:
        return
    names = ", ".join(str(f) for f in files)
    if summary.records == 0:
        why = (f"{len(summary.unreadable)} unreadable lines" if summary.unreadable
               else "the files hold no records")
        first = f" (first: line {summary.unreadable[0][1]}: {summary.unreadable[0][2]})" \
            if summary.unreadable else ""
        raise click.ClickException(f"no record of {names} could be read: {why}{first}")
    if not summary.dead_letters:
        raise click.ClickException(
            f"none of the {summary.records} records of {names} could be scored: --where left "
            f"out {summary.filtered}")
    reasons = ", ".join(f"{r} {n}" for r, n in summary.dead_letters.most_common())
    top_reason = summary.dead_letters.most_common(1)[0][0]
    top = next((d for (r, d), _k in summary.details.most_common() if r == top_reason), "")
    hint = f" ({top})" if top else ""
    if top_reason == "invalid_tenant" and top.startswith("missing"):
        hint = " (the records carry no tenant: give --tenant NAME, or --tenant-from const:NAME)"
    raise click.ClickException(
        f"none of the {summary.records} records of {names} could be scored: {reasons}{hint}"
    )


@main.command()
@_replay_inputs
@click.option("--label-field", required=True, help="Field holding the ground truth.")
@click.option(
    "--positive",
    multiple=True,
    help="Label values that mean 'attack' (repeatable) [default: anything but "
    "0/false/empty or a label with the word normal, benign or background in it].",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Also write one self-contained HTML page: ROC and "
              "precision-recall curves, recall per label value at the alert threshold and "
              "at 1% false positives, anomaly histograms per label value.")
@settings_options(
    "model_name", "tracking_uri", "max_message_bytes", "input_schema", "tenant_from",
    "trust_types", "where",
)
def evaluate(
    files: tuple[Path, ...],
    fmt: str | None,
    maps: tuple[str, ...],
    tenant: str | None,
    label_field: str,
    positive: tuple[str, ...],
    as_json: bool,
    report_path: Path | None,
    model_name: str | None,
    tracking_uri: str | None,
    max_message_bytes: int | None,
    input_schema: str | None,
    tenant_from: str | None,
    trust_types: tuple[str, ...],
    where: str | None,
) -> None:
    """ROC-AUC, average precision, precision/recall per threat level, per tenant and overall."""
    from stream import evaluate as ev
    from stream.offline import collect_for_evaluation

    settings, table = _offline_table(
        model_name=model_name, tracking_uri=tracking_uri, max_message_bytes=max_message_bytes,
        input_schema=input_schema, tenant_from=tenant_from, trust_types=trust_types,
        where=where,
    )
    tenants, scores, levels, raw, summary = collect_for_evaluation(
        list(files), table, settings, label_field, fmt=fmt, mapping=_mapping(maps), tenant=tenant
    )
    table.stop()
    _report_dead_letters(summary, tenant_given=tenant is not None)
    _report_late(summary)
    _nothing_scored(summary, files)
    if all(v is None for v in raw):
        raise click.BadParameter(
            f"no scored record has a field {label_field!r}: nothing to evaluate against",
            param_hint="--label-field")
    labels = ev.labels_from_field(raw, list(positive) or None)
    if not labels.any():
        values = sorted({str(v) for v in raw if v is not None})[:8]
        click.echo(f"warning: no record counts as an attack in {label_field!r} (values seen: "
                   f"{', '.join(values)}{', ...' if len(values) == 8 else ''}); give the "
                   "attack values with --positive", err=True)
    result = ev.evaluate(tenants, scores, levels, labels)
    if report_path is not None:
        from stream.report import html_report

        page = html_report(result, tenants, scores, levels, labels,
                           ["" if v is None else str(v) for v in raw],
                           title=f"stream evaluate: {', '.join(p.name for p in files)}",
                           label_field=label_field)
        try:
            report_path.write_text(page, encoding="utf-8")
        except OSError as e:
            raise click.BadParameter(f"cannot write {report_path}: {e.strerror or e}",
                                     param_hint="--report") from None
        click.echo(f"report: {report_path}", err=True)
    if as_json:
        click.echo(orjson.dumps(result).decode())
    else:
        click.echo(ev.format_report(result))
        click.echo(
            f"scored {summary.scored} of {summary.records} records; dead letters "
            f"{dict(summary.dead_letters)}",
            err=True,
        )


@main.group(invoke_without_command=True)
@settings_options(
    "bootstrap_servers", "alert_topic", "incident_topic", "feedback_topic", "dlq_topic",
    "kafka_properties", "metrics_port", "metrics_host",
)
@click.option("--export", "export_path", type=click.Path(dir_okay=False), default=None,
              help="Write the reviewed alerts' events as JSONL with label and verdict "
              "(for stream evaluate --label-field label and stream train --labels).")
@click.option("--follow", "-f", is_flag=True,
              help="Keep reading feedback (with --metrics-port: serve the precision).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.option("--require-tenant", is_flag=True,
              help="Refuse verdicts that do not name the alert's tenant_id (those that name "
              "another tenant are refused anyway).")
@click.pass_context
def feedback(
    ctx: click.Context,
    bootstrap_servers: str | None,
    alert_topic: str | None,
    incident_topic: str | None,
    feedback_topic: str | None,
    dlq_topic: str | None,
    kafka_properties: tuple[str, ...],
    metrics_port: int | None,
    metrics_host: str | None,
    export_path: str | None,
    follow: bool,
    as_json: bool,
    require_tenant: bool,
) -> None:
    """Join analyst verdicts to alerts: precision per tenant, and a labelled export.

    ``stream feedback add`` gives a verdict."""
    from stream import feedback as fb

    s = load_settings(
        bootstrap_servers=bootstrap_servers, alert_topic=alert_topic,
        incident_topic=incident_topic, feedback_topic=feedback_topic, dlq_topic=dlq_topic,
        kafka_properties=kafka_properties, metrics_port=metrics_port, metrics_host=metrics_host,
    )
    if ctx.invoked_subcommand is not None:
        ctx.obj = s  # the subcommand writes with these settings
        return
    _kafka(s)
    update = None
    if s.metrics_port:
        update = fb.serve_metrics(s.metrics_port, s.metrics_host)
    from stream.failures import stop_on_signals

    try:
        with stop_on_signals() as stopped:
            book = fb.run(s, feedback_topic=s.feedback_topic, incident_topic=s.incident_topic,
                          follow=follow, on_update=update, should_stop=stopped.is_set,
                          require_tenant=require_tenant)
    except RuntimeError as e:
        raise click.ClickException(str(e)) from e
    except KeyboardInterrupt:
        return
    report = {"per_tenant": book.per_tenant(), "unknown_ids": book.unknown,
              "malformed": book.malformed, "other_tenant": book.mismatched}
    if export_path:
        with open(export_path, "wb") as out:
            n = 0
            for rec in book.labelled():
                out.write(orjson.dumps(rec) + b"\n")
                n += 1
        report["exported"] = n
    if as_json:
        click.echo(orjson.dumps(report).decode())
        return
    click.echo(f"{'tenant':<16}{'alerts':>8}{'reviewed':>10}{'true pos':>10}{'false pos':>11}"
               f"{'benign':>8}{'precision':>11}")
    for tenant, row in book.per_tenant().items():
        p = "-" if row["precision"] is None else f"{row['precision']:.2f}"
        click.echo(f"{tenant:<16}{row['alerts']:>8}{row['reviewed']:>10}"
                   f"{row['true_positive']:>10}{row['false_positive']:>11}{row['benign']:>8}"
                   f"{p:>11}")
    exported = f"; exported {report['exported']} labelled events" if export_path else ""
    click.echo(f"unknown ids skipped: {book.unknown}; another tenant's (skipped): "
               f"{book.mismatched}; malformed (dead-lettered): {book.malformed}{exported}")


@feedback.command("add")
@click.option("--alert-id", default=None, help="The alert the verdict is about.")
@click.option("--incident-id", default=None,
              help="Or the incident: the verdict applies to every alert it lists.")
@click.option("--verdict", required=True, type=click.Choice(["true_positive",
              "false_positive", "benign"]))
@click.option("--note", default="", help="Why, for whoever reads the verdict later.")
@click.option("--analyst", default="", help="Who gives it.")
@_tenant_option("The alert's tenant: the verdict applies only if the alert is this tenant's.")
@click.pass_obj
def feedback_add(s: config.Settings, alert_id: str | None, incident_id: str | None,
                 verdict: str, note: str, analyst: str, tenant: str | None) -> None:
    """Give one verdict: written to the feedback topic, as `stream feedback` reads it."""
    from stream.feedback import write_verdict

    if (alert_id is None) == (incident_id is None):
        raise click.UsageError("give exactly one of --alert-id and --incident-id")
    _kafka(s)
    doc = {"alert_id": alert_id} if alert_id else {"incident_id": incident_id}
    doc.update({"verdict": verdict, **({"note": note} if note else {}),
                **({"analyst": analyst} if analyst else {}),
                **({"tenant_id": tenant} if tenant else {})})
    try:
        where = write_verdict(s, doc)
    except RuntimeError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"{verdict} on {alert_id or incident_id}: written to {where}")


@main.command("dead-letters")
@settings_options("bootstrap_servers", "dlq_topic", "kafka_properties",
                  aliases={"dlq_topic": "--topic"})
@click.option("--follow", "-f", is_flag=True, help="Keep reading new dead letters.")
@click.option("--reason", "reasons", multiple=True, help="Only these reasons (repeatable).")
@click.option("--summary", is_flag=True, help="Counts per reason only.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines (for piping).")
@click.option("--redrive", is_flag=True,
              help="Send the dead letters of the --reason(s) given back to the topic they came "
              "from (original value, key and headers), once: a consumer group (--group) "
              "remembers how far it got.")
@click.option("--to", "redrive_to", default=None, metavar="TOPIC",
              help="With --redrive: send them to this topic instead.")
@click.option("--group", "redrive_group", default="stream-redrive", show_default=True,
              help="With --redrive: the consumer group that remembers what was sent.")
def dead_letters_cmd(
    bootstrap_servers: str | None,
    dlq_topic: str | None,
    kafka_properties: tuple[str, ...],
    follow: bool,
    reasons: tuple[str, ...],
    summary: bool,
    as_json: bool,
    redrive: bool,
    redrive_to: str | None,
    redrive_group: str,
) -> None:
    """Show the dead-letter topic: reason, detail, where each record came from, a preview."""
    from collections import Counter

    from stream.subscribe import dead_letter_row, read_messages

    s = load_settings(bootstrap_servers=bootstrap_servers, dlq_topic=dlq_topic,
                      kafka_properties=kafka_properties)
    if redrive:
        _redrive(s, reasons, redrive_to, redrive_group, as_json)
        return
    _kafka(s)
    from stream.failures import stop_on_signals

    counts: Counter[str] = Counter()
    stack = contextlib.ExitStack()
    stopped = stack.enter_context(stop_on_signals())
    try:
        for m in read_messages(s.bootstrap_servers, s.dlq_topic, follow=follow,
                               from_beginning=True, extra=dict(s.kafka_properties),
                               should_stop=stopped.is_set):
            row = dead_letter_row(m)
            if reasons and row["reason"] not in reasons:
                continue
            counts[row["reason"]] += 1
            if summary:
                continue
            if as_json:
                click.echo(orjson.dumps(row).decode())
            else:
                click.echo(f"{row['reason']:<22} {row['source']:<28} {row['detail'][:60]:<60} "
                           f"{row['preview']}")
    except RuntimeError as e:
        raise click.ClickException(str(e)) from e
    except KeyboardInterrupt:
        pass
    finally:
        stack.close()
    if summary and as_json:
        click.echo(orjson.dumps(dict(counts)).decode())
    elif summary or not as_json:
        for reason, n in counts.most_common():
            click.echo(f"{n:>8}  {reason}", err=not summary)
        click.echo(f"{sum(counts.values())} dead letters", err=not summary)


def _redrive(s: config.Settings, reasons: tuple[str, ...], to: str | None, group: str,
             as_json: bool) -> None:
    from stream.reasons import REASONS

    if not reasons:
        raise click.UsageError("--redrive needs the --reason(s) to send back (e.g. "
                               "--reason no_model): most dead letters would only come back")
    unknown = sorted(set(reasons) - set(REASONS.values()))
    if unknown:
        raise click.BadParameter(f"{', '.join(unknown)}: not a dead-letter reason (known: "
                                 f"{', '.join(sorted(set(REASONS.values()) - {'ok'}))})",
                                 param_hint="--reason")
    _kafka(s)
    from stream.failures import stop_on_signals
    from stream.redrive import redrive

    with stop_on_signals() as stopped:
        try:
            done = redrive(s.kafka_common(), s.dlq_topic, reasons, group=group, to=to,
                           should_stop=stopped.is_set)
        except RuntimeError as e:
            raise click.ClickException(str(e)) from e
    if as_json:
        click.echo(orjson.dumps({"sent": dict(done.sent), "skipped": dict(done.skipped)}).decode())
        return
    where = to or "the topics they came from"
    click.echo(f"sent back to {where}: {sum(done.sent.values())} {dict(done.sent)}; left on "
               f"{s.dlq_topic}: {sum(done.skipped.values())} {dict(done.skipped)}")


@main.command()
@settings_options(
    "bootstrap_servers", "alert_topic", "kafka_properties", aliases={"alert_topic": "--topic"}
)
@click.option("--follow", "-f", is_flag=True,
              help="Keep reading new alerts (from the end of the topic, unless "
              "--from-beginning).")
@click.option("--from-beginning", is_flag=True,
              help="With --follow: start at the oldest alert (without --follow, every alert "
              "on the topic is read anyway).")
@_tenant_option("Only this tenant's alerts.")
@click.option(
    "--min-level",
    "show_level",
    type=click.Choice(config.LEVELS),
    default="low",
    show_default=True,
    help="Only alerts at this level or above.",
)
@click.option("--summary", is_flag=True, help="Counts per tenant and level over the read.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines (for piping).")
def alerts(
    bootstrap_servers: str | None,
    alert_topic: str | None,
    kafka_properties: tuple[str, ...],
    follow: bool,
    from_beginning: bool,
    tenant: str | None,
    show_level: str,
    summary: bool,
    as_json: bool,
) -> None:
    """Print alerts (or the incidents of --topic alerts.incidents) as a table, or as JSON
    lines: every record on the topic, or with --follow the new ones as they come."""
    from collections import Counter

    from rich.console import Console

    from stream.failures import stop_on_signals
    from stream.subscribe import (
        LEVEL_STYLE,
        entity_row,
        incident_row,
        is_entity_alert,
        is_incident,
        matches,
        printable,
        read_alerts,
        row,
    )

    console = Console()
    shown = 0
    counts: Counter[tuple[str, str]] = Counter()
    # An incident topic holds every state of an incident: without --follow, its latest.
    latest: dict[str, dict[str, Any]] = {}
    header = ""
    stack = contextlib.ExitStack()

    def show(rec: dict[str, Any], incident: bool) -> None:
        nonlocal header
        if as_json:
            sys.stdout.buffer.write(orjson.dumps(rec) + b"\n")
            sys.stdout.flush()
            return
        entity = is_entity_alert(rec)
        if not header:
            header = (_ENTITY_HEADER if entity else _INCIDENT_HEADER if incident
                      else _ALERT_HEADER)
            console.print(header, style="bold", markup=False)
        if entity:
            t, ten, lv, rk, ent, st, aid = (printable(c) for c in entity_row(rec))
            console.print(f"{t:<25} {ten:<12} {lv:<9} {rk:>8} {ent:<34} {st:<8} {aid}",
                          style=LEVEL_STYLE.get(lv, ""), highlight=False, markup=False)
            return
        cells = [printable(c) for c in (incident_row(rec) if incident else row(rec))]
        if incident:
            t, ten, lv, sc, ent, st, n, lead, iid = cells
            text = f"{t:<25} {ten:<12} {lv:<9} {sc:>8} {ent:<30} {st:<7} {n:>6} {lead:<24} {iid}"
        else:
            t, ten, lv, sc, route, ver, why, iid = cells
            text = f"{t:<25} {ten:<12} {lv:<9} {sc:>8} {route:<35} {ver:<6} {why:<26} {iid}"
        # Data is never markup: a field holding "[/x]" prints as it is.
        console.print(text, style=LEVEL_STYLE.get(cells[2], ""), highlight=False, markup=False)

    try:
        s = load_settings(
            bootstrap_servers=bootstrap_servers,
            alert_topic=alert_topic,
            kafka_properties=kafka_properties,
        )
        _kafka(s)
        stopped = stack.enter_context(stop_on_signals())
        stream = read_alerts(
            s.bootstrap_servers,
            s.alert_topic,
            follow=follow,
            # Without --follow the topic is read whole: a tail read while alerts are being
            # written would be an arbitrary part of them (and --summary wrong).
            from_beginning=from_beginning or summary or not follow,
            extra=dict(s.kafka_properties),
            should_stop=stopped.is_set,
        )
        for alert in stream:
            if not matches(alert, tenant, show_level):
                continue
            incident = is_incident(alert) or is_entity_alert(alert)
            if incident and not follow:
                latest[str(alert.get("incident_id") or alert.get("entity_alert_id"))] = alert
                continue
            shown += 1
            if summary:
                counts[(str(alert.get("tenant_id")), str(alert.get("threat_level")))] += 1
                continue
            show(alert, incident)
    except RuntimeError as e:
        raise click.ClickException(str(e)) from e
    except KeyboardInterrupt:
        pass
    finally:
        stack.close()
    # Incidents by when they were last seen; entity alerts highest risk first, as an
    # analyst works a queue.
    ordered = (sorted(latest.values(), key=lambda r: -float(r.get("risk") or 0.0))
               if latest and all(is_entity_alert(r) for r in latest.values())
               else sorted(latest.values(), key=lambda r: str(r.get("last_seen", ""))))
    for inc in ordered:
        shown += 1
        if summary:
            counts[(str(inc.get("tenant_id")), str(inc.get("threat_level")))] += 1
        else:
            show(inc, True)
    what = ("entity alerts" if latest and all(is_entity_alert(r) for r in latest.values())
            else "incidents" if latest else "alerts")
    if summary:
        _print_summary(counts, as_json)
    elif not as_json:
        console.print(f"{shown} {what}", style="dim", markup=False)


_ALERT_HEADER = ("time                      tenant       level     score    "
                 "src -> dst                          model  why (spreads from normal)  "
                 "incident")
_ENTITY_HEADER = ("last event (UTC)          tenant       level         risk "
                  "entity                             status   last alert")
_INCIDENT_HEADER = ("last seen                 tenant       level     min score "
                    "entity                         status  alerts leading feature        "
                    "incident")


def _print_summary(counts: Any, as_json: bool) -> None:
    """Alerts per tenant and level: a table, or one JSON object."""
    levels = list(reversed(config.LEVELS))
    per: dict[str, dict[str, int]] = {}
    for (t, lv), n in counts.items():
        per.setdefault(t, dict.fromkeys(levels, 0))[lv] = n
    if as_json:
        click.echo(orjson.dumps(per).decode())
        return
    click.echo(f"{'tenant':<20}" + "".join(f"{lv:>10}" for lv in levels) + f"{'total':>10}")
    for t in sorted(per):
        row = per[t]
        click.echo(f"{t:<20}" + "".join(f"{row[lv]:>10}" for lv in levels)
                   + f"{sum(row.values()):>10}")


if __name__ == "__main__":
    main()
