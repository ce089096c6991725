"""Typed settings, declared once: name, default, environment variable, valid range, help.

Every command builds the options it shares with others from ``FIELDS``
(``stream.cli.settings_options``), so a flag, its environment variable, its
default and its range are written once. The README's configuration table is
generated from it (``python -m stream.config``), and the compose file's
environment is checked against it in the tests.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Threat levels, lowest first (a level's code is its index: ``outcomes.LEVEL_CODES``).
LEVELS: tuple[str, ...] = ("low", "medium", "high", "critical")
#: Sensor schemas a model or a consumer reads events through (``sources.view``).
SCHEMA_NAMES: tuple[str, ...] = ("native", "zeek", "suricata", "goflow2", "goflow2-pb")
#: A tenant id: 1-64 characters of ``[A-Za-z0-9_.-]`` (``events.valid_tenant``).
TENANT_PATTERN = r"[A-Za-z0-9_.-]{1,64}"

DELIVERY_MODES: tuple[str, ...] = ("at-least-once", "exactly-once")
DEFAULT_MODEL_NAME = "isolation_forest_anomaly_detector"
DEFAULT_EXPERIMENT = "securenet-anomaly-detection"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def _opt(
    default: Any,
    env: str,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    min: float | None = None,
    max: float | None = None,
    min_open: bool = False,
) -> Any:
    """One setting. ``min``/``max`` bound a number (``min_open``: strictly above ``min``)."""
    return field(
        default=default,
        metadata={
            "env": env, "help": help, "choices": choices, "min": min, "max": max,
            "min_open": min_open,
        },
    )


@dataclass(frozen=True)
class Settings:
    """Everything ``stream run`` needs; defaults suit the embedded broker and local registry."""

    bootstrap_servers: str = _opt(
        "127.0.0.1:9092", "KAFKA_BOOTSTRAP_SERVERS", "Kafka bootstrap servers (host:port,...)."
    )
    input_topic: str = _opt("flows", "STREAM_INPUT_TOPIC", "Topic of flow events to score.")
    alert_topic: str = _opt("alerts", "STREAM_ALERT_TOPIC", "Topic alerts are published to.")
    dlq_topic: str = _opt(
        "flows.dlq", "STREAM_DLQ_TOPIC", "Dead-letter topic for records that cannot be scored."
    )
    group_id: str = _opt("stream", "KAFKA_GROUP_ID", "Consumer group id.")
    tracking_uri: str = _opt(
        DEFAULT_TRACKING_URI, "MLFLOW_TRACKING_URI", "MLflow tracking/registry URI."
    )
    experiment_name: str = _opt(
        DEFAULT_EXPERIMENT, "MLFLOW_EXPERIMENT_NAME", "MLflow experiment for training runs."
    )
    model_name: str = _opt(
        DEFAULT_MODEL_NAME,
        "STREAM_MODEL_NAME",
        "Base registered-model name; tenant T's model is NAME_T, the global one NAME.",
    )
    batch_size: int = _opt(
        5000, "STREAM_BATCH_SIZE", "Maximum events per micro-batch.", min=1, max=1_000_000
    )
    batch_max_wait_ms: int = _opt(
        200, "STREAM_BATCH_MAX_WAIT_MS", "Maximum time to wait while filling a micro-batch.",
        min=1, max=60_000,
    )
    min_level: str = _opt(
        "medium",
        "STREAM_MIN_LEVEL",
        "Lowest threat level that produces an alert (low = every scored event).",
        choices=LEVELS,
    )
    delivery: str = _opt(
        "at-least-once", "STREAM_DELIVERY", "Delivery guarantee.", choices=DELIVERY_MODES
    )
    reload_interval: float = _opt(
        5.0,
        "STREAM_RELOAD_INTERVAL",
        "Seconds between registry polls for new production versions.",
        min=0, min_open=True,
    )
    model_cache_size: int = _opt(
        256, "STREAM_MODEL_CACHE_SIZE", "Loaded tenant models kept in memory (LRU).", min=1
    )
    max_message_bytes: int = _opt(
        1_000_000,
        "STREAM_MAX_MESSAGE_BYTES",
        "Larger input messages go to the dead-letter topic.",
        min=1, max=100_000_000,
    )
    session_timeout_ms: int = _opt(
        10000, "KAFKA_SESSION_TIMEOUT_MS", "Consumer group session timeout.", min=1000
    )
    connect_timeout: float = _opt(
        3.0,
        "STREAM_CONNECT_TIMEOUT",
        "Seconds a TCP connect to the broker or the registry may take before a command "
        "(or `run`'s start-up check) calls it unreachable.",
        min=0, min_open=True, max=300,
    )
    kafka_timeout: float = _opt(
        10.0,
        "STREAM_KAFKA_TIMEOUT",
        "Seconds the broker may take to answer a metadata request in the reachability "
        "check.",
        min=0, min_open=True, max=600,
    )
    auto_offset_reset: str = _opt(
        "earliest",
        "KAFKA_AUTO_OFFSET_RESET",
        "Where a new consumer group starts.",
        choices=("earliest", "latest"),
    )
    metrics_port: int = _opt(
        0, "STREAM_METRICS_PORT", "Port for /metrics, /healthz and /readyz (0 = off).",
        min=0, max=65535,
    )
    metrics_host: str = _opt(
        "127.0.0.1", "STREAM_METRICS_HOST",
        "Address the metrics and health server listens on: 127.0.0.1 keeps /metrics on "
        "the host; 0.0.0.0 (the container image's default) lets a scraper on another "
        "host in.",
    )
    stall_after: float = _opt(
        30.0,
        "STREAM_STALL_AFTER",
        "Seconds without a committed batch, after one failed (not delivered, models not "
        "loaded, state not restored), before /readyz says not ready with the cause.",
        min=0, max=3600,
    )
    shadow_topic: str = _opt(
        "", "STREAM_SHADOW_TOPIC", "Topic for challenger-vs-production reports (empty = off)."
    )
    input_schema: str = _opt(
        "native",
        "STREAM_INPUT_SCHEMA",
        "The sensor schema of the input events; its fields are mapped to the canonical "
        "ones (see Sensor schemas). goflow2-pb: goflow2's protobuf (-format=bin), read "
        "as its JSON.",
        choices=SCHEMA_NAMES,
    )
    where: str = _opt(
        "",
        "STREAM_WHERE",
        "Score only the input records this keeps, e.g. 'event_type == \"flow\"' for "
        "Suricata EVE (the rest are counted and skipped, not dead-lettered; empty = all).",
    )
    tenant_from: str = _opt(
        "field:tenant_id",
        "STREAM_TENANT_FROM",
        "Where an event's tenant comes from: field:NAME (a field of the event), key "
        "(the message key), header:NAME (a message header) or const:TENANT.",
    )
    trust_types: tuple[str, ...] = _opt(
        (),
        "STREAM_TRUST_TYPES",
        "Extra types a model may ask skops to trust, beyond the built-in allow-list "
        "(repeatable; env: comma-separated). Only for types known to be safe.",
    )
    model_storage_path: str = _opt(
        "", "MODEL_STORAGE_PATH",
        "A directory where the consumer keeps the model versions it serves and the last "
        "registry view, to start from them while the registry is down (empty = off).",
    )
    state: str = _opt(
        "changelog",
        "STREAM_STATE",
        "Window state durability: changelog (written to a compacted topic with every "
        "commit, restored when a partition is assigned) or none (windows start empty "
        "after a restart, a rebalance or a failed batch).",
        choices=("changelog", "none"),
    )
    state_topic: str = _opt(
        "", "STREAM_STATE_TOPIC", "Changelog topic of the window state (empty = GROUP.state)."
    )
    lateness: float = _opt(
        5.0,
        "STREAM_LATENESS",
        "Seconds an event may be older than the newest event of its tenant on its partition "
        "and still update the windows; older ones are scored against the current state and "
        "counted late.",
        min=0,
    )
    state_ttl: float = _opt(
        3600.0,
        "STREAM_STATE_TTL",
        "Seconds of event time after which an entity without events leaves the window state.",
        min=0, min_open=True,
    )
    state_max_mb: float = _opt(
        256.0,
        "STREAM_STATE_MAX_MB",
        "Memory cap of the window state (estimated); least recently updated entities go first.",
        min=0, min_open=True,
    )
    alert_format: str = _opt(
        "native", "STREAM_ALERT_FORMAT",
        "Format of alert and incident records: native, ecs (Elastic Common Schema) or ocsf "
        "(OCSF Detection Finding).",
        choices=("native", "ecs", "ocsf"),
    )
    incident_topic: str = _opt(
        "", "STREAM_INCIDENT_TOPIC",
        "Compacted topic of incidents: alerts grouped per tenant and entity (empty = off).",
    )
    incident_by: str = _opt(
        "src_ip", "STREAM_INCIDENT_BY", "The event field whose value an incident groups by."
    )
    incident_window: float = _opt(
        300.0, "STREAM_INCIDENT_WINDOW",
        "Seconds after which an incident closes and the next alert opens a new one.",
        min=0, min_open=True,
    )
    incident_idle: float = _opt(
        60.0, "STREAM_INCIDENT_IDLE",
        "Seconds without an alert after which an incident closes.", min=0, min_open=True,
    )
    entity_alert_topic: str = _opt(
        "", "STREAM_ENTITY_ALERT_TOPIC",
        "Compacted topic of entity alerts: per tenant and entity, the latest alert whose "
        "risk is at or above --risk-threshold (empty = off).",
    )
    risk_by: str = _opt(
        "src_ip", "STREAM_RISK_BY",
        "The entities an alert's risk adds up by, per tenant, comma-separated: each a field "
        "or a pair (src_ip>dst_ip); src_ip,dst_ip adds every alert to its source and to its "
        "destination (empty = no risk).",
    )
    risk_half_life: float = _opt(
        3600.0, "STREAM_RISK_HALF_LIFE",
        "Seconds of event time in which an entity's risk halves.", min=0, min_open=True,
    )
    risk_threshold: float = _opt(
        12.0, "STREAM_RISK_THRESHOLD",
        "Risk whose crossing marks an entity's alert raised (points: medium 1, high 3, "
        "critical 10: two criticals, four highs or twelve mediums within a half-life).",
        min=0, min_open=True,
    )
    suppression_topic: str = _opt(
        "", "STREAM_SUPPRESSION_TOPIC",
        "Compacted topic of suppression rules (stream suppress), followed by every consumer: "
        "alerts a rule matches are not published, add no risk and join no incident "
        "(empty = off).",
    )
    emit_suppressed: bool = _opt(
        False, "STREAM_EMIT_SUPPRESSED",
        "Publish suppressed alerts too, marked suppressed_by with the rule's id.",
    )
    dedup_window: float = _opt(
        0.0, "STREAM_DEDUP_WINDOW",
        "Seconds of event time in which one alert stands for the later ones of its tenant, "
        "entity (--incident-by) and leading feature: those are not published, but still "
        "add risk and join incidents (0 = off: every alert is published).",
        min=0,
    )
    feedback_topic: str = _opt(
        "alerts.feedback", "STREAM_FEEDBACK_TOPIC",
        "Topic of analyst verdicts on alerts and incidents (read by stream feedback).",
    )
    drift_window: int = _opt(
        10_000, "STREAM_DRIFT_WINDOW",
        "Events per tenant over which drift (PSI against the training baseline) is measured.",
        min=100,
    )
    drift_topic: str = _opt(
        "", "STREAM_DRIFT_TOPIC",
        "Topic of drift snapshots: per tenant, each time a drift window fills, the PSI of "
        "the scores and each input and the live score histogram beside the training one "
        "(read by stream console; empty = off).",
    )
    drift_psi_warn: float = _opt(
        0.25, "STREAM_DRIFT_PSI_WARN",
        "A PSI above this logs a drift warning (per tenant, for the scores or an input).",
        min=0, min_open=True,
    )
    log_format: str = _opt("text", "STREAM_LOG_FORMAT", "Log format.", choices=("text", "json"))
    topic_partitions: int = _opt(
        3, "STREAM_TOPIC_PARTITIONS", "Partitions of topics that --create-topics creates.",
        min=1, max=100_000,
    )
    topic_replication_factor: int = _opt(
        -1,
        "STREAM_TOPIC_REPLICATION_FACTOR",
        "Replication factor of topics that --create-topics creates (-1 = the broker's default).",
        min=-1, max=32,
    )
    kafka_properties: tuple[tuple[str, str], ...] = field(
        default=(),
        metadata={
            "env": "STREAM_KAFKA_PROPERTIES",
            "help": "Extra librdkafka properties as key=value (repeatable; env: comma-separated), "
            "e.g. security.protocol=SASL_SSL.",
            "choices": None,
            "min": None,
            "max": None,
            "min_open": False,
        },
    )

    @property
    def changelog_topic(self) -> str:
        """Where window state changes go: ``--state-topic``, else ``GROUP.state``."""
        return self.state_topic or f"{self.group_id}.state"

    @property
    def tenant_source(self) -> TenantFrom:
        return parse_tenant_from(self.tenant_from)

    def kafka_common(self) -> dict[str, Any]:
        """Client properties shared by the consumer, producer and admin client."""
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap_servers}
        conf.update(dict(self.kafka_properties))
        return conf


FIELDS: tuple[dataclasses.Field[Any], ...] = dataclasses.fields(Settings)


def parse_properties(items: str | list[str] | tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Parse ``key=value`` librdkafka properties; a comma-separated string is accepted too."""
    if isinstance(items, str):
        items = [p for p in items.split(",") if p.strip()]
    out: list[tuple[str, str]] = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            # Never echo it: a mistyped "sasl.password:secret" is a secret all the same.
            shown = item.split(":", 1)[0].split(" ", 1)[0][:40]
            raise ValueError(f"Kafka property {shown!r}... is not key=value (the value is "
                             "not shown)")
        out.append((key.strip(), value.strip()))
    return tuple(out)


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_bool(raw: Any) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case): what users expect of a flag in
    the environment (``bool("false")`` would be True)."""
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"expected one of {', '.join(sorted(_TRUE | _FALSE))}, got {raw!r}")


def check_range(f: dataclasses.Field[Any], value: Any) -> None:
    """Raise ValueError when a number is outside the setting's declared range."""
    lo, hi, open_lo = f.metadata.get("min"), f.metadata.get("max"), f.metadata.get("min_open")
    if lo is not None and (value <= lo if open_lo else value < lo):
        raise ValueError(f"must be {'>' if open_lo else '>='} {lo:g}, got {value!r}")
    if hi is not None and value > hi:
        raise ValueError(f"must be <= {hi:g}, got {value!r}")


@dataclass(frozen=True)
class TenantFrom:
    """Where a Kafka event's tenant comes from (``--tenant-from``)."""

    kind: str  # "field", "key", "header" or "const"
    name: str = ""  # the field or header name, or the constant tenant


def parse_tenant_from(text: str) -> TenantFrom:
    """``field:NAME``, ``key``, ``header:NAME`` or ``const:TENANT``; ValueError otherwise."""
    kind, sep, name = text.strip().partition(":")
    if kind == "key" and not sep:
        return TenantFrom("key")
    if kind in ("field", "header", "const") and sep and name:
        if kind == "const" and not re.fullmatch(TENANT_PATTERN, name):
            raise ValueError(f"const:{name}: tenant ids are 1-64 characters of [A-Za-z0-9_.-]")
        return TenantFrom(kind, name)
    raise ValueError(f"{text!r}: expected field:NAME, key, header:NAME or const:TENANT")


def _coerce(f: dataclasses.Field[Any], raw: Any, source: str) -> Any:
    """``raw`` (from ``source``: an environment variable or a flag) as the field's type."""
    if f.name == "kafka_properties":
        return parse_properties(raw)
    if f.name == "trust_types":
        items = raw.split(",") if isinstance(raw, str) else raw
        return tuple(t.strip() for t in items if t.strip())
    if f.name == "tenant_from":
        try:
            parse_tenant_from(raw)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from e
        return str(raw).strip()
    typ: type[Any] = type(f.default)
    try:
        value = parse_bool(raw) if typ is bool else typ(raw)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {raw!r}")
        if typ in (int, float):
            check_range(f, value)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e
    return value


def flag_name(f: dataclasses.Field[Any]) -> str:
    if f.name == "kafka_properties":
        return "-X/--kafka-property"
    if f.name == "trust_types":
        return "--trust-type"
    return "--" + f.name.replace("_", "-")


def from_env(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from environment variables, then explicit overrides (None means 'not given')."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for f in FIELDS:
        name = f.metadata["env"]
        if name in env and env[name] != "":
            values[f.name] = _coerce(f, env[name], name)
    for key, value in overrides.items():
        if value is None or (key in ("kafka_properties", "trust_types") and not value):
            continue
        f = next(x for x in FIELDS if x.name == key)
        values[key] = _coerce(f, value, flag_name(f))
    return Settings(**values)


def env_vars() -> set[str]:
    """Every environment variable the consumer reads (besides MLflow's own client variables)."""
    return {f.metadata["env"] for f in FIELDS}


def markdown_table(used_by: Mapping[str, list[str]]) -> str:
    """The configuration table in the README, generated from ``FIELDS``.

    ``used_by`` maps a setting to the commands that take it as an option
    (``cli.settings_usage()``: ``scripts/readme_config.py`` passes it, so this module
    imports nothing of the tool's and every other may import it).
    """
    rows = [
        "| flag | environment | default | commands | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for f in FIELDS:
        default = f.default if f.default not in ("", ()) else "(empty)"
        help_text = f.metadata["help"]
        if f.metadata.get("choices"):
            help_text += " One of: " + ", ".join(f.metadata["choices"]) + "."
        lo, hi = f.metadata.get("min"), f.metadata.get("max")
        if lo is not None or hi is not None:
            op = ">" if f.metadata.get("min_open") else ">="
            low = "" if lo is None else f"{op} {lo:g}"
            high = "" if hi is None else f"<= {hi:g}"
            help_text += " Range: " + ", ".join(x for x in (low, high) if x) + "."
        commands = ", ".join(used_by.get(f.name, []))
        rows.append(
            f"| `{flag_name(f).replace('/', ' / ')}` | `{f.metadata['env']}` | `{default}` "
            f"| {commands} | {help_text} |"
        )
    return "\n".join(rows)

