"""Sensor schemas: each sensor's field names read as the canonical flow event fields.

Zeek, Suricata and goflow2 describe the same flow with different names and
units. A :class:`Schema` says, per canonical field (``src_ip``, ``dst_port``,
``bytes_transferred``, ...), how to get it from what the sensor writes, as an
expression of the feature grammar (``add(orig_bytes, resp_bytes)``). Every
other field of the sensor passes through under its own name, so feature specs
can still use ``conn_state``, ``history``, ``app_proto`` and the rest.

Records are never rewritten to be read: :class:`SchemaColumns` is a
:class:`~stream.features.columns.ColumnSource` over any other one (records
read from files, a batch decoded from the stream), so a feature spec is
evaluated over raw sensor events directly. :func:`to_native` turns records into native flow events
with the same columns, for ``stream replay --input-schema`` and training files:
one implementation of the aliases for both paths, so they cannot drift.

Unset stays unset: a Zeek scan's S0 connection has no ``duration`` and no
bytes, and its ``connection_duration`` is missing, not 0. Feature specs decide
with ``fill``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import numpy as np

from stream.features.columns import (
    MISSING,
    ColumnSource,
    RecordColumns,
    lookup,
    string_column,
    without,
)
from stream.features.expr import Compiled, EvalContext, Ref, SpecError, compile_expr
from stream.outcomes.reasons import MISSING_FEATURE, OK

__all__ = [
    "CANONICAL_FIELDS",
    "SCHEMAS",
    "Schema",
    "SchemaColumns",
    "get_schema",
    "to_native",
]

CANONICAL_FIELDS: Final = (
    "src_ip",
    "dst_ip",
    "src_port",
    "dst_port",
    "protocol",
    "bytes_transferred",
    "packet_count",
    "connection_duration",
    "timestamp",
)
"""The flow event fields every schema maps to (``tenant_id`` and ``flow_id`` pass through)."""

# Floats with an integral value below this are written back as ints by to_native:
# sums of byte counts stay "49731" in JSON, as the sensor wrote the parts.
_EXACT_INT: Final = 2.0**53


@dataclass(frozen=True)
class Schema:
    """How one sensor's records read as flow events.

    ``aliases``: canonical field -> expression in the feature grammar over the
    sensor's raw fields, compiled once here (a bad expression is a SpecError at
    import, not at the first batch). ``wrappers``: envelope keys whose object
    holds the record (zeek-kafka's ``tag_json`` writes ``{"conn": {...}}``); a
    path absent at the top level is looked up again inside each, in order.
    """

    name: str
    aliases: Mapping[str, str] = field(default_factory=dict)
    wrappers: tuple[str, ...] = ()
    doc: str = ""
    compiled: Mapping[str, Compiled] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Read-only: schemas are shared module state, read by every consumer at once.
        object.__setattr__(self, "aliases", MappingProxyType(dict(self.aliases)))
        object.__setattr__(self, "wrappers", tuple(self.wrappers))
        compiled: dict[str, Compiled] = {}
        for target, text in self.aliases.items():
            try:
                c = compile_expr(text)
            except SpecError as e:
                raise SpecError(f"schema {self.name!r}, alias {target!r}: {e}") from None
            # An alias is a pure function of one record: nothing learned, one column.
            if c.fitted or c.multi:
                raise SpecError(
                    f"schema {self.name!r}, alias {target!r}: {text!r} must be a per-record"
                    " expression (no onehot/freq or other fitted function)"
                )
            compiled[target] = c
        object.__setattr__(self, "compiled", MappingProxyType(compiled))

    def __hash__(self) -> int:
        return hash((self.name, tuple(self.aliases.items()), self.wrappers))

    def plain(self, target: str) -> str | None:
        """The raw field a bare-field alias renames (``src_ip`` -> ``id.orig_h``), else None."""
        c = self.compiled.get(target)
        root = None if c is None else c.root
        return root.path if isinstance(root, Ref) else None

    def reads(self, target: str) -> tuple[str, ...]:
        """The raw fields the alias of ``target`` reads, in order of first use."""
        c = self.compiled.get(target)
        if c is None:
            return ()
        return tuple(dict.fromkeys(path for path, _ in c.fields))

    @property
    def consumed(self) -> tuple[str, ...]:
        """Every raw field some alias reads (what :func:`to_native` replaces)."""
        return tuple(dict.fromkeys(p for t in self.aliases for p in self.reads(t)))


SCHEMAS: Final[Mapping[str, Schema]] = MappingProxyType(
    {
        s.name: s
        for s in (
            Schema("native", doc="flow events as this project writes them: no renames"),
            Schema(
                "zeek",
                {
                    # ZEEK_MAPPING's order, so to_native writes the same JSON byte for byte.
                    "timestamp": "ts",
                    # ZEEK_MAPPING renames uid too; keeping it makes to_native a drop-in.
                    "flow_id": "uid",
                    "src_ip": "id.orig_h",
                    "src_port": "id.orig_p",
                    "dst_ip": "id.resp_h",
                    "dst_port": "id.resp_p",
                    "protocol": "proto",
                    "connection_duration": "duration",
                    # add(): unset only when both sides are; a half-open flow keeps its one side.
                    "bytes_transferred": "add(orig_bytes, resp_bytes)",
                    "packet_count": "add(orig_pkts, resp_pkts)",
                },
                wrappers=("conn",),
                doc="Zeek conn.log (TSV, JSON, zeek-kafka with or without tag_json)",
            ),
            Schema(
                "suricata",
                {
                    "src_ip": "src_ip",
                    "src_port": "src_port",
                    "dst_ip": "dest_ip",
                    "dst_port": "dest_port",
                    "protocol": "proto",
                    "bytes_transferred": "add(flow.bytes_toserver, flow.bytes_toclient)",
                    "packet_count": "add(flow.pkts_toserver, flow.pkts_toclient)",
                    "connection_duration": "flow.age",
                    "timestamp": "timestamp",
                },
                doc="Suricata EVE JSON (flow events; other event types pass through)",
            ),
            Schema(
                "goflow2",
                {
                    "src_ip": "src_addr",
                    "src_port": "src_port",
                    "dst_ip": "dst_addr",
                    "dst_port": "dst_port",
                    "protocol": "proto",
                    # Counters are per sampled packet; a sampling rate of 0 means unknown.
                    "bytes_transferred": "bytes * max(fill(sampling_rate, 1), 1)",
                    "packet_count": "packets * max(fill(sampling_rate, 1), 1)",
                    "connection_duration": "(time_flow_end_ns - time_flow_start_ns) / 1e9",
                    "timestamp": "time_flow_start_ns / 1e9",
                },
                doc="goflow2 -format=json (NetFlow v5/v9, IPFIX, sFlow), counters unsampled",
            ),
        )
    }
)
"""Every schema by name: ``native``, ``zeek``, ``suricata``, ``goflow2``."""


#: Schemas that read another's records once their wire form is decoded: goflow2's
#: protobuf (``stream.ingest.goflow2pb``) becomes the records of its JSON.
WIRE_FORMS: Final[Mapping[str, str]] = MappingProxyType({"goflow2-pb": "goflow2"})


def get_schema(name: str) -> Schema:
    """The schema called ``name``; ValueError naming the valid ones for any other."""
    schema = SCHEMAS.get(WIRE_FORMS.get(name, name))
    if schema is None:
        valid = ", ".join([*SCHEMAS, *WIRE_FORMS])
        raise ValueError(f"unknown input schema {name!r}: expected one of {valid}")
    return schema


# ---- columns ---------------------------------------------------------------------------


def _row_source(source: ColumnSource, rows: np.ndarray, cache: dict[bytes, Any]) -> Any:
    """A source for just ``rows`` of ``source`` when it can give one cheaply, else ``source``.

    Over decoded records that is a RecordColumns of those records (behind the
    same wrappers), so a second lookup costs only the rows that need it. Other
    sources give whole columns, which the caller indexes: the values are the
    same either way.
    """
    if len(rows) == source.n:
        return source
    inner = source.source if isinstance(source, _Unwrapped) else source
    if not isinstance(inner, RecordColumns):
        return source
    key = rows.tobytes()
    sub = cache.get(key)
    if sub is None:
        records = inner.records
        sub = RecordColumns([records[i] for i in rows.tolist()])
        if isinstance(source, _Unwrapped):
            sub = _Unwrapped(sub, source.wrappers)
        cache[key] = sub
    return sub


class _Unwrapped:
    """The raw fields of ``source``, looked up again inside the wrappers where absent.

    No aliases here: it is what alias expressions and passthrough fields read,
    so an alias naming its own canonical field (Suricata's ``src_ip``) reads
    the raw one instead of itself.
    """

    def __init__(self, source: ColumnSource, wrappers: tuple[str, ...]) -> None:
        self.source = source
        self.wrappers = wrappers
        self.n = source.n
        self._numeric: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._strings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._raw: dict[str, list[Any]] = {}
        self._subsets: dict[bytes, Any] = {}

    def _merged(self, path: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
        values, codes = getattr(self.source, kind)(path)
        for wrapper in self.wrappers:
            rows = np.flatnonzero(codes == MISSING_FEATURE)
            if not len(rows):
                break
            sub = _row_source(self.source, rows, self._subsets)
            wv, wc = getattr(sub, kind)(f"{wrapper}.{path}")
            if sub is self.source and len(rows) < self.n:
                wv, wc = wv[rows], wc[rows]
            found = wc != MISSING_FEATURE
            if not found.any():
                continue
            # Copies: the inner source may cache the arrays it returned.
            values, codes = values.copy(), codes.copy()
            values[rows[found]] = wv[found]
            codes[rows[found]] = wc[found]
        return values, codes

    def numeric(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        col = self._numeric.get(path)
        if col is None:
            col = self._numeric[path] = self._merged(path, "numeric")
        return col

    def strings(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        col = self._strings.get(path)
        if col is None:
            col = self._strings[path] = self._merged(path, "strings")
        return col

    def raw(self, path: str) -> list[Any]:
        """Raw values per record (needs a source with ``raw``, as RecordColumns has)."""
        vals = self._raw.get(path)
        if vals is None:
            vals = list(self.source.raw(path))  # type: ignore[attr-defined]
            for wrapper in self.wrappers:
                rows = [i for i, v in enumerate(vals) if v is None or v is MISSING]
                if not rows:
                    break
                records = self.source.records  # type: ignore[attr-defined]
                for i in rows:
                    v = lookup(records[i], f"{wrapper}.{path}")
                    if v is not MISSING:
                        vals[i] = v
            self._raw[path] = vals
        return vals


class SchemaColumns:
    """A :class:`~stream.features.columns.ColumnSource` that reads ``source`` through ``schema``.

    ``numeric(path)``: a canonical field with an alias is the alias expression
    evaluated over the raw fields; any other path is the raw field. ``strings(path)``:
    a bare-field alias is its raw field's text (``src_ip`` is ``id.orig_h``), a
    computed alias is the canonical text of its number (same codes as
    ``numeric``), any other path the raw text. Where an alias yields nothing
    and the record already has the canonical field itself (a record mapped
    before), that field is used, as :func:`to_native` keeps it. With wrappers,
    rows where a raw path is missing are looked up again under each wrapper
    (``conn.<path>``). Every column is computed once per path; the values
    depend only on what the inner source returns, never on how it is
    implemented.
    """

    def __init__(self, source: ColumnSource, schema: Schema) -> None:
        self.source = source
        self.schema = schema
        self.n = source.n
        self._raw = _Unwrapped(source, schema.wrappers) if schema.wrappers else None
        self._ctx: EvalContext | None = None
        self._alias: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._numeric: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._strings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._subsets: dict[bytes, Any] = {}

    @property
    def raw_source(self) -> ColumnSource:
        """The raw fields (wrappers applied, no aliases)."""
        return self._raw if self._raw is not None else self.source

    def numeric(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        col = self._numeric.get(path)
        if col is None:
            if path in self.schema.compiled:
                col = self._or_canonical(self._aliased(path), path, "numeric")
            else:
                col = self.raw_source.numeric(path)
            self._numeric[path] = col
        return col

    def strings(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        col = self._strings.get(path)
        if col is None:
            if path not in self.schema.compiled:
                col = self.raw_source.strings(path)
            else:
                plain = self.schema.plain(path)
                if plain is not None:
                    col = self.raw_source.strings(plain)
                else:
                    col = _as_text(*self._aliased(path))
                col = self._or_canonical(col, path, "strings")
            self._strings[path] = col
        return col

    def raw(self, path: str) -> list[Any]:
        """Raw values of a raw field per record, wrappers applied (RecordColumns sources only)."""
        if self._raw is not None:
            return self._raw.raw(path)
        return self.source.raw(path)  # type: ignore[attr-defined]

    def _aliased(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        """The alias of canonical field ``path`` evaluated as a number (no fallback)."""
        col = self._alias.get(path)
        if col is None:
            col = self._alias[path] = self._evaluate(self.schema.compiled[path])
        return col

    def _or_canonical(
        self, col: tuple[np.ndarray, np.ndarray], path: str, kind: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """``col``, with the raw canonical field ``path`` where the alias found nothing."""
        values, codes = col
        if path in self.schema.reads(path):
            return col  # the alias reads this very field (Suricata's src_ip): nothing to add
        rows = np.flatnonzero(codes == MISSING_FEATURE)
        if not len(rows):
            return col
        raw = self.raw_source
        sub = _row_source(raw, rows, self._subsets)
        fv, fc = getattr(sub, kind)(path)
        if sub is raw and len(rows) < self.n:
            fv, fc = fv[rows], fc[rows]
        found = fc != MISSING_FEATURE
        if not found.any():
            return col
        values, codes = values.copy(), codes.copy()
        values[rows[found]] = fv[found]
        codes[rows[found]] = fc[found]
        return values, codes

    def _evaluate(self, compiled: Compiled) -> tuple[np.ndarray, np.ndarray]:
        if self._ctx is None:
            # One context for every alias: raw columns shared by several aliases are read once.
            self._ctx = EvalContext(self.raw_source)
        with np.errstate(all="ignore"):
            col = compiled.root.eval(self._ctx)
        n = self.n
        values = np.asarray(col.values, dtype=np.float64)
        if values.ndim == 0:  # an alias without fields: a constant
            values = np.full(n, float(values))
        if col.codes is None:
            return values, np.zeros(n, dtype=np.uint8)
        codes = np.asarray(col.codes, dtype=np.uint8)
        # The protocol promises NaN wherever the code is not OK.
        return np.where(codes == OK, values, np.nan), codes


def _as_text(values: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A computed numeric column as category text: canonical text where OK, None elsewhere.

    Codes stay those of the number, so a row whose sum failed is rejected for
    the same reason whether a feature reads it as a number or as a category.
    """
    ok = codes == OK
    raw = [
        float(v) if good else MISSING for v, good in zip(values.tolist(), ok.tolist(), strict=True)
    ]
    texts, _ = string_column(raw)
    return texts, codes


# ---- records ---------------------------------------------------------------------------


def _unwrap(record: Mapping[str, Any], wrappers: tuple[str, ...]) -> dict[str, Any]:
    """One flat record: the wrapped objects' fields, under the top level's.

    The same precedence as :class:`SchemaColumns`: a top-level value wins unless
    it is null, then the wrappers in order.
    """
    inner = [w for w in wrappers if isinstance(record.get(w), Mapping)]
    if not inner:
        return dict(record)
    out: dict[str, Any] = {}
    for w in reversed(inner):
        out.update(record[w])
    for key, value in record.items():
        if key in inner:
            continue
        if value is not None or key not in out:
            out[key] = value
    return out


def _python_number(value: float) -> int | float:
    """A computed value as JSON would carry it: integral values as ints."""
    if value.is_integer() and abs(value) < _EXACT_INT:
        return int(value)
    return value


def to_native(records: Sequence[Mapping[str, Any]], schema: Schema) -> list[dict[str, Any]]:
    """``records`` rewritten as native flow events, by the columns of :class:`SchemaColumns`.

    Per record: wrappers are flattened into the record, each canonical field is
    set where its alias yields a value (a bare-field alias copies the raw value
    as it is, a computed one writes the number), the raw fields the aliases read
    are removed, and every other field is kept as it was. Where a computed
    alias cannot be computed for a reason other than a missing value (a string
    in a byte count), its raw fields stay and the canonical field is left unset,
    so nothing is lost. For ``zeek`` this equals ``ZEEK_MAPPING`` on Zeek files.
    The input records are not modified.
    """
    if not schema.aliases and not schema.wrappers:
        return [dict(r) for r in records]
    cols = SchemaColumns(RecordColumns(records), schema)
    # Per alias: the value to write per row (MISSING: write nothing), and the rows
    # whose raw fields must stay because the value could not be computed.
    values: dict[str, list[Any]] = {}
    kept: dict[str, np.ndarray] = {}
    for target in schema.aliases:
        plain = schema.plain(target)
        if plain is not None:
            values[target] = [MISSING if v is None else v for v in cols.raw(plain)]
            continue
        # The alias alone: a canonical field the record already has is kept as it is.
        nums, codes = cols._aliased(target)
        ok = (codes == OK).tolist()
        values[target] = [
            _python_number(v) if good else MISSING
            for v, good in zip(nums.tolist(), ok, strict=True)
        ]
        bad = (codes != OK) & (codes != MISSING_FEATURE)
        if bad.any():
            kept[target] = bad
    out: list[dict[str, Any]] = []
    consumed = schema.consumed
    for i, record in enumerate(records):
        rec = _unwrap(record, schema.wrappers)
        keep = {p for t, bad in kept.items() if bad[i] for p in schema.reads(t)}
        for path in consumed:
            if path in keep:
                continue
            if path in rec:
                del rec[path]  # rec is this function's own copy: no need to copy again
            elif "." in path:
                pruned = without(rec, path)  # copies the nested objects it changes
                if pruned is not None:
                    rec = pruned
        for target in schema.aliases:
            v = values[target][i]
            if v is not MISSING:
                rec[target] = v
        out.append(rec)
    return out
