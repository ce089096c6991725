"""Replay recorded flow traffic into a Kafka topic: pacing and the producer loop.

Files are read by ``stream.ingest.files`` (every format, mappings, tenant override);
this module decides when each record goes out (``Pacing``), sends them in
order (``pump``, no Kafka) and drives a real producer (``replay``).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson

from stream.errors import StreamError
from stream.ingest.files import (
    FieldMapping,
    Row,
    count_records,
    detect_format,
    iter_records,
    normalize_format,
)
from stream.ingest.timestamps import epoch_seconds
from stream.kafka.clients import new_producer
from stream.tools.progress import progress_bar

__all__ = [
    "Pacing",
    "PacingMode",
    "Rejected",
    "ReplayError",
    "ReplaySummary",
    "pump",
    "replay",
]


class ReplayError(StreamError):
    """A bad input line under ``strict=True`` (or an unreadable input file)."""

    def __init__(self, path: str | Path, line_no: int, reason: str) -> None:
        self.path = str(path)
        self.line_no = line_no
        self.reason = reason
        super().__init__(f"{self.path}:{line_no}: {reason}")


# --------------------------------------------------------------------------- pacing


PacingMode = Literal["max", "rate", "speed"]


@dataclass(frozen=True)
class Pacing:
    """When records go out: ``max`` (no waiting), ``rate`` (``value`` events/s) or
    ``speed`` (the recorded gaps between timestamps divided by ``value``)."""

    mode: PacingMode = "max"
    value: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("max", "rate", "speed"):
            raise ValueError(f"unknown pacing mode {self.mode!r}")
        if self.mode != "max" and not (
            self.value is not None and math.isfinite(self.value) and self.value > 0
        ):
            raise ValueError(f"pacing {self.mode!r} needs a positive value, got {self.value!r}")

    @classmethod
    def unlimited(cls) -> Pacing:
        return cls("max")

    @classmethod
    def at_rate(cls, events_per_second: float) -> Pacing:
        return cls("rate", float(events_per_second))

    @classmethod
    def at_speed(cls, factor: float) -> Pacing:
        return cls("speed", float(factor))

    def __str__(self) -> str:
        if self.mode == "rate":
            return f"{self.value:g} events/s"
        if self.mode == "speed":
            return f"{self.value:g}x recorded speed"
        return "as fast as possible"


_SLEEP_CHUNK_S = 0.05
# Below this, hand the rest of the wait to time.sleep: a Kafka poll only has 1 ms steps.
_FINE_WAIT_S = 0.002


class _Pacer:
    """Holds each record until its due time on an absolute schedule, so waits never add up."""

    def __init__(
        self,
        pacing: Pacing,
        timestamp_field: str,
        idle: Callable[[float], Any],
    ) -> None:
        self.pacing = pacing
        self.field = timestamp_field
        self.idle = idle
        self.start: float | None = None
        self.first_ts: float | None = None
        self.count = 0

    def wait(self, record: dict[str, Any]) -> None:
        mode = self.pacing.mode
        if mode == "max":
            return
        assert self.pacing.value is not None
        if mode == "rate":
            if self.start is None:
                self.start = time.monotonic()
            due = self.start + self.count / self.pacing.value
            self.count += 1
        else:
            ts = epoch_seconds(record.get(self.field))
            if ts is None:
                return  # nothing to pace by: send it right away
            if self.first_ts is None or self.start is None:
                self.first_ts, self.start = ts, time.monotonic()
                return
            due = self.start + (ts - self.first_ts) / self.pacing.value
        self._sleep_until(due)

    def _sleep_until(self, due: float) -> None:
        # Small chunks keep the producer's callbacks served and the wake-up within a few ms.
        while True:
            remaining = due - time.monotonic()
            if remaining <= 0:
                return
            if remaining > _FINE_WAIT_S:
                self.idle(min(remaining - _FINE_WAIT_S / 2, _SLEEP_CHUNK_S))
            else:
                time.sleep(remaining)


# --------------------------------------------------------------------------- sending


def _encoder(paths: list[Path], kind: str | None) -> Callable[[dict[str, Any]], bytes]:
    """How records go on the wire: goflow2's protobuf when every file is goflow2's
    ``-format=bin`` (sent as goflow2's Kafka transport would), JSON otherwise."""
    if all((kind or detect_format(p)) == "goflow2-pb" for p in paths):
        from stream.ingest.goflow2pb import encode

        return encode
    return orjson.dumps


Rejected = tuple[str, int, str]
"""A line that was not sent: (file, line, reason), the shape of
``stream.ingest.files.Unreadable``."""


def pump(
    sources: Iterable[tuple[str, Iterable[Row]]],
    send: Callable[[bytes | None, bytes], Any],
    *,
    pacing: Pacing,
    strict: bool = False,
    timestamp_field: str = "timestamp",
    idle: Callable[[float], Any] = time.sleep,
    on_progress: Callable[[int, str], Any] | None = None,
    encode: Callable[[dict[str, Any]], bytes] = orjson.dumps,
) -> tuple[int, list[Rejected]]:
    """Pace and ``send(key, value)`` every good record of ``sources`` (label, rows) in order.

    This is ``replay`` without Kafka: the key is the tenant id, the value the
    record as JSON. Returns the number sent and the rejected lines; with
    ``strict`` the first bad line raises ``ReplayError`` instead.
    """
    pacer = _Pacer(pacing, timestamp_field, idle)
    sent = 0
    rejected: list[Rejected] = []
    last_report = time.monotonic()
    for label, rows in sources:
        if on_progress is not None:
            on_progress(sent, label)
        for line_no, record, reason in rows:
            if record is None:
                reason = reason or "unreadable record"
                if strict:
                    raise ReplayError(label, line_no, reason)
                rejected.append((label, line_no, reason))
                continue
            try:
                value = encode(record)
            except (orjson.JSONEncodeError, ValueError) as e:
                what = "JSON" if encode is orjson.dumps else "the file's format"
                if strict:
                    raise ReplayError(label, line_no, f"cannot encode as {what}: {e}") from e
                rejected.append((label, line_no, f"cannot encode as {what}: {e}"))
                continue
            tenant = record.get("tenant_id")
            key = None if tenant is None else str(tenant).encode()
            pacer.wait(record)
            send(key, value)
            sent += 1
            if on_progress is not None:
                now = time.monotonic()
                if now - last_report >= 0.1:
                    last_report = now
                    on_progress(sent, label)
    if on_progress is not None:
        on_progress(sent, "done")
    return sent, rejected


@dataclass
class ReplaySummary:
    """What a replay did. ``sent`` counts records handed to the producer."""

    sent: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    delivery_failures: int = 0
    elapsed_s: float = 0.0
    rate: float = 0.0
    # How often the producer queue was full and the replay waited for the broker.
    queue_full_waits: int = 0

    @property
    def delivered(self) -> int:
        return self.sent - self.delivery_failures


def replay(
    paths: Sequence[Path],
    *,
    bootstrap: str,
    topic: str = "flows",
    pacing: Pacing,
    tenant: str | None = None,
    mapping: FieldMapping | None = None,
    strict: bool = False,
    fmt: str | None = None,
    progress: bool = True,
    producer_config: dict[str, str] | None = None,
    timestamp_field: str = "timestamp",
    flush_timeout_s: float = 60.0,
    raw: bool = False,
) -> ReplaySummary:
    """Produce every record of ``paths`` to ``topic``, paced, keyed by tenant id.

    A full producer queue is waited out (``poll``), never dropped. Messages
    still undelivered after the final flush count as delivery failures.
    """
    from confluent_kafka import KafkaError, Message

    paths = [Path(p) for p in paths]
    for p in paths:
        if not p.is_file():
            raise ReplayError(p, 0, "no such file")
    kind = normalize_format(fmt) if fmt else None
    total: int | None = None
    if progress:
        counts = [count_records(p, kind) for p in paths]
        total = None if any(c is None for c in counts) else sum(c or 0 for c in counts)

    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "linger.ms": "5",
        # Reports only for failures: a Python callback per delivered message costs throughput.
        # (The Python client insists on a real bool for this one, not "true".)
        "delivery.report.only.error": True,
        **(producer_config or {}),
    }
    producer = new_producer(config)
    failures = 0
    queue_full_waits = 0

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        nonlocal failures
        if err is not None:
            failures += 1

    def send(key: bytes | None, value: bytes) -> None:
        nonlocal queue_full_waits
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                # Queue full: let the broker drain it (backpressure) rather than drop.
                queue_full_waits += 1
                producer.poll(0.05)
        producer.poll(0)

    sources = (
        (str(p), iter_records(p, fmt=kind, mapping=mapping, tenant=tenant, raw=raw))
        for p in paths
    )
    bar = progress_bar(total) if progress else None
    on_progress: Callable[[int, str], Any] | None = None
    if bar is not None:
        task = bar.add_task("replay", total=total)

        def on_progress(count: int, label: str) -> None:
            bar.update(task, completed=count, description=Path(label).name)

    started = time.monotonic()
    with bar if bar is not None else contextlib.nullcontext():
        try:
            sent, rejected = pump(
                sources,
                send,
                pacing=pacing,
                strict=strict,
                timestamp_field=timestamp_field,
                idle=producer.poll,
                on_progress=on_progress,
                encode=_encoder(paths, kind),
            )
        finally:
            # Also on a strict failure or Ctrl-C: what was accepted still gets delivered.
            undelivered = producer.flush(flush_timeout_s)
    elapsed = time.monotonic() - started
    return ReplaySummary(
        sent=sent,
        rejected=rejected,
        delivery_failures=failures + undelivered,
        elapsed_s=elapsed,
        rate=sent / elapsed if elapsed > 0 else 0.0,
        queue_full_waits=queue_full_waits,
    )
