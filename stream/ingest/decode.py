"""Decoding a micro-batch of raw message values into columns, with validation.

A batch of Kafka message values becomes: a tenant id per row, a reason code per
row (0 = usable), and raw field columns built on demand, one numpy array per
field path for the whole batch: ``DecodedBatch`` is the stream's
``stream.features.ColumnSource``, so feature specs compute on it exactly as on
the records of a file (same path rule, same value rules).

Fast path: each message is decoded on its own (never joined with its
neighbours, so a hostile value cannot shift another message's fields) by a
msgspec decoder that reads only the tenant field and the top-level keys the
models have asked for (literal keys, dotted ones such as Zeek's ``id.orig_h``
included), skipping the rest of the document in C. Nested paths (Suricata's
``flow.bytes_toserver``) are looked up in the parsed document. Two batch-wide scans
then make that decoder exactly as strict as a full orjson parse, because a
message's bytes are spliced into its alert and must be JSON that any reader
accepts: the whole batch must be valid UTF-8, and no number literal may
overflow a double (msgspec does not look at the values of fields it skips).
Every message that fails or is flagged goes through ``orjson.loads``, which
decides its outcome exactly as before, so the fast path changes speed, never
results (tests/unit/ingest/test_decode.py checks this against a plain reference).
"""

from __future__ import annotations

import math
import re
import sys
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import islice
from operator import attrgetter
from typing import Any

import msgspec
import numpy as np
import orjson

from stream.config import TENANT_PATTERN
from stream.features.columns import MISSING, ColumnSource, lookup, numeric_column, string_column
from stream.features.spec import FeatureSpec
from stream.outcomes.reasons import (
    EMPTY,
    INVALID_TENANT,
    MALFORMED_JSON,
    MISSING_FEATURE,
    NOT_OBJECT,
    OK,
    OVERSIZE,
)

TENANT_RE = re.compile(TENANT_PATTERN)

# Feature names the fast decoder reads. Learned from the columns asked for (the
# first batch that needs a new name takes the slow path once); bounded so that
# odd model metadata cannot grow the decoder without limit.
MAX_FAST_FEATURES = 32
# A JSON number overflows a double only with an exponent of 3+ digits or with
# 200+ digits in a row (a 2-digit exponent needs a 210-digit mantissa). After
# mapping every digit to "0" and "E"/"+" to "e", both shapes are plain substrings.
_OVERFLOW_MAP = bytes.maketrans(b"0123456789E+", b"0000000000ee")
_OVERFLOW_EXPONENT = re.compile(rb"e000")
_OVERFLOW_DIGITS = b"0" * 200
# msgspec's nesting limit is the interpreter's recursion limit (1000 by default),
# below orjson's 1024; a process that raised it gets its deep messages rechecked.
_MSGSPEC_DEPTH_OK = 1000
_RECHECK_CHUNK = 2048
#: A subset of rows at least 1/this of a batch reads (and keeps) the whole column: it
#: costs about as much, and the next reader of the column gets it for free.
_SUBSET_SHARE = 8


def valid_tenant(value: object) -> bool:
    """True for a string of 1-64 characters from ``[A-Za-z0-9_.-]``."""
    return type(value) is str and TENANT_RE.fullmatch(value) is not None


#: How the fast decoder types a key: a number, or any scalar (for categories).
NUMBER, SCALAR = "number", "scalar"
_SCALAR_TYPE: Any = str | int | float | bool | None


class _Schema:
    """A msgspec decoder of the tenant field plus a fixed tuple of (key, kind).

    A ``NUMBER`` key that is absent decodes to NaN (JSON itself cannot express NaN,
    so NaN means "absent"); a ``SCALAR`` key decodes to its value, None when absent
    or null. ``null`` for a number, strings or booleans for a number, containers and
    out-of-range numbers make the decode fail, and the message takes the slow path.
    """

    def __init__(self, tenant_field: str, keys: tuple[tuple[str, str], ...]) -> None:
        self.tenant_field = tenant_field
        self.keys = keys
        self.kind = dict(keys)
        slot = {k: f"f{i}" for i, (k, _kind) in enumerate(keys)}
        fields: list[tuple[str, Any, Any]] = [("t", _SCALAR_TYPE, None)]
        fields += [
            (slot[k], float, math.nan) if kind == NUMBER else (slot[k], _SCALAR_TYPE, None)
            for k, kind in keys
        ]
        rename = {"t": tenant_field, **{v: k for k, v in slot.items()}}
        row = msgspec.defstruct("Row", fields, rename=rename, gc=False)
        self.decode: Callable[[bytes], Any] = msgspec.json.Decoder(row).decode
        self.placeholder = row()  # stands in for rows the slow path decided
        self.tenant = attrgetter("t")
        self.getters = {k: attrgetter(s) for k, s in slot.items()}


_lock = threading.Lock()
_schemas: dict[str, _Schema] = {}


def _schema_for(tenant_field: str) -> _Schema:
    with _lock:
        schema = _schemas.get(tenant_field)
        if schema is None:
            schema = _schemas[tenant_field] = _Schema(tenant_field, ())
        return schema


def _learn(tenant_field: str, key: str, kind: str) -> None:
    """Have later batches read ``key`` on the fast path (a key read both ways is SCALAR)."""
    with _lock:
        schema = _schemas[tenant_field]
        known = schema.kind.get(key)
        if key == tenant_field or known in (kind, SCALAR):
            return
        if known is None and len(schema.keys) >= MAX_FAST_FEATURES:
            return
        keys = tuple((k, SCALAR if k == key else v) for k, v in schema.keys)
        if known is None:
            keys = (*keys, (key, kind))
        _schemas[tenant_field] = _Schema(tenant_field, keys)


class DecodedBatch:
    """One micro-batch of message values, parsed once; field columns on demand.

    ``reason[i]`` is 0 while row ``i`` is usable and a reason code once it is
    rejected; ``detail`` holds a human-readable explanation for rejected rows.

    The tenant of a row is its ``tenant_field`` (default ``tenant_id``), or, when
    ``tenants`` is given, that list (a tenant taken from the message key, a header
    or a constant); either way it is validated like ``tenant_id``.
    """

    def __init__(
        self,
        values: Sequence[bytes | None],
        max_bytes: int = 1_000_000,
        *,
        tenant_field: str = "tenant_id",
        tenants: Sequence[Any] | None = None,
    ) -> None:
        self.values = values
        self.n = len(values)
        self.reason = np.zeros(self.n, dtype=np.uint8)
        self.detail: dict[int, str] = {}
        self.late = 0  # rows scored against window state they were too late to update
        self.late_by: Counter[str] = Counter()  # ... per tenant
        self.tenant_field = tenant_field
        self._schema = _schema_for(tenant_field)
        # Rows the slow path decided: row -> orjson document (None when rejected).
        self._slow: dict[int, Any] = {}
        self._rows: list[Any] = self._parse(max_bytes)
        self.tenants: list[str] = self._tenants(tenants)
        self._numeric: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._strings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._docs: list[Any] | None = None

    def reject(self, rows: np.ndarray | Sequence[int], code: int, detail: str, *,
               first_wins: bool = True) -> None:
        """Mark rows rejected with a reason (the first reason given to a row wins, unless
        ``first_wins`` is False: a wire-form failure known before the decode, whose
        stand-in value the decoder could only call empty)."""
        for i in np.asarray(rows, dtype=np.int64).tolist():
            if self.reason[i] == OK or not first_wins:
                self.reason[i] = code
                self.detail[i] = detail

    @property
    def docs(self) -> list[Any]:
        """Every row as orjson parses it (None for rows rejected before parsing)."""
        if self._docs is None:
            slow, values = self._slow, self.values
            self._docs = [
                slow[i] if i in slow else orjson.loads(values[i])  # type: ignore[arg-type]
                for i in range(self.n)
            ]
        return self._docs

    def doc(self, i: int) -> Any:
        """Row ``i`` as orjson parses it (None for a row rejected before parsing)."""
        if self._docs is not None:
            return self._docs[i]
        if i in self._slow:
            return self._slow[i]
        return orjson.loads(self.values[i])  # type: ignore[arg-type]

    # ---- parsing --------------------------------------------------------------------

    def _parse(self, max_bytes: int) -> list[Any]:
        values = self.values
        if not self.n:
            return []
        try:
            biggest = max(map(len, values))  # type: ignore[arg-type]
        except TypeError:  # a None value: found and classified by the loop below
            biggest = max(len(v) if v else 0 for v in values)
        todo: Sequence[bytes | None] = values
        if biggest > max_bytes:
            todo = list(values)
            for i, v in enumerate(values):
                if v and len(v) > max_bytes:
                    self._fail(i, OVERSIZE, f"{len(v)} bytes > limit {max_bytes}")
                    todo[i] = None
        decode = self._schema.decode
        rows: list[Any] = []
        while len(rows) < self.n:
            start = len(rows)
            try:
                # C-speed run until a message fails; list.extend keeps what it got.
                rows.extend(map(decode, islice(todo, start, None)))  # type: ignore[arg-type]
            except Exception:
                i = len(rows)
                self._slow_path(i)
                rows.append(self._schema.placeholder)
        self._recheck(rows)
        return rows

    def _fail(self, i: int, code: int, detail: str) -> None:
        self.reason[i] = code
        self.detail[i] = detail
        self._slow[i] = None

    def _slow_path(self, i: int) -> None:
        """Decide row ``i`` with a full orjson parse (exactly the documented rules)."""
        if i in self._slow:  # oversize, already decided
            return
        v = self.values[i]
        if not v:
            self._fail(i, EMPTY, "message has no value")
            return
        try:
            self._slow[i] = orjson.loads(v)
        except orjson.JSONDecodeError as e:
            self._fail(i, MALFORMED_JSON, f"malformed JSON: {e}"[:300])

    def _recheck(self, rows: list[Any]) -> None:
        """Send rows the fast decoder accepted but orjson might not to the slow path."""
        slow = self._slow
        fast: Sequence[int] = [i for i in range(self.n) if i not in slow] if slow else range(self.n)
        # Chunks of ~0.5 MB keep the scans in cache, however large the batch.
        for lo in range(0, len(fast), _RECHECK_CHUNK):
            chunk = fast[lo : lo + _RECHECK_CHUNK]
            for k in sorted(_suspects([self.values[i] for i in chunk])):  # type: ignore[misc]
                i = chunk[k]
                self._slow_path(i)
                rows[i] = self._schema.placeholder

    def _tenants(self, given: Sequence[Any] | None) -> list[str]:
        if given is not None:
            raw: list[Any] = list(given)
        else:
            raw = list(map(self._schema.tenant, self._rows))
            field = self.tenant_field
            for i, doc in self._slow.items():
                raw[i] = doc.get(field) if type(doc) is dict else None
        bad_values: set[Any] = set()
        try:
            for t in set(raw):  # validate each distinct value once, not each row
                if not valid_tenant(t):
                    bad_values.add(t)
            unhashable = False
        except TypeError:  # a list/dict tenant_id: fall back to per-row checks
            unhashable = True
        if bad_values or unhashable:
            for i, t in enumerate(raw):
                if self.reason[i] != OK:
                    continue
                doc = self._slow.get(i, self._rows[i])
                if i in self._slow and type(doc) is not dict:
                    self.reason[i] = NOT_OBJECT
                    self.detail[i] = f"JSON value is a {type(doc).__name__}, not an object"
                elif not valid_tenant(t):
                    self.reason[i] = INVALID_TENANT
                    what = "tenant" if given is not None else self.tenant_field
                    self.detail[i] = (
                        f"missing {what}"
                        if t is None
                        else f"invalid {what} {str(t)[:80]!r}: want [A-Za-z0-9_.-]{{1,64}}"
                    )
        if not bad_values and not unhashable:
            return raw  # every value is a valid tenant string already
        return [t if type(t) is str else "" for t in raw]

    # ---- columns (the ColumnSource protocol) --------------------------------------

    def numeric(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        """Field ``path`` for every row as float64, with a per-row reason code (0 = ok)."""
        cached = self._numeric.get(path)
        if cached is not None:
            return cached
        getter = self._schema.getters.get(path)
        if getter is None or self._schema.kind[path] != NUMBER:
            _learn(self.tenant_field, path, NUMBER)
            if getter is None:
                col = numeric_column(self._raw_from_docs(path, range(self.n)))
            else:
                col = numeric_column(self._raw_fast(path, getter))
        else:
            arr = np.fromiter(map(getter, self._rows), dtype=np.float64, count=self.n)
            # NaN is how the fast decoder says "absent" (JSON has no NaN literal).
            absent = np.isnan(arr)
            codes = np.where(absent, MISSING_FEATURE, OK).astype(np.uint8)
            # The slow path's rows, and a dotted path that may be nested instead.
            redo = set(self._slow)
            if "." in path and absent.any():
                redo.update(np.flatnonzero(absent).tolist())
            if redo:
                rows = sorted(redo)
                arr[rows], codes[rows] = numeric_column(self._raw_from_docs(path, rows))
            col = (arr, codes)
        self._numeric[path] = col
        return col

    def strings(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        """Field ``path`` for every row as category text, with a per-row reason code."""
        cached = self._strings.get(path)
        if cached is not None:
            return cached
        getter = self._schema.getters.get(path)
        if getter is None or self._schema.kind[path] != SCALAR:
            _learn(self.tenant_field, path, SCALAR)
            raw = self._raw_from_docs(path, range(self.n))
        else:
            raw = self._raw_fast(path, getter)
        col = self._strings[path] = string_column(raw)
        return col

    def numeric_at(self, path: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Field ``path`` for ``rows`` only, as :meth:`numeric` gives it for them: sliced
        from the whole column when it was read already (or when most rows are asked),
        else read for those rows alone (a batch's few alerts need not pay for every
        event's value) and not kept."""
        return self._at(path, rows, NUMBER)

    def strings_at(self, path: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Field ``path`` for ``rows`` only, as :meth:`strings` gives it (see
        :meth:`numeric_at`)."""
        return self._at(path, rows, SCALAR)

    def _at(self, path: str, rows: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
        number = kind == NUMBER
        if path in (self._numeric if number else self._strings) or \
                len(rows) * _SUBSET_SHARE >= self.n:
            values, codes = (self.numeric if number else self.strings)(path)
            return values[rows], codes[rows]
        return (numeric_column if number else string_column)(
            self._raw_at(path, rows.tolist(), kind))

    def _raw_at(self, path: str, rows: list[int], kind: str) -> list[Any]:
        """Raw values of ``rows`` as the whole-column readers would find them."""
        getter = self._schema.getters.get(path)
        if getter is None or self._schema.kind[path] != kind:
            return self._raw_from_docs(path, rows)
        out = []
        for i in rows:
            if i in self._slow:
                out.append(self._lookup(i, path))
                continue
            v = getter(self._rows[i])
            if kind == NUMBER and v != v:
                v = MISSING  # NaN: absent
            if "." in path and (v is None or v is MISSING):
                v = self._lookup(i, path)
            out.append(v)
        return out

    def _raw_fast(self, path: str, getter: Callable[[Any], Any]) -> list[Any]:
        """Raw values of a key the fast decoder read; slow rows and nested paths from docs."""
        raw: list[Any] = list(map(getter, self._rows))
        if self._schema.kind[path] == NUMBER:
            raw = [MISSING if v != v else v for v in raw]  # NaN: absent
        redo = set(self._slow)
        if "." in path:
            redo.update(i for i, v in enumerate(raw) if v is None or v is MISSING)
        for i in sorted(redo):
            raw[i] = self._lookup(i, path)
        return raw

    def _raw_from_docs(self, path: str, rows: Sequence[int] | range) -> list[Any]:
        return [self._lookup(i, path) for i in rows]

    def _lookup(self, i: int, path: str) -> Any:
        if i in self._slow:
            doc = self._slow[i]
        elif self._docs is not None:
            doc = self._docs[i]
        else:
            doc = orjson.loads(self.values[i])  # type: ignore[arg-type]
        # A row rejected before parsing (or not an object) has nothing to read; its
        # reason is already set, so any value will do.
        return lookup(doc, path) if type(doc) is dict else 0.0

    def column(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``numeric(name)`` (the name this method had before feature specs)."""
        return self.numeric(name)

    def features(self, rows: np.ndarray, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
        """The model inputs of ``spec`` for ``rows``: (X of usable rows, usable row indices).

        Rows a feature cannot be computed for are rejected here with the reason naming
        the feature (``missing_feature``, ``non_numeric_feature``, ``non_finite_feature``).
        """
        return compute_rows(self, self, rows, spec)

    def matrix(self, rows: np.ndarray, features: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``features`` for plain field names (the feature list of models before specs)."""
        return self.features(rows, FeatureSpec.from_fields(list(features)))


def compute_rows(
    batch: DecodedBatch,
    source: ColumnSource,
    rows: np.ndarray,
    spec: FeatureSpec,
    *,
    store: Any = None,
    scopes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``spec`` over ``rows`` of ``source`` (the batch, or a sensor schema's view of it);
    rows it rejects are rejected in ``batch``. Returns (X of usable rows, their indices).

    Window functions read and update ``store`` per scope (``scopes``: one per row of
    the batch, the input partition) and per tenant of each row.
    """
    tenants = None
    if spec.windowed:
        tenants = [batch.tenants[i] for i in rows.tolist()]
        scopes = None if scopes is None else scopes[rows]
    computed = spec.compute(RowSubset(source, rows), store=store, scopes=scopes, tenants=tenants)
    if computed.late:
        batch.late += computed.late
        assert tenants is not None and computed.late_rows is not None
        batch.late_by.update(tenants[k] for k in computed.late_rows.tolist())
    ok = computed.reason == OK
    if not ok.all():
        bad = np.flatnonzero(~ok)
        for k in bad.tolist():
            batch.reject([int(rows[k])], int(computed.reason[k]), computed.detail.get(k, ""))
        return computed.X[ok], rows[ok]
    return computed.X, rows


class RowSubset:
    """A ColumnSource of some rows of another (columns computed once per batch, sliced)."""

    def __init__(self, source: ColumnSource, rows: np.ndarray) -> None:
        self.source = source
        self.rows = rows
        self.n = len(rows)
        self._whole = len(rows) == source.n

    def numeric(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        if self._whole:
            return self.source.numeric(path)
        at = getattr(self.source, "numeric_at", None)  # a batch reads only these rows
        if at is not None:
            return at(path, self.rows)
        values, codes = self.source.numeric(path)
        return values[self.rows], codes[self.rows]

    def strings(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        if self._whole:
            return self.source.strings(path)
        at = getattr(self.source, "strings_at", None)
        if at is not None:
            return at(path, self.rows)
        values, codes = self.source.strings(path)
        return values[self.rows], codes[self.rows]


def _suspects(parts: list[bytes]) -> set[int]:
    """Indices of messages that may be invalid UTF-8, too deep, or hold an overflowing number."""
    joined = b"\n".join(parts)
    out: set[int] = set()
    try:
        # "\n" can neither end nor continue a UTF-8 sequence, so the joined bytes are
        # valid UTF-8 exactly when every message is.
        joined.decode("utf-8")
    except UnicodeDecodeError:
        out.update(k for k, v in enumerate(parts) if not _is_utf8(v))
    if sys.getrecursionlimit() > _MSGSPEC_DEPTH_OK:
        out.update(k for k, v in enumerate(parts)
                   if v.count(b"[") + v.count(b"{") > _MSGSPEC_DEPTH_OK)
    mapped = joined.translate(_OVERFLOW_MAP)
    hits = [m.start() for m in _OVERFLOW_EXPONENT.finditer(mapped)]
    pos = mapped.find(_OVERFLOW_DIGITS)
    while pos >= 0:
        hits.append(pos)
        pos = mapped.find(_OVERFLOW_DIGITS, pos + len(_OVERFLOW_DIGITS))
    if hits:
        # Message k occupies [starts[k], starts[k] + len): one separator byte apart.
        lengths = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
        starts = np.concatenate(([0], np.cumsum(lengths + 1)[:-1]))
        out.update((np.searchsorted(starts, hits, side="right") - 1).tolist())
    return out


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
