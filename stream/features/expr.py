"""Feature expressions: grammar, parser, AST, and vectorized evaluation.

An expression describes one model input computed from a raw event, e.g.
``log(duration + 0.1)`` or ``onehot(conn_state, top=5)``. The text is parsed by
lark (LALR) into a small immutable AST, checked and compiled into a tree of
evaluator nodes, and evaluated over a whole :class:`~stream.features.columns.ColumnSource`
at once: numpy arrays per batch, never a Python loop per row, and never Python
``eval``.

Every node yields ``(values, codes)``: float64 values and a uint8 reason code
per row (0 = usable). Codes propagate through operations; where two inputs of
a row carry different reasons the larger code wins, which is the fixed order
``non_finite_feature > non_numeric_feature > missing_feature``. A missing value
ranks last on purpose: ``fill`` replaces only missing values, so a row where
one field is absent and another holds garbage stays rejected for the garbage.
An operation on usable, finite inputs that yields NaN or infinity (``log(0)``,
``x / 0``, ``sqrt(-1)``, overflow) marks the row ``non_finite_feature``.

Functions live in a registry (:data:`FUNCTIONS`): each declares its argument
kinds (checked once, at compile time) and evaluates vectorized. Functions that
learn from training data (``onehot``, ``freq``, ``rarity``, ``prevalence``) get
their learned state through the evaluation context; a window function
(``count(by=src_ip, window=60s)``, ``since``, ``spread`` ..., in
:mod:`stream.features.windows`) is one more registry entry whose per-entity state
comes through the context too. :func:`tail_of` tells which way a feature's values are
unusual, for the histogram detector.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import reduce
from itertools import repeat
from typing import Any, ClassVar, Final

import numpy as np
from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedToken, VisitError

from stream.errors import StreamError
from stream.features.columns import ColumnSource, canonical
from stream.outcomes.reasons import MISSING_FEATURE, NON_FINITE_FEATURE, OK

# ---- errors ----------------------------------------------------------------------------


class SpecError(StreamError, ValueError):
    """A feature spec that cannot be parsed, checked, fitted or loaded.

    ``feature`` names the feature (None for problems of the whole spec),
    ``position`` is the 1-based column in its expression (None when the problem
    is not at one place), ``source`` names the file it came from, if any.
    ``str(e)`` joins them: ``feature 'ld': position 5: unknown function 'lgo'``.
    """

    def __init__(
        self,
        message: str,
        *,
        feature: str | None = None,
        position: int | None = None,
        source: str | None = None,
    ) -> None:
        self.message = message
        self.feature = feature
        self.position = position
        self.source = source
        super().__init__(message)

    def __str__(self) -> str:
        parts = []
        if self.source is not None:
            parts.append(self.source)
        if self.feature is not None:
            parts.append(f"feature {self.feature!r}")
        if self.position is not None:
            parts.append(f"position {self.position}")
        parts.append(self.message)
        return ": ".join(parts)

    def for_feature(self, feature: str) -> SpecError:
        """The same error, naming ``feature``."""
        return SpecError(self.message, feature=feature, position=self.position, source=self.source)

    def from_source(self, source: str) -> SpecError:
        """The same error, naming the file it came from."""
        return SpecError(self.message, feature=self.feature, position=self.position, source=source)


# ---- grammar ---------------------------------------------------------------------------

GRAMMAR: Final = r"""
?start: sum

?sum: product
    | sum "+" product            -> add
    | sum "-" product            -> sub

?product: unary
    | product "*" unary          -> mul
    | product "/" unary          -> div

?unary: atom
    | "-" unary                  -> neg

?atom: NUMBER                    -> number
    | DURATION                   -> duration
    | STRING                     -> string
    | NAME                       -> field
    | QUOTED                     -> quoted_field
    | NAME "(" [args] ")"        -> call
    | "[" [sum ("," sum)*] "]"   -> list
    | "(" sum ")"

args: arg ("," arg)*
?arg: sum
    | NAME "=" kwvalue           -> kwarg
?kwvalue: sum
    | sum ">" sum                -> pair

// A duration outranks a number so that "60s" is one token; the lookahead keeps
// "5min" from lexing as "5m" followed by "in".
DURATION.2: /\d+(\.\d+)?(ms|s|m|h|d)(?![A-Za-z0-9_])/
NUMBER: /(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?/
NAME: /[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*/
QUOTED: /`[^`]+`/
STRING: /"(?:[^"\\]|\\.)*"/ | /'(?:[^'\\]|\\.)*'/

%ignore /[ \t\r\n]+/
"""

_PARSER: Final = Lark(GRAMMAR, parser="lalr", propagate_positions=True, maybe_placeholders=True)

_TOKEN_NAMES: Final = {
    "NUMBER": "a number",
    "DURATION": "a duration",
    "STRING": "a string",
    "NAME": "a name",
    "QUOTED": "a `quoted name`",
    "$END": "end of expression",
}
# Literal terminals ("(", ",", ...) are shown as themselves in "expected ..." messages.
for _t in _PARSER.terminals:
    if _t.name not in _TOKEN_NAMES and _t.pattern.type == "str":
        _TOKEN_NAMES[_t.name] = repr(_t.pattern.value)

_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_ESCAPES: Final = {"n": "\n", "t": "\t", "r": "\r"}
_ESCAPE_RE: Final = re.compile(r"\\(.)", re.DOTALL)

# ---- AST -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """An AST node. ``pos`` is the 1-based column of its first character, ``end``
    the 0-based offset just past it (both ignored by ``==``, so trees compare by shape)."""

    pos: int = field(default=0, compare=False, kw_only=True)
    end: int = field(default=0, compare=False, kw_only=True)

    def source(self, text: str) -> str:
        """This node's text within the expression it was parsed from."""
        return text[self.pos - 1 : self.end]


@dataclass(frozen=True)
class Num(Node):
    value: float


@dataclass(frozen=True)
class Str(Node):
    value: str


@dataclass(frozen=True)
class Duration(Node):
    seconds: float
    text: str = field(default="", compare=False)


@dataclass(frozen=True)
class Field(Node):
    path: str


@dataclass(frozen=True)
class List(Node):
    items: tuple[Node, ...]


@dataclass(frozen=True)
class Pair(Node):
    """``a>b``: a directed pair key, as in ``by=src_ip>dst_ip``."""

    left: Node
    right: Node


@dataclass(frozen=True)
class Neg(Node):
    operand: Node


@dataclass(frozen=True)
class BinOp(Node):
    op: str  # one of + - * /
    left: Node
    right: Node


@dataclass(frozen=True)
class Kwarg(Node):
    name: str
    value: Node


@dataclass(frozen=True)
class Call(Node):
    name: str
    args: tuple[Node, ...] = ()
    kwargs: tuple[Kwarg, ...] = ()


def _span(meta: Any) -> dict[str, int]:
    return {"pos": meta.start_pos + 1, "end": meta.end_pos} if not meta.empty else {}


def _tok(tok: Token) -> dict[str, int]:
    # lark leaves positions unset only on tokens it did not read from the text.
    return {"pos": (tok.start_pos or 0) + 1, "end": tok.end_pos or 0}


@v_args(meta=True)
class _ToAST(Transformer):
    """lark parse tree -> AST, keeping positions for error messages."""

    def number(self, meta: Any, ch: list[Token]) -> Num:
        value = float(ch[0])
        if not math.isfinite(value):
            raise SpecError(f"number {str(ch[0])!r} is out of range", position=_tok(ch[0])["pos"])
        return Num(value, **_tok(ch[0]))

    def duration(self, meta: Any, ch: list[Token]) -> Duration:
        m = _DURATION_RE.fullmatch(str(ch[0]))
        assert m is not None  # the token's own pattern
        return Duration(float(m[1]) * _UNITS[m[2]], str(ch[0]), **_tok(ch[0]))

    def string(self, meta: Any, ch: list[Token]) -> Str:
        body = str(ch[0])[1:-1]
        value = _ESCAPE_RE.sub(lambda m: _ESCAPES.get(m[1], m[1]), body)
        return Str(value, **_tok(ch[0]))

    def field(self, meta: Any, ch: list[Token]) -> Field:
        return Field(str(ch[0]), **_tok(ch[0]))

    def quoted_field(self, meta: Any, ch: list[Token]) -> Field:
        return Field(str(ch[0])[1:-1], **_tok(ch[0]))

    def neg(self, meta: Any, ch: list[Node]) -> Neg:
        return Neg(ch[0], **_span(meta))

    def _bin(self, op: str, meta: Any, ch: list[Node]) -> BinOp:
        return BinOp(op, ch[0], ch[1], **_span(meta))

    def add(self, meta: Any, ch: list[Node]) -> BinOp:
        return self._bin("+", meta, ch)

    def sub(self, meta: Any, ch: list[Node]) -> BinOp:
        return self._bin("-", meta, ch)

    def mul(self, meta: Any, ch: list[Node]) -> BinOp:
        return self._bin("*", meta, ch)

    def div(self, meta: Any, ch: list[Node]) -> BinOp:
        return self._bin("/", meta, ch)

    def pair(self, meta: Any, ch: list[Node]) -> Pair:
        return Pair(ch[0], ch[1], **_span(meta))

    def kwarg(self, meta: Any, ch: list[Any]) -> Kwarg:
        return Kwarg(str(ch[0]), ch[1], **_tok(ch[0]))

    def args(self, meta: Any, ch: list[Any]) -> list[Any]:
        return ch

    def call(self, meta: Any, ch: list[Any]) -> Call:
        name, items = ch[0], ch[1] or []
        args: list[Node] = []
        kwargs: list[Kwarg] = []
        for item in items:
            if isinstance(item, Kwarg):
                if any(k.name == item.name for k in kwargs):
                    raise SpecError(
                        f"keyword argument {item.name!r} given twice", position=item.pos
                    )
                kwargs.append(item)
            elif kwargs:
                raise SpecError("positional argument after keyword argument", position=item.pos)
            else:
                args.append(item)
        return Call(str(name), tuple(args), tuple(kwargs), **_span(meta))

    # Named after the grammar's rule, so it shadows the builtin in this class: last.
    def list(self, meta: Any, ch: Sequence[Any]) -> List:
        return List(tuple(c for c in ch if c is not None), **_span(meta))


def _expected(names: set[str]) -> str:
    shown = sorted({_TOKEN_NAMES.get(n, n) for n in names})
    return shown[0] if len(shown) == 1 else "one of " + ", ".join(shown)


def _accepts(prefix: str, fallback: set[str]) -> set[str]:
    """Tokens that may follow ``prefix``.

    Asked of a fresh parser fed only the prefix: the failed parser has already
    made the reductions the bad token triggered, so its own set is too narrow,
    and the LALR state's ``expected`` too wide.
    """
    try:
        ip = _PARSER.parse_interactive(prefix)
        ip.exhaust_lexer()
        return set(ip.accepts())
    except Exception:  # the prefix itself does not lex: fall back to lark's set
        return set(fallback)


def parse(text: str) -> Node:
    """The AST of one expression; a :class:`SpecError` with the position on bad syntax."""
    if not text.strip():
        raise SpecError("empty expression", position=1)
    try:
        tree = _PARSER.parse(text)
    except UnexpectedCharacters as e:
        at = e.pos_in_stream or 0  # set whenever lark read the text
        ch = text[at]
        what = {
            '"': "unterminated string",
            "'": "unterminated string",
            "`": "unterminated `quoted name`",
        }.get(ch, f"unexpected character {ch!r}")
        raise SpecError(what, position=at + 1) from None
    except UnexpectedToken as e:
        if e.token.type == "$END":
            msg, pos = "unexpected end of expression", len(text.rstrip()) + 1
        else:
            msg, pos = f"unexpected {e.token.value!r}", _tok(e.token)["pos"]
        accepts = _accepts(text[: pos - 1], e.expected)
        raise SpecError(f"{msg}; expected {_expected(accepts)}", position=pos) from None
    except UnexpectedEOF as e:  # pragma: no cover - LALR reports $END as a token
        msg = f"unexpected end of expression; expected {_expected(set(e.expected))}"
        raise SpecError(msg, position=len(text.rstrip()) + 1) from None
    try:
        return _ToAST().transform(tree)
    except VisitError as e:
        if isinstance(e.orig_exc, SpecError):
            raise e.orig_exc from None
        raise


# ---- evaluation values -----------------------------------------------------------------


class Col:
    """Values and reason codes of one node over a batch.

    ``values``: float64, shape (n,); or a 0-d scalar for a constant (numpy
    broadcasts it), or (n, k) for a multi-column function. ``codes``: uint8,
    shape (n,), or None when every row is OK (the common case, which skips
    code merging entirely).
    """

    __slots__ = ("codes", "values")

    def __init__(self, values: Any, codes: np.ndarray | None) -> None:
        self.values = values
        self.codes = codes


class Cat:
    """A categorical column: ``str`` per row (None where not usable) and codes (None = all OK)."""

    __slots__ = ("codes", "values")

    def __init__(self, values: np.ndarray, codes: np.ndarray | None) -> None:
        self.values = values
        self.codes = codes


def merge_codes(*codes: np.ndarray | None) -> np.ndarray | None:
    """Per row, the winning reason among several inputs (the larger code; None = all OK)."""
    arrays = [c for c in codes if c is not None]
    if not arrays:
        return None
    if len(arrays) == 1:
        return arrays[0]
    return reduce(np.maximum, arrays)


def checked(values: Any, codes: np.ndarray | None, n: int) -> Col:
    """``Col(values, codes)``, marking rows that were OK but became NaN/inf non-finite."""
    if np.ndim(values) == 0:
        if math.isfinite(values):
            return Col(values, codes)
        if codes is None:
            return Col(values, np.full(n, NON_FINITE_FEATURE, dtype=np.uint8))
        return Col(values, np.where(codes == OK, NON_FINITE_FEATURE, codes).astype(np.uint8))
    fin = np.isfinite(values)
    if fin.all():
        return Col(values, codes)
    bad = ~fin
    if codes is None:
        return Col(values, np.where(bad, NON_FINITE_FEATURE, OK).astype(np.uint8))
    return Col(values, np.where(bad & (codes == OK), NON_FINITE_FEATURE, codes).astype(np.uint8))


class EvalContext:
    """One evaluation over one batch: the source, cached field columns, learned state.

    ``learned`` maps a fitted function's slot to its prepared state (see
    :meth:`Function.prepare`); the spec sets it per feature.
    """

    def __init__(self, source: ColumnSource) -> None:
        self.source = source
        self.n = source.n
        self.learned: Sequence[Any] = ()
        # The rows are the records the spec was fitted on: counted tables (freq, rarity)
        # leave each row's own count out, so that training sees a value it alone had as
        # new, as the stream will see values the training never had (leave-one-out).
        self.leave_own_out = False
        # The batch's event times, scopes and state store, for window functions.
        self.windows: Any = None
        self._num: dict[str, Col] = {}
        self._str: dict[str, Cat] = {}
        self._rows: np.ndarray | None = None

    @property
    def rows(self) -> np.ndarray:
        """``arange(n)``, made once per batch (fancy indexing for one-hot columns)."""
        if self._rows is None:
            self._rows = np.arange(self.n)
        return self._rows

    def numeric(self, path: str) -> Col:
        col = self._num.get(path)
        if col is None:
            values, codes = self.source.numeric(path)
            col = self._num[path] = Col(values, codes if codes.any() else None)
        return col

    def strings(self, path: str) -> Cat:
        col = self._str.get(path)
        if col is None:
            values, codes = self.source.strings(path)
            col = self._str[path] = Cat(values, codes if codes.any() else None)
        return col

    def raw_codes(self, path: str, kind: str) -> np.ndarray:
        """The source's codes for ``path`` read as ``kind`` ("numeric" or "string")."""
        col = self.numeric(path) if kind == "numeric" else self.strings(path)
        return col.codes if col.codes is not None else np.zeros(self.n, dtype=np.uint8)


Blame = list[tuple[str, np.ndarray]]  # (field path, rows where its absence reaches this node)


# ---- compiled evaluator nodes ----------------------------------------------------------


class Expr:
    """A compiled numeric node: evaluates to a :class:`Col`."""

    node: Node

    def eval(self, ctx: EvalContext) -> Col:
        raise NotImplementedError

    def missing(self, ctx: EvalContext) -> Blame:
        """Which absent fields make this node missing, per row (for reject details)."""
        return []

    def children(self) -> Sequence[Any]:
        return ()


class Const(Expr):
    def __init__(self, node: Num) -> None:
        self.node = node
        self.value = np.float64(node.value)

    def eval(self, ctx: EvalContext) -> Col:
        return Col(self.value, None)


class Ref(Expr):
    """A raw numeric field."""

    def __init__(self, node: Field) -> None:
        self.node = node
        self.path = node.path

    def eval(self, ctx: EvalContext) -> Col:
        return ctx.numeric(self.path)

    def missing(self, ctx: EvalContext) -> Blame:
        codes = ctx.numeric(self.path).codes
        return [] if codes is None else [(self.path, codes == MISSING_FEATURE)]


class Negate(Expr):
    def __init__(self, node: Neg, operand: Expr) -> None:
        self.node, self.operand = node, operand

    def eval(self, ctx: EvalContext) -> Col:
        x = self.operand.eval(ctx)
        return Col(np.negative(x.values), x.codes)

    def missing(self, ctx: EvalContext) -> Blame:
        return self.operand.missing(ctx)

    def children(self) -> Sequence[Any]:
        return (self.operand,)


_ARITH: Final[dict[str, Callable[[Any, Any], Any]]] = {
    "+": np.add,
    "-": np.subtract,
    "*": np.multiply,
    "/": np.divide,
}


class Arith(Expr):
    def __init__(self, node: BinOp, left: Expr, right: Expr) -> None:
        self.node, self.left, self.right = node, left, right
        self.symbol, self.op = node.op, _ARITH[node.op]

    def eval(self, ctx: EvalContext) -> Col:
        a, b = self.left.eval(ctx), self.right.eval(ctx)
        return checked(self.op(a.values, b.values), merge_codes(a.codes, b.codes), ctx.n)

    def missing(self, ctx: EvalContext) -> Blame:
        return self.left.missing(ctx) + self.right.missing(ctx)

    def children(self) -> Sequence[Any]:
        return (self.left, self.right)


class Category:
    """A compiled categorical argument: a field read as text, optionally ``fill``-ed."""

    def __init__(self, node: Node, path: str, fill: str | None) -> None:
        self.node, self.path, self.fill = node, path, fill

    def eval(self, ctx: EvalContext) -> Cat:
        col = ctx.strings(self.path)
        if self.fill is None or col.codes is None:
            return col
        miss = col.codes == MISSING_FEATURE
        if not miss.any():
            return col
        return Cat(
            np.where(miss, self.fill, col.values),
            np.where(miss, OK, col.codes).astype(np.uint8),
        )

    def missing(self, ctx: EvalContext) -> Blame:
        if self.fill is not None:
            return []
        codes = ctx.strings(self.path).codes
        return [] if codes is None else [(self.path, codes == MISSING_FEATURE)]


class Apply(Expr):
    """A call of a registered function with checked, compiled arguments.

    ``args``/``kwargs`` hold an :class:`Expr` or :class:`Category` where the
    function takes a column, and the plain Python value where it takes a
    literal. ``slot`` indexes the learned state of functions that fit.
    """

    def __init__(
        self,
        node: Call,
        fn: Function,
        args: list[Any],
        kwargs: dict[str, Any],
        slot: int | None,
    ) -> None:
        self.node, self.fn, self.args, self.kwargs, self.slot = node, fn, args, kwargs, slot

    def evaluated_args(self, ctx: EvalContext) -> list[Any]:
        return [a.eval(ctx) if isinstance(a, Expr | Category) else a for a in self.args]

    def eval(self, ctx: EvalContext) -> Col:
        state = ctx.learned[self.slot] if self.slot is not None else None
        return self.fn.eval(self, self.evaluated_args(ctx), ctx, state)

    def missing(self, ctx: EvalContext) -> Blame:
        return self.fn.missing(self, ctx)

    def children(self) -> Sequence[Any]:
        return [a for a in (*self.args, *self.kwargs.values()) if isinstance(a, Expr | Category)]


# ---- functions -------------------------------------------------------------------------

# Argument kinds a function declares; the compiler checks each argument against its kind.
NUM = "num"  # any numeric expression -> Col
CAT = "cat"  # a field, or fill(field, value), read as category text -> Cat
VALUE = "value"  # a literal category value, string or number -> str (canonical text)
VALUES = "values"  # a non-empty list of distinct category values -> tuple[str, ...]
NUMBER = "number"  # a literal number, maybe negative -> float
COUNT = "count"  # a literal positive integer -> int
KEY = "key"  # a field or a pair of fields (src_ip>dst_ip) -> tuple[str, ...] of paths
SECONDS = "seconds"  # a duration (60s, 5m, 250ms) -> float seconds


@dataclass(frozen=True)
class Signature:
    params: tuple[str, ...]  # required positional argument kinds
    optional: tuple[str, ...] = ()  # optional positional kinds, after the required ones
    rest: str | None = None  # kind of any further positional arguments
    kwargs: Mapping[str, str] = field(default_factory=dict)  # keyword name -> kind

    def arity(self) -> str:
        lo, hi = len(self.params), len(self.params) + len(self.optional)
        if self.rest is not None:
            return f"at least {lo} argument{'s' * (lo != 1)}"
        if lo == hi:
            return f"{lo} argument{'s' * (lo != 1)}"
        if hi == lo + 1:
            return f"{lo} or {hi} arguments"
        return f"{lo} to {hi} arguments"

    def kinds(self, name: str, call: Call) -> list[str]:
        """The kind of each positional argument of ``call``; SpecError on a bad count."""
        n, lo = len(call.args), len(self.params)
        hi = lo + len(self.optional)
        if n < lo or (self.rest is None and n > hi):
            raise SpecError(f"'{name}' takes {self.arity()}, got {n}", position=call.pos)
        kinds = [*self.params, *self.optional][:n]
        return kinds + [self.rest] * (n - len(kinds))  # type: ignore[list-item]


class Function:
    """One function of the expression language.

    Subclasses set ``name`` and ``signature`` and implement :meth:`eval`,
    vectorized over the batch. ``fits`` functions also implement :meth:`fit`
    (learn a JSON-safe state from training data) and :meth:`prepare` (turn it
    into whatever :meth:`eval` reads). ``multi`` functions yield several
    columns and must be a whole feature.
    """

    name: ClassVar[str]
    signature: ClassVar[Signature]
    fits: ClassVar[bool] = False
    multi: ClassVar[bool] = False
    windowed: ClassVar[bool] = False  # keeps per-entity state across events (windows.py)
    #: Which way its values are unusual: +1 the higher the rarer (a destination never
    #: seen, a host's fan-out), -1 the lower (a share of training), 0 either way or
    #: unknown; ``monotone``: a one-argument function that keeps its argument's order
    #: (log, sqrt), so the direction passes through it (:func:`tail_of`).
    tail: ClassVar[int] = 0
    monotone: ClassVar[bool] = False

    def check(self, call: Call, args: list[Any], kwargs: dict[str, Any]) -> None:
        """Checks beyond the argument kinds (raise SpecError)."""

    def eval(self, apply: Apply, args: list[Any], ctx: EvalContext, state: Any) -> Col:
        raise NotImplementedError

    def missing(self, apply: Apply, ctx: EvalContext) -> Blame:
        """Default: a missing argument makes the result missing."""
        return [b for a in apply.children() for b in a.missing(ctx)]

    # -- functions that learn at fit time --

    def needs_fit(self, apply: Apply) -> bool:
        return self.fits

    def fit(self, apply: Apply, args: list[Any], ctx: EvalContext) -> dict[str, Any]:
        raise NotImplementedError

    def prepare(self, apply: Apply, state: dict[str, Any] | None) -> Any:
        """What :meth:`eval` needs, from the fitted state (None when not fitted)."""
        return state

    def outputs(self, apply: Apply, prepared: Any) -> tuple[str, ...]:
        """Column suffixes of a ``multi`` function."""
        raise NotImplementedError

    def describe(self, apply: Apply, state: dict[str, Any]) -> str:
        return ""


FUNCTIONS: dict[str, Function] = {}


def register(cls: type[Function]) -> type[Function]:
    """Class decorator: add a function to the language."""
    FUNCTIONS[cls.name] = cls()
    return cls


def tail_of(expr: Expr) -> int:
    """Which way an expression's values are unusual (see ``Function.tail``): a
    function's own, carried through order-keeping functions (``log1p``, ``fill``),
    through a constant added, subtracted or a positive one multiplied or divided by,
    turned by a minus; 0 when it cannot be told. The histogram detector counts evidence
    on that side only: a destination seen more often than most is never evidence.

    >>> tail_of(compile_expr("log1p(since(by=src_ip>dst_ip, window=1d) / 60)").root)
    1
    >>> tail_of(compile_expr("-rarity(dst_port)").root), tail_of(compile_expr("log1p(bytes)").root)
    (-1, 0)
    """
    if isinstance(expr, Negate):
        return -tail_of(expr.operand)
    if isinstance(expr, Arith):
        op, left, right = expr.symbol, expr.left, expr.right
        lc, rc = _const(left), _const(right)
        if rc is not None and (op in "+-" or rc > 0):
            return tail_of(left)
        if lc is not None and (op == "+" or (op == "*" and lc > 0)):
            return tail_of(right)
        if lc is not None and op == "-":
            return -tail_of(right)
        return 0
    if isinstance(expr, Apply):
        fn = expr.fn
        if fn.tail:
            return fn.tail
        cols = [a for a in expr.args if isinstance(a, Expr)]
        if fn.monotone and len(cols) == 1:
            return tail_of(cols[0])
        if isinstance(fn, _Fill) and cols:
            return tail_of(cols[0])
    return 0


def _const(expr: Expr) -> float | None:
    return float(expr.value) if isinstance(expr, Const) else None


class _Elementwise(Function):
    ufunc: ClassVar[np.ufunc]
    signature = Signature((NUM,))

    def eval(self, apply: Apply, args: list[Any], ctx: EvalContext, state: Any) -> Col:
        x = args[0]
        return checked(type(self).ufunc(x.values), x.codes, ctx.n)


@register
class _Log(_Elementwise):
    name = "log"
    monotone = True
    ufunc = np.log


@register
class _Log1p(_Elementwise):
    name = "log1p"
    monotone = True
    ufunc = np.log1p


@register
class _Sqrt(_Elementwise):
    name = "sqrt"
    monotone = True
    ufunc = np.sqrt


@register
class _Abs(_Elementwise):
    name = "abs"
    ufunc = np.abs


class _Extreme(Function):
    signature = Signature((NUM, NUM), rest=NUM)
    ufunc: ClassVar[np.ufunc]

    def eval(self, apply: Apply, args: list[Any], ctx: EvalContext, state: Any) -> Col:
        values = reduce(type(self).ufunc, [a.values for a in args])
        return checked(values, merge_codes(*(a.codes for a in args)), ctx.n)


@register
class _Min(_Extreme):
    name = "min"
    ufunc = np.minimum


@register
class _Max(_Extreme):
    name = "max"
    ufunc = np.maximum


@register
class _Clip(Function):
    name = "clip"
    signature = Signature((NUM, NUM, NUM))

    def check(self, call: Call, args: list[Any], kwargs: dict[str, Any]) -> None:
        # Literal bounds the wrong way round are a typo, not a feature.
        lo, hi = (_number(a) for a in call.args[1:])
        if lo is not None and hi is not None and lo > hi:
            raise SpecError(f"clip: lower bound {lo:g} > upper bound {hi:g}", position=call.pos)

    def eval(self, apply: Apply, args: list[Any], ctx: EvalContext, state: Any) -> Col:
        x, lo, hi = args
        # min(max(x, lo), hi), spelled out so the result for lo > hi is pinned down.
        values = np.minimum(np.maximum(x.values, lo.values), hi.values)
        return checked(values, merge_codes(x.codes, lo.codes, hi.codes), ctx.n)


@register
class _Fill(Function):
    """``fill(expr, value)``: ``value`` where ``expr`` is missing (only missing).

    Around a categorical field (``onehot(fill(proto, "none"))``) it is compiled
    into the :class:`Category` instead, and may take a string.
    """

    name = "fill"
    signature = Signature((NUM, NUMBER))

    def eval(self, apply: Apply, args: list[Any], ctx: EvalContext, state: Any) -> Col:
        x, value = args
        if x.codes is None:
            return x
        miss = x.codes == MISSING_FEATURE
        if not miss.any():
            return x
        return Col(
            np.where(miss, value, x.values),
            np.where(miss, OK, x.codes).astype(np.uint8),
        )

    def missing(self, apply: Apply, ctx: EvalContext) -> Blame:
        return []


@register
class _Optional(_Fill):
    """``optional(field, value)``: as ``fill``, for a field that some sensors never send
    (Zeek's ``conn_state`` and ``service``, absent from goflow2 or NetFlow records).

    ``fill`` around a field that no training record has is an error (almost always a
    misspelt name); ``optional`` says that its absence is expected: the feature is then
    the value for every record, a constant that the detector learns carries nothing.
    """

    name = "optional"


@register
class _Add(Function):
    """``add(a, b, ...)``: the sum of the parts that are set; missing only if all are."""

    name = "add"
    signature = Signature((NUM,), rest=NUM)

    def eval(self, apply: Apply, args: list[Any], ctx: EvalContext, state: Any) -> Col:
        cols: list[Col] = args
        if all(c.codes is None for c in cols):
            return checked(reduce(np.add, [c.values for c in cols]), None, ctx.n)
        parts = [
            c.values if c.codes is None else np.where(c.codes == MISSING_FEATURE, 0.0, c.values)
            for c in cols
        ]
        total = reduce(np.add, parts)
        coded = [c.codes for c in cols if c.codes is not None]
        # A part that is set but bad (a string, NaN) still rejects the row.
        bad = merge_codes(*(np.where(c == MISSING_FEATURE, OK, c) for c in coded))
        if len(coded) < len(cols):  # some part is OK on every row: never all missing
            return checked(total, None if bad is None else bad.astype(np.uint8), ctx.n)
        allmiss = reduce(np.logical_and, [c == MISSING_FEATURE for c in coded])
        assert bad is not None  # every part has codes here
        codes = np.where(allmiss, MISSING_FEATURE, bad).astype(np.uint8)
        return checked(np.where(allmiss, np.nan, total), codes, ctx.n)

    def missing(self, apply: Apply, ctx: EvalContext) -> Blame:
        blames = [b for a in apply.args for b in a.missing(ctx)]
        if not blames:
            return []
        allmiss = np.ones(ctx.n, dtype=bool)
        for a in apply.args:
            codes = a.eval(ctx).codes
            if codes is None:  # this part is set on every row
                return []
            allmiss &= codes == MISSING_FEATURE
        return [(path, mask & allmiss) for path, mask in blames]


@register
class _Is(Function):
    """``is(field, "value")``: 1.0 where the category equals the value, else 0.0."""

    name = "is"
    signature = Signature((CAT, VALUE))

    def eval(self, apply: Apply, args: list[Any], ctx: EvalContext, state: Any) -> Col:
        cat, value = args
        return Col(np.equal(cat.values, value).astype(np.float64), cat.codes)


def _count(apply: Apply, cat: Cat) -> tuple[Counter[str], int]:
    """Occurrences of each category value over the usable rows, and how many rows that is."""
    values = cat.values if cat.codes is None else cat.values[cat.codes == OK]
    if not len(values):
        raise SpecError(
            f"'{apply.fn.name}' found no usable value of its field in any training record",
            position=apply.node.pos,
        )
    return Counter(values.tolist()), len(values)


def _ranked(counts: Counter[str]) -> list[tuple[str, int]]:
    """Most frequent first; ties broken by value, so a fit is deterministic."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


OTHER: Final = "other"
DEFAULT_TOP: Final = 10


@register
class _OneHot(Function):
    """``onehot(field, ["v1", ...])`` or ``onehot(field, top=N)``: one column per
    category plus ``other``. Without a list, the N most frequent training values
    (default 10) are learned at fit time, most frequent first. A training value
    literally called "other" is never a category of its own: it lands in the
    ``other`` column, which is what its name says anyway."""

    name = "onehot"
    signature = Signature((CAT,), optional=(VALUES,), kwargs={"top": COUNT})
    fits = True
    multi = True

    def check(self, call: Call, args: list[Any], kwargs: dict[str, Any]) -> None:
        if len(args) == 2 and "top" in kwargs:
            raise SpecError(
                "'onehot' takes either a list of values or top=N, not both", position=call.pos
            )

    def needs_fit(self, apply: Apply) -> bool:
        return len(apply.args) == 1

    def _categories(self, apply: Apply, state: dict[str, Any] | None) -> tuple[str, ...] | None:
        if len(apply.args) == 2:
            return tuple(apply.args[1])
        return None if state is None else tuple(state["categories"])

    def fit(self, apply: Apply, args: list[Any], ctx: EvalContext) -> dict[str, Any]:
        counts, total = _count(apply, args[0])
        explicit = self._categories(apply, None)
        if explicit is None:
            top = apply.kwargs.get("top", DEFAULT_TOP)
            cats = [v for v, _ in _ranked(counts) if v != OTHER][:top]
        else:
            cats = list(explicit)
        kept = [counts.get(v, 0) for v in cats]
        return {
            "fn": self.name,
            "total": total,
            "distinct": len(counts),
            "categories": cats,
            "counts": kept,
            "other": total - sum(kept),
        }

    def prepare(self, apply: Apply, state: dict[str, Any] | None) -> Any:
        cats = self._categories(apply, state)
        if cats is None:
            return None
        return {v: j for j, v in enumerate(cats)}, (*cats, OTHER)

    def outputs(self, apply: Apply, prepared: Any) -> tuple[str, ...]:
        return prepared[1]

    def eval(self, apply: Apply, args: list[Any], ctx: EvalContext, state: Any) -> Col:
        index, names = state
        cat: Cat = args[0]
        k, n = len(names) - 1, ctx.n
        # One dict lookup per row at C speed; unknown values (and None) go to "other".
        idx = np.fromiter(map(index.get, cat.values, repeat(k, n)), dtype=np.intp, count=n)
        out = np.zeros((n, k + 1), dtype=np.float64)
        out[ctx.rows, idx] = 1.0
        return Col(out, cat.codes)

    def describe(self, apply: Apply, state: dict[str, Any]) -> str:
        total = state["total"] or 1
        parts = [
            f"{v} {c:,} ({c / total:.1%})"
            for v, c in zip(state["categories"], state["counts"], strict=True)
        ]
        parts.append(f"other {state['other']:,} ({state['other'] / total:.1%})")
        how = "learned from" if self.needs_fit(apply) else "seen in"
        return (
            f"{how} {state['total']:,} training values ({state['distinct']:,} distinct): "
            + ", ".join(parts)
        )


FREQ_TABLE_MAX: Final = 100_000


def _shown(value: str) -> str:
    """A learned value as the describe text shows it (a tuple's parts joined by ``|``)."""
    return str(value).replace("\x1f", "|")


def _joined(cats: Sequence[Cat]) -> Cat:
    """Several categorical columns as one, their values joined per row (a tuple key)."""
    if len(cats) == 1:
        return cats[0]
    codes = merge_codes(*(c.codes for c in cats))
    values = np.array(["\x1f".join(map(str, t)) for t in zip(*(c.values for c in cats),
                                                              strict=True)], dtype=object)
    return Cat(values, codes)


@register
class _Freq(Function):
    """``freq(field, ...)``: the share of training values equal to this row's value.

    Learned at fit time over the training records where the fields have a value;
    several fields count their values together (``freq(dst_ip, dst_port)``: the
    share of training flows to that address and port). A value never seen in
    training scores 0.0, which is the signal for high-cardinality fields (ports,
    hosts). The table keeps the ``FREQ_TABLE_MAX`` (100,000) most frequent values, so
    that a spec stays a few MB however many distinct hosts the training data had; a
    value beyond the cap is rarer than every kept one and scores 0.0 like an unseen
    one.
    """

    name = "freq"
    tail = -1
    signature = Signature((CAT,), rest=CAT)
    fits = True
    counts = True  # training rows leave their own count out (EvalContext.leave_own_out)

    def fit(self, apply: Apply, args: list[Any], ctx: EvalContext) -> dict[str, Any]:
        counts, total = _count(apply, _joined(args))
        ranked = _ranked(counts)[:FREQ_TABLE_MAX]
        return {
            "fn": self.name,
            "total": total,
            "distinct": len(counts),
            "values": [v for v, _ in ranked],
            "counts": [c for _, c in ranked],
        }

    def prepare(self, apply: Apply, state: dict[str, Any] | None) -> Any:
        if state is None:
            return None
        total = state["total"]
        pairs = list(zip(state["values"], state["counts"], strict=True))
        # Left out (training rows): the others' count of the value, (count - 1) / total,
        # on the same grid as a new record's (a value only this row had reads 0.0, as an
        # unseen one does).
        return ({v: c / total for v, c in pairs}, 0.0,
                {v: (c - 1) / total for v, c in pairs}, 0.0)

    def eval(self, apply: Apply, args: list[Any], ctx: EvalContext, state: Any) -> Col:
        table, unseen = (state[2], state[3]) if ctx.leave_own_out else (state[0], state[1])
        cat: Cat = _joined(args)
        n = ctx.n
        values = np.fromiter(map(table.get, cat.values, repeat(unseen, n)), np.float64, count=n)
        return Col(values, cat.codes)

    def describe(self, apply: Apply, state: dict[str, Any]) -> str:
        total = state["total"] or 1
        top = ", ".join(
            f"{_shown(v)} {c:,} ({c / total:.1%})"
            for v, c in zip(state["values"][:5], state["counts"][:5], strict=True)
        )
        kept = len(state["values"])
        capped = f", kept the {kept:,} most frequent" if kept < state["distinct"] else ""
        return (
            f"learned from {state['total']:,} training values"
            f" ({state['distinct']:,} distinct{capped});"
            f" most frequent: {top}"
        )


@register
class _Rarity(_Freq):
    """``rarity(field, ...)``: how rare this row's value was in training, in nats:
    ``-log((count + 1) / (total + 1))``.

    0 for a value every training record had, ``log(total + 1)`` for one never seen
    (the training size is known to the spec: no constant to pick). Log-scaled so
    that a value seen once and one never seen differ by ``log 2``, not by a factor
    a forest cannot tell from noise; a detector reads it as evidence that adds up
    (a rare port, a rare address, a rare pair). Same table as ``freq``.

    At training (``compute(training=True)``) each record's own count is left out: a
    value only it had reads ``log(total + 1)``, as a never-seen value will in the
    stream, so the detector learns how often traffic brings something new and new
    values do not all alert.
    """

    name = "rarity"
    tail = 1

    def prepare(self, apply: Apply, state: dict[str, Any] | None) -> Any:
        if state is None:
            return None
        total = state["total"]
        pairs = list(zip(state["values"], state["counts"], strict=True))
        top = math.log(total + 1)
        # Left out (training rows): the others' count, -log((count - 1 + 1) / (total + 1)),
        # on the same grid as a new record's: a value only this row had reads
        # log(total + 1), as an unseen one does, and drift compares like with like.
        return ({v: top - math.log(c + 1) for v, c in pairs}, top,
                {v: top - math.log(c) for v, c in pairs}, top)


@register
class _Prevalence(Function):
    """``prevalence(field, by=host)``: the share of the training's hosts (distinct values
    of ``by``) that had this row's value of ``field`` (RITA's prevalence).

    A destination every host of the tenant talks to scores near 1; one a single host
    ever talked to scores 1/hosts; one never seen, 0. Hosts beyond the distinct-value
    cap of the table count with it, the values beyond it score 0 like unseen ones.
    """

    name = "prevalence"
    tail = -1
    signature = Signature((CAT,), rest=CAT, kwargs={"by": KEY})
    fits = True

    def check(self, call: Call, args: list[Any], kwargs: dict[str, Any]) -> None:
        if "by" not in kwargs:
            raise SpecError("'prevalence' needs by=FIELD (the hosts it counts)",
                            position=call.pos)

    def fit(self, apply: Apply, args: list[Any], ctx: EvalContext) -> dict[str, Any]:
        value = _joined(args)
        host = _joined([ctx.strings(p) for p in apply.kwargs["by"]])
        ok = np.ones(ctx.n, dtype=bool)
        for c in (value.codes, host.codes):
            if c is not None:
                ok &= c == OK
        if not ok.any():
            raise SpecError("'prevalence' found no training record with both fields",
                            position=apply.node.pos)
        pairs = set(zip(value.values[ok].tolist(), host.values[ok].tolist(), strict=True))
        hosts = len({h for _v, h in pairs})
        per = Counter(v for v, _h in pairs)
        ranked = _ranked(per)[:FREQ_TABLE_MAX]
        # "total": the hosts (the validated shape every counting state shares).
        return {"fn": self.name, "total": hosts, "distinct": len(per),
                "values": [v for v, _ in ranked], "counts": [c for _, c in ranked]}

    def prepare(self, apply: Apply, state: dict[str, Any] | None) -> Any:
        if state is None:
            return None
        hosts = state["total"] or 1
        return {v: c / hosts for v, c in zip(state["values"], state["counts"], strict=True)}

    def eval(self, apply: Apply, args: list[Any], ctx: EvalContext, state: Any) -> Col:
        cat: Cat = _joined(args)
        n = ctx.n
        values = np.fromiter(map(state.get, cat.values, repeat(0.0, n)), np.float64, count=n)
        return Col(values, cat.codes)

    def missing(self, apply: Apply, ctx: EvalContext) -> Blame:
        return [b for a in apply.children() for b in a.missing(ctx)]

    def describe(self, apply: Apply, state: dict[str, Any]) -> str:
        top = ", ".join(f"{_shown(v)} {c}/{state['total']}" for v, c in
                        zip(state["values"][:5], state["counts"][:5], strict=True))
        return (f"learned from {state['total']:,} hosts and {state['distinct']:,} distinct "
                f"values; most prevalent: {top}")


# ---- compiler --------------------------------------------------------------------------


@dataclass
class Compiled:
    """One checked, compiled expression.

    ``fields``: each raw path read, with how (``"numeric"``/``"string"``) and
    the position of its first reference. ``fitted``: the calls that fit, in
    slot order (the order their arguments finish compiling, left to right).
    """

    text: str
    node: Node
    root: Expr
    fields: dict[tuple[str, str], int]
    fitted: list[Apply]
    windows: list[Apply] = field(default_factory=list)
    #: Fields read only as ``optional(field, value)``: absent from all training is fine.
    optional: frozenset[str] = frozenset()

    @property
    def multi(self) -> bool:
        return isinstance(self.root, Apply) and self.root.fn.multi


def _number(node: Node) -> float | None:
    """The value of a literal number (``3``, ``-0.5``, ``--1``), else None."""
    if isinstance(node, Num):
        return node.value
    if isinstance(node, Neg):
        inner = _number(node.operand)
        return None if inner is None else -inner
    return None


def _value(node: Node) -> str | None:
    """A literal category value as category text (numbers canonical, like the data)."""
    if isinstance(node, Str):
        return node.value
    num = _number(node)
    return None if num is None else canonical(num)


_STRAY: Final = {
    Str: 'a string is only valid as a category value: is(field, "v"), onehot(field, [...])'
    ' or fill(field, "v") / optional(field, "v") around a categorical field',
    List: "a list is only valid as the category values of onehot(field, [...])",
    Duration: "a duration is only valid as the window argument of a window function",
    Pair: "a pair key (a>b) is only valid as the by= argument of a window function",
}


class _Compiler:
    def __init__(self, text: str) -> None:
        self.text = text
        self.fields: dict[tuple[str, str], int] = {}
        self.fitted: list[Apply] = []
        self.windows: list[Apply] = []

    def numeric(self, node: Node, root: bool = False) -> Expr:
        if isinstance(node, Num):
            return Const(node)
        if isinstance(node, Field):
            self.fields.setdefault((node.path, "numeric"), node.pos)
            return Ref(node)
        if isinstance(node, Neg):
            return Negate(node, self.numeric(node.operand))
        if isinstance(node, BinOp):
            return Arith(node, self.numeric(node.left), self.numeric(node.right))
        if isinstance(node, Call):
            return self.call(node, root)
        raise SpecError(_STRAY.get(type(node), "not a numeric expression"), position=node.pos)

    def category(self, node: Node, fn: str) -> Category:
        if isinstance(node, Field):
            self.fields.setdefault((node.path, "string"), node.pos)
            return Category(node, node.path, None)
        if (
            isinstance(node, Call)
            and node.name in ("fill", "optional")
            and len(node.args) == 2
            and not node.kwargs
            and isinstance(node.args[0], Field)
        ):
            value = _value(node.args[1])
            if value is None:
                raise SpecError(
                    "the fill value of a categorical field must be a string or a number",
                    position=node.args[1].pos,
                )
            self.fields.setdefault((node.args[0].path, "string"), node.args[0].pos)
            return Category(node, node.args[0].path, value)
        raise SpecError(
            f"the first argument of '{fn}' must be a field or fill(field, \"value\")",
            position=node.pos,
        )

    def literal(self, node: Node, kind: str, fn: str) -> Any:
        if kind == VALUE:
            value = _value(node)
            if value is None:
                raise SpecError(
                    f"'{fn}' takes a category value here: a string or a number",
                    position=node.pos,
                )
            return value
        if kind == VALUES:
            if not isinstance(node, List) or not node.items:
                raise SpecError(
                    f'\'{fn}\' takes a list of category values here, e.g. ["S0", "SF"]',
                    position=node.pos,
                )
            values: list[str] = []
            for item in node.items:
                v = self.literal(item, VALUE, fn)
                if v in values:
                    raise SpecError(f"category value {v!r} listed twice", position=item.pos)
                if v == OTHER:
                    raise SpecError(
                        f"{OTHER!r} is the name of the column for unlisted values",
                        position=item.pos,
                    )
                values.append(v)
            return tuple(values)
        if kind == NUMBER:
            num = _number(node)
            if num is None:
                hint = (
                    "; a string fill value only applies around a categorical field, "
                    'as in onehot(fill(proto, "none"))'
                    if isinstance(node, Str)
                    else ""
                )
                raise SpecError(f"'{fn}' takes a literal number here{hint}", position=node.pos)
            return num
        if kind == KEY:
            parts = [node.left, node.right] if isinstance(node, Pair) else [node]
            paths = []
            for part in parts:
                if not isinstance(part, Field):
                    raise SpecError(
                        f"'{fn}' takes a field or a pair of fields (by=src_ip>dst_ip) as by=",
                        position=part.pos,
                    )
                self.fields.setdefault((part.path, "string"), part.pos)
                paths.append(part.path)
            return tuple(paths)
        if kind == SECONDS:
            if not isinstance(node, Duration) or node.seconds <= 0:
                raise SpecError(
                    f"'{fn}' takes a positive duration here, e.g. 60s, 5m or 250ms",
                    position=node.pos,
                )
            return node.seconds
        if kind == COUNT:
            num = _number(node)
            if num is None or num < 1 or not num.is_integer():
                raise SpecError(f"'{fn}' takes a positive integer here", position=node.pos)
            return int(num)
        raise AssertionError(kind)  # pragma: no cover

    def argument(self, node: Node, kind: str, fn: str) -> Any:
        if kind == NUM:
            return self.numeric(node)
        if kind == CAT:
            return self.category(node, fn)
        return self.literal(node, kind, fn)

    def call(self, node: Call, root: bool) -> Apply:
        fn = FUNCTIONS.get(node.name)
        if fn is None:
            raise SpecError(f"unknown function {node.name!r}", position=node.pos)
        sig = fn.signature
        if node.kwargs and not sig.kwargs:
            raise SpecError(
                f"'{node.name}' takes no keyword arguments", position=node.kwargs[0].pos
            )
        kinds = sig.kinds(node.name, node)
        for kw in node.kwargs:
            if kw.name not in sig.kwargs:
                known = ", ".join(f"{k}=" for k in sig.kwargs)
                raise SpecError(
                    f"'{node.name}' has no keyword argument {kw.name!r} (it takes {known})",
                    position=kw.pos,
                )
        if fn.multi and not root:
            raise SpecError(
                f"'{node.name}' yields several columns, so it must be a whole feature,"
                " not part of an expression",
                position=node.pos,
            )
        args = [self.argument(a, k, node.name) for a, k in zip(node.args, kinds, strict=True)]
        kwargs = {
            kw.name: self.argument(kw.value, sig.kwargs[kw.name], node.name) for kw in node.kwargs
        }
        fn.check(node, args, kwargs)
        apply = Apply(node, fn, args, kwargs, None)
        if fn.fits:
            apply.slot = len(self.fitted)
            self.fitted.append(apply)
        if fn.windowed:
            apply._text = self.text  # type: ignore[attr-defined]  # for its state signature
            self.windows.append(apply)
        return apply


#: Deeper than any feature anyone writes, far from Python's recursion limit.
MAX_NESTING: Final = 64


def compile_expr(text: str) -> Compiled:
    """Parse and check one expression (SpecError with the position on any problem)."""
    depth = deepest = 0
    for ch in text:  # parentheses and brackets: a bound before any recursive walk
        if ch in "([":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]":
            depth -= 1
    if deepest > MAX_NESTING:
        raise SpecError(f"the expression nests {deepest} levels deep (at most {MAX_NESTING})",
                        position=1)
    try:
        node = parse(text)
        c = _Compiler(text)
        root = c.numeric(node, root=True)
    except RecursionError:  # a long chain without parentheses (a + a + ... + a)
        raise SpecError("the expression is too long to read", position=1) from None
    return Compiled(text, node, root, c.fields, c.fitted, c.windows, _optional_only(node))


def _optional_only(root: Node) -> frozenset[str]:
    """The fields that ``root`` reads only as the first argument of ``optional``."""
    under: set[str] = set()
    elsewhere: set[str] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, opt = stack.pop()
        if isinstance(node, Field):
            (under if opt else elsewhere).add(node.path)
        elif isinstance(node, Call):
            for i, a in enumerate(node.args):
                stack.append((a, node.name == "optional" and i == 0))
            stack.extend((k.value, False) for k in node.kwargs)
        elif isinstance(node, (BinOp, Pair)):
            stack.extend(((node.left, False), (node.right, False)))
        elif isinstance(node, Neg):
            stack.append((node.operand, False))
        elif isinstance(node, List):
            stack.extend((i, False) for i in node.items)
    return frozenset(under - elsewhere)
