"""Decoding a micro-batch of raw message values into columns, with validation.

A batch of Kafka message values becomes: a tenant id per row, a reason code per
row (0 = usable), and numeric feature columns built on demand, one numpy array
per feature for the whole batch.

Fast path: each message is decoded on its own (never joined with its
neighbours, so a hostile value cannot shift another message's fields) by a
msgspec decoder that reads only ``tenant_id`` and the feature names the models
have asked for, skipping the rest of the document in C. Two batch-wide scans
then make that decoder exactly as strict as a full orjson parse, because a
message's bytes are spliced into its alert and must be JSON that any reader
accepts: the whole batch must be valid UTF-8, and no number literal may
overflow a double (msgspec does not look at the values of fields it skips).
Every message that fails or is flagged goes through ``orjson.loads``, which
decides its outcome exactly as before, so the fast path changes speed, never
results (tests/test_events.py checks this against a plain reference).
"""

from __future__ import annotations

import math
import re
import sys
import threading
from collections.abc import Callable, Sequence
from itertools import islice
from operator import attrgetter
from typing import Any

import msgspec
import numpy as np
import orjson

# Re-exported: the decoder's reason codes.
from stream.reasons import (  # noqa: F401
    EMPTY,
    INVALID_TENANT,
    MALFORMED_JSON,
    MISSING_FEATURE,
    MODEL_ERROR,
    NO_MODEL,
    NON_FINITE_FEATURE,
    NON_NUMERIC_FEATURE,
    NOT_OBJECT,
    OK,
    OVERSIZE,
    REASONS,
)

TENANT_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")

_NUMERIC_TYPES = frozenset({int, float})
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


def valid_tenant(value: object) -> bool:
    """True for a string of 1-64 characters from ``[A-Za-z0-9_.-]``."""
    return type(value) is str and TENANT_RE.fullmatch(value) is not None


class _Schema:
    """A msgspec decoder of ``tenant_id`` plus a fixed tuple of numeric features.

    An absent feature decodes to NaN (JSON itself cannot express NaN, so NaN
    means "absent"); ``null``, strings, booleans, containers and out-of-range
    numbers make the decode fail, and the message takes the slow path.
    """

    def __init__(self, features: tuple[str, ...]) -> None:
        self.features = features
        self.slot = {f: f"f{i}" for i, f in enumerate(features)}
        fields: list[tuple[str, Any, Any]] = [("t", str | None, None)]
        fields += [(self.slot[f], float, math.nan) for f in features]
        rename = {"t": "tenant_id", **{v: k for k, v in self.slot.items()}}
        row = msgspec.defstruct("Row", fields, rename=rename, gc=False)
        self.decode: Callable[[bytes], Any] = msgspec.json.Decoder(row).decode
        self.placeholder = row()  # stands in for rows the slow path decided
        self.tenant = attrgetter("t")
        self.getters = {f: attrgetter(s) for f, s in self.slot.items()}


_lock = threading.Lock()
_schema = _Schema(())


def _learn(name: str) -> None:
    """Have later batches read ``name`` on the fast path."""
    global _schema
    with _lock:
        known = _schema.features
        if name in known or name == "tenant_id" or len(known) >= MAX_FAST_FEATURES:
            return
        _schema = _Schema((*known, name))


class DecodedBatch:
    """One micro-batch of message values, parsed once; feature columns on demand.

    ``reason[i]`` is 0 while row ``i`` is usable and a reason code once it is
    rejected; ``detail`` holds a human-readable explanation for rejected rows.
    """

    def __init__(self, values: Sequence[bytes | None], max_bytes: int = 1_000_000) -> None:
        self.values = values
        self.n = len(values)
        self.reason = np.zeros(self.n, dtype=np.uint8)
        self.detail: dict[int, str] = {}
        self._schema = _schema
        # Rows the slow path decided: row -> orjson document (None when rejected).
        self._slow: dict[int, Any] = {}
        self._rows: list[Any] = self._parse(max_bytes)
        self.tenants: list[str] = self._tenants()
        self._columns: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._docs: list[Any] | None = None

    def reject(self, rows: np.ndarray | Sequence[int], code: int, detail: str) -> None:
        """Mark rows rejected with a reason (the first reason given to a row wins)."""
        for i in np.asarray(rows, dtype=np.int64).tolist():
            if self.reason[i] == OK:
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
                    todo[i] = None  # type: ignore[index]
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

    def _tenants(self) -> list[str]:
        raw: list[Any] = list(map(self._schema.tenant, self._rows))
        for i, doc in self._slow.items():
            raw[i] = doc.get("tenant_id") if type(doc) is dict else None
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
                    self.detail[i] = (
                        "missing tenant_id"
                        if t is None
                        else f"invalid tenant_id {str(t)[:80]!r}: want [A-Za-z0-9_.-]{{1,64}}"
                    )
        if not bad_values and not unhashable:
            return raw  # every value is a valid tenant string already
        return [t if type(t) is str else "" for t in raw]

    # ---- columns --------------------------------------------------------------------

    def column(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Feature ``name`` for every row as float64, with a per-row reason code (0 = ok)."""
        cached = self._columns.get(name)
        if cached is not None:
            return cached
        getter = self._schema.getters.get(name)
        if getter is None:
            _learn(name)
            arr, codes = self._column_from_docs(name, range(self.n))
        else:
            arr = np.fromiter(map(getter, self._rows), dtype=np.float64, count=self.n)
            # NaN is how the fast decoder says "absent" (JSON has no NaN literal).
            codes = np.where(np.isnan(arr), MISSING_FEATURE, OK).astype(np.uint8)
            if self._slow:
                rows = list(self._slow)
                arr[rows], codes[rows] = self._column_from_docs(name, rows)
        self._columns[name] = (arr, codes)
        return arr, codes

    def _column_from_docs(
        self, name: str, rows: Sequence[int] | range
    ) -> tuple[np.ndarray, np.ndarray]:
        docs = self.docs
        vals = [d.get(name) if type(d) is dict else 0.0 for d in (docs[i] for i in rows)]
        n = len(vals)
        codes = np.zeros(n, dtype=np.uint8)
        if set(map(type, vals)) <= _NUMERIC_TYPES:
            arr = np.array(vals, dtype=np.float64)
        else:
            arr = np.empty(n, dtype=np.float64)
            for k, v in enumerate(vals):
                tv = type(v)
                if tv is int or tv is float:
                    arr[k] = v
                else:
                    arr[k] = np.nan
                    codes[k] = MISSING_FEATURE if v is None else NON_NUMERIC_FEATURE
        with np.errstate(invalid="ignore"):
            nonfinite = ~np.isfinite(arr) & (codes == OK)
        if nonfinite.any():
            codes[nonfinite] = NON_FINITE_FEATURE
        return arr, codes

    def matrix(self, rows: np.ndarray, features: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Feature matrix for ``rows``; returns (X of usable rows, the usable row indices).

        Rows with a missing, non-numeric or non-finite feature are rejected here
        with the reason naming the feature.
        """
        keep = np.ones(len(rows), dtype=bool)
        cols = []
        for f in features:
            arr, codes = self.column(f)
            c = codes[rows]
            bad = c != OK
            if bad.any():
                for code in np.unique(c[bad]).tolist():
                    sel = rows[(c == code) & keep]
                    self.reject(sel, int(code), f"feature {f!r}: {REASONS[int(code)]}")
                keep &= ~bad
            cols.append(arr)
        good = rows[keep] if not keep.all() else rows
        if not cols:
            return np.empty((len(good), 0)), good
        X = np.empty((len(good), len(cols)), dtype=np.float64)
        for j, a in enumerate(cols):
            X[:, j] = a[good]
        return X, good


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
