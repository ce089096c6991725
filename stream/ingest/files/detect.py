"""Formats: their names, guessing a file's format, and counting its records cheaply.

The content decides first (Parquet magic, Zeek ``#fields`` headers, JSON
objects with Zeek field names, Argus's and nfdump's CSV headers), the file name
second, because captures are often renamed or compressed under names that say nothing.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import orjson

from stream.errors import StreamError
from stream.ingest.files.flowcsv import flow_csv_format
from stream.ingest.files.readers import GZIP_MAGIC, PARQUET_MAGIC, open_binary

__all__ = [
    "FORMATS", "ZEEK_FORMATS", "UnknownFormat", "count_records", "detect_format",
    "normalize_format",
]

FORMATS: tuple[str, ...] = (
    "jsonl", "csv", "parquet", "zeek", "zeek-json", "argus", "nfdump", "goflow2-pb",
)
_FORMAT_ALIASES = {
    "json": "jsonl",
    "ndjson": "jsonl",
    "zeek-tsv": "zeek",
    "zeek_tsv": "zeek",
    "tsv": "zeek",
    "zeek_json": "zeek-json",
    "zeekjson": "zeek-json",
    "pq": "parquet",
    "binetflow": "argus",
    "goflow2_pb": "goflow2-pb",
    "ra": "argus",
}
ZEEK_FORMATS = frozenset({"zeek", "zeek-json"})
"""Formats whose records get ``ZEEK_MAPPING`` before any user mapping."""


def _head_lines(path: Path, limit: int = 5) -> list[bytes]:
    """The first ``limit`` non-blank lines, for sniffing the format."""
    lines: list[bytes] = []
    try:
        with open_binary(path) as fh:
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
    if ext in (".parquet", ".pq") or magic == PARQUET_MAGIC:
        return "parquet"
    if ext == ".pb":  # binary: told by its name (goflow2 -format=bin -transport=file)
        return "goflow2-pb"
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
    if head:
        flows = flow_csv_format(next(csv.reader([head[0].decode("utf-8", "replace")]), []))
        if flows is not None:  # Argus's or nfdump's own columns, whatever the name
            return flows
    if ext == ".binetflow":
        return "argus"
    if ext in (".log", ".tsv"):
        return "zeek"
    if ext == ".csv" or (head and _CSV_HEADER.fullmatch(head[0])):
        return "csv"
    raise UnknownFormat(
        f"cannot tell the format of {path}: not JSON lines, Parquet, a Zeek log, Argus or "
        "nfdump flows, or CSV "
        "(a header row of field names separated by commas); name it with --format"
    )


class UnknownFormat(StreamError, ValueError):
    """A file whose content matches no format (plain text, binary junk)."""


# A CSV header: field names separated by commas (quoted or not), at least two of them.
_CSV_HEADER = re.compile(
    rb'\s*"?[A-Za-z_][\w.\- ]*"?\s*(,\s*"?[A-Za-z_][\w.\- ]*"?\s*)+'
)


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
    if kind == "goflow2-pb":
        return None  # length-prefixed messages: counting them reads the whole file
    with path.open("rb") as fh:
        if fh.read(2) == GZIP_MAGIC:
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
    # A CSV header is not a record.
    return max(lines - 1, 0) if kind in ("csv", "argus", "nfdump") else lines
