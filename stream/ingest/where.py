"""``--where``: which input records are events to score at all (the rest are skipped).

A sensor stream mixes record kinds: Suricata's EVE JSON carries ``flow`` events
beside ``alert``, ``dns`` and ``http`` ones. ``--where 'event_type == "flow"'``
keeps the flows; a record that does not match is *filtered*: counted, committed,
never scored and never dead-lettered (it is not bad input, just not ours).

The language is small on purpose: comparisons of a field with a literal, joined
by ``and`` / ``or`` (``and`` binds tighter), with parentheses::

    event_type == "flow"
    event_type in ("flow", "netflow") and proto != "ICMP"
    dst_port == 53 or app_proto == "dns"

A field is read as the sensor schema presents it (canonical names and the
sensor's own); a missing field equals nothing (so ``!=`` holds). Numbers compare
as numbers, strings as strings. A filter that does not parse is a usage error
before anything starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from lark import Lark, Token, Transformer, UnexpectedInput

from stream.errors import StreamError

GRAMMAR: Final = r"""
?start: disj
?disj: conj | disj "or" conj         -> or_
?conj: test | conj "and" test        -> and_
?test: FIELD "==" value              -> eq
    | FIELD "!=" value               -> ne
    | FIELD "in" "(" value ("," value)* ")" -> in_
    | FIELD "not" "in" "(" value ("," value)* ")" -> not_in
    | "(" disj ")"
?value: STRING | NUMBER
FIELD: /(?!(and|or|in|not)\b)[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*/
NUMBER: /-?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?/
STRING: /"(?:[^"\\]|\\.)*"/ | /'(?:[^'\\]|\\.)*'/
%ignore /[ \t]+/
"""

_PARSER: Final = Lark(GRAMMAR, parser="lalr")


class WhereError(StreamError, ValueError):
    """A ``--where`` that does not parse; ``str()`` says where."""


@dataclass(frozen=True)
class Test:
    field: str
    values: tuple[Any, ...]
    negate: bool


@dataclass(frozen=True)
class Op:
    kind: str  # "and" or "or"
    left: Any
    right: Any


def _literal(tok: Token) -> Any:
    text = str(tok)
    if tok.type == "STRING":
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    number = float(text)
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() \
        else number


class _Build(Transformer):
    def eq(self, items: list[Token]) -> Test:
        return Test(str(items[0]), (_literal(items[1]),), False)

    def ne(self, items: list[Token]) -> Test:
        return Test(str(items[0]), (_literal(items[1]),), True)

    def in_(self, items: list[Token]) -> Test:
        return Test(str(items[0]), tuple(_literal(t) for t in items[1:]), False)

    def not_in(self, items: list[Token]) -> Test:
        return Test(str(items[0]), tuple(_literal(t) for t in items[1:]), True)

    def and_(self, items: list[Any]) -> Op:
        return Op("and", items[0], items[1])

    def or_(self, items: list[Any]) -> Op:
        return Op("or", items[0], items[1])


@dataclass(frozen=True)
class Where:
    """A parsed filter; ``mask(source)`` is True for the rows to keep."""

    text: str
    tree: Any

    @classmethod
    def parse(cls, text: str) -> Where:
        try:
            tree = _Build().transform(_PARSER.parse(text))
        except UnexpectedInput as e:
            col = getattr(e, "column", "?")
            raise WhereError(f"--where {text!r}: cannot read it at column {col} (e.g. "
                             "event_type == \"flow\", or a in (1, 2) and b != \"x\")") from None
        return cls(text, tree)

    @property
    def fields(self) -> set[str]:
        out: set[str] = set()

        def walk(node: Any) -> None:
            if isinstance(node, Test):
                out.add(node.field)
            else:
                walk(node.left)
                walk(node.right)

        walk(self.tree)
        return out

    def mask(self, source: Any) -> np.ndarray:
        """Rows of ``source`` (a ColumnSource) the filter keeps."""
        return self._eval(self.tree, source)

    def _eval(self, node: Any, source: Any) -> np.ndarray:
        if isinstance(node, Op):
            a, b = self._eval(node.left, source), self._eval(node.right, source)
            return (a & b) if node.kind == "and" else (a | b)
        if all(isinstance(v, str) for v in node.values):
            values, codes = source.strings(node.field)
            hit = np.isin(values, list(node.values)) & (codes == 0)
        else:
            nums, codes = source.numeric(node.field)
            wanted = [float(v) for v in node.values if not isinstance(v, str)]
            hit = np.isin(nums, wanted) & (codes == 0)
            texts = [v for v in node.values if isinstance(v, str)]
            if texts:
                values, scodes = source.strings(node.field)
                hit |= np.isin(values, texts) & (scodes == 0)
        return ~hit if node.negate else hit
