"""Decoding a batch of message values: columns, tenants and every dead-letter reason.

The decoder is checked row by row against ``reference``, a deliberately plain
per-message classifier written from the README's dead-letter table, on hand
picked edge cases and on thousands of mutated events (mixed into batches, so a
bad record that could shift its neighbours' values would be caught).
"""

from __future__ import annotations

import math
import random
import re
import uuid
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream.ingest.decode import DecodedBatch, valid_tenant
from stream.outcomes import reasons
from stream.outcomes.reasons import REASONS

FEATURES = ("bytes_transferred", "packet_count", "connection_duration")
TENANT = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def event(tenant: str = "acme", **extra: Any) -> dict[str, Any]:
    base = {
        "tenant_id": tenant,
        "flow_id": "f-000123",
        "timestamp": "2026-11-27T02:15:12.345Z",
        "src_ip": "10.1.0.7",
        "dst_ip": "192.0.2.4",
        "src_port": 51234,
        "dst_port": 443,
        "protocol": "tcp",
        "bytes_transferred": 48213,
        "packet_count": 41,
        "connection_duration": 2.7,
    }
    base.update(extra)
    return base


def raw(**kw: Any) -> bytes:
    return orjson.dumps(event(**kw))


def reference(
    value: bytes | None, features: tuple[str, ...] = FEATURES, max_bytes: int = 1_000_000
) -> tuple[str, str | None, list[float] | None]:
    """(reason or "ok", tenant, feature values) for one message, straight from the rules."""
    if not value:
        return "empty_message", None, None
    if len(value) > max_bytes:
        return "oversize", None, None
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return "malformed_json", None, None
    if type(doc) is not dict:
        return "not_object", None, None
    tenant = doc.get("tenant_id")
    if not (type(tenant) is str and TENANT.fullmatch(tenant)):
        return "invalid_tenant", None, None
    vals = []
    for f in features:
        v = doc.get(f)
        if v is None:
            return "missing_feature", tenant, None
        if type(v) not in (int, float):
            return "non_numeric_feature", tenant, None
        if not math.isfinite(float(v)):
            return "non_finite_feature", tenant, None
        vals.append(float(v))
    return "ok", tenant, vals


def decode(
    values: list[bytes | None], features: tuple[str, ...] = FEATURES, max_bytes: int = 1_000_000
) -> list[tuple[str, str | None, list[float] | None]]:
    """The decoder's verdict per row, in the same shape as ``reference``."""
    batch = DecodedBatch(values, max_bytes)
    rows = np.flatnonzero(batch.reason == reasons.OK)
    X, good = batch.matrix(rows, features)
    out: list[tuple[str, str | None, list[float] | None]] = []
    by_row = {int(r): X[k].tolist() for k, r in enumerate(good.tolist())}
    for i in range(len(values)):
        code = int(batch.reason[i])
        if code == reasons.OK:
            out.append(("ok", batch.tenants[i], by_row[i]))
        else:
            assert batch.detail.get(i), f"row {i} rejected without a detail"
            tenant = batch.tenants[i] if code in (reasons.MISSING_FEATURE,
                                                   reasons.NON_NUMERIC_FEATURE,
                                                   reasons.NON_FINITE_FEATURE) else None
            out.append((REASONS[code], tenant, None))
    return out


def assert_same(values: list[bytes | None], **kw: Any) -> None:
    got = decode(values, **kw)
    for i, v in enumerate(values):
        want = reference(v, **kw)
        assert got[i] == want, f"row {i} {v!r:.200}: decoder {got[i]} != reference {want}"


# ---- hand-picked cases ------------------------------------------------------------------

GOOD = raw()
CASES: list[tuple[bytes | None, str]] = [
    (GOOD, "ok"),
    (None, "empty_message"),
    (b"", "empty_message"),
    (b"{not json", "malformed_json"),
    (b'{"tenant_id": "acme",}', "malformed_json"),
    (GOOD + b" x", "malformed_json"),
    (b"\xef\xbb\xbf" + GOOD, "malformed_json"),  # a byte-order mark is not JSON
    (raw(bytes_transferred=1).replace(b":1,", b":NaN,"), "malformed_json"),
    (raw(bytes_transferred=1).replace(b":1,", b":Infinity,"), "malformed_json"),
    (raw(bytes_transferred=1).replace(b":1,", b":1e999,"), "malformed_json"),
    (raw(bytes_transferred=1).replace(b":1,", b":-1e999,"), "malformed_json"),
    (raw(bytes_transferred=1).replace(b":1,", b":" + b"9" * 400 + b","), "malformed_json"),
    # Passthrough fields must be valid JSON too: their bytes are spliced into alerts.
    (raw(flow_id="X").replace(b'"X"', b"1e999"), "malformed_json"),
    (raw(flow_id="X").replace(b'"X"', b"1E+400"), "malformed_json"),
    (raw(flow_id="X").replace(b'"X"', b"-" + b"7" * 320), "malformed_json"),
    (raw(flow_id="X").replace(b'"X"', b"NaN"), "malformed_json"),
    (raw(flow_id="X").replace(b"X", b"\xff\xfe"), "malformed_json"),
    (raw(flow_id="X").replace(b"X", b"\xed\xa0\x80"), "malformed_json"),  # UTF-8 surrogate
    (raw(flow_id="X").replace(b"X", b"\\ud800"), "malformed_json"),
    (raw(flow_id="X").replace(b"X", b"\\udc00"), "malformed_json"),
    (raw(flow_id="X").replace(b"X", b"a\x01b"), "malformed_json"),
    (raw(flow_id="X").replace(b"X", b"\\q"), "malformed_json"),
    (raw(flow_id="X").replace(b'"X"', b"01"), "malformed_json"),
    (raw(flow_id="X").replace(b'"X"', b"[" * 1100 + b"]" * 1100), "malformed_json"),
    (raw(flow_id="X").replace(b"flow_id", b"\xff"), "malformed_json"),
    # Accepted oddities: they are valid JSON and orjson reads them.
    (raw(flow_id="X").replace(b'"X"', b"1e-999"), "ok"),
    (raw(flow_id="X").replace(b'"X"', b"1e99"), "ok"),
    (raw(flow_id="X").replace(b'"X"', b"123456789012345678901234567890"), "ok"),
    (raw(flow_id="X").replace(b'"X"', b"[" * 900 + b"]" * 900), "ok"),
    (raw(flow_id="X").replace(b"X", "é✓".encode()), "ok"),
    (raw(flow_id="X").replace(b"X", b"\\ud83d\\ude00"), "ok"),
    (b" \n\t" + GOOD + b"\r\n", "ok"),
    (b"[1, 2, 3]", "not_object"),
    (b'"just a string"', "not_object"),
    (b"42", "not_object"),
    (b"null", "not_object"),
    (b"true", "not_object"),
    (orjson.dumps({k: v for k, v in event().items() if k != "tenant_id"}), "invalid_tenant"),
    (raw(tenant=None), "invalid_tenant"),
    (raw(tenant=42), "invalid_tenant"),
    (raw(tenant=["acme"]), "invalid_tenant"),
    (raw(tenant={"id": "acme"}), "invalid_tenant"),
    (raw(tenant=""), "invalid_tenant"),
    (raw(tenant="bad tenant!"), "invalid_tenant"),
    (raw(tenant="acme\n"), "invalid_tenant"),
    (raw(tenant="a" * 65), "invalid_tenant"),
    (raw(tenant="é"), "invalid_tenant"),
    (raw(tenant="\u0661"), "invalid_tenant"),  # a non-ASCII digit
    (raw(tenant="a" * 64), "ok"),
    (raw(tenant="A-b_c.9"), "ok"),
    (raw(tenant="X").replace(b'"X"', b'"\\u0061cme"'), "ok"),
    (orjson.dumps({k: v for k, v in event().items() if k != "packet_count"}), "missing_feature"),
    (raw(packet_count=None), "missing_feature"),
    (raw(bytes_transferred="10kB"), "non_numeric_feature"),
    (raw(bytes_transferred="12"), "non_numeric_feature"),  # numeric strings are not coerced
    (raw(bytes_transferred=True), "non_numeric_feature"),
    (raw(bytes_transferred=False), "non_numeric_feature"),
    (raw(connection_duration=[1.0]), "non_numeric_feature"),
    (raw(connection_duration={"v": 1.0}), "non_numeric_feature"),
    (raw(bytes_transferred=0, packet_count=-3, connection_duration=-0.0), "ok"),
    (raw(bytes_transferred=2**63, packet_count=2**64 - 1), "ok"),
    (raw(bytes_transferred=1.7976931348623157e308), "ok"),
    (raw(bytes_transferred=5e-324), "ok"),
    # Duplicate keys: the last one counts, as for any orjson reader of the alert.
    (GOOD[:-1] + b',"tenant_id":"globex"}', "ok"),
    (GOOD[:-1] + b',"tenant_id":"bad tenant"}', "invalid_tenant"),
    (GOOD[:-1] + b',"packet_count":"x"}', "non_numeric_feature"),
    (raw(packet_count="x")[:-1] + b',"packet_count":7}', "ok"),
]


@pytest.mark.parametrize(("value", "want"), CASES, ids=[f"{i}-{w}" for i, (_, w) in
                                                        enumerate(CASES)])
def test_edge_case_matches_reference(value: bytes | None, want: str) -> None:
    assert reference(value)[0] == want  # the case list itself says what the rules say
    # Alone, and between good events (a bad record must not move its neighbours).
    assert_same([value])
    assert_same([GOOD, value, raw(tenant="globex", packet_count=7), value, GOOD])


def test_oversize_is_checked_before_parsing() -> None:
    big = raw(pad="x" * 5000)
    batch = DecodedBatch([GOOD, big, b"{not json" + b" " * 5000], max_bytes=4000)
    assert [REASONS.get(int(c), "ok") for c in batch.reason] == ["ok", "oversize", "oversize"]
    assert "4000" in batch.detail[1]


def test_values_are_the_json_numbers_as_float64() -> None:
    vals = [
        raw(bytes_transferred=b, packet_count=p, connection_duration=d)
        for b, p, d in [(1, 2, 0.5), (10**18, 0, 1e-300), (-5, 3, 123.456), (2**64 - 1, 1, 0.1)]
    ]
    batch = DecodedBatch(vals)
    X, good = batch.matrix(np.arange(len(vals)), FEATURES)
    assert good.tolist() == [0, 1, 2, 3]
    assert X.dtype == np.float64
    want = [[1, 2, 0.5], [1e18, 0, 1e-300], [-5, 3, 123.456], [float(2**64 - 1), 1, 0.1]]
    assert X.tolist() == want


def test_tenants_and_docs() -> None:
    vals = [raw(tenant="acme"), b"{bad", raw(tenant="globex", extra={"k": [1, 2]}), b"[1]"]
    batch = DecodedBatch(vals)
    assert batch.tenants == ["acme", "", "globex", ""]
    docs = batch.docs
    assert docs[0] == event(tenant="acme")
    assert docs[1] is None
    assert docs[2]["extra"] == {"k": [1, 2]}
    assert docs[3] == [1]


def test_matrix_rejects_rows_naming_the_feature_and_keeps_the_rest() -> None:
    vals = [GOOD, raw(packet_count=None), raw(connection_duration="slow"), GOOD]
    batch = DecodedBatch(vals)
    X, good = batch.matrix(np.arange(4), FEATURES)
    assert good.tolist() == [0, 3]
    assert X.shape == (2, 3)
    assert batch.reason.tolist() == [0, reasons.MISSING_FEATURE, reasons.NON_NUMERIC_FEATURE, 0]
    assert "'packet_count'" in batch.detail[1]
    assert "'connection_duration'" in batch.detail[2]


def test_matrix_on_a_subset_and_an_unseen_feature() -> None:
    vals = [raw(score_hint=1.5), raw(), raw(score_hint="x"), raw(score_hint=3)]
    batch = DecodedBatch(vals)
    X, good = batch.matrix(np.array([0, 1, 3]), ("score_hint", "packet_count"))
    assert good.tolist() == [0, 3]
    assert X.tolist() == [[1.5, 41.0], [3.0, 41.0]]
    assert batch.reason[1] == reasons.MISSING_FEATURE
    assert batch.reason[2] == reasons.OK  # row 2 was not asked about


def test_first_reason_wins() -> None:
    batch = DecodedBatch([GOOD, GOOD])
    batch.reject([0], reasons.NO_MODEL, "first")
    batch.reject([0, 1], reasons.MODEL_ERROR, "second")
    assert batch.reason.tolist() == [reasons.NO_MODEL, reasons.MODEL_ERROR]
    assert batch.detail == {0: "first", 1: "second"}


def test_hostile_values_cannot_shift_rows() -> None:
    # Joined, these would parse as a list of the right length with rows misaligned.
    hostile = [b'{"x":[{}', b"{}]}", b"{},{}"]
    values = [raw(tenant="acme", packet_count=1), *hostile, raw(tenant="globex", packet_count=2)]
    got = decode(values)
    assert [g[0] for g in got] == [
        "ok", "malformed_json", "malformed_json", "malformed_json", "ok"]
    assert got[0][1:] == ("acme", [48213.0, 1.0, 2.7])
    assert got[4][1:] == ("globex", [48213.0, 2.0, 2.7])
    assert_same(values)


def test_valid_tenant() -> None:
    assert valid_tenant("acme") and valid_tenant("a" * 64) and valid_tenant("x.y-z_1")
    for bad in ("", "a" * 65, "acme\n", "a b", "é", 42, None, ["acme"]):
        assert not valid_tenant(bad)


# ---- mutation fuzzing against the reference ----------------------------------------------

_TOKENS = [
    b"null", b"true", b"false", b'"12"', b"[]", b"{}", b"1e999", b"-1e999", b"1e308",
    b"1.7976931348623157e308", b"1.8e308", b"-0", b"0.1e-400", b"18446744073709551616",
    b"123456789012345678901234567890", b"9" * 400, b"1E+2", b"NaN", b"Infinity", b"01",
    b"1.", b".5", b"-", b"2.5e-3", b"3", b'"\\ud800"', b'"\xff"', b'"\\u00e9"', b'"a\\"b"',
    b"[" * 1030 + b"]" * 1030, b'{"a":[1,{"b":null}]}', b'"acme"', b'"a b"', b'"acme\\n"',
    b'"' + b"t" * 65 + b'"', b"42", b'["acme"]', b'"\xc3\xa9"', b"1e0400", b"-5E-5",
]
_BYTES = [bytes([b]) for b in b'{}[]",:\\eE-+.0123456789 \n\t\x00\x01ntfNIu'] + [
    b"\xff", b"\xc3", b"\xa9", b"\xed"]


def _mutate(rng: random.Random, base: bytes) -> bytes:
    v = base
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(7)
        if op == 6:  # a whole other JSON value (or not JSON at all)
            v = rng.choice(_TOKENS)
        elif op == 0:  # replace the value of a key with an interesting token
            key = rng.choice([b"tenant_id", b"bytes_transferred", b"packet_count",
                              b"connection_duration", b"src_port", b"flow_id", b"protocol"])
            m = re.search(rb'"' + key + rb'":("[^"]*"|[^,}]*)', v)
            if m:
                v = v[: m.start(1)] + rng.choice(_TOKENS) + v[m.end(1):]
        elif op == 1:  # drop a key
            m = rng.choice(list(re.finditer(rb'"[a-z_]+":("[^"]*"|[^,}]*),?', v)) or [None])
            if m:
                v = v[: m.start()] + v[m.end():]
        elif op == 2:  # add a passthrough field or a duplicate key
            key = rng.choice([b'"extra"', b'"tenant_id"', b'"packet_count"'])
            v = v[:-1] + b"," + key + b":" + rng.choice(_TOKENS) + b"}"
        elif op == 3 and v:  # replace a byte
            i = rng.randrange(len(v))
            v = v[:i] + rng.choice(_BYTES) + v[i + 1:]
        elif op == 4:  # insert a byte
            i = rng.randrange(len(v) + 1)
            v = v[:i] + rng.choice(_BYTES) + v[i:]
        elif v:  # delete a byte or truncate
            i = rng.randrange(len(v))
            v = v[:i] + (v[i + 1:] if rng.random() < 0.7 else b"")
    return v


def test_mutated_events_match_reference() -> None:
    rng = random.Random(20261127)
    tenants = ["acme", "globex", "initech", "a" * 64]
    bases = [raw(tenant=rng.choice(tenants), bytes_transferred=rng.randint(0, 10**9),
                 packet_count=rng.randint(1, 5000), connection_duration=rng.random() * 100)
             for _ in range(50)]
    values: list[bytes | None] = []
    for _ in range(4000):
        b = rng.choice(bases)
        values.append(b if rng.random() < 0.3 else _mutate(rng, b))
    reasons = {reference(v)[0] for v in values}
    # The fuzzing is only worth something if it reaches most outcomes.
    assert {"ok", "malformed_json", "invalid_tenant", "missing_feature",
            "non_numeric_feature", "not_object"} <= reasons
    for lo in range(0, len(values), 500):  # several batches, bad rows among good ones
        assert_same(values[lo: lo + 500])


def test_random_floats_decode_exactly() -> None:
    rng = np.random.default_rng(7)
    nums = np.concatenate([rng.normal(0, 1e6, 300), rng.lognormal(0, 20, 300),
                           rng.uniform(-1, 1, 300) * 10.0 ** rng.integers(-300, 300, 300)])
    vals = [raw(bytes_transferred=float(x), packet_count=int(abs(x)) % 10**15,
                connection_duration=float(x) / 3) for x in nums]
    # Also the same numbers in non-shortest spellings (more digits, exponents).
    vals += [raw(bytes_transferred=0).replace(b'"bytes_transferred":0',
                                              b'"bytes_transferred":' + f"{x:.25e}".encode())
             for x in nums[:200]]
    assert_same(vals)


_MIXED = [
    b'{"tenant_id": "acme", "a": 1.5, "s": "x", "n": {"x": 2}, "ts": 10}',
    b'{"tenant_id": "acme", "a": "12", "s": 7, "n.x": 3, "ts": "2026-01-01T00:00:00Z"}',
    b'{"tenant_id": "acme", "a": null, "s": null, "ts": 11}',
    b'{"tenant_id": "acme", "a": true, "s": true}',
    b'{"tenant_id": "acme", "a": 1e400, "s": "' + "\u00e9".encode() + b'", "ts": 12}',
    b'{"tenant_id": "acme", "a": ' + b"9" * 400 + b', "s": "big"}',  # the slow path
    b'{"tenant_id": "acme", "s": ["no"], "n": {"x": "4"}, "ts": 13}',
    b'{"tenant_id": "acme", "a": -0.0, "s": "", "n": null}',
] * 4


@settings(max_examples=80, deadline=None)
@given(rows=st.lists(st.integers(0, len(_MIXED) - 1), max_size=3, unique=True),
       learned=st.booleans())
def test_a_few_rows_read_alone_are_the_whole_columns_rows(rows: list[int],
                                                           learned: bool) -> None:
    """``numeric_at``/``strings_at`` (what risk reads for a batch's few alerts) give what
    slicing the whole column gives, on the fast path or from the documents, for every
    kind of value; a field read for every row first is only sliced."""
    fresh = f"f{uuid.uuid4().hex[:8]}"  # a key no batch has learned
    paths = ["a", "s", "n.x", "ts", "missing", fresh]
    if learned:  # later batches read these keys on the fast path
        warm = DecodedBatch(_MIXED)
        for p in paths[:4]:
            warm.numeric(p), warm.strings(p)
    idx = np.array(sorted(rows), dtype=np.int64)
    for p in paths:
        alone, whole = DecodedBatch(_MIXED), DecodedBatch(_MIXED)
        for a_at, w_all in ((alone.numeric_at(p, idx), whole.numeric(p)),
                            (alone.strings_at(p, idx), whole.strings(p))):
            np.testing.assert_array_equal(a_at[1], w_all[1][idx])
            assert [None if x is None else repr(x) for x in a_at[0].tolist()] == \
                [None if x is None else repr(x) for x in w_all[0][idx].tolist()]
