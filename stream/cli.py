"""Command line: run, train, promote, models, broker, demo, generate, replay, score, ...

Options of ``stream run`` are generated from ``stream.config.FIELDS``, so the
flags, the environment variables and the README table never disagree.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import orjson

from stream import config, logs
from stream.config import DEFAULT_MODEL_NAME

log = logging.getLogger("stream")

F = Callable[..., Any]


def settings_options(func: F) -> F:
    """Add one ``--flag`` per ``Settings`` field (env var fallback is handled by config)."""
    for f in reversed(config.FIELDS):
        help_text = f"{f.metadata['help']} [env: {f.metadata['env']}; default: {f.default!r}]"
        if f.name == "kafka_properties":
            func = click.option(
                "-X",
                "--kafka-property",
                "kafka_properties",
                multiple=True,
                metavar="KEY=VALUE",
                help=help_text,
            )(func)
            continue
        choices = f.metadata.get("choices")
        typ: Any = click.Choice(choices) if choices else type(f.default)
        func = click.option(
            "--" + f.name.replace("_", "-"), f.name, type=typ, default=None, help=help_text
        )(func)
    return func


def load_settings(**kwargs: Any) -> config.Settings:
    try:
        return config.from_env(**kwargs)
    except ValueError as e:
        raise click.UsageError(str(e)) from e


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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

    logs.setup(
        log_format or os.environ.get("STREAM_LOG_FORMAT") or "text",
        getattr(logging, log_level.upper()),
    )


@main.command()
@settings_options
@click.option("--create-topics", is_flag=True, help="Create missing topics before consuming.")
def run(create_topics: bool, **kwargs: Any) -> None:
    """Consume flow events, score them with each tenant's production model, publish alerts."""
    from stream import service

    settings = load_settings(**kwargs)
    if kwargs.get("log_format"):  # `stream run --log-format` overrides the group-level option
        logs.setup(settings.log_format, logging.getLogger().level)
    service.serve(settings, create_missing_topics=create_topics)


def _tracking_option(func: F) -> F:
    return click.option(
        "--tracking-uri",
        envvar="MLFLOW_TRACKING_URI",
        default=config.DEFAULT_TRACKING_URI,
        show_default=True,
        help="MLflow tracking/registry URI [env: MLFLOW_TRACKING_URI].",
    )(func)


def _model_options(func: F) -> F:
    func = click.option("--tenant", default=None, help="Tenant id (omit for the global model).")(
        func
    )
    func = click.option(
        "--model-name",
        envvar="STREAM_MODEL_NAME",
        default=DEFAULT_MODEL_NAME,
        show_default=True,
        help="Base registered-model name.",
    )(func)
    return func


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
    help="Training flows: JSONL (.gz), CSV or Parquet.",
)
@_model_options
@click.option(
    "--features",
    default=",".join(("bytes_transferred", "packet_count", "connection_duration")),
    show_default=True,
    help="Comma-separated feature fields.",
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
@click.option("--promote", is_flag=True, help="Promote the new version to production.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@_tracking_option
def train(
    input_path: str,
    tenant: str | None,
    model_name: str,
    features: str,
    n_estimators: int,
    contamination: str,
    random_state: int,
    thresholds: str | None,
    calibrate: str | None,
    promote: bool,
    as_json: bool,
    tracking_uri: str,
) -> None:
    """Fit StandardScaler + IsolationForest as one pipeline; log and register it in MLflow."""
    from stream import registry
    from stream.events import valid_tenant

    if tenant is not None and not valid_tenant(tenant):
        raise click.BadParameter(
            "tenant ids are 1-64 characters of [A-Za-z0-9_.-]", param_hint="--tenant"
        )
    records = registry.read_training_file(input_path)
    if tenant is not None and any("tenant_id" in r for r in records):
        records = [r for r in records if r.get("tenant_id", tenant) == tenant]
    if not records:
        raise click.UsageError(f"no training records in {input_path} for tenant {tenant!r}")
    cont: float | str = contamination if contamination == "auto" else float(contamination)
    try:
        result = registry.train(
            records,
            tenant=tenant,
            model_name=model_name,
            features=[f.strip() for f in features.split(",") if f.strip()],
            n_estimators=n_estimators,
            contamination=cont,
            random_state=random_state,
            thresholds=_floats(thresholds, "--thresholds"),  # type: ignore[arg-type]
            calibrate=_floats(calibrate, "--calibrate"),
            uri=tracking_uri,
            do_promote=promote,
        )
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    if as_json:
        click.echo(orjson.dumps(result.as_dict()).decode())
    else:
        click.echo(f"run id:     {result.run_id}")
        click.echo(f"model:      {result.model_name}")
        click.echo(f"version:    {result.version}{' (promoted to production)' if promote else ''}")
        click.echo(f"thresholds: {', '.join(f'{t:.4f}' for t in result.thresholds)}")
        click.echo(f"training anomaly rate: {result.metrics['training_anomaly_rate']:.4f}")


@main.command()
@_model_options
@click.option("--version", required=True, help="Model version to promote.")
@click.option(
    "--alias",
    type=click.Choice(["production", "challenger"]),
    default="production",
    show_default=True,
    help="challenger = shadow-scored beside production.",
)
@_tracking_option
def promote(
    tenant: str | None, model_name: str, version: str, alias: str, tracking_uri: str
) -> None:
    """Point alias production (and stage Production) at a version; or set the challenger."""
    from stream import registry

    name = registry.registered_name(model_name, tenant)
    try:
        if alias == "production":
            registry.promote(name, version, uri=tracking_uri)
        else:
            registry.set_challenger(name, version, uri=tracking_uri)
    except Exception as e:
        raise click.ClickException(f"cannot promote {name} v{version}: {e}") from e
    click.echo(f"{name} v{version} is now {alias}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
@_tracking_option
def models(as_json: bool, tracking_uri: str) -> None:
    """List registered models with their production (and challenger) versions."""
    from rich.console import Console
    from rich.table import Table

    from stream import registry

    rows = registry.list_models(uri=tracking_uri)
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
@click.option("--port", default=9092, show_default=True, type=int)
@click.option(
    "--topics",
    default="flows,alerts,flows.dlq",
    show_default=True,
    help="Topics to create at start (comma-separated; empty for none).",
)
@click.option("--partitions", default=3, show_default=True, type=int)
def broker(port: int, topics: str, partitions: int) -> None:
    """Run the embedded Kafka-compatible broker (memory only) in the foreground."""
    import signal

    from stream.embedded import EmbeddedBroker

    b = EmbeddedBroker(port, silent=False).start()
    names = [t for t in topics.split(",") if t]
    if names:
        b.create_topics(names, partitions=partitions)
    click.echo(
        f"broker listening on {b.bootstrap} (topics: {', '.join(names) or 'none'}); Ctrl-C stops it"
    )
    signal.signal(signal.SIGTERM, lambda *_: b.stop())
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


if __name__ == "__main__":
    main()
