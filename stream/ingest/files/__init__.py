"""Recorded traffic from files: the only code that turns files into records.

``replay`` (to Kafka), ``score``/``evaluate`` (offline) and ``train`` all read
their input here, so every command accepts the same formats (JSONL, CSV,
Parquet, Zeek TSV, Zeek JSON, Argus and nfdump CSV; gzip by magic), applies the same mappings and
reports a bad line the same way: as a row with its line number and a reason.

- ``read_records``: raw records of one file, before any mapping.
- ``iter_records``: records ready to use (Zeek mapping, user mapping, tenant).
- ``load_records``: a whole file at once, good records and unreadable lines apart.

The modules: ``readers`` (one format each), ``flowcsv`` (Argus and nfdump, read
into the flow event's fields), ``detect`` (format names and guessing), ``mapping`` (the
``--map`` language), ``timestamps`` (event times).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from stream.ingest.files.detect import (
    FORMATS,
    ZEEK_FORMATS,
    count_records,
    detect_format,
    normalize_format,
)
from stream.ingest.files.flowcsv import FLOW_CSV_READERS
from stream.ingest.files.readers import (
    READERS,
    Row,
    _guarded,
    read_csv,
    read_goflow2_pb,
    read_jsonl,
    read_parquet,
    read_zeek,
    read_zeek_json,
)
from stream.ingest.mapping import (
    ZEEK_MAPPING,
    FieldMapping,
    FieldRule,
    Mapping,
    MappingError,
    parse_mapping,
)
from stream.ingest.timestamps import epoch_seconds

__all__ = [
    "FORMATS",
    "ZEEK_MAPPING",
    "FieldMapping",
    "FieldRule",
    "LoadResult",
    "Mapping",
    "MappingError",
    "Row",
    "Unreadable",
    "count_records",
    "detect_format",
    "epoch_seconds",
    "iter_records",
    "load_records",
    "normalize_format",
    "parse_mapping",
    "read_csv",
    "read_jsonl",
    "read_parquet",
    "read_records",
    "read_zeek",
    "read_zeek_json",
]


def read_records(path: str | Path, fmt: str | None = None) -> Iterator[Row]:
    """Raw records of one file in ``fmt`` (detected when None), before any mapping."""
    path = Path(path)
    kind = normalize_format(fmt) if fmt else detect_format(path)
    reader = READERS.get(kind) or FLOW_CSV_READERS.get(kind) or read_goflow2_pb
    return _guarded(reader(path))


def iter_records(
    path: str | Path,
    *,
    fmt: str | None = None,
    mapping: FieldMapping | None = None,
    tenant: str | None = None,
    raw: bool = False,
) -> Iterator[Row]:
    """Records of one file ready to send: Zeek mapping (Zeek formats), ``mapping``, then tenant.

    ``raw`` keeps a Zeek file's own field names (for a consumer or a model that reads
    it with ``--input-schema zeek``).
    """
    path = Path(path)
    kind = normalize_format(fmt) if fmt else detect_format(path)
    mappings = [ZEEK_MAPPING] if kind in ZEEK_FORMATS and not raw else []
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


class Unreadable(NamedTuple):
    """A line that gave no record: the same ``(file, line, reason)`` that replay reports."""

    file: str
    line: int
    reason: str


@dataclass
class LoadResult:
    """A whole file read: the good records in file order and the lines that were not."""

    path: str
    format: str
    records: list[dict[str, Any]] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)

    def describe_unreadable(self, first: int = 3) -> str:
        """``"2 unreadable lines: line 3: ...; line 7: ..."``, the first ``first`` spelled out.

        One line of text, so a command can print it or put it in an error message.
        """
        n = len(self.unreadable)
        head = "; ".join(f"line {u.line}: {u.reason}" for u in self.unreadable[:first])
        more = f"; and {n - first} more" if n > first else ""
        return f"{n} unreadable line{'' if n == 1 else 's'}" + (f": {head}{more}" if n else "")


def load_records(
    path: str | Path,
    *,
    fmt: str | None = None,
    mapping: FieldMapping | None = None,
    tenant: str | None = None,
    raw: bool = False,
) -> LoadResult:
    """Every record of ``path`` in memory (for training), read exactly as ``iter_records`` reads.

    Bad lines do not stop the load: they are collected in ``unreadable`` so
    the caller decides whether what is left is enough.
    """
    path = Path(path)
    # Detect once: the result says which reader was used, and a wrong guess is the
    # first thing to suspect when every line is unreadable.
    kind = normalize_format(fmt) if fmt else detect_format(path)
    result = LoadResult(str(path), kind)
    rows = iter_records(path, fmt=kind, mapping=mapping, tenant=tenant, raw=raw)
    for line_no, record, reason in rows:
        if record is None:
            result.unreadable.append(Unreadable(str(path), line_no, reason or "unreadable record"))
        else:
            result.records.append(record)
    return result
