"""Replay recorded flow traffic (JSONL, CSV, Parquet, Zeek conn logs) into a Kafka topic.

Readers yield ``(line_no, record | None, reason | None)`` so one bad line is
reported, never fatal; mappings rename and sum columns into the flow event
schema; ``Pacing`` decides when each record goes out; ``replay`` produces them.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import math
import re
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Literal

import orjson

__all__ = [
    "FORMATS",
    "ZEEK_MAPPING",
    "FieldMapping",
    "FieldRule",
    "Mapping",
    "MappingError",
    "Pacing",
    "ReplayError",
    "ReplaySummary",
    "Row",
    "count_records",
    "detect_format",
    "epoch_seconds",
    "iter_records",
    "normalize_format",
    "parse_mapping",
    "pump",
    "read_csv",
    "read_jsonl",
    "read_parquet",
    "read_records",
    "read_zeek",
    "read_zeek_json",
    "replay",
]

Row = tuple[int, dict[str, Any] | None, str | None]
"""A reader result: line number (1-based; 0 = whole file), record, reason it was rejected."""

FORMATS: tuple[str, ...] = ("jsonl", "csv", "parquet", "zeek", "zeek-json")
_FORMAT_ALIASES = {
    "json": "jsonl",
    "ndjson": "jsonl",
    "zeek-tsv": "zeek",
    "zeek_tsv": "zeek",
    "tsv": "zeek",
    "zeek_json": "zeek-json",
    "zeekjson": "zeek-json",
    "pq": "parquet",
}
_ZEEK_FORMATS = frozenset({"zeek", "zeek-json"})
_GZIP_MAGIC = b"\x1f\x8b"
_PARQUET_MAGIC = b"PAR1"


class ReplayError(Exception):
    """A bad input line under ``strict=True`` (or an unreadable input file)."""

    def __init__(self, path: str | Path, line_no: int, reason: str) -> None:
        self.path = str(path)
        self.line_no = line_no
        self.reason = reason
        super().__init__(f"{self.path}:{line_no}: {reason}")


class MappingError(ValueError):
    """A mapping spec that does not parse, or a record it cannot apply to (non-number in a sum)."""


# --------------------------------------------------------------------------- opening


def _open_binary(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed when it is gzip (judged by its magic, not its name)."""
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == _GZIP_MAGIC:
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def _head_lines(path: Path, limit: int = 5) -> list[bytes]:
    """The first ``limit`` non-blank lines, for sniffing the format."""
    lines: list[bytes] = []
    try:
        with _open_binary(path) as fh:
            for line in fh:
                stripped = line.strip()
                if stripped:
                    lines.append(stripped.removeprefix(b"\xef\xbb\xbf"))
                    if len(lines) >= limit:
                        break
    except (OSError, EOFError):  # a truncated gzip still gives its first lines
        pass
    return lines


def normalize_format(fmt: str) -> str:
    """Canonical format name for ``fmt`` (accepts aliases such as ``json`` or ``zeek-tsv``)."""
    name = fmt.strip().lower()
    name = _FORMAT_ALIASES.get(name, name)
    if name not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return name


def detect_format(path: str | Path) -> str:
    """Guess the format from the content first, then from the file name."""
    path = Path(path)
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    ext = suffixes[-1] if suffixes else ""
    with path.open("rb") as fh:
        magic = fh.read(4)
    if ext in (".parquet", ".pq") or magic == _PARQUET_MAGIC:
        return "parquet"
    head = _head_lines(path)
    if head and head[0].startswith((b"#separator", b"#fields")):
        return "zeek"
    if head and head[0].startswith(b"{"):
        for line in head:
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict) and ("id.orig_h" in obj or "orig_bytes" in obj):
                return "zeek-json"
        return "jsonl"
    if ext in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if ext in (".log", ".tsv"):
        return "zeek"
    return "csv"


# --------------------------------------------------------------------------- readers


def read_jsonl(path: str | Path) -> Iterator[Row]:
    """JSON objects, one per line (plain or gzip); blank lines are skipped."""
    with _open_binary(Path(path)) as fh:
        for line_no, line in enumerate(fh, 1):
            if line_no == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                yield line_no, None, f"malformed JSON: {e}"
                continue
            if not isinstance(obj, dict):
                yield line_no, None, f"expected a JSON object, got {_json_kind(obj)}"
                continue
            yield line_no, obj, None


def read_zeek_json(path: str | Path) -> Iterator[Row]:
    """Zeek logs written as JSON lines: same parsing as JSONL; mapping happens later."""
    return read_jsonl(path)


def _json_kind(obj: object) -> str:
    if isinstance(obj, list):
        return "an array"
    if isinstance(obj, str):
        return "a string"
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "a boolean"
    return "a number"


_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?")


def _number_or_str(text: str) -> int | float | str:
    candidate = text.strip()
    if _INT_RE.fullmatch(candidate):
        return int(candidate)
    if _FLOAT_RE.fullmatch(candidate):
        return float(candidate)
    return text


def read_csv(path: str | Path) -> Iterator[Row]:
    """CSV with a header row (plain or gzip); numeric-looking cells become numbers.

    An empty cell means the field is unset, so it is left out of the record.
    """
    with _open_binary(Path(path)) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")
        reader = csv.reader(text)
        header: list[str] | None = None
        while True:
            # Quoted cells may span lines: a row starts on the line after the previous one ended.
            start = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                yield start, None, f"bad CSV: {e}"
                if reader.line_num < start:  # the reader did not move on: give up on the file
                    return
                continue
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if header is None:
                header = [name.strip() for name in row]
                continue
            if len(row) != len(header):
                yield start, None, f"expected {len(header)} columns, got {len(row)}"
                continue
            yield (
                start,
                {name: _number_or_str(v) for name, v in zip(header, row, strict=True) if v != ""},
                None,
            )


def _plain_value(value: Any) -> Any:
    """Parquet cell -> something orjson and the pacing clock understand."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            # Parquet timestamps without a zone are UTC by convention.
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, list):
        return [_plain_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain_value(v) for k, v in value.items()}
    return value


def read_parquet(path: str | Path, batch_size: int = 8192) -> Iterator[Row]:
    """Parquet rows; line numbers are 1-based row numbers and null cells are left out."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(str(path))
        batches = pf.iter_batches(batch_size=batch_size)
        row_no = 0
        for batch in batches:
            for row in batch.to_pylist():
                row_no += 1
                yield row_no, {k: _plain_value(v) for k, v in row.items() if v is not None}, None
    except (pa.ArrowException, OSError) as e:
        yield 0, None, f"cannot read Parquet file: {e}"


_ZEEK_ESCAPE = re.compile(r"\\x([0-9a-fA-F]{2})")


def _zeek_unescape(text: str) -> str:
    if "\\x" not in text:
        return text
    return _ZEEK_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)


def _zeek_scalar(text: str, kind: str) -> Any:
    if kind in ("time", "interval", "double"):
        return float(text)
    if kind in ("count", "int", "port"):
        return int(text)
    if kind == "bool":
        if text in ("T", "F"):
            return text == "T"
        raise ValueError("expected T or F")
    if not kind:
        # No #types header: fall back to guessing like CSV does.
        return _number_or_str(_zeek_unescape(text))
    return _zeek_unescape(text)


@dataclass
class _ZeekHeader:
    separator: str = "\t"
    set_separator: str = ","
    empty: str = "(empty)"
    unset: str = "-"
    fields: list[str] | None = None
    types: list[str] | None = None


def read_zeek(path: str | Path) -> Iterator[Row]:
    """Zeek ASCII logs (TSV with ``#separator``/``#fields``/``#types`` headers).

    ``-`` (the unset marker) leaves the field out; ``(empty)`` is an empty
    string or list. Values are typed from ``#types``. Header lines may appear
    again mid-file (concatenated logs) and replace the previous ones.
    """
    hdr = _ZeekHeader()
    with _open_binary(Path(path)) as fh:
        for line_no, raw in enumerate(fh, 1):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if not line:
                continue
            if line.startswith("#"):
                _zeek_directive(hdr, line)
                continue
            if hdr.fields is None:
                yield line_no, None, "data line before the #fields header"
                continue
            values = line.split(hdr.separator)
            if len(values) != len(hdr.fields):
                yield line_no, None, f"expected {len(hdr.fields)} fields, got {len(values)}"
                continue
            record, reason = _zeek_record(hdr, values)
            yield line_no, record, reason


def _zeek_directive(hdr: _ZeekHeader, line: str) -> None:
    if line.startswith("#separator"):
        # The separator line itself uses a space, and the value is escaped (\x09).
        hdr.separator = _zeek_unescape(line[len("#separator") :].strip(" ")) or "\t"
        return
    name, _, rest = line.partition(hdr.separator)
    if name == "#set_separator":
        hdr.set_separator = _zeek_unescape(rest)
    elif name == "#empty_field":
        hdr.empty = _zeek_unescape(rest)
    elif name == "#unset_field":
        hdr.unset = _zeek_unescape(rest)
    elif name == "#fields":
        hdr.fields = rest.split(hdr.separator)
        hdr.types = None
    elif name == "#types":
        hdr.types = rest.split(hdr.separator)
    # #path, #open, #close and comments carry nothing a record needs.


def _zeek_record(hdr: _ZeekHeader, values: list[str]) -> tuple[dict[str, Any] | None, str | None]:
    assert hdr.fields is not None
    types = hdr.types if hdr.types and len(hdr.types) == len(hdr.fields) else None
    record: dict[str, Any] = {}
    for i, (name, text) in enumerate(zip(hdr.fields, values, strict=True)):
        if text == hdr.unset:
            continue
        kind = types[i] if types else ""
        container = kind.startswith(("set[", "vector["))
        if text == hdr.empty:
            record[name] = [] if container else ""
            continue
        try:
            if container:
                inner = kind[kind.index("[") + 1 : -1]
                record[name] = [_zeek_scalar(v, inner) for v in text.split(hdr.set_separator)]
            else:
                record[name] = _zeek_scalar(text, kind)
        except ValueError:
            return None, f"field {name!r}: cannot read {text!r} as {kind}"
    return record, None


_READERS: dict[str, Callable[[Path], Iterator[Row]]] = {
    "jsonl": read_jsonl,
    "csv": read_csv,
    "parquet": read_parquet,
    "zeek": read_zeek,
    "zeek-json": read_zeek_json,
}


def _guarded(rows: Iterator[Row]) -> Iterator[Row]:
    """``rows`` until the file itself fails (truncated gzip): that ends it as one rejection."""
    last = 0
    try:
        for row in rows:
            last = row[0]
            yield row
    except (OSError, EOFError, zlib.error) as e:
        yield last + 1, None, f"cannot read further: {e}"


def read_records(path: str | Path, fmt: str | None = None) -> Iterator[Row]:
    """Raw records of one file in ``fmt`` (detected when None), before any mapping."""
    path = Path(path)
    kind = normalize_format(fmt) if fmt else detect_format(path)
    return _guarded(_READERS[kind](path))


def count_records(path: str | Path, fmt: str | None = None) -> int | None:
    """Cheap record count for a progress bar, or None when it would cost a full decompression.

    Counts lines, so blank or broken lines make it an upper bound.
    """
    path = Path(path)
    kind = normalize_format(fmt) if fmt else detect_format(path)
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return int(pq.ParquetFile(str(path)).metadata.num_rows)
        except Exception:
            return None
    with path.open("rb") as fh:
        if fh.read(2) == _GZIP_MAGIC:
            return None
        fh.seek(0)
        if kind == "zeek":
            return sum(1 for line in fh if line.strip() and not line.startswith(b"#"))
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b""))
        # A last line without a newline still holds a record.
        fh.seek(0, io.SEEK_END)
        if fh.tell():
            fh.seek(-1, io.SEEK_END)
            lines += fh.read(1) != b"\n"
    return max(lines - 1, 0) if kind == "csv" else lines


# --------------------------------------------------------------------------- mapping


@dataclass(frozen=True)
class FieldRule:
    """``target`` = the one source column, or the sum of several."""

    target: str
    sources: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.target}={'+'.join(self.sources)}"


@dataclass(frozen=True)
class FieldMapping:
    """Renames and sums applied to each record; fields no rule reads are kept as they are.

    All rules read the record as it came in, so ``a=b`` and ``b=a`` swap. The
    source columns a rule reads are dropped (they were renamed). A missing or
    null source leaves its target unset; in a sum, unset parts count as 0 as
    long as at least one part is set.
    """

    rules: tuple[FieldRule, ...] = ()

    def apply(self, record: dict[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        consumed: set[str] = set()
        for rule in self.rules:
            consumed.update(rule.sources)
            if len(rule.sources) == 1:
                value = record.get(rule.sources[0])
                if value is not None:
                    values[rule.target] = value
                continue
            total: int | float | None = None
            for src in rule.sources:
                part = record.get(src)
                if part is None:
                    continue
                total = (total or 0) + _addend(src, part)
            if total is not None:
                values[rule.target] = total
        out = {k: v for k, v in record.items() if k not in consumed}
        out.update(values)
        return out

    def __bool__(self) -> bool:
        return bool(self.rules)

    def __str__(self) -> str:
        return ", ".join(str(r) for r in self.rules)


# The name the design notes use; FieldMapping avoids shadowing collections.abc.Mapping here.
Mapping = FieldMapping


def _addend(name: str, value: Any) -> int | float:
    if isinstance(value, bool):
        raise MappingError(f"cannot add field {name!r}: {value!r} is not a number")
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        number = _number_or_str(value)
        if not isinstance(number, str):
            return number
    raise MappingError(f"cannot add field {name!r}: {value!r} is not a number")


def parse_mapping(specs: Iterable[str]) -> FieldMapping:
    """Rules from ``["target=column", "target=a+b", ...]``; raises MappingError on a bad spec."""
    rules: list[FieldRule] = []
    for spec in specs:
        target, sep, expr = spec.partition("=")
        target = target.strip()
        sources = tuple(part.strip() for part in expr.split("+"))
        if not sep or not target or not all(sources):
            raise MappingError(f"bad mapping {spec!r}: expected target=column or target=a+b")
        rules.append(FieldRule(target, sources))
    return FieldMapping(tuple(rules))


ZEEK_MAPPING = parse_mapping(
    [
        "timestamp=ts",
        "flow_id=uid",
        "src_ip=id.orig_h",
        "src_port=id.orig_p",
        "dst_ip=id.resp_h",
        "dst_port=id.resp_p",
        "protocol=proto",
        "connection_duration=duration",
        "bytes_transferred=orig_bytes+resp_bytes",
        "packet_count=orig_pkts+resp_pkts",
    ]
)
"""Zeek ``conn.log`` fields -> flow event fields; applied to both Zeek formats."""


def iter_records(
    path: str | Path,
    *,
    fmt: str | None = None,
    mapping: FieldMapping | None = None,
    tenant: str | None = None,
) -> Iterator[Row]:
    """Records of one file ready to send: Zeek mapping (Zeek formats), ``mapping``, then tenant."""
    path = Path(path)
    kind = normalize_format(fmt) if fmt else detect_format(path)
    mappings = [ZEEK_MAPPING] if kind in _ZEEK_FORMATS else []
    if mapping:
        mappings.append(mapping)
    for line_no, record, reason in read_records(path, kind):
        if record is None:
            yield line_no, None, reason
            continue
        try:
            for m in mappings:
                record = m.apply(record)
        except MappingError as e:
            yield line_no, None, str(e)
            continue
        if tenant is not None:
            record["tenant_id"] = tenant
        yield line_no, record, None


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


def epoch_seconds(value: Any) -> float | None:
    """Seconds since the epoch from an ISO 8601 string or a number of seconds; None if neither."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, datetime):
        stamp = value
    elif isinstance(value, str):
        text = value.strip()
        if _FLOAT_RE.fullmatch(text):
            return float(text)
        try:
            stamp = datetime.fromisoformat(text)
        except ValueError:
            return None
    else:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


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


Rejected = tuple[str, int, str]


def pump(
    sources: Iterable[tuple[str, Iterable[Row]]],
    send: Callable[[bytes | None, bytes], Any],
    *,
    pacing: Pacing,
    strict: bool = False,
    timestamp_field: str = "timestamp",
    idle: Callable[[float], Any] = time.sleep,
    on_progress: Callable[[int, str], Any] | None = None,
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
                value = orjson.dumps(record)
            except orjson.JSONEncodeError as e:
                if strict:
                    raise ReplayError(label, line_no, f"cannot encode as JSON: {e}") from e
                rejected.append((label, line_no, f"cannot encode as JSON: {e}"))
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


def _progress_bar(total: int | None) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("-- ev/s" if speed is None else f"{speed:,.0f} ev/s")

    columns: list[Any] = [TextColumn("[bold]{task.description}"), BarColumn()]
    columns += [MofNCompleteColumn(), RateColumn(), TimeElapsedColumn()]
    if total is not None:
        columns.append(TimeRemainingColumn())
    # stderr: stdout stays free for whatever the caller prints.
    return Progress(*columns, console=Console(stderr=True))


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
) -> ReplaySummary:
    """Produce every record of ``paths`` to ``topic``, paced, keyed by tenant id.

    A full producer queue is waited out (``poll``), never dropped. Messages
    still undelivered after the final flush count as delivery failures.
    """
    from confluent_kafka import KafkaError, Message, Producer

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
    producer = Producer(config)
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

    sources = ((str(p), iter_records(p, fmt=kind, mapping=mapping, tenant=tenant)) for p in paths)
    bar = _progress_bar(total) if progress else None
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
