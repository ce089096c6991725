"""``stream generate``, ``replay``, ``score`` and ``evaluate``: recorded traffic, into a topic
or scored offline.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import orjson

from stream.cli.base import (
    F,
    check_kafka,
    check_registry,
    format_option,
    input_mapping,
    load_settings,
    main,
    settings_options,
    tenant_option,
)


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
    func = format_option(func)
    func = click.option(
        "--map",
        "maps",
        multiple=True,
        metavar="TARGET=EXPR",
        help="Field mapping: EXPR is a column or a sum of columns (a+b). "
        "Zeek conn.log fields are mapped automatically.",
    )(func)
    func = tenant_option("Set or override tenant_id.")(func)
    return func


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
    from stream.tools import replay as rp

    s = load_settings(
        bootstrap_servers=bootstrap_servers,
        input_topic=input_topic,
        kafka_properties=kafka_properties,
        input_schema=input_schema,
    )
    if sum(x is not None and x is not False for x in (speed, rate, as_fast or None)) > 1:
        raise click.UsageError("choose one of --speed, --rate, --max")
    check_kafka(s)
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
            mapping=input_mapping(maps),
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
    from stream.consumer import service
    from stream.ops.failures import redact_uri

    settings = load_settings(**given)
    check_registry(settings.tracking_uri, settings, create=None)
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
    "emit_suppressed", "incident_by", "dedup_window",
)
@click.option(
    "--suppressions",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Suppression rules in force, as JSON lines (what stream suppress list --json "
    "prints).",
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
    emit_suppressed: bool | None,
    incident_by: str | None,
    dedup_window: float | None,
    suppressions: Path | None,
    dead_letters: str | None,
    entity_alerts: str | None,
) -> None:
    """Score files with the production models, no broker: alerts as JSON lines."""
    from stream.outcomes.suppress import RuleError, read_rules
    from stream.tools.offline import score_to_file

    rules = None
    if suppressions is not None:
        try:
            rules = read_rules(suppressions.read_bytes().splitlines(), str(suppressions))
        except RuleError as e:
            raise click.BadParameter(str(e), param_hint="--suppressions") from e

    settings, table = _offline_table(
        min_level=min_level, model_name=model_name, tracking_uri=tracking_uri,
        max_message_bytes=max_message_bytes, input_schema=input_schema,
        tenant_from=tenant_from, trust_types=trust_types, where=where, risk_by=risk_by,
        risk_half_life=risk_half_life, risk_threshold=risk_threshold,
        emit_suppressed=emit_suppressed, incident_by=incident_by, dedup_window=dedup_window,
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
        mapping=input_mapping(maps),
        tenant=tenant,
        rules=rules,
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
    from stream.ops.accounting import LATE_WHAT

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
    from stream.tools import evaluate as ev
    from stream.tools.offline import collect_for_evaluation

    settings, table = _offline_table(
        model_name=model_name, tracking_uri=tracking_uri, max_message_bytes=max_message_bytes,
        input_schema=input_schema, tenant_from=tenant_from, trust_types=trust_types,
        where=where,
    )
    tenants, scores, levels, raw, summary = collect_for_evaluation(
        list(files), table, settings, label_field, fmt=fmt, mapping=input_mapping(maps),
        tenant=tenant,
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
        from stream.tools.report import html_report

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
