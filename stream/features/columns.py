"""Where raw feature values come from: one path rule, one column protocol.

Every reader of raw events (training, offline scoring, the stream decoder)
hands the feature evaluator the same thing, a :class:`ColumnSource`: per field
path, a whole column as a numpy array plus a reason code per row. Values are
found by :func:`lookup` and turned into text by :func:`canonical`, the only
implementations of those two rules, so a model sees identical inputs however
its events arrived.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, Final, Protocol

import numpy as np

from stream.outcomes.reasons import MISSING_FEATURE, NON_FINITE_FEATURE, NON_NUMERIC_FEATURE, OK


class _Missing:
    """The type of :data:`MISSING`: a path that leads nowhere (not the same as JSON null)."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()


class ColumnSource(Protocol):
    """Raw columns for a batch of ``n`` events.

    ``numeric(path)``: float64 values and uint8 codes: ``OK``; ``MISSING_FEATURE``
    for absent or null; ``NON_NUMERIC_FEATURE`` for a string, bool, list or dict;
    ``NON_FINITE_FEATURE`` for NaN or infinity. The value is NaN wherever the code
    is not ``OK``.

    ``strings(path)``: an object array of ``str`` (or None where the code is not
    ``OK``) and uint8 codes: ``MISSING_FEATURE`` for absent or null,
    ``NON_NUMERIC_FEATURE`` for a list or dict. Scalars become their
    :func:`canonical` text.

    Callers never modify the arrays they get back, so implementations may cache them.
    """

    n: int

    def numeric(self, path: str) -> tuple[np.ndarray, np.ndarray]: ...

    def strings(self, path: str) -> tuple[np.ndarray, np.ndarray]: ...


@lru_cache(maxsize=4096)
def _splits(path: str) -> tuple[tuple[str, str], ...]:
    """Every ``(head, rest)`` split of ``path`` at one of its dots, left to right."""
    out = []
    i = path.find(".")
    while i != -1:
        out.append((path[:i], path[i + 1 :]))
        i = path.find(".", i + 1)
    return tuple(out)


def lookup(record: Mapping[str, Any], path: str) -> Any:
    """The value at ``path`` in ``record``, or :data:`MISSING`.

    At each level the literal key equal to the rest of the path wins (Zeek JSON
    has flat dotted keys such as ``"id.orig_h"``); otherwise each split at a dot
    is tried, left to right: a head whose value is an object is entered with the
    rest of the path. So nesting and literal dotted keys may be mixed, as in a
    zeek-kafka ``tag_json`` record ``{"conn": {"id.orig_h": ...}}`` read at
    ``conn.id.orig_h``, or Suricata's ``{"flow": {"bytes_toserver": 10}}`` at
    ``flow.bytes_toserver``. A JSON null is returned as None: callers treat it
    like an absent value, and it ends the search (it is a value, not an absence).
    """
    value = record.get(path, MISSING)
    if value is not MISSING or "." not in path:
        return value  # the common case, one dict lookup
    return _nested(record, path)


def _nested(record: Mapping[str, Any], path: str) -> Any:
    """:func:`lookup` below a record whose literal key ``path`` is absent."""
    for head, rest in _splits(path):
        inner = record.get(head)
        if not isinstance(inner, Mapping):
            continue  # absent, or a number/list/string: cannot hold the rest
        value = inner.get(rest, MISSING)
        if value is MISSING and "." in rest:
            value = _nested(inner, rest)
        if value is not MISSING:
            return value
    return MISSING


def without(record: Mapping[str, Any], path: str) -> dict[str, Any] | None:
    """A copy of ``record`` without the key :func:`lookup` finds at ``path``; None if none.

    The key is found by the same rule, in the same order, so what ``lookup``
    read is what goes. Nested objects on the way are copied, never modified; one
    that becomes empty goes too (Suricata's ``flow`` would otherwise linger as
    ``{}`` once its counters are taken out).
    """
    if path in record:
        out = dict(record)
        del out[path]
        return out
    for head, rest in _splits(path):
        inner = record.get(head)
        if not isinstance(inner, Mapping):
            continue
        pruned = without(inner, rest)
        if pruned is not None:
            out = dict(record)
            if pruned:
                out[head] = pruned
            else:
                del out[head]
            return out
    return None


def canonical(value: Any) -> str | None:
    """The category text of a scalar, or None for a list, dict, null or absent value.

    Numbers that are equal get the same text whatever their type, because JSON
    writers disagree on ``443`` vs ``443.0``: integral floats print as integers,
    other floats as the shortest text that round-trips (``0.5``). Booleans are
    ``true``/``false`` as in JSON.
    """
    t = type(value)
    if t is str:
        return value
    if t is bool or isinstance(value, np.bool_):
        return "true" if value else "false"
    if t is int or isinstance(value, np.integer):
        return str(int(value))
    if t is float or isinstance(value, np.floating):
        f = float(value)
        if math.isfinite(f) and f.is_integer():
            return str(int(f))
        return repr(f)  # shortest round-trip text; "nan", "inf", "-inf" for the rest
    if isinstance(value, str):  # a str subclass
        return str(value)
    return None


def _numeric_code(value: Any) -> int:
    """Reason code of one raw value read as a number (the rules in ColumnSource)."""
    if value is None or value is MISSING:
        return MISSING_FEATURE
    t = type(value)
    if t is bool or isinstance(value, np.bool_):
        return NON_NUMERIC_FEATURE
    if t is int or t is float or isinstance(value, (int, float, np.integer, np.floating)):
        try:
            f = float(value)
        except OverflowError:  # an int beyond the float range
            return NON_FINITE_FEATURE
        return OK if math.isfinite(f) else NON_FINITE_FEATURE
    return NON_NUMERIC_FEATURE


def numeric_column(values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Raw values (from :func:`lookup`) as a ColumnSource numeric column."""
    n = len(values)
    if set(map(type, values)) <= {int, float}:
        # Common case, all plain numbers: one C-level conversion, then one finiteness pass.
        try:
            arr = np.array(values, dtype=np.float64)
        except OverflowError:
            pass
        else:
            codes = np.zeros(n, dtype=np.uint8)
            bad = ~np.isfinite(arr)
            if bad.any():
                codes[bad] = NON_FINITE_FEATURE
                arr[bad] = np.nan
            return arr, codes
    codes = np.fromiter(map(_numeric_code, values), dtype=np.uint8, count=n)
    arr = np.full(n, np.nan)
    ok = np.flatnonzero(codes == OK)
    if len(ok):
        arr[ok] = [float(values[i]) for i in ok.tolist()]
    return arr, codes


def string_column(values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Raw values (from :func:`lookup`) as a ColumnSource string column."""
    n = len(values)
    out = np.empty(n, dtype=object)
    if set(map(type, values)) <= {str}:
        out[:] = values
        return out, np.zeros(n, dtype=np.uint8)
    texts = [canonical(v) for v in values]
    out[:] = texts
    codes = np.zeros(n, dtype=np.uint8)
    for i, t in enumerate(texts):
        if t is None:
            v = values[i]
            codes[i] = MISSING_FEATURE if v is None or v is MISSING else NON_NUMERIC_FEATURE
    return out, codes


class RecordColumns:
    """A :class:`ColumnSource` over a sequence of decoded events (dicts).

    Used by training and offline scoring. Each path is looked up once per record
    and its columns are cached, so reading a field both as a number and as a
    category, or from several features, costs one pass.
    """

    def __init__(self, records: Sequence[Mapping[str, Any]]) -> None:
        self.records = records
        self.n = len(records)
        self._raw: dict[str, list[Any]] = {}
        self._numeric: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._strings: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def raw(self, path: str) -> list[Any]:
        """The looked-up value of ``path`` per record (:data:`MISSING` where absent)."""
        vals = self._raw.get(path)
        if vals is None:
            vals = self._raw[path] = [lookup(r, path) for r in self.records]
        return vals

    def numeric(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        col = self._numeric.get(path)
        if col is None:
            col = self._numeric[path] = numeric_column(self.raw(path))
        return col

    def strings(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        col = self._strings.get(path)
        if col is None:
            col = self._strings[path] = string_column(self.raw(path))
        return col
