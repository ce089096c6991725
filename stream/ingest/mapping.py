"""The ``--map`` language: rename and sum columns into the flow event schema.

``target=column`` renames, ``target=a+b`` sums. ``ZEEK_MAPPING`` is the same
language applied to Zeek ``conn.log`` fields, so Zeek input needs no flags.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from stream.errors import StreamError
from stream.ingest.files.readers import number_or_str

__all__ = ["ZEEK_MAPPING", "FieldMapping", "FieldRule", "Mapping", "MappingError", "parse_mapping"]


class MappingError(StreamError, ValueError):
    """A mapping spec that does not parse, or a record it cannot apply to (non-number in a sum)."""


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
    """One part of a sum: a number, or text that reads as one (CSV cells without types).

    ``True`` is an int to Python but never a byte count, so it is refused.
    """
    if isinstance(value, bool):
        raise MappingError(f"cannot add field {name!r}: {value!r} is not a number")
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        number = number_or_str(value)
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
