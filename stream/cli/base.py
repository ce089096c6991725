"""The command group and what every command shares.

Every option that is a setting (``stream.config.FIELDS``: broker address, topics,
registry URI, model name, ``-X``, ...) is generated from its one declaration by
``settings_options``, whatever the command, so flags, environment variables,
defaults, ranges and the README table never disagree.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import click

from stream import config
from stream.ops import logs

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
        from stream.ingest.where import Where, WhereError

        try:
            Where.parse(s.where)
        except WhereError as e:
            raise click.BadParameter(str(e).removeprefix(f"--where {s.where!r}: "),
                                     param_hint="--where") from None
    return s


def _check_tenant(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    from stream.ingest.decode import valid_tenant

    if value is not None and not valid_tenant(value):
        raise click.BadParameter(
            f"{value!r}: tenant ids are 1-64 characters of [A-Za-z0-9_.-]"
        )
    return value


def tenant_option(help_text: str) -> Callable[[F], F]:
    return click.option("--tenant", default=None, callback=_check_tenant, help=help_text)


class _Main(click.Group):
    """The command group: every expected failure is one line and an exit status.

    A broker or registry that cannot be reached: exit 3. A bad flag or value of a
    command, a setting that cannot work, a file of no known format: exit 2.
    """

    def invoke(self, ctx: click.Context) -> Any:
        from stream.ops.failures import (
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
            from stream.ingest.files.detect import UnknownFormat

            if not isinstance(e, UnknownFormat):
                raise
            click.echo(f"Error: {e}", err=True)
            ctx.exit(EXIT_BAD_SETTING)


def check_kafka(s: config.Settings) -> None:
    """Fail fast, in one line, when the broker cannot be reached."""
    from stream.ops.failures import require_kafka

    require_kafka(s.kafka_common(), s.kafka_timeout, s.connect_timeout)


def check_registry(uri: str, s: config.Settings | None = None, *, create: bool | None = True
              ) -> None:
    """Say which registry a command uses; fail fast, in one line, when it cannot be reached
    or, for a command that reads it (``create`` False, or None without a ``--create``
    flag), when it is a SQLite file that does not exist."""
    from stream.ops.failures import redact_uri, require_existing_registry, require_registry

    log.info("registry %s", redact_uri(uri))
    if not create:
        require_existing_registry(uri, can_create=create is False)
    require_registry(uri, (s or load_settings()).connect_timeout)


def create_option(func: F) -> F:
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

    from stream.ops.failures import mlflow_http_defaults

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


def format_option(func: F) -> F:
    from stream.ingest.files import FORMATS

    return click.option(
        "--format",
        "fmt",
        default=None,
        type=click.Choice(FORMATS),
        help="Input format [default: from suffix and content].",
    )(func)


def input_mapping(maps: tuple[str, ...]) -> Any:
    from stream.ingest.files import MappingError, parse_mapping

    try:
        return parse_mapping(maps) if maps else None
    except MappingError as e:
        raise click.BadParameter(str(e), param_hint="--map") from e
