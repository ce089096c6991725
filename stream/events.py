"""Decoding a micro-batch of raw message values into columns, with validation.

A batch of Kafka message values becomes: the parsed objects, a tenant id per
row, a reason code per row (0 = usable), and numeric feature columns that are
built on demand, one numpy array per feature for the whole batch. Nothing here
loops over rows in Python except the unavoidable JSON parse and one list
comprehension per column.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

TENANT_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")

# Reason codes: small, fixed, usable as metric labels and dead-letter headers.
OK = 0
OVERSIZE = 1
MALFORMED_JSON = 2
NOT_OBJECT = 3
INVALID_TENANT = 4
MISSING_FEATURE = 5
NON_NUMERIC_FEATURE = 6
NON_FINITE_FEATURE = 7
NO_MODEL = 8
MODEL_ERROR = 9
EMPTY = 10

REASONS: dict[int, str] = {
    OVERSIZE: "oversize",
    MALFORMED_JSON: "malformed_json",
    NOT_OBJECT: "not_object",
    INVALID_TENANT: "invalid_tenant",
    MISSING_FEATURE: "missing_feature",
    NON_NUMERIC_FEATURE: "non_numeric_feature",
    NON_FINITE_FEATURE: "non_finite_feature",
    NO_MODEL: "no_model",
    MODEL_ERROR: "model_error",
    EMPTY: "empty_message",
}

_NUMERIC_TYPES = frozenset({int, float})


def valid_tenant(value: object) -> bool:
    """True for a string of 1-64 characters from ``[A-Za-z0-9_.-]``."""
    return type(value) is str and TENANT_RE.fullmatch(value) is not None


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
        self.docs: list[Any] = self._parse(max_bytes)
        self.tenants: list[str] = self._tenants()
        self._columns: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def reject(self, rows: np.ndarray | Sequence[int], code: int, detail: str) -> None:
        """Mark rows rejected with a reason (the first reason given to a row wins)."""
        for i in np.asarray(rows, dtype=np.int64).tolist():
            if self.reason[i] == OK:
                self.reason[i] = code
                self.detail[i] = detail

    def _parse(self, max_bytes: int) -> list[Any]:
        values = self.values
        try:
            # Fast path: one C-level map over the batch; any failure drops to the
            # per-message loop that isolates the bad records.
            if max(map(len, values), default=0) > max_bytes:
                raise ValueError("oversize")
            return list(map(orjson.loads, values))  # type: ignore[arg-type]
        except (orjson.JSONDecodeError, TypeError, ValueError):
            pass
        docs: list[Any] = []
        for i, v in enumerate(values):
            if not v:
                self.reason[i] = EMPTY
                self.detail[i] = "message has no value"
                docs.append(None)
            elif len(v) > max_bytes:
                self.reason[i] = OVERSIZE
                self.detail[i] = f"{len(v)} bytes > limit {max_bytes}"
                docs.append(None)
            else:
                try:
                    docs.append(orjson.loads(v))
                except orjson.JSONDecodeError as e:
                    self.reason[i] = MALFORMED_JSON
                    self.detail[i] = f"malformed JSON: {e}"[:300]
                    docs.append(None)
        return docs

    def _tenants(self) -> list[str]:
        docs = self.docs
        raw = [d.get("tenant_id") if type(d) is dict else None for d in docs]
        bad_values: set[Any] = set()
        try:
            for t in set(raw):  # validate each distinct value once, not each row
                if not valid_tenant(t):
                    bad_values.add(t)
            unhashable = False
        except TypeError:  # a list/dict tenant_id: fall back to per-row checks
            unhashable = True
        if bad_values or unhashable:
            for i, (d, t) in enumerate(zip(docs, raw, strict=True)):
                if self.reason[i] != OK:
                    continue
                if type(d) is not dict:
                    self.reason[i] = NOT_OBJECT
                    self.detail[i] = f"JSON value is a {type(d).__name__}, not an object"
                elif not valid_tenant(t):
                    self.reason[i] = INVALID_TENANT
                    self.detail[i] = (
                        "missing tenant_id"
                        if t is None
                        else f"invalid tenant_id {str(t)[:80]!r}: want [A-Za-z0-9_.-]{{1,64}}"
                    )
        return [t if type(t) is str else "" for t in raw]

    def column(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Feature ``name`` for every row as float64, with a per-row reason code (0 = ok)."""
        cached = self._columns.get(name)
        if cached is not None:
            return cached
        vals = [d.get(name) if type(d) is dict else 0.0 for d in self.docs]
        codes = np.zeros(self.n, dtype=np.uint8)
        if set(map(type, vals)) <= _NUMERIC_TYPES:
            arr = np.array(vals, dtype=np.float64)
        else:
            arr = np.empty(self.n, dtype=np.float64)
            for i, v in enumerate(vals):
                tv = type(v)
                if tv is int or tv is float:
                    arr[i] = v
                else:
                    arr[i] = np.nan
                    codes[i] = MISSING_FEATURE if v is None else NON_NUMERIC_FEATURE
        with np.errstate(invalid="ignore"):
            nonfinite = ~np.isfinite(arr) & (codes == OK)
        if nonfinite.any():
            codes[nonfinite] = NON_FINITE_FEATURE
        self._columns[name] = (arr, codes)
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
        good = rows[keep]
        if not cols:
            return np.empty((len(good), 0)), good
        X = np.column_stack([a[good] for a in cols])
        return X, good
