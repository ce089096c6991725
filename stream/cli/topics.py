"""``stream alerts``, ``feedback``, ``dead-letters`` and ``suppress``: reading and writing
the tool's topics as their users do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from typing import Any

import click
import orjson

from stream import config
from stream.cli.base import (
    check_kafka,
    load_settings,
    main,
    settings_options,
    tenant_option,
)

_ALERT_HEADER = ("time                      tenant       level     score    "
                 "src -> dst                          model  why (spreads from normal)  "
                 "incident")
_ENTITY_HEADER = ("last event (UTC)          tenant       level         risk "
                  "entity                             status   last alert")
_INCIDENT_HEADER = ("last seen                 tenant       level     min score "
                    "entity                         status  alerts leading feature        "
                    "incident")


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
@click.option("--suggest-rules", is_flag=True,
              help="Print the suppression rules the benign verdicts propose, as stream "
              "suppress add commands (nothing is written).")
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
    suggest_rules: bool,
) -> None:
    """Join analyst verdicts to alerts: precision per tenant, and a labelled export.

    ``stream feedback add`` gives a verdict."""
    from stream.tools import feedback as fb

    s = load_settings(
        bootstrap_servers=bootstrap_servers, alert_topic=alert_topic,
        incident_topic=incident_topic, feedback_topic=feedback_topic, dlq_topic=dlq_topic,
        kafka_properties=kafka_properties, metrics_port=metrics_port, metrics_host=metrics_host,
    )
    if ctx.invoked_subcommand is not None:
        ctx.obj = s  # the subcommand writes with these settings
        return
    check_kafka(s)
    update = None
    if s.metrics_port:
        update = fb.serve_metrics(s.metrics_port, s.metrics_host)
    from stream.ops.failures import stop_on_signals

    try:
        with stop_on_signals() as stopped:
            book = fb.run(s, feedback_topic=s.feedback_topic, incident_topic=s.incident_topic,
                          follow=follow, on_update=update, should_stop=stopped.is_set,
                          require_tenant=require_tenant)
    except RuntimeError as e:
        raise click.ClickException(str(e)) from e
    except KeyboardInterrupt:
        return
    report: dict[str, Any] = {"per_tenant": book.per_tenant(), "unknown_ids": book.unknown,
                              "malformed": book.malformed, "other_tenant": book.mismatched}
    if suggest_rules:
        rules = book.suggested_rules()
        report["suggested_rules"] = [r.to_dict() for r in rules]
        if not as_json:
            for r in rules:
                click.echo(suppress_command(r))
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
@tenant_option("The alert's tenant: the verdict applies only if the alert is this tenant's.")
@click.pass_obj
def feedback_add(s: config.Settings, alert_id: str | None, incident_id: str | None,
                 verdict: str, note: str, analyst: str, tenant: str | None) -> None:
    """Give one verdict: written to the feedback topic, as `stream feedback` reads it."""
    from stream.tools.feedback import write_verdict

    if (alert_id is None) == (incident_id is None):
        raise click.UsageError("give exactly one of --alert-id and --incident-id")
    check_kafka(s)
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

    from stream.tools.subscribe import dead_letter_row, read_messages

    s = load_settings(bootstrap_servers=bootstrap_servers, dlq_topic=dlq_topic,
                      kafka_properties=kafka_properties)
    if redrive:
        _redrive(s, reasons, redrive_to, redrive_group, as_json)
        return
    check_kafka(s)
    from stream.ops.failures import stop_on_signals

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
    from stream.outcomes.reasons import REASONS

    if not reasons:
        raise click.UsageError("--redrive needs the --reason(s) to send back (e.g. "
                               "--reason no_model): most dead letters would only come back")
    unknown = sorted(set(reasons) - set(REASONS.values()))
    if unknown:
        raise click.BadParameter(f"{', '.join(unknown)}: not a dead-letter reason (known: "
                                 f"{', '.join(sorted(set(REASONS.values()) - {'ok'}))})",
                                 param_hint="--reason")
    check_kafka(s)
    from stream.ops.failures import stop_on_signals
    from stream.tools.redrive import redrive

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
    "bootstrap_servers", "alert_topic", "kafka_properties", "entity_alert_topic",
    aliases={"alert_topic": "--topic"}
)
@click.option("--entities", is_flag=True,
              help="Read the entity alerts of --entity-alert-topic: the latest state of each "
              "entity, highest risk first.")
@click.option("--follow", "-f", is_flag=True,
              help="Keep reading new alerts (from the end of the topic, unless "
              "--from-beginning).")
@click.option("--from-beginning", is_flag=True,
              help="With --follow: start at the oldest alert (without --follow, every alert "
              "on the topic is read anyway).")
@tenant_option("Only this tenant's alerts.")
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
    entity_alert_topic: str | None,
    entities: bool,
    follow: bool,
    from_beginning: bool,
    tenant: str | None,
    show_level: str,
    summary: bool,
    as_json: bool,
) -> None:
    """Print alerts (or the incidents of --topic alerts.incidents, the entity alerts of
    --entities) as a table, or as JSON lines: every record on the topic, or with --follow
    the new ones as they come."""
    from collections import Counter

    from rich.console import Console

    from stream.ops.failures import stop_on_signals
    from stream.tools.subscribe import (
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
            entity_alert_topic=entity_alert_topic,
        )
        if entities:
            if not s.entity_alert_topic:
                raise click.UsageError("--entities reads --entity-alert-topic: name it (or "
                                       "STREAM_ENTITY_ALERT_TOPIC)")
            s = dataclasses.replace(s, alert_topic=s.entity_alert_topic)
        check_kafka(s)
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


def _expiry(text: str) -> float | str | None:
    """``7d``, ``12h``, ``30m`` -> epoch seconds; ``never`` -> None; anything else as it is
    (an ISO 8601 time, read and checked by the rule itself)."""
    import re
    import time

    text = text.strip()
    if text.lower() == "never":
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd])", text)
    if m:
        scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return time.time() + float(m.group(1)) * scale
    return text


@main.group()
@settings_options("bootstrap_servers", "suppression_topic", "dlq_topic", "group_id",
                  "kafka_properties")
@click.pass_context
def suppress(ctx: click.Context, bootstrap_servers: str | None, suppression_topic: str | None,
             dlq_topic: str | None, group_id: str | None,
             kafka_properties: tuple[str, ...]) -> None:
    """Suppression rules: alerts they match are not published, add no risk and join no
    incident (the consumers follow --suppression-topic)."""
    ctx.obj = load_settings(bootstrap_servers=bootstrap_servers,
                            suppression_topic=suppression_topic, dlq_topic=dlq_topic,
                            group_id=group_id, kafka_properties=kafka_properties)


def _topic_ready(s: config.Settings) -> None:
    """A suppression topic named and a broker that answers (checked by each subcommand,
    so that ``--help`` needs neither)."""
    if not s.suppression_topic:
        raise click.UsageError("no --suppression-topic (or STREAM_SUPPRESSION_TOPIC): name the "
                               "topic your consumers follow")
    check_kafka(s)


@suppress.command("add")
@click.option("--id", "rule_id", default=None, help="The rule's id [default: generated].")
@tenant_option("Only this tenant's alerts [default: every tenant's].")
@click.option("--src", default=None, help="Source address or CIDR block.")
@click.option("--dst", default=None, help="Destination address or CIDR block.")
@click.option("--port", default=None, help="Destination port or range (443, 8000-8100).")
@click.option("--proto", default=None, help="Protocol (tcp, udp, icmp, ...).")
@click.option("--feature", default=None,
              help="The feature that led the alert's explanation.")
@click.option("--field", "fields", multiple=True, metavar="NAME=VALUE",
              help="An event field's value, as the sensor schema names it (repeatable).")
@click.option("--reason", required=True, help="Why these alerts are fine.")
@click.option("--author", required=True, help="Who says so.")
@click.option("--expires", default="30d", show_default=True,
              help="When the rule stops applying: 7d, 12h, an ISO 8601 time, or never.")
@click.option("--force", is_flag=True,
              help="Allow a rule with no criterion (every alert of its tenant, or of all).")
@click.pass_obj
def suppress_add(s: config.Settings, rule_id: str | None, tenant: str | None, src: str | None,
                 dst: str | None, port: str | None, proto: str | None, feature: str | None,
                 fields: tuple[str, ...], reason: str, author: str, expires: str,
                 force: bool) -> None:
    """Add (or replace) a rule; in force on every consumer within a few seconds."""
    import uuid

    from stream.consumer import suppressions
    from stream.outcomes.suppress import Rule, RuleError

    pairs = {}
    for f in fields:
        name, sep, value = f.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{f!r}: NAME=VALUE", param_hint="--field")
        pairs[name] = value
    doc = {"id": rule_id or f"r-{uuid.uuid4().hex[:10]}", "tenant": tenant, "src": src,
           "dst": dst, "port": port, "proto": proto, "feature": feature, "fields": pairs,
           "reason": reason, "author": author, "expires": _expiry(expires)}
    try:
        rule = Rule.from_dict(doc)
    except RuleError as e:
        raise click.UsageError(str(e)) from e
    _topic_ready(s)
    if rule.matches_everything and not force:
        raise click.UsageError(
            f"rule {rule.id} names no criterion: it would suppress every alert of "
            f"{'tenant ' + rule.tenant if rule.tenant else 'every tenant'} (--force to mean it)")
    try:
        suppressions.add(s, rule)
    except RuntimeError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"rule {rule.id}: {rule.scope()} ({rule.reason}); "
               f"{'no expiry' if rule.expires is None else 'expires ' + rule.to_dict()['expires']}")


def _rules(s: config.Settings) -> list[Any]:
    from stream.consumer import suppressions

    _topic_ready(s)
    try:
        suppressions.ensure_topic(s)
        follower = suppressions.RuleFollower(s, dead_letter=False)
        follower.read_to_end()
    except RuntimeError as e:
        raise click.ClickException(str(e)) from e
    return list(follower.rules.rules.values())


@suppress.command("list")
@click.option("--all", "show_all", is_flag=True, help="Expired rules too.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines.")
@click.pass_obj
def suppress_list(s: config.Settings, show_all: bool, as_json: bool) -> None:
    """The rules on the topic (in force, unless --all)."""
    import time

    now = time.time()
    rules = sorted((r for r in _rules(s) if show_all or r.active(now)), key=lambda r: r.created)
    for r in rules:
        if as_json:
            click.echo(orjson.dumps({**r.to_dict(), "active": r.active(now)}).decode())
        else:
            d = r.to_dict()
            state = "" if r.active(now) else " [expired]"
            click.echo(f"{r.id}{state}  {r.scope()}  reason: {r.reason}  by {r.author}  "
                       f"expires {d['expires'] or 'never'}")
    if not rules and not as_json:
        click.echo("no rules" + ("" if show_all else " in force"))


@suppress.command("remove")
@click.argument("rule_id")
@click.pass_obj
def suppress_remove(s: config.Settings, rule_id: str) -> None:
    """Remove a rule (a tombstone on the topic)."""
    from stream.consumer import suppressions

    if rule_id not in {r.id for r in _rules(s)}:
        raise click.UsageError(f"no rule {rule_id!r} on {s.suppression_topic}")
    suppressions.remove(s, rule_id)
    click.echo(f"rule {rule_id} removed")


@suppress.command("expire")
@click.argument("rule_id")
@click.pass_obj
def suppress_expire(s: config.Settings, rule_id: str) -> None:
    """End a rule now; it stays on the topic, expired, for the record (list --all)."""
    import dataclasses
    import time

    from stream.consumer import suppressions

    found = {r.id: r for r in _rules(s)}.get(rule_id)
    if found is None:
        raise click.UsageError(f"no rule {rule_id!r} on {s.suppression_topic}")
    suppressions.add(s, dataclasses.replace(found, expires=time.time()))
    click.echo(f"rule {rule_id} expired")


def suppress_command(rule: Any) -> str:
    """The ``stream suppress add`` command that writes ``rule`` (shell-quoted)."""
    import shlex

    d = rule.to_dict()
    args = ["stream", "suppress", "add", "--id", rule.id]
    for key in ("tenant", "src", "dst", "port", "proto", "feature"):
        if d.get(key):
            args += [f"--{key}", str(d[key])]
    for name, value in rule.fields:
        args += ["--field", f"{name}={value}"]
    args += ["--reason", rule.reason, "--author", rule.author, "--expires", "30d"]
    return shlex.join(args)
