"""Argus and nfdump flow files: their CSV columns and habits into the flow event's fields.

Argus (``ra -c , -s ...``, the "binetflow" files of many public captures) and nfdump
(``nfdump -o csv``) are how many teams and public datasets keep flows. Each writes
flows its own way; the readers here undo it, so a flow reads the same from either:

- **Argus**: ``StartTime`` as ``YYYY/MM/DD HH:MM:SS.ffffff`` (``RA_TIMEFORMAT``; epoch
  seconds with ``ra -u``; a time of day without a date is refused, since it places no
  flow in time); ports in hex where they are not ports (``0x0303``: an ICMP flow's type
  and code in 16 bits) and empty for ARP; ``Dir`` arrows padded with spaces
  (``"   ->"``, ``"  <?>"``); counts for both directions in ``TotPkts``/``TotBytes``
  (or ``SrcPkts``+``DstPkts``, ``SrcBytes``+``DstBytes``).
- **nfdump**: the columns by short names (``ts,te,td,sa,da,sp,dp,pr,flg,...,ipkt,ibyt,
  opkt,obyt,...``, nfdump 1.6 and early 1.7) or by long ones (``firstSeen,duration,
  proto,srcAddr,srcPort,dstAddr,dstPort,packets,bytes,...``, later 1.7); times as
  ``YYYY-MM-DD HH:MM:SS[.mmm]``; the protocol by name in capitals or by number; an
  ICMP flow's type and code as ``type.code`` in the destination port; a ``Summary``
  block after the flows unless ``-q``, which ends the records.

The flow event's fields: ``timestamp`` (epoch seconds; a time without a zone is UTC, as
everywhere in this tool), ``src_ip``, ``src_port``, ``dst_ip``, ``dst_port`` (integers:
decimal, Argus's hex, or nfdump's ``type.code`` as ``type * 256 + code``, the NetFlow
convention Argus's 16 bits follow), ``protocol`` (lower case; numbers named: 6 is
``tcp``), ``connection_duration`` (seconds), ``bytes_transferred`` and ``packet_count``
(both directions). Every other column is kept under its own name, a number where it
reads as one (``State``, ``Label``, ``flg``, ``sTos`` ...), so a feature spec or a
``--label-field`` can still read it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from stream.ingest.files.readers import Row, csv_rows, number_or_str, open_binary
from stream.ingest.timestamps import FLOAT_RE

__all__ = ["FLOW_CSV_READERS", "flow_csv_format", "read_argus", "read_nfdump"]

#: IANA protocol numbers by the names Argus and Zeek write.
_PROTOCOLS: Final = {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp",
                     51: "ah", 58: "ipv6-icmp", 132: "sctp"}

# Lower-cased header names -> the field each fills (how it is read: see _convert).
_ARGUS: Final = {"starttime": "timestamp", "dur": "connection_duration", "proto": "protocol",
                 "srcaddr": "src_ip", "sport": "src_port", "dstaddr": "dst_ip",
                 "dport": "dst_port", "totpkts": "packet_count", "totbytes": "bytes_transferred"}
_ARGUS_SUMS: Final = {"packet_count": ("srcpkts", "dstpkts"),
                      "bytes_transferred": ("srcbytes", "dstbytes")}
_NFDUMP_SHORT: Final = {"ts": "timestamp", "td": "connection_duration", "pr": "protocol",
                        "sa": "src_ip", "sp": "src_port", "da": "dst_ip", "dp": "dst_port"}
_NFDUMP_SHORT_SUMS: Final = {"packet_count": ("ipkt", "opkt"),
                             "bytes_transferred": ("ibyt", "obyt")}
_NFDUMP_LONG: Final = {"firstseen": "timestamp", "duration": "connection_duration",
                       "proto": "protocol", "srcaddr": "src_ip", "srcport": "src_port",
                       "dstaddr": "dst_ip", "dstport": "dst_port", "packets": "packet_count",
                       "bytes": "bytes_transferred"}
_NFDUMP_LONG_SUMS: Final = {"packet_count": ("inpackets", "outpackets"),
                            "bytes_transferred": ("inbytes", "outbytes")}


def flow_csv_format(header: list[str]) -> str | None:
    """``"argus"`` or ``"nfdump"`` when a CSV header row is one of theirs, else None."""
    names = {h.strip().lower() for h in header}
    if {"starttime", "srcaddr", "dstaddr", "proto"} <= names:
        return "argus"
    if {"ts", "te", "td", "sa", "da", "sp", "dp", "pr"} <= names:
        return "nfdump"
    if {"firstseen", "srcaddr", "dstaddr", "proto"} <= names:
        return "nfdump"
    return None


class _Layout:
    """One file's columns: which fill a field (and how), which are summed, which kept."""

    def __init__(self, header: list[str], renames: dict[str, str],
                 sums: dict[str, tuple[str, str]]) -> None:
        low = [h.strip().lower() for h in header]
        self.names = [h.strip() for h in header]
        self.fields = {i: renames[n] for i, n in enumerate(low) if n in renames}
        filled = set(self.fields.values())
        self.sums = {target: [low.index(p) for p in parts if p in low]
                     for target, parts in sums.items() if target not in filled}
        used = set(self.fields) | {i for parts in self.sums.values() for i in parts}
        self.kept = [i for i in range(len(low)) if i not in used]


def _rows(path: Path, fmt: str, renames: dict[str, str], sums: dict[str, tuple[str, str]],
          end: Callable[[list[str]], bool]) -> Iterator[Row]:
    layout: _Layout | None = None
    for start, row, reason in csv_rows(path):
        if row is None:
            yield start, None, reason
            continue
        if layout is None:
            if flow_csv_format(row) != fmt:
                yield start, None, f"not an {fmt} header: {','.join(row)[:200]!r}"
                return
            layout = _Layout(row, renames, sums)
            continue
        if end(row):
            return
        if len(row) != len(layout.names):
            yield start, None, f"expected {len(layout.names)} columns, got {len(row)}"
            continue
        try:
            yield start, _convert(layout, row), None
        except ValueError as e:
            yield start, None, str(e)


def _convert(layout: _Layout, row: list[str]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for i in layout.kept:
        cell = row[i].strip()
        if cell:
            record[layout.names[i]] = number_or_str(cell)
    for i, target in layout.fields.items():
        cell = row[i].strip()
        if not cell:
            continue  # unset: ARP has no ports, a one-way flow no reply counts
        if target == "protocol":
            record[target] = _protocol(cell)
        elif target == "timestamp":
            record[target] = _time(cell, layout.names[i])
        elif target in ("src_port", "dst_port"):
            record[target] = _port(cell, layout.names[i])
        elif target in ("src_ip", "dst_ip"):
            record[target] = cell
        else:
            record[target] = _number(cell, layout.names[i])
    for target, parts in layout.sums.items():
        cells = [row[i].strip() for i in parts if row[i].strip()]
        if cells:
            record[target] = sum(_number(c, target) for c in cells)
    return record


_ARGUS_TIME: Final = re.compile(r"(\d{4})/(\d{2})/(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(\.\d+)?")
_TIME_OF_DAY: Final = re.compile(r"\d{1,2}:\d{2}:\d{2}(\.\d+)?")


def _time(cell: str, column: str) -> float:
    """Epoch seconds from Argus's or nfdump's start time (UTC when it has no zone)."""
    if FLOAT_RE.fullmatch(cell):
        return float(cell)
    m = _ARGUS_TIME.fullmatch(cell)
    text = (f"{m[1]}-{m[2]}-{m[3]}T{m[4]}:{m[5]}:{m[6]}{m[7] or ''}" if m else cell)
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        if _TIME_OF_DAY.fullmatch(cell):
            raise ValueError(
                f"{column} {cell!r} has no date: write the date too (Argus: "
                "RA_TIMEFORMAT=\"%Y/%m/%d %T.%f\", or ra -u for epoch seconds)") from None
        raise ValueError(f"{column} {cell!r} is not a time") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def _port(cell: str, column: str) -> int:
    """A port: decimal, Argus's hex (``0x0303``), or nfdump's ICMP ``type.code``."""
    try:
        if cell[:2].lower() == "0x":
            return int(cell, 16)
        if "." in cell:
            kind, _, code = cell.partition(".")
            return int(kind) * 256 + int(code)
        return int(cell)
    except ValueError:
        raise ValueError(f"{column} {cell!r} is not a port") from None


def _protocol(cell: str) -> str:
    if cell.isdigit():
        return _PROTOCOLS.get(int(cell), cell)
    return cell.lower()


def _number(cell: str, column: str) -> int | float:
    value = number_or_str(cell)
    if isinstance(value, str):
        raise ValueError(f"{column} {cell!r} is not a number")
    return value


def read_argus(path: str | Path) -> Iterator[Row]:
    """Argus binetflow CSV (see the module doc)."""
    return _rows(Path(path), "argus", _ARGUS, _ARGUS_SUMS, lambda row: False)


def read_nfdump(path: str | Path) -> Iterator[Row]:
    """``nfdump -o csv`` in either column naming (see the module doc); the ``Summary``
    block nfdump prints after the flows ends the records."""
    with open_binary(Path(path)) as raw:
        head = raw.readline().decode("utf-8-sig", "replace")
    names = {h.strip().lower() for h in head.split(",")}
    renames, sums = ((_NFDUMP_LONG, _NFDUMP_LONG_SUMS) if "firstseen" in names
                     else (_NFDUMP_SHORT, _NFDUMP_SHORT_SUMS))
    return _rows(Path(path), "nfdump", renames, sums,
                 lambda row: row[0].strip() == "Summary")


FLOW_CSV_READERS: Final[dict[str, Callable[[Path], Iterator[Row]]]] = {
    "argus": read_argus,
    "nfdump": read_nfdump,
}
