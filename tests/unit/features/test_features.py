"""Feature specs (stream.features): grammar, functions, codes, fitting, storage.

Pure unit tests, no broker. Values are checked against numpy written out by
hand, and a hypothesis property test checks the vectorized evaluator against
``Reference``, a deliberately plain per-record evaluator written from the
rules in the module docstrings, on random records and random expressions.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.features import (
    MISSING,
    FeatureSpec,
    RecordColumns,
    SpecError,
    canonical,
    lookup,
    parse,
)
from stream.features import expr as fexpr
from stream.features.expr import BinOp, Call, Duration, Field, Kwarg, Neg, Num, Pair, Str
from stream.ingest.decode import DecodedBatch
from stream.outcomes.reasons import MISSING_FEATURE, NON_FINITE_FEATURE, NON_NUMERIC_FEATURE, OK

NAN = float("nan")
INF = float("inf")


def compute(items: list[tuple[str, str]], records: list[dict[str, Any]], fit: bool = False):
    spec = FeatureSpec.parse(items)
    if fit:
        spec = spec.fit(RecordColumns(records))
    return spec, spec.compute(RecordColumns(records))


def spec_error(items: list[tuple[str, str]], fit_on: list[dict[str, Any]] | None = None):
    with pytest.raises(SpecError) as info:
        spec = FeatureSpec.parse(items)
        if fit_on is not None:
            spec.fit(RecordColumns(fit_on))
    return info.value


# ---- grammar -----------------------------------------------------------------------------


def f(path: str) -> Field:
    return Field(path)


def n(v: float) -> Num:
    return Num(v)


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ("1 + 2 * 3", BinOp("+", n(1), BinOp("*", n(2), n(3)))),
        ("(1 + 2) * 3", BinOp("*", BinOp("+", n(1), n(2)), n(3))),
        ("a - b - c", BinOp("-", BinOp("-", f("a"), f("b")), f("c"))),
        ("a / b * c", BinOp("*", BinOp("/", f("a"), f("b")), f("c"))),
        ("a + b / c - d", BinOp("-", BinOp("+", f("a"), BinOp("/", f("b"), f("c"))), f("d"))),
        ("-x * 2", BinOp("*", Neg(f("x")), n(2))),
        ("2 * -3", BinOp("*", n(2), Neg(n(3)))),
        ("a - -b", BinOp("-", f("a"), Neg(f("b")))),
        ("--x", Neg(Neg(f("x")))),
        ("-(a + b)", Neg(BinOp("+", f("a"), f("b")))),
        (
            "1e3 + 1.5E-2 + .5 + 3.",
            BinOp("+", BinOp("+", BinOp("+", n(1000), n(0.015)), n(0.5)), n(3)),
        ),
        ("id.orig_h", f("id.orig_h")),
        ("flow.bytes_toserver", f("flow.bytes_toserver")),
        ("`Flow Duration` / `Tot Fwd Pkts`", BinOp("/", f("Flow Duration"), f("Tot Fwd Pkts"))),
        ("log(duration + 0.1)", Call("log", (BinOp("+", f("duration"), n(0.1)),))),
        ('is(proto, "tcp")', Call("is", (f("proto"), Str("tcp")))),
        ("is(proto, 'a \"b\"')", Call("is", (f("proto"), Str('a "b"')))),
        (r'is(x, "q\"\\")', Call("is", (f("x"), Str('q"\\')))),
        ('onehot(st, ["S0", "SF"])', Call("onehot", (f("st"), fexpr.List((Str("S0"), Str("SF")))))),
        ("onehot(st, top=3)", Call("onehot", (f("st"),), (Kwarg("top", n(3)),))),
        ("f()", Call("f")),
        (
            "count(by=src_ip, window=60s)",
            Call("count", (), (Kwarg("by", f("src_ip")), Kwarg("window", Duration(60)))),
        ),
        (
            "mean(x, by=src_ip>dst_ip, window=60s)",
            Call(
                "mean",
                (f("x"),),
                (Kwarg("by", Pair(f("src_ip"), f("dst_ip"))), Kwarg("window", Duration(60))),
            ),
        ),
        (
            "distinct(dst_port, by=src_ip, decay=10s)",
            Call(
                "distinct",
                (f("dst_port"),),
                (Kwarg("by", f("src_ip")), Kwarg("decay", Duration(10))),
            ),
        ),
    ],
)
def test_grammar_trees(text: str, tree: Any) -> None:
    assert parse(text) == tree


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("60s", 60), ("5m", 300), ("1h", 3600), ("2d", 172800), ("1.5s", 1.5)],
)
def test_duration_literals(text: str, seconds: float) -> None:
    node = parse(f"w(window={text})")
    assert isinstance(node, Call)
    d = node.kwargs[0].value
    assert isinstance(d, Duration) and d.seconds == pytest.approx(seconds) and d.text == text


def test_positions_are_one_based_columns() -> None:
    text = "log(duration + 0.1) * `Flow Bytes`"
    node = parse(text)
    assert isinstance(node, BinOp)
    call, quoted = node.left, node.right
    assert isinstance(call, Call) and call.pos == 1 and call.source(text) == "log(duration + 0.1)"
    inner = call.args[0]
    assert isinstance(inner, BinOp) and inner.left.pos == 5 and inner.right.pos == 16
    assert quoted.pos == 23 and quoted.source(text) == "`Flow Bytes`"


@pytest.mark.parametrize(
    ("text", "position", "message"),
    [
        ("log(x", 6, "unexpected end of expression"),
        ("a b", 3, "unexpected 'b'"),
        ("1 +", 4, "unexpected end of expression"),
        ("x @ y", 3, "unexpected character '@'"),
        ('is(x, "abc', 7, "unterminated string"),
        ("`Flow Duration", 1, "unterminated `quoted name`"),
        ("5min", 2, "unexpected 'min'"),
        ("a > b", 3, "unexpected '>'"),
        ("log(x,)", 7, "unexpected ')'"),
        ("", 1, "empty expression"),
        ("f(a=1, b)", 8, "positional argument after keyword argument"),
        ("f(a=1, a=2)", 8, "keyword argument 'a' given twice"),
        ("1e400", 1, "number '1e400' is out of range"),
    ],
)
def test_syntax_errors_carry_the_position(text: str, position: int, message: str) -> None:
    e = spec_error([("feat", text)])
    assert e.feature == "feat" and e.position == position
    assert e.message.startswith(message), e.message
    assert str(e).startswith(f"feature 'feat': position {position}: {message}")
    assert isinstance(e, ValueError)


def test_syntax_error_lists_what_was_expected() -> None:
    e = spec_error([("x", "a > b")])
    assert "expected one of '(', '*', '+', '-', '/', end of expression" in e.message


def test_never_python_eval() -> None:
    # What Python would run is just an unknown function (or bad syntax) here.
    assert "unknown function '__import__'" in str(spec_error([("x", '__import__("os")')]))
    # Attribute syntax is just a dotted field name, looked up in the event.
    assert FeatureSpec.parse([("x", "x.__class__")]).fields == {"x.__class__": "numeric"}
    assert "unexpected" in str(spec_error([("x", "lambda: 1")]))


# ---- spec errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "position", "message"),
    [
        ("1 + lgo(duration)", 5, "unknown function 'lgo'"),
        ("count(by=src_ip)", 1, "'count' needs exactly one of window=DURATION or decay="),
        ("count(window=5s)", 1, "'count' needs by=FIELD"),
        ("distinct(dst_port, by=src_ip, decay=5s)", 1, "'distinct' has no damped form"),
        ("count(by=src_ip, window=0s)", 25, "'count' takes a positive duration here"),
        ("count(by=1, window=5s)", 10, "'count' takes a field or a pair of fields"),
        ("sum(by=a, window=5s)", 1, "'sum' takes 1 argument, got 0"),
        ("log(x, base=2)", 8, "'log' takes no keyword arguments"),
        ("log(a, b)", 1, "'log' takes 1 argument, got 2"),
        ("sqrt()", 1, "'sqrt' takes 1 argument, got 0"),
        ("min(x)", 1, "'min' takes at least 2 arguments, got 1"),
        ("clip(x, 1)", 1, "'clip' takes 3 arguments, got 2"),
        ("onehot(x, ['a'], 3)", 1, "'onehot' takes 1 or 2 arguments, got 3"),
        ("fill(x)", 1, "'fill' takes 2 arguments, got 1"),
        ("add()", 1, "'add' takes at least 1 argument, got 0"),
        ("onehot(x, bogus=1)", 11, "'onehot' has no keyword argument 'bogus'"),
        ("onehot(x, top=0)", 15, "'onehot' takes a positive integer here"),
        ("onehot(x, top=2.5)", 15, "'onehot' takes a positive integer here"),
        ("onehot(x, ['a'], top=2)", 1, "'onehot' takes either a list of values or top=N"),
        ("onehot(x, [])", 11, "'onehot' takes a list of category values"),
        ("onehot(x, 'a')", 11, "'onehot' takes a list of category values"),
        ("onehot(x, ['a', 'a'])", 17, "category value 'a' listed twice"),
        ("onehot(x, [1, 1.0])", 15, "category value '1' listed twice"),
        ("onehot(x, ['other'])", 12, "'other' is the name of the column"),
        ("onehot(x) * 2", 1, "'onehot' yields several columns"),
        ("log(onehot(x))", 5, "'onehot' yields several columns"),
        ("onehot(x + 1)", 8, "the first argument of 'onehot' must be a field or fill"),
        ("freq(log(x))", 6, "the first argument of 'freq' must be a field or fill"),
        ("is(x, y)", 7, "'is' takes a category value here"),
        ("onehot(fill(x, y))", 16, "the fill value of a categorical field must be"),
        ('fill(x, "none")', 9, "'fill' takes a literal number here; a string fill value"),
        ("fill(x, y)", 9, "'fill' takes a literal number here"),
        ("clip(x, 5, 1)", 1, "clip: lower bound 5 > upper bound 1"),
        ('"tcp"', 1, "a string is only valid as a category value"),
        ("log([1, 2])", 5, "a list is only valid as the category values"),
        ("x + 60s", 5, "a duration is only valid as the window argument"),
    ],
)
def test_spec_errors_name_feature_and_position(text: str, position: int, message: str) -> None:
    e = spec_error([("ok", "x"), ("ld", text)])
    assert (e.feature, e.position) == ("ld", position)
    assert e.message.startswith(message), e.message
    assert str(e) == f"feature 'ld': position {position}: {e.message}"


def test_spec_error_text_matches_the_documented_form() -> None:
    e = spec_error([("ld", "log(lgo(duration))")])
    assert str(e) == "feature 'ld': position 5: unknown function 'lgo'"


def test_spec_level_errors() -> None:
    e = spec_error([("a", "x"), ("a", "y")])
    assert (e.feature, str(e)) == ("a", "feature 'a': duplicate feature name")
    assert "invalid name '1st'" in str(spec_error([("1st", "x")]))
    assert "invalid name 'st=x'" in str(spec_error([("st=x", "x")]))
    assert "needs at least one feature" in str(spec_error([]))
    assert "expression must be a string" in str(spec_error([("a", 3)]))  # type: ignore[list-item]
    assert "expected a (name, expression) pair" in str(spec_error([("a",)]))  # type: ignore[list-item]


def test_field_absent_from_every_training_record() -> None:
    train = [{"duration": 1.0, "proto": "tcp"}, {"duration": 2.0, "proto": None}]
    e = spec_error([("ld", "log(duration)"), ("r", "duration / fill(drations, 1)")], fit_on=train)
    assert (e.feature, e.position) == ("r", 17)
    assert (
        str(e) == "feature 'r': position 17: field 'drations' is absent from every training record"
    )
    # Null everywhere counts as absent; present-but-null in some records does not.
    e = spec_error([("p", "freq(flags)")], fit_on=[{"flags": None}, {}])
    assert "field 'flags' is absent" in str(e)
    FeatureSpec.parse([("p", "freq(proto)")]).fit(RecordColumns(train))
    # optional(): a field some sensors never send, said so; read elsewhere plainly, checked.
    spec = FeatureSpec.parse([("s", 'rarity(optional(conn_state, "none"))'),
                              ("n", "optional(orig_bytes, 0) + 1")]).fit(RecordColumns(train))
    assert spec.compute(RecordColumns(train)).X.tolist() == [[0.0, 1.0], [0.0, 1.0]]
    e = spec_error([("s", 'rarity(optional(conn_state, "none"))'), ("t", "is(conn_state, 'SF')")],
                   fit_on=train)
    assert "field 'conn_state' is absent" in str(e)


def test_fit_errors() -> None:
    assert "zero training records" in str(spec_error([("a", "x")], fit_on=[]))
    e = spec_error([("p", "onehot(x)")], fit_on=[{"x": [1]}, {"x": {"a": 1}}])
    assert (e.feature, e.position) == ("p", 1)
    assert "found no usable value of its field" in e.message


def test_compute_before_fit_is_an_error_for_learned_functions() -> None:
    spec = FeatureSpec.parse([("a", "x"), ("st", "onehot(conn_state, top=2)")])
    assert spec.needs_fit and not spec.fitted
    with pytest.raises(SpecError, match="onehot\\(conn_state, top=2\\) learns from training data"):
        spec.compute(RecordColumns([{"x": 1, "conn_state": "S0"}]))
    with pytest.raises(SpecError, match="fit the spec first"):
        _ = spec.columns
    # Explicit categories need nothing learned.
    spec2, out = compute([("pr", "onehot(proto, ['tcp'])")], [{"proto": "tcp"}, {"proto": "udp"}])
    assert not spec2.needs_fit and out.X.tolist() == [[1, 0], [0, 1]]


# ---- columns and paths -------------------------------------------------------------------


def test_lookup_literal_key_first_then_nested() -> None:
    zeek = {"id.orig_h": "10.0.0.1", "id": {"orig_h": "shadowed"}}
    assert lookup(zeek, "id.orig_h") == "10.0.0.1"
    suricata = {"flow": {"bytes_toserver": 10, "inner": {"deep": 3}}}
    assert lookup(suricata, "flow.bytes_toserver") == 10
    assert lookup(suricata, "flow.inner.deep") == 3
    assert lookup(suricata, "flow.nope") is MISSING
    assert lookup(suricata, "flow.bytes_toserver.x") is MISSING  # through a number
    assert lookup({"flow": [1, 2]}, "flow.0") is MISSING  # lists are not walked
    assert lookup({"a": None}, "a") is None  # null is returned as None, absent as MISSING
    assert lookup({"a.b": None, "a": {"b": 1}}, "a.b") is None  # the literal key wins
    assert lookup({}, "a") is MISSING and not MISSING


def test_lookup_mixes_nesting_and_literal_dotted_keys() -> None:
    # zeek-kafka with tag_json: an object keyed by the log stream, literal dotted keys inside.
    tagged = {"conn": {"id.orig_h": "1.2.3.4", "id.resp_p": 443, "duration": None}}
    assert lookup(tagged, "conn.id.orig_h") == "1.2.3.4"
    assert lookup(tagged, "conn.id.resp_p") == 443
    assert lookup(tagged, "conn.duration") is None
    assert lookup(tagged, "conn.id.nope") is MISSING
    assert lookup({"id.orig_h": "5.6.7.8"}, "id.orig_h") == "5.6.7.8"
    assert lookup({"flow": {"bytes_toserver": 1}}, "flow.bytes_toserver") == 1
    # Every split is tried, left to right: "a" is an object without the rest, "a.b" has it.
    assert lookup({"a": {"x": 1}, "a.b": {"c": 2}}, "a.b.c") == 2
    assert lookup({"a": {"b.c": 1}, "a.b": {"c": 2}}, "a.b.c") == 1  # the leftmost split first
    assert lookup({"a": {"b": {"c.d": 3}}}, "a.b.c.d") == 3
    assert lookup({"a": 5, "a.b": {"c": 6}}, "a.b.c") == 6  # a head that is not an object
    assert lookup({"a": {"b": None}, "a.b": {"c": 7}}, "a.b.c") == 7
    assert lookup({"a": {"b.c": None}, "a.b": {"c": 7}}, "a.b.c") is None  # null is found
    assert lookup({"a": [{"b": 1}]}, "a.b") is MISSING
    assert lookup({"": {"a": 1}}, ".a") == 1  # empty segments are keys like any other


def test_lookup_literal_hit_is_one_dict_get() -> None:
    class Counting(dict):
        gets = 0

        def get(self, *args: Any) -> Any:
            Counting.gets += 1
            return super().get(*args)

    rec = Counting({"id.orig_h": "1.2.3.4", "id": Counting({"orig_h": "x"})})
    assert lookup(rec, "id.orig_h") == "1.2.3.4" and Counting.gets == 1


def test_without_removes_what_lookup_finds() -> None:
    from stream.features.columns import without

    rec = {"id.orig_h": "a", "flow": {"bytes": 1, "state": "new"}, "conn": {"x.y": 2}}
    assert without(rec, "id.orig_h") == {"flow": rec["flow"], "conn": rec["conn"]}
    assert without(rec, "flow.bytes") == {
        "id.orig_h": "a", "flow": {"state": "new"}, "conn": {"x.y": 2},
    }  # fmt: skip
    assert without(rec, "conn.x.y") == {"id.orig_h": "a", "flow": rec["flow"]}  # emptied: gone
    assert without(rec, "flow.nope") is None and without(rec, "nope") is None
    assert rec["flow"] == {"bytes": 1, "state": "new"}  # nothing modified in place
    mixed = {"a": {"b.c": 1}, "a.b": {"c": 2}}
    assert lookup(mixed, "a.b.c") == 1 and without(mixed, "a.b.c") == {"a.b": {"c": 2}}


def test_record_columns_numeric_codes() -> None:
    recs = [
        {"x": 1}, {"x": 2.5}, {}, {"x": None}, {"x": "3"}, {"x": True},
        {"x": [1]}, {"x": {"a": 1}}, {"x": NAN}, {"x": -INF}, {"x": 10**400},
        {"x": np.int64(7)}, {"x": np.float32(0.5)},
    ]  # fmt: skip
    values, codes = RecordColumns(recs).numeric("x")
    assert values.dtype == np.float64 and codes.dtype == np.uint8
    M, S, F = MISSING_FEATURE, NON_NUMERIC_FEATURE, NON_FINITE_FEATURE
    assert codes.tolist() == [OK, OK, M, M, S, S, S, S, F, F, F, OK, OK]
    assert values[[0, 1, 11, 12]].tolist() == [1.0, 2.5, 7.0, 0.5]
    assert np.isnan(values[codes != OK]).all()


def test_record_columns_strings_canonical_text() -> None:
    recs = [
        {"p": 443}, {"p": 443.0}, {"p": 0.5}, {"p": True}, {"p": False}, {"p": "tcp"},
        {}, {"p": None}, {"p": [1]}, {"p": {}}, {"p": -0.0}, {"p": 1e20}, {"p": np.int64(5)},
    ]  # fmt: skip
    values, codes = RecordColumns(recs).strings("p")
    assert values.dtype == object
    assert values.tolist() == [
        "443", "443", "0.5", "true", "false", "tcp", None, None, None, None, "0",
        "100000000000000000000", "5",
    ]  # fmt: skip
    M, S = MISSING_FEATURE, NON_NUMERIC_FEATURE
    assert codes.tolist() == [OK] * 6 + [M, M, S, S] + [OK] * 3
    assert canonical(2.25) == "2.25" and canonical(1e-5) == "1e-05"


def test_record_columns_cache_per_path() -> None:
    src = RecordColumns([{"a": 1}, {"a": "x"}])
    assert src.numeric("a") is src.numeric("a")
    assert src.strings("a") is src.strings("a")
    assert src.raw("a") == [1, "x"]


def test_nested_and_literal_dotted_paths_in_features() -> None:
    recs = [
        {"id.resp_p": 443, "flow": {"bytes_toserver": 10, "bytes_toclient": 30}},
        {"id": {"resp_p": 80}, "flow": {"bytes_toserver": 1}},
    ]
    spec, out = compute(
        [
            ("b", "add(flow.bytes_toserver, flow.bytes_toclient)"),
            ("p", "is(id.resp_p, 443)"),
            ("q", "`id.resp_p` / 1"),
        ],
        recs,
    )
    assert out.reason.tolist() == [OK, OK]
    assert out.X.tolist() == [[40, 1, 443], [1, 0, 80]]
    assert spec.fields == {
        "flow.bytes_toserver": "numeric",
        "flow.bytes_toclient": "numeric",
        "id.resp_p": "both",
    }


# ---- functions against numpy -------------------------------------------------------------


def test_functions_match_numpy() -> None:
    rng = np.random.default_rng(7)
    a = rng.uniform(0.01, 100, 50)
    b = rng.uniform(-50, 50, 50)
    c = rng.uniform(-5, 5, 50)
    recs = [
        {"a": float(x), "b": float(y), "c": {"v": float(z)}}
        for x, y, z in zip(a, b, c, strict=True)
    ]
    items = [
        ("log", "log(a)"),
        ("log1p", "log1p(a)"),
        ("sqrt", "sqrt(a)"),
        ("abs", "abs(b)"),
        ("min2", "min(a, b)"),
        ("min3", "min(a, b, c.v)"),
        ("max3", "max(a, b, c.v)"),
        ("clip", "clip(b, -10, 10)"),
        ("clipx", "clip(b, c.v, a)"),
        ("arith", "(a + b) * c.v - a / 4"),
        ("neg", "-a * -b"),
        ("const", "2.5"),
    ]
    spec, out = compute(items, recs)
    assert out.reason.tolist() == [OK] * 50
    expected = [
        np.log(a), np.log1p(a), np.sqrt(a), np.abs(b), np.minimum(a, b),
        np.minimum(np.minimum(a, b), c), np.maximum(np.maximum(a, b), c), np.clip(b, -10, 10),
        np.minimum(np.maximum(b, c), a), (a + b) * c - a / 4, (-a) * (-b), np.full(50, 2.5),
    ]  # fmt: skip
    assert spec.columns == tuple(name for name, _ in items)
    assert out.X.shape == (50, len(items)) and out.X.flags.c_contiguous
    for j, want in enumerate(expected):
        np.testing.assert_allclose(out.X[:, j], want, rtol=1e-15, err_msg=items[j][0])


def test_fill_semantics() -> None:
    recs = [{"x": 4}, {}, {"x": None}, {"x": "4"}, {"x": True}, {"x": [4]}, {"x": INF}]
    _, out = compute([("fx", "fill(x, -1)")], recs)
    assert out.X[:3, 0].tolist() == [4, -1, -1]
    M, S, F = MISSING_FEATURE, NON_NUMERIC_FEATURE, NON_FINITE_FEATURE
    assert out.reason.tolist() == [OK, OK, OK, S, S, S, F]  # fill replaces missing only
    assert out.detail[3] == "feature 'fx': non_numeric_feature (x)"
    assert out.detail[6] == "feature 'fx': non_finite_feature (x)"
    # Any field missing inside the expression: the fill value for the whole expression.
    recs = [{"a": 1, "b": 2}, {"a": 1}, {"b": 2}, {}, {"a": "s"}, {"a": 0, "b": 1}]
    _, out = compute([("f", "fill(a + b, 100)"), ("g", "fill(log(a) + b, 100)")], recs)
    assert out.X[:4, 0].tolist() == [3, 100, 100, 100]
    # A bad value outranks a missing one: fill never hides garbage or a computed NaN/inf.
    assert out.reason.tolist() == [OK, OK, OK, OK, S, F]
    assert out.detail[5] == "feature 'g': non_finite_feature"
    # A field outside the fill is still required.
    _, out = compute([("h", "fill(a, 0) + b")], [{"b": 1}, {"a": 1}])
    assert out.X[0, 0] == 1 and out.reason.tolist() == [OK, M]
    assert out.detail[1] == "feature 'h': missing_feature (b)"


def test_fill_around_a_categorical_field() -> None:
    recs = [{"s": "S0"}, {}, {"s": None}, {"s": ["S0"]}, {"s": 5}]
    spec, out = compute([("st", "onehot(fill(s, 'none'), ['S0', 'none', 5])")], recs)
    assert spec.columns == ("st=S0", "st=none", "st=5", "st=other")
    assert out.reason.tolist() == [OK, OK, OK, NON_NUMERIC_FEATURE, OK]
    assert out.X[[0, 1, 2, 4]].tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]
    assert out.detail == {3: "feature 'st': non_numeric_feature (s)"}
    _, out = compute([("z", "is(fill(s, 0), 0)")], recs)
    assert out.X[:3, 0].tolist() == [0, 1, 1]


def test_add_semantics() -> None:
    recs = [
        {"ob": 10, "rb": 5}, {"ob": 10}, {"rb": 5}, {}, {"ob": None, "rb": None},
        {"ob": "x", "rb": 1}, {"ob": "x"},
    ]  # fmt: skip
    _, out = compute([("b", "add(ob, rb)"), ("c", "fill(add(ob, rb), 0)")], recs)
    assert out.X[:3].tolist() == [[15, 15], [10, 10], [5, 5]]
    M, S = MISSING_FEATURE, NON_NUMERIC_FEATURE
    assert out.reason.tolist() == [OK, OK, OK, M, M, S, S]
    assert out.detail[3] == "feature 'b': missing_feature (ob, rb)"
    assert out.detail[5] == "feature 'b': non_numeric_feature (ob)"
    # Only c: the scan (neither part set) becomes 0.
    _, out = compute([("c", "fill(add(ob, rb), 0)")], recs)
    assert out.X[:5, 0].tolist() == [15, 10, 5, 0, 0]
    # Parts are expressions; a single part is allowed.
    _, out = compute([("d", "add(ob * 2, rb / 5, 1)"), ("e", "add(ob)")], recs[:3])
    assert out.X[:2].tolist() == [[22, 10], [21, 10]] and out.X[2, 0] == 2
    assert out.reason.tolist() == [OK, OK, M]
    assert out.detail == {2: "feature 'e': missing_feature (ob)"}


def test_non_finite_results() -> None:
    recs = [{"x": 0, "y": 0}, {"x": -1, "y": 2}, {"x": 1e308, "y": 1}, {"x": 4, "y": 2}]
    F = NON_FINITE_FEATURE
    cases = [
        ("log", "log(x)", [F, F, OK, OK]),
        ("div", "y / x", [F, OK, OK, OK]),  # 0 / 0
        ("sqrt", "sqrt(x)", [OK, F, OK, OK]),
        ("big", "x * 10", [OK, OK, F, OK]),  # overflow
        ("inv", "1 / (1 / x)", [F, OK, OK, OK]),  # an infinite intermediate is caught
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # np.errstate: nothing is printed
        for name, text, want in cases:
            _, out = compute([(name, text)], recs)
            assert out.reason.tolist() == want, name
            assert np.isfinite(out.X[out.ok]).all()
            bad = np.flatnonzero(~out.ok).tolist()
            assert out.detail == {i: f"feature {name!r}: non_finite_feature" for i in bad}
        # A constant that is never finite rejects every row.
        _, out = compute([("k", "log(0) + x")], recs)
        assert out.reason.tolist() == [F] * 4


def test_onehot_explicit() -> None:
    recs = [{"p": "tcp"}, {"p": "udp"}, {"p": "sctp"}, {"p": 6}, {"p": 6.0}, {}]
    spec, out = compute([("pr", "onehot(p, ['tcp', 'udp', 6])")], recs)
    assert spec.columns == ("pr=tcp", "pr=udp", "pr=6", "pr=other")
    assert out.X[:5].tolist() == [
        [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0], [0, 0, 1, 0],
    ]  # fmt: skip
    assert out.reason.tolist() == [OK] * 5 + [MISSING_FEATURE]
    assert out.detail == {5: "feature 'pr': missing_feature (p)"}


def test_onehot_learned_top_n_ties_by_value_and_other() -> None:
    train = [{"s": v} for v in ["SF"] * 5 + ["S0"] * 3 + ["REJ"] * 3 + ["OTH"] * 2 + ["S1"]]
    train += [{"s": "other"}] * 9  # a literal "other" is never its own category
    spec = FeatureSpec.parse([("st", "onehot(s, top=3)"), ("all", "onehot(s)")]).fit(
        RecordColumns(train)
    )
    # REJ and S0 tie on 3: broken by value; most frequent first.
    assert spec.columns[:4] == ("st=SF", "st=REJ", "st=S0", "st=other")
    assert spec.columns[4:] == ("all=SF", "all=REJ", "all=S0", "all=OTH", "all=S1", "all=other")
    out = spec.compute(RecordColumns([{"s": "SF"}, {"s": "S0"}, {"s": "OTH"}, {"s": "new"}]))
    assert out.X[:, :4].tolist() == [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 1]]
    assert out.X[:, 4:].tolist() == [
        [1, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 1],
    ]  # fmt: skip
    learned = spec.to_dict()["features"][0]["learned"][0]
    assert learned["categories"] == ["SF", "REJ", "S0"] and learned["counts"] == [5, 3, 3]
    assert learned["other"] == 23 - 11 and learned["total"] == 23


def test_onehot_default_top_is_ten() -> None:
    train = [{"k": i} for i in range(12) for _ in range(12 - i)]
    spec = FeatureSpec.parse([("k", "onehot(k)")]).fit(RecordColumns(train))
    assert spec.columns == (*(f"k={i}" for i in range(10)), "k=other")


def test_is() -> None:
    recs = [{"p": "tcp"}, {"p": "TCP"}, {"p": 6}, {"p": True}, {"p": None}]
    _, out = compute(
        [("t", "is(p, 'tcp')"), ("six", "is(fill(p, 'x'), 6)"), ("b", "is(p, 'true')")], recs
    )
    assert out.X[:4].tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert out.reason.tolist() == [OK] * 4 + [MISSING_FEATURE]


def test_freq_shares_and_unseen_is_zero() -> None:
    train = [{"port": p} for p in [443] * 6 + [80] * 3 + [22]] + [{}] * 5
    spec = FeatureSpec.parse([("fp", "freq(port)"), ("fz", "freq(fill(port, 'none'))")])
    spec = spec.fit(RecordColumns(train))
    out = spec.compute(RecordColumns([{"port": 443}, {"port": 80.0}, {"port": 8080}, {}]))
    # Shares over the records that had a value (10); with fill, over all 15.
    assert out.X[:3, 0].tolist() == [0.6, 0.3, 0.0]
    assert out.X[:, 1].tolist() == [6 / 15, 3 / 15, 0.0, 5 / 15]
    assert out.reason.tolist() == [OK, OK, OK, MISSING_FEATURE]


def test_freq_table_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fexpr, "FREQ_TABLE_MAX", 2)
    train = [{"h": h} for h in "aaaabbbccd"]
    spec = FeatureSpec.parse([("fh", "freq(h)")]).fit(RecordColumns(train))
    learned = spec.to_dict()["features"][0]["learned"][0]
    assert learned["values"] == ["a", "b"] and learned["distinct"] == 4
    out = spec.compute(RecordColumns([{"h": c} for c in "abcd"]))
    assert out.X[:, 0].tolist() == [0.4, 0.3, 0.0, 0.0]
    assert "kept the 2 most frequent" in spec.describe()


def test_rarity_is_log_scaled_and_knows_the_training_size() -> None:
    """-log((count + 1) / (N + 1)): 0-ish for the common value, log(N + 1) for an unseen
    one, whatever N is (no constant picked by hand)."""
    train = [{"port": p, "ip": ip} for p, ip in
             [(443, "a")] * 6 + [(80, "a")] * 3 + [(22, "b")]]
    spec = FeatureSpec.parse([("rp", "rarity(port)"), ("pair", "rarity(ip, port)"),
                              ("fpair", "freq(ip, port)")]).fit(RecordColumns(train))
    out = spec.compute(RecordColumns([{"port": 443, "ip": "a"}, {"port": 22, "ip": "a"},
                                      {"port": 8080, "ip": "a"}, {"port": 22, "ip": "b"}]))
    np.testing.assert_allclose(out.X[:, 0], [np.log(11 / 7), np.log(11 / 2), np.log(11),
                                             np.log(11 / 2)])
    # The pair counts the tuple: (a, 22) was never seen though both values were.
    np.testing.assert_allclose(out.X[:, 1], [np.log(11 / 7), np.log(11), np.log(11),
                                             np.log(11 / 2)])
    assert out.X[:, 2].tolist() == [0.6, 0.0, 0.0, 0.1]
    again = FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert np.array_equal(again.compute(RecordColumns(train)).X,
                          spec.compute(RecordColumns(train)).X)
    # On its training records, each leaves its own count out: the (b, 22) record, the
    # only one of its port, reads as an unseen port does (and freq as 0.0); the grid is
    # the stream's, so drift compares like with like.
    own = spec.compute(RecordColumns(train), training=True).X
    np.testing.assert_allclose(own[:, 0], [np.log(11 / 6)] * 6 + [np.log(11 / 3)] * 3
                               + [np.log(11)])
    assert own[-1, 2] == 0.0 and own[0, 2] == 0.5


def test_prevalence_is_the_share_of_hosts_that_talked_to_a_destination() -> None:
    train = ([{"src": h, "dst": "dns"} for h in "abcd"] + [{"src": "a", "dst": "c2"}] * 20
             + [{"src": "b", "dst": "web"}, {"src": "c", "dst": "web"}])
    spec = FeatureSpec.parse([("p", "prevalence(dst, by=src)")]).fit(RecordColumns(train))
    out = spec.compute(RecordColumns([{"src": "z", "dst": d} for d in
                                      ("dns", "web", "c2", "new")]))
    # Twenty flows from one host are still one host of four.
    assert out.X[:, 0].tolist() == [1.0, 0.5, 0.25, 0.0]
    assert "learned from 4 hosts" in spec.describe()
    again = FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again.compute(RecordColumns(train)).X.tolist() == \
        spec.compute(RecordColumns(train)).X.tolist()
    with pytest.raises(SpecError, match="needs by=FIELD"):
        FeatureSpec.parse([("p", "prevalence(dst)")])


def test_freq_in_arithmetic() -> None:
    train = [{"p": 1}, {"p": 1}, {"p": 2}, {"p": 3}]
    spec = FeatureSpec.parse([("r", "-log(freq(p) + 0.01)")]).fit(RecordColumns(train))
    out = spec.compute(RecordColumns([{"p": 1}, {"p": 9}]))
    np.testing.assert_allclose(out.X[:, 0], [-np.log(0.51), -np.log(0.01)])


# ---- compute: reasons, details, shape ----------------------------------------------------


def test_first_reason_in_spec_order_wins() -> None:
    recs = [{"a": "x", "b": None}, {"a": 1}, {"a": 1, "b": 0}]
    _, out = compute([("fa", "a * 2"), ("fb", "log(b)")], recs)
    assert out.reason.tolist() == [NON_NUMERIC_FEATURE, MISSING_FEATURE, NON_FINITE_FEATURE]
    assert out.detail == {
        0: "feature 'fa': non_numeric_feature (a)",
        1: "feature 'fb': missing_feature (b)",
        2: "feature 'fb': non_finite_feature",
    }
    assert out.ok.tolist() == [False, False, False]


def test_missing_detail_names_only_the_absent_fields_that_matter() -> None:
    recs = [{"c": 1}, {"a": 1, "c": 1}, {"a": 1, "b": 1}, {"b": 1, "c": "x"}]
    _, out = compute([("ld", "log(a + b) + fill(c, 0)")], recs)
    assert out.detail == {
        0: "feature 'ld': missing_feature (a, b)",
        1: "feature 'ld': missing_feature (b)",
        3: "feature 'ld': non_numeric_feature (c)",
    }
    assert out.X[2, 0] == np.log(2)


def test_empty_batch() -> None:
    spec = FeatureSpec.parse([("a", "x"), ("p", "onehot(p, ['t'])")])
    out = spec.compute(RecordColumns([]))
    assert out.X.shape == (0, 3) and out.reason.shape == (0,) and out.detail == {}


def test_plain_spec_matches_the_stream_decoder() -> None:
    """A bare field name behaves exactly like today's features in stream.ingest.decode."""
    features = ("bytes_transferred", "packet_count", "connection_duration")
    docs = [
        {"bytes_transferred": 10, "packet_count": 2, "connection_duration": 0.5},
        {"bytes_transferred": None, "packet_count": 2, "connection_duration": 0.5},
        {"packet_count": 2, "connection_duration": 0.5},
        {"bytes_transferred": "10", "packet_count": 2, "connection_duration": 0.5},
        {"bytes_transferred": True, "packet_count": [2], "connection_duration": 0.5},
        {"bytes_transferred": 1, "packet_count": 2, "connection_duration": {"s": 1}},
        {"bytes_transferred": 1e300, "packet_count": -2, "connection_duration": 0},
    ]
    values = [orjson.dumps({"tenant_id": "acme", **d}) for d in docs]
    batch = DecodedBatch(values)
    X_stream, good = batch.matrix(np.arange(len(values)), features)
    spec = FeatureSpec.from_fields(list(features))
    assert spec.is_plain and spec.plain_fields == features and spec.columns == features
    out = spec.compute(RecordColumns([orjson.loads(v) for v in values]))
    assert out.reason.tolist() == batch.reason.tolist()
    assert out.detail == batch.detail
    assert out.X[good].tolist() == X_stream.tolist()


def test_is_plain() -> None:
    assert FeatureSpec.parse([("x", "duration"), ("y", "`Flow Duration`")]).is_plain
    assert FeatureSpec.parse([("y", "`Flow Duration`")]).plain_fields == ("Flow Duration",)
    not_plain = FeatureSpec.parse([("x", "duration"), ("y", "fill(b, 0)")])
    assert not not_plain.is_plain
    with pytest.raises(ValueError, match="not a plain spec"):
        _ = not_plain.plain_fields


def test_fields_and_columns() -> None:
    spec = FeatureSpec.parse(
        [
            ("r", "orig_bytes / fill(resp_bytes, 1)"),
            ("p", "freq(id.resp_p)"),
            ("q", "id.resp_p / 1000"),
            ("st", "onehot(fill(conn_state, 'none'), ['S0', 'SF'])"),
        ]
    )
    assert spec.fields == {
        "orig_bytes": "numeric",
        "resp_bytes": "numeric",
        "id.resp_p": "both",
        "conn_state": "string",
    }
    assert spec.names == ("r", "p", "q", "st")
    assert spec.needs_fit  # freq learns
    one = {"orig_bytes": 1, "resp_bytes": 2, "id.resp_p": 80, "conn_state": "S0"}
    fitted = spec.fit(RecordColumns([one]))
    assert fitted.columns == ("r", "p", "q", "st=S0", "st=SF", "st=other")


def test_fit_returns_a_new_spec_and_refits_afresh() -> None:
    spec = FeatureSpec.parse([("st", "onehot(s, top=1)")])
    first = spec.fit(RecordColumns([{"s": "a"}, {"s": "a"}, {"s": "b"}]))
    assert spec.needs_fit and not spec.fitted  # the original is unchanged
    assert first.columns == ("st=a", "st=other") and first.fitted_records == 3
    second = first.fit(RecordColumns([{"s": "b"}]))
    assert second.columns == ("st=b", "st=other") and second.fitted_records == 1
    assert first.columns == ("st=a", "st=other")


# ---- constructors, storage, describe -----------------------------------------------------


def fitted_example() -> tuple[FeatureSpec, list[dict[str, Any]]]:
    states = ["S0", "SF", "SF", "REJ", "SF", "S0"] * 5
    ports = [443, 80, 443, 22, 8080] * 6
    train = [
        {"duration": 0.5 * i, "orig_bytes": i * 100, "conn_state": s, "id.resp_p": p,
         "flow": {"pkts": i % 7}, **({"proto": "tcp"} if i % 2 else {})}
        for i, (s, p) in enumerate(zip(states, ports, strict=True))
    ]  # fmt: skip
    spec = FeatureSpec.parse(
        [
            ("ld", "log(duration + 0.1)"),
            ("ratio", "orig_bytes / (flow.pkts + 1)"),
            ("st", "onehot(conn_state, top=2)"),
            ("pr", "onehot(fill(proto, 'none'), ['tcp', 'udp'])"),
            ("fp", "freq(id.resp_p)"),
            ("t", "is(conn_state, 'SF') * clip(duration, 0, 3)"),
        ]
    ).fit(RecordColumns(train))
    return spec, train


def test_to_dict_from_dict_round_trip() -> None:
    spec, train = fitted_example()
    d = spec.to_dict()
    assert d["version"] == 1 and d["fitted_records"] == 30
    assert [f["name"] for f in d["features"]] == ["ld", "ratio", "st", "pr", "fp", "t"]
    stored = json.loads(json.dumps(d))  # JSON-safe
    again = FeatureSpec.from_dict(stored)
    assert again == spec and again.to_dict() == d and again.columns == spec.columns
    probe = [*train, {"conn_state": "new", "id.resp_p": 1, "duration": 1, "orig_bytes": 1}]
    a, b = spec.compute(RecordColumns(probe)), again.compute(RecordColumns(probe))
    assert np.array_equal(a.X, b.X, equal_nan=True)
    assert a.reason.tolist() == b.reason.tolist() and a.detail == b.detail
    # The dict is a copy: changing it does not change the spec.
    d["features"][2]["learned"][0]["categories"].append("zzz")
    assert spec.columns == again.columns
    # Unfitted specs round-trip too.
    raw = FeatureSpec.parse([("st", "onehot(s)")])
    assert FeatureSpec.from_dict(raw.to_dict()) == raw and raw.to_dict()["fitted_records"] is None


def test_from_dict_rejects_bad_input() -> None:
    spec, _ = fitted_example()
    good = spec.to_dict()
    with pytest.raises(SpecError, match="unsupported feature spec version 2"):
        FeatureSpec.from_dict({**good, "version": 2})
    with pytest.raises(SpecError, match="needs a 'features' list"):
        FeatureSpec.from_dict({"version": 1})
    bad = json.loads(json.dumps(good))
    bad["features"][2]["learned"][0]["fn"] = "freq"
    with pytest.raises(SpecError, match="does not belong to 'onehot'") as info:
        FeatureSpec.from_dict(bad)
    assert info.value.feature == "st"
    bad = json.loads(json.dumps(good))
    bad["features"][4]["learned"][0]["counts"].pop()
    with pytest.raises(SpecError, match="'freq' is malformed"):
        FeatureSpec.from_dict(bad)
    bad = json.loads(json.dumps(good))
    bad["features"][0]["learned"] = [{"fn": "onehot"}]
    with pytest.raises(SpecError, match="has 1 entries, expected 0"):
        FeatureSpec.from_dict(bad)
    with pytest.raises(SpecError, match="must be an object"):
        FeatureSpec.from_dict([])  # type: ignore[arg-type]


def test_describe() -> None:
    spec, _ = fitted_example()
    text = spec.describe()
    assert text.splitlines()[0] == "feature spec v1: 6 features -> 10 columns, fitted on 30 records"
    assert "  ld     log(duration + 0.1)\n  ratio  orig_bytes / (flow.pkts + 1)\n" in text
    assert "columns: st=SF, st=S0, st=other" in text
    assert (
        "onehot(conn_state, top=2): learned from 30 training values (3 distinct):"
        " SF 15 (50.0%), S0 10 (33.3%), other 5 (16.7%)"
    ) in text
    assert "['tcp', 'udp']): seen in 30 training values (2 distinct): tcp 15 (50.0%), udp 0" in text
    assert (
        "freq(id.resp_p): learned from 30 training values (4 distinct);"
        " most frequent: 443 12 (40.0%), 22 6 (20.0%)"
    ) in text
    assert "fields read: duration (numeric), orig_bytes (numeric), flow.pkts (numeric)" in text
    assert "conn_state (string)" in text and "proto (string)" in text
    raw = FeatureSpec.parse([("st", "onehot(s)")]).describe()
    assert "not fitted" in raw and "columns: learned at fit time" in raw


def test_from_fields_and_from_cli() -> None:
    spec = FeatureSpec.from_fields(["bytes_transferred", "id.orig_bytes"])
    assert spec.features == (
        ("bytes_transferred", "bytes_transferred"),
        ("id.orig_bytes", "id.orig_bytes"),
    )
    with pytest.raises(SpecError, match="invalid name 'Flow Duration'"):
        FeatureSpec.from_fields(["Flow Duration"])
    cli = FeatureSpec.from_cli(["ld=log(duration + 0.1)", " st = onehot(s, top=3)"])
    assert cli.features == (("ld", "log(duration + 0.1)"), ("st", "onehot(s, top=3)"))
    with pytest.raises(SpecError, match="expected NAME=EXPR, got 'duration'"):
        FeatureSpec.from_cli(["duration"])
    assert str(spec_error_cli(["x=log(", "y=1"])).startswith("feature 'x': position 5:")


def spec_error_cli(items: list[str]) -> SpecError:
    with pytest.raises(SpecError) as info:
        FeatureSpec.from_cli(items)
    return info.value


def test_from_file_yaml(tmp_path: Path) -> None:
    listed = tmp_path / "list.yaml"
    listed.write_text(
        "features:\n"
        '  - name: ld\n    expr: "log(duration + 0.1)"\n'
        '  - {name: st, expr: \'onehot(conn_state, ["S0", "SF"])\'}\n'
    )
    mapped = tmp_path / "map.yaml"
    mapped.write_text(
        "version: 1\nfeatures:\n  ld: log(duration + 0.1)\n"
        '  st: \'onehot(conn_state, ["S0", "SF"])\'\n'
    )
    a = FeatureSpec.from_file(listed)
    assert a.features == (("ld", "log(duration + 0.1)"), ("st", 'onehot(conn_state, ["S0", "SF"])'))
    assert a.columns == ("ld", "st=S0", "st=SF", "st=other")
    assert FeatureSpec.from_file(str(mapped)) == a
    # Unquoted, [S0, SF] are two field names, not category values: a clear error.
    unquoted = tmp_path / "unquoted.yaml"
    unquoted.write_text("features:\n  st: onehot(conn_state, [S0, SF])\n")
    with pytest.raises(SpecError, match="'onehot' takes a category value here") as info:
        FeatureSpec.from_file(unquoted)
    assert (info.value.feature, info.value.position) == ("st", 21)  # at S0


def test_from_file_errors(tmp_path: Path) -> None:
    def err(text: str) -> SpecError:
        p = tmp_path / "spec.yaml"
        p.write_text(text)
        with pytest.raises(SpecError) as info:
            FeatureSpec.from_file(p)
        assert info.value.source == str(p) and str(info.value).startswith(str(p) + ": ")
        return info.value

    assert "found duplicate key 'ld'" in err("features:\n  ld: x\n  ld: y\n").message
    assert "invalid YAML" in err("features: [\n").message
    assert "want a mapping with a 'features' key" in err("- ld: x\n").message
    assert "unknown top-level key(s): feature" in err("features: {a: x}\nfeature: {}\n").message
    assert (
        "features[1]: want a mapping with exactly 'name' and 'expr'"
        in err("features:\n  - {name: a, expr: x}\n  - {name: b, exp: y}\n").message
    )
    assert "must be a list" in err("features: 3\n").message
    assert "expression must be a string" in err("features: {a: 3}\n").message
    assert "unsupported version 2" in err("version: 2\nfeatures: {a: x}\n").message
    e = err("features:\n  ok: x\n  ld: log(lgo(x))\n")
    assert (e.feature, e.position) == ("ld", 5)
    assert str(e).endswith("feature 'ld': position 5: unknown function 'lgo'")
    with pytest.raises(SpecError, match="cannot read feature spec"):
        FeatureSpec.from_file(tmp_path / "absent.yaml")


def test_registry_is_the_extension_point() -> None:
    assert set(fexpr.FUNCTIONS) == {
        "log", "log1p", "sqrt", "abs", "min", "max", "clip", "fill", "add", "is", "onehot", "freq",
        "count", "sum", "mean", "std", "distinct", "interval_mean", "interval_std",
        "rarity", "prevalence", "since", "first_seen", "beacon", "spread", "cardinality",
        "regularity",
        "optional",
    }  # fmt: skip

    class Double(fexpr.Function):
        name = "double"
        signature = fexpr.Signature((fexpr.NUM,), kwargs={"by": fexpr.NUMBER})

        def eval(self, apply, args, ctx, state):  # type: ignore[no-untyped-def]
            return fexpr.Col(args[0].values * apply.kwargs.get("by", 2.0), args[0].codes)

    fexpr.register(Double)
    try:
        _, out = compute([("d", "double(x, by=3) + double(x)")], [{"x": 1}, {}])
        assert out.X[0, 0] == 5 and out.reason.tolist() == [OK, MISSING_FEATURE]
        assert out.detail[1] == "feature 'd': missing_feature (x)"
    finally:
        del fexpr.FUNCTIONS["double"]
    assert "unknown function 'double'" in str(spec_error([("d", "double(x)")]))


# ---- property test: vectorized == per-record reference -----------------------------------

NUM_FIELDS = ("a", "b", "n.x", "sp ace")
CAT_FIELDS = ("c", "n.x")


def ref_lookup(rec: dict[str, Any], path: str) -> Any:
    if path in rec:
        return rec[path]
    parts = path.split(".")
    for i in range(1, len(parts)):
        head, rest = ".".join(parts[:i]), ".".join(parts[i:])
        if isinstance(rec.get(head), dict):
            value = ref_lookup(rec[head], rest)
            if value is not MISSING:
                return value
    return MISSING


def ref_number(v: Any) -> tuple[float, int]:
    if v is None or v is MISSING:
        return NAN, MISSING_FEATURE
    if isinstance(v, bool) or not isinstance(v, int | float):
        return NAN, NON_NUMERIC_FEATURE
    try:
        x = float(v)
    except OverflowError:
        return NAN, NON_FINITE_FEATURE
    return (x, OK) if math.isfinite(x) else (NAN, NON_FINITE_FEATURE)


def ref_text(v: Any) -> tuple[str | None, int]:
    if v is None or v is MISSING:
        return None, MISSING_FEATURE
    if isinstance(v, list | dict):
        return None, NON_NUMERIC_FEATURE
    if v is True or v is False:
        return ("true" if v else "false"), OK
    if isinstance(v, int):
        return str(v), OK
    if isinstance(v, float):
        return (str(int(v)) if math.isfinite(v) and v == int(v) else repr(v)), OK
    return v, OK


def ref_op(fn: Any, *xs: tuple[float, int]) -> tuple[float, int]:
    code = max(c for _, c in xs)
    if code:
        return NAN, code
    with np.errstate(all="ignore"):
        y = float(fn(*(np.float64(v) for v, _ in xs)))
    return (y, OK) if math.isfinite(y) else (NAN, NON_FINITE_FEATURE)


class Reference:
    """Per-record evaluation of generated expression trees, straight from the rules."""

    def __init__(self, train: list[dict[str, Any]]) -> None:
        self.train = train

    def cat(self, rec: dict[str, Any], node: tuple) -> tuple[str | None, int]:
        _, path, fill = node
        text, code = ref_text(ref_lookup(rec, path))
        if code == MISSING_FEATURE and fill is not None:
            return fill, OK
        return text, code

    def counts(self, node: tuple) -> Counter[str]:
        return Counter(t for t, c in (self.cat(r, node) for r in self.train) if c == OK)

    def num(self, rec: dict[str, Any], node: tuple) -> tuple[float, int]:
        kind = node[0]
        if kind == "num":
            return node[1], OK
        if kind == "field":
            return ref_number(ref_lookup(rec, node[1]))
        if kind == "neg":
            return ref_op(np.negative, self.num(rec, node[1]))
        if kind == "bin":
            op = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide}[node[1]]
            return ref_op(op, self.num(rec, node[2]), self.num(rec, node[3]))
        if kind == "fn":
            fn = {"log": np.log, "log1p": np.log1p, "sqrt": np.sqrt, "abs": np.abs}[node[1]]
            return ref_op(fn, self.num(rec, node[2]))
        if kind in ("min", "max"):
            fn = min if kind == "min" else max
            return ref_op(lambda *v: fn(v), *(self.num(rec, a) for a in node[1]))
        if kind == "clip":
            return ref_op(
                lambda x, lo, hi: min(max(x, lo), hi), *(self.num(rec, a) for a in node[1:])
            )
        if kind == "fill":
            v, c = self.num(rec, node[1])
            return (node[2], OK) if c == MISSING_FEATURE else (v, c)
        if kind == "add":
            parts = [self.num(rec, a) for a in node[1]]
            present = [p for p in parts if p[1] != MISSING_FEATURE]
            if not present:
                return NAN, MISSING_FEATURE
            return ref_op(lambda *v: sum(v[1:], v[0]), *present)
        if kind == "is":
            t, c = self.cat(rec, node[1])
            return (NAN, c) if c else (1.0 if t == node[2] else 0.0, OK)
        if kind == "freq":
            t, c = self.cat(rec, node[1])
            if c:
                return NAN, c
            counts = self.counts(node[1])
            return counts.get(t, 0) / sum(counts.values()), OK
        raise AssertionError(node)

    def onehot(self, rec: dict[str, Any], node: tuple) -> tuple[list[float], int]:
        cats = self.categories(node)
        t, c = self.cat(rec, node[1])
        row = [0.0] * (len(cats) + 1)
        row[cats.index(t) if t in cats else len(cats)] = 1.0
        return row, c

    def categories(self, node: tuple) -> list[str]:
        if node[2] is not None:
            return list(node[2])
        ranked = sorted(self.counts(node[1]).items(), key=lambda kv: (-kv[1], kv[0]))
        return [v for v, _ in ranked if v != "other"][: node[3]]


def render(node: tuple) -> str:
    kind = node[0]
    if kind == "num":
        return repr(node[1]) if node[1] >= 0 else f"({node[1]!r})"
    if kind == "field":
        return node[1] if " " not in node[1] else f"`{node[1]}`"
    if kind == "cat":
        path = render(("field", node[1]))
        return path if node[2] is None else f"fill({path}, {json.dumps(node[2])})"
    if kind == "neg":
        return f"-{render(node[1])}"
    if kind == "bin":
        return f"({render(node[2])} {node[1]} {render(node[3])})"
    if kind == "fn":
        return f"{node[1]}({render(node[2])})"
    if kind in ("min", "max", "add"):
        return f"{kind}({', '.join(render(a) for a in node[1])})"
    if kind == "clip":
        return f"clip({', '.join(render(a) for a in node[1:])})"
    if kind == "fill":
        return f"fill({render(node[1])}, {node[2]!r})"
    if kind == "is":
        return f"is({render(node[1])}, {json.dumps(node[2])})"
    if kind == "freq":
        return f"freq({render(node[1])})"
    if kind == "onehot":
        if node[2] is not None:
            return f"onehot({render(node[1])}, {json.dumps(list(node[2]))})"
        return f"onehot({render(node[1])}, top={node[3]})"
    raise AssertionError(node)


def fields_of(node: tuple) -> set[str]:
    if node[0] in ("field", "cat"):
        return {node[1]}
    out: set[str] = set()
    for part in node[1:]:
        if isinstance(part, tuple) and part and isinstance(part[0], str):
            out |= fields_of(part)
        elif isinstance(part, list):
            for p in part:
                out |= fields_of(p)
    return out


CAT_VALUES = ["x", "y", "1", "0.5", "true", "none", "other"]
raw_values = st.one_of(
    st.none(),
    st.integers(-5, 5),
    st.sampled_from([0, 1, -1, 10**400, 2**53 + 1]),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([0.0, 0.5, 1.0, 1e308, -1e308, 1e-300]),
    st.booleans(),
    st.sampled_from(CAT_VALUES),
    st.lists(st.integers(0, 2), max_size=2),
    st.dictionaries(st.sampled_from(["x", "y"]), st.integers(0, 3), max_size=2),
)


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    rec: dict[str, Any] = {}
    for key in ("a", "b", "c", "sp ace"):
        if draw(st.booleans()):
            rec[key] = draw(raw_values)
    style = draw(st.sampled_from(["literal", "nested", "none", "both"]))
    if style in ("literal", "both"):
        rec["n.x"] = draw(raw_values)
    if style in ("nested", "both"):
        rec["n"] = {"x": draw(raw_values)}
    elif draw(st.booleans()):
        rec["n"] = draw(raw_values)  # "n" that is not an object: n.x is absent
    return rec


numbers = st.sampled_from([0.0, 1.0, 2.5, 0.1, 3.0, 1e308, 1e-300, -1.0, -0.5])
cats = st.tuples(
    st.just("cat"), st.sampled_from(CAT_FIELDS), st.sampled_from([None, None, "none", "x"])
)
leaves = st.one_of(
    st.tuples(st.just("num"), numbers),
    st.tuples(st.just("field"), st.sampled_from(NUM_FIELDS)),
)


def literal(node: tuple) -> float | None:
    if node[0] == "num":
        return node[1]
    if node[0] == "neg":
        inner = literal(node[1])
        return None if inner is None else -inner
    return None


def ordered_bounds(node: tuple) -> tuple:
    """clip with literal bounds the wrong way round is a spec error: swap them."""
    lo, hi = literal(node[2]), literal(node[3])
    if lo is not None and hi is not None and lo > hi:
        return (node[0], node[1], node[3], node[2])
    return node


def extend(inner: st.SearchStrategy[tuple]) -> st.SearchStrategy[tuple]:
    return st.one_of(
        st.tuples(st.just("neg"), inner),
        st.tuples(st.just("bin"), st.sampled_from("+-*/"), inner, inner),
        st.tuples(st.just("fn"), st.sampled_from(["log", "log1p", "sqrt", "abs"]), inner),
        st.tuples(st.sampled_from(["min", "max", "add"]), st.lists(inner, min_size=2, max_size=3)),
        st.tuples(st.just("add"), st.lists(inner, min_size=1, max_size=1)),
        st.tuples(st.just("clip"), inner, inner, inner).map(ordered_bounds),
        st.tuples(st.just("fill"), inner, numbers),
        st.tuples(st.just("is"), cats, st.sampled_from(CAT_VALUES)),
        st.tuples(st.just("freq"), cats),
    )


expressions = st.recursive(leaves, extend, max_leaves=8)
onehots = st.tuples(
    st.just("onehot"),
    cats,
    st.one_of(
        st.none(),
        st.lists(st.sampled_from(["x", "y", "1", "true"]), min_size=1, max_size=3, unique=True),
    ),
    st.integers(1, 4),
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    trees=st.lists(st.one_of(expressions, expressions, onehots), min_size=1, max_size=4),
    train=st.lists(records(), min_size=1, max_size=12),
    probe=st.lists(records(), min_size=0, max_size=12),
)
def test_vectorized_equals_per_record_reference(
    trees: list[tuple], train: list[dict[str, Any]], probe: list[dict[str, Any]]
) -> None:
    items = [(f"f{i}", render(t)) for i, t in enumerate(trees)]
    spec = FeatureSpec.parse(items)
    ref = Reference(train)
    used = set().union(*(fields_of(t) for t in trees))
    absent = {
        p for p in used if all(ref_number(ref_lookup(r, p))[1] == MISSING_FEATURE for r in train)
    }
    try:
        fitted = spec.fit(RecordColumns(train))
    except SpecError as e:
        # Only for the documented reasons: a field absent from every training record,
        # or a learned function whose field never had a usable value.
        assert absent or "found no usable value" in e.message, str(e)
        return
    assert not absent
    rows = train + probe
    out = fitted.compute(RecordColumns(rows))
    assert out.X.shape == (len(rows), len(fitted.columns))
    for i, rec in enumerate(rows):
        values: list[float] = []
        reason = OK
        for t in trees:
            if t[0] == "onehot":
                row, code = ref.onehot(rec, t)
                values += row
            else:
                v, code = ref.num(rec, t)
                values.append(v)
            if reason == OK:
                reason = code
        assert out.reason[i] == reason, (i, rec, items)
        if reason == OK:
            np.testing.assert_allclose(
                out.X[i], values, rtol=1e-12, atol=1e-300, err_msg=str(items)
            )
    assert set(out.detail) == set(np.flatnonzero(out.reason).tolist())
    # And the stored form computes the same.
    again = FeatureSpec.from_dict(json.loads(json.dumps(fitted.to_dict()))).compute(
        RecordColumns(rows)
    )
    assert np.array_equal(again.X, out.X, equal_nan=True) and again.detail == out.detail
