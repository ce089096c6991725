"""Readers: one file in one format -> rows of ``(line_no, record | None, reason | None)``.

Every reader yields a ``Row`` per record it finds, so one bad line is reported
with its line number and a reason, never fatal. Readers do no mapping and no
format guessing (``detect`` and the package's ``read_records`` do that); they
only turn bytes into plain dicts that orjson can encode. Compressed input is
recognised by its gzip magic, not by its name.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import orjson

from stream.ingest import goflow2pb
from stream.ingest.timestamps import FLOAT_RE

__all__ = [
    "GZIP_MAGIC",
    "PARQUET_MAGIC",
    "READERS",
    "Row",
    "is_gzip",
    "number_or_str",
    "open_binary",
    "read_csv",
    "read_goflow2_pb",
    "read_jsonl",
    "read_parquet",
    "read_zeek",
    "read_zeek_json",
]

Row = tuple[int, dict[str, Any] | None, str | None]
"""A reader result: line number (1-based; 0 = whole file), record, reason it was rejected."""

GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"


# --------------------------------------------------------------------------- opening


def is_gzip(path: Path) -> bool:
    """Whether ``path`` starts with the gzip magic (names lie: ``capture.bin`` may be gzip)."""
    with path.open("rb") as probe:
        return probe.read(2) == GZIP_MAGIC


def open_binary(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed when it is gzip (judged by its magic, not its name)."""
    if is_gzip(path):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


# --------------------------------------------------------------------------- readers


def read_jsonl(path: str | Path) -> Iterator[Row]:
    """JSON objects, one per line (plain or gzip); blank lines are skipped."""
    with open_binary(Path(path)) as fh:
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


# Text that is a number: CSV cells, Zeek fields without #types, summed mapping parts and
# epoch-second timestamps (``stream.ingest.timestamps``, which holds FLOAT_RE) all use
# these, so "12" means 12 wherever it appears.
_INT_RE = re.compile(r"[+-]?\d+")


def number_or_str(text: str) -> int | float | str:
    """``text`` as an int or a float when it looks like one, else ``text`` unchanged."""
    candidate = text.strip()
    if _INT_RE.fullmatch(candidate):
        return int(candidate)
    if FLOAT_RE.fullmatch(candidate):
        return float(candidate)
    return text


def csv_rows(path: str | Path) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """The non-blank rows of a CSV file (plain or gzip) as lists of cells, each with the
    line it starts on; a row the parser refuses is ``(line, None, reason)``."""
    with open_binary(Path(path)) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline="")
        reader = csv.reader(text)
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
            if row and not (len(row) == 1 and not row[0].strip()):
                yield start, row, None


def read_csv(path: str | Path) -> Iterator[Row]:
    """CSV with a header row (plain or gzip); numeric-looking cells become numbers.

    An empty cell means the field is unset, so it is left out of the record.
    """
    header: list[str] | None = None
    for start, row, reason in csv_rows(path):
        if row is None:
            yield start, None, reason
            continue
        if header is None:
            header = [name.strip() for name in row]
            continue
        if len(row) != len(header):
            yield start, None, f"expected {len(header)} columns, got {len(row)}"
            continue
        yield (
            start,
            {name: number_or_str(v) for name, v in zip(header, row, strict=True) if v != ""},
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

    with open(path, "rb") as fh:
        head = fh.read(len(PARQUET_MAGIC))
    if head != PARQUET_MAGIC:
        # Not Parquet at all (named so by --format): the file's error, not one bad record.
        from stream.ingest.files.detect import UnknownFormat

        raise UnknownFormat(f"{path} is not a Parquet file (it does not start with "
                            f"{PARQUET_MAGIC!r}); name its format with --format")
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
        return number_or_str(_zeek_unescape(text))
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
    with open_binary(Path(path)) as fh:
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


READERS: dict[str, Callable[[Path], Iterator[Row]]] = {
    # Keyed by the canonical names of ``detect.FORMATS``.
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


def read_goflow2_pb(path: str | Path) -> Iterator[Row]:
    """A file goflow2's file transport wrote with ``-format=bin``: one row per message
    (its number in the file where a line number would be)."""
    with open_binary(Path(path)) as fh:
        data = fh.read()
    for k, body, reason in goflow2pb.delimited(data):
        if body is None:
            yield k, None, reason
            continue
        try:
            yield k, goflow2pb.record(body), None
        except ValueError as e:
            yield k, None, str(e)
