"""Window functions: per-entity statistics over event time, as more functions of the spec.

``count``, ``sum``, ``mean``, ``std``, ``distinct``, ``interval_mean`` and
``interval_std``, keyed by a field or a directed pair of fields
(``by=src_ip``, ``by=src_ip>dst_ip``), in one of two shapes:

* ``window=60s``: exact, over the sliding window ``(t - 60 s, t]`` that ends at
  the event and includes it. State per key holds the key's events inside the
  window (at most ``MAX_EVENTS`` per key; beyond that the oldest are forgotten
  early and the key counts as saturated).
* ``decay=10s``: damped with that half-life (Kitsune's incremental statistics:
  an event's weight halves every 10 s), O(1) state per key. ``distinct`` has no
  damped form.

``interval_mean`` / ``interval_std`` are the mean and standard deviation of
the gaps between the key's consecutive events (beacons repeat at regular
intervals). Until a key has two gaps in its window, both are the window length
(or the half-life): "no regular repetition seen yet".

Event time comes from the spec's timestamp field (ISO 8601 or epoch seconds).
An event older than the newest event of its key counts at that newest time;
an event older than the newest of its scope by more than the store's lateness
(default 5 s) is *late*: it is scored against the current state and leaves it
unchanged. A missing or unparseable timestamp rejects the row (``bad_timestamp``);
a missing key field makes the feature missing, which ``fill`` can replace.

Every scorer computes windows with this module, in event order: training and
offline scoring over a whole file at once, the stream batch by batch over the
durable :class:`~stream.features.store.WindowStore`. The arithmetic per key is
the same sequence of float operations in each, so the values are identical.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, Final

import numpy as np

from stream.features.expr import (
    CAT,
    KEY,
    NUM,
    SECONDS,
    Apply,
    Blame,
    Call,
    Cat,
    Col,
    EvalContext,
    Function,
    Signature,
    SpecError,
    merge_codes,
    register,
)
from stream.reasons import BAD_TIMESTAMP, MISSING_FEATURE, OK

#: Events kept per key of an exact window; older ones beyond this are forgotten early.
MAX_EVENTS: Final = 4096
#: Separates tenant, key parts and nothing else in a state key (never in sensor text).
SEP: Final = "\x1f"
_LN2: Final = math.log(2.0)


# ---- per-key state ---------------------------------------------------------------------
#
# Each state class keeps what one function needs for one key. ``push(t, v)``
# applies an event and returns the feature value; ``peek(t, v)`` returns the
# value the event would get without changing anything (late events, shadow
# scoring). ``dump``/``load`` give a JSON-safe list for the changelog; ``last``
# is the newest event time, which TTL eviction reads.


class _Exact:
    """Events of one key inside a sliding window: times and values, and running sums.

    One flat list ``[t0, v0, t1, v1, ...]`` from ``head`` on (a list and an index are
    a fraction of a deque's memory; the expired front is cut off in bulk).
    """

    __slots__ = ("ev", "head", "last", "q", "s", "saturated")
    width: ClassVar[float]

    def __init__(self) -> None:
        self.ev: list[float] = []
        self.head = 0
        self.s = 0.0
        self.q = 0.0
        self.last = -math.inf
        self.saturated = False

    def _expire(self, t: float, w: float) -> None:
        ev, h = self.ev, self.head
        lo = t - w
        n = len(ev)
        while h < n and (ev[h] <= lo or n - h >= 2 * MAX_EVENTS):
            if ev[h] > lo:
                self.saturated = True
            v = ev[h + 1]
            self.s -= v
            self.q -= v * v
            h += 2
        if h and h * 2 >= n:
            del ev[:h]
            h = 0
        self.head = h

    def add(self, t: float, v: float, w: float) -> None:
        if t < self.last:
            t = self.last
        self._expire(t, w)
        self.ev.append(t)
        self.ev.append(v)
        self.s += v
        self.q += v * v
        self.last = t

    @property
    def count(self) -> int:
        return (len(self.ev) - self.head) >> 1

    @property
    def times(self) -> list[float]:
        return self.ev[self.head :: 2]

    @property
    def values(self) -> list[float]:
        return self.ev[self.head + 1 :: 2]

    def dump(self) -> list[Any]:
        return [self.last, self.s, self.q, self.saturated, self.times, self.values]

    def load(self, d: list[Any]) -> None:
        self.last, self.s, self.q, self.saturated = _time(d[0]), float(d[1]), float(d[2]), d[3]
        self.ev = [float(x) for pair in zip(d[4], d[5], strict=True) for x in pair]
        self.head = 0

    @property
    def size(self) -> int:
        return self.count


class _Damped:
    """Damped weight, sum and sum of squares of one key (O(1))."""

    __slots__ = ("last", "q", "s", "w")

    def __init__(self) -> None:
        self.last = -math.inf
        self.w = 0.0
        self.s = 0.0
        self.q = 0.0

    def add(self, t: float, v: float, rate: float) -> None:
        if t > self.last:
            if self.w:
                f = math.exp(-rate * (t - self.last))
                self.w *= f
                self.s *= f
                self.q *= f
            self.last = t
        self.w += 1.0
        self.s += v
        self.q += v * v

    def dump(self) -> list[Any]:
        return [self.last, self.w, self.s, self.q]

    def load(self, d: list[Any]) -> None:
        self.last = _time(d[0])
        self.w, self.s, self.q = (float(x) for x in d[1:])

    @property
    def size(self) -> int:
        return 1


class _Distinct:
    """Distinct values of one key inside a sliding window: arrival order plus counts."""

    __slots__ = ("counts", "ev", "head", "last", "saturated")

    def __init__(self) -> None:
        self.ev: list[Any] = []  # [t0, value0, t1, value1, ...] from head on
        self.head = 0
        self.counts: dict[str, int] = {}
        self.last = -math.inf
        self.saturated = False

    def _expire(self, t: float, w: float) -> None:
        ev, counts, h = self.ev, self.counts, self.head
        lo = t - w
        n = len(ev)
        while h < n and (ev[h] <= lo or n - h >= 2 * MAX_EVENTS):
            if ev[h] > lo:
                self.saturated = True
            v = ev[h + 1]
            c = counts[v] - 1
            if c:
                counts[v] = c
            else:
                del counts[v]
            h += 2
        if h and h * 2 >= n:
            del ev[:h]
            h = 0
        self.head = h

    def pairs(self) -> list[tuple[float, str]]:
        ev = self.ev
        return [(ev[k], ev[k + 1]) for k in range(self.head, len(ev), 2)]

    def dump(self) -> list[Any]:
        ev = self.ev
        return [self.last, self.saturated, ev[self.head :: 2], ev[self.head + 1 :: 2]]

    def load(self, d: list[Any]) -> None:
        self.last, self.saturated = _time(d[0]), d[1]
        self.ev = [x for pair in zip(map(float, d[2]), d[3], strict=True) for x in pair]
        self.head = 0
        self.counts = {}
        for v in d[3]:
            self.counts[v] = self.counts.get(v, 0) + 1

    @property
    def size(self) -> int:
        return (len(self.ev) - self.head) >> 1


def _time(x: Any) -> float:
    """An event time read back from JSON (which has no -inf: "no event yet" is null)."""
    return -math.inf if x is None else float(x)


def _moments(n: float, s: float, q: float) -> tuple[float, float]:
    """Mean and standard deviation from weight, sum and sum of squares (never NaN)."""
    mean = s / n
    var = q / n - mean * mean
    return mean, math.sqrt(var) if var > 0.0 else 0.0


# ---- the window functions --------------------------------------------------------------


class _Window(Function):
    """Shared by every window function: key columns, the per-row loop, late events.

    Subclasses say which state they keep (``state_of``) and how a state and an
    event give the value (``value``); ``uses`` is the argument read per event.
    """

    windowed = True
    damped_ok: ClassVar[bool] = True
    uses: ClassVar[str] = "none"  # "none", "num" or "cat": what the first argument is

    def check(self, call: Call, args: list[Any], kwargs: dict[str, Any]) -> None:
        if "by" not in kwargs:
            raise SpecError(f"'{self.name}' needs by=FIELD (or by=a>b)", position=call.pos)
        if ("window" in kwargs) == ("decay" in kwargs):
            raise SpecError(
                f"'{self.name}' needs exactly one of window=DURATION or decay=HALF_LIFE",
                position=call.pos,
            )
        if "decay" in kwargs and not self.damped_ok:
            raise SpecError(
                f"'{self.name}' has no damped form: use window=DURATION", position=call.pos
            )

    def missing(self, apply: Apply, ctx: EvalContext) -> Blame:
        blames: Blame = []
        for path in apply.kwargs["by"]:
            codes = ctx.strings(path).codes
            if codes is not None:
                blames.append((path, codes == MISSING_FEATURE))
        for a in apply.children():
            blames.extend(a.missing(ctx))
        return blames

    def eval(self, apply: Apply, args: list[Any], ctx: EvalContext, state: Any) -> Col:
        run = ctx.windows
        if run is None:
            raise SpecError(f"'{self.name}' needs event times: compute with windows")
        n = ctx.n
        keys, kcodes = run.keys(ctx, apply.kwargs["by"])
        arg = args[0] if args else None
        codes = merge_codes(kcodes, None if arg is None else arg.codes, run.time_codes)
        out = np.zeros(n, dtype=np.float64)
        if codes is None:
            codes_list: list[int] = [0] * n
        else:
            codes_list = codes.tolist()
        vals: list[Any] = (
            [0.0] * n if arg is None else arg.values.tolist() if self.uses == "num" else
            list(arg.values)
        )
        decay = apply.kwargs.get("decay")
        span = apply.kwargs["window"] if decay is None else decay
        param = span if decay is None else _LN2 / decay
        sig = signature(apply)
        make = self.state_of(decay is not None)
        value = self.value
        times = run.times_list
        late = run.late_list
        scopes = run.scope_list
        tables: dict[int, Any] = {}
        dirty_of: dict[int, Any] = {}
        for i in range(n):
            if codes_list[i]:
                out[i] = math.nan
                continue
            sc = scopes[i]
            table = tables.get(sc)
            if table is None:
                table = tables[sc] = run.store.table(sc, sig)
                dirty_of[sc] = run.store.dirty_set(sc)
            key = keys[i]
            st = table.get(key)
            if st is None:
                st = make()
            push = not (late[i] or run.dry)
            out[i] = value(st, times[i], vals[i], param, span, push)
            if push:
                table[key] = st
                table.move_to_end(key)
                dirty = dirty_of[sc]
                if dirty is not None:
                    dirty.add((sig, key))
        if codes is not None:
            codes = codes.astype(np.uint8, copy=False)
        return Col(out, codes)

    def state_of(self, damped: bool) -> Any:
        raise NotImplementedError

    def value(self, st: Any, t: float, v: Any, param: float, span: float, push: bool) -> float:
        raise NotImplementedError


def _stat_value(kind: str) -> Any:
    """``value`` of count / sum / mean / std over an exact or damped state."""

    def value(st: Any, t: float, v: float, param: float, span: float, push: bool) -> float:
        if push:
            st.add(t, v, param)
            n, s, q = (st.w if type(st) is _Damped else float(st.count)), st.s, st.q
        elif type(st) is _Damped:
            f = math.exp(-param * (t - st.last)) if st.w and t > st.last else 1.0
            n, s, q = st.w * f + 1.0, st.s * f + v, st.q * f + v * v
        else:
            lo = max(t, st.last) - param
            kept = [(a, b) for a, b in zip(st.times, st.values, strict=True) if a > lo]
            n = float(len(kept) + 1)
            s = math.fsum(b for _, b in kept) + v
            q = math.fsum(b * b for _, b in kept) + v * v
        if kind == "count":
            return n
        if kind == "sum":
            return s
        mean, std = _moments(n, s, q)
        return mean if kind == "mean" else std

    return value


@register
class _Count(_Window):
    """``count(by=K, window=60s)``: the key's events in the window, this one included."""

    name = "count"
    signature = Signature((), kwargs={"by": KEY, "window": SECONDS, "decay": SECONDS})

    def state_of(self, damped: bool) -> Any:
        return _Damped if damped else _Exact

    value = staticmethod(_stat_value("count"))  # type: ignore[assignment]


class _Moment(_Window):
    uses = "num"
    signature = Signature((NUM,), kwargs={"by": KEY, "window": SECONDS, "decay": SECONDS})

    def state_of(self, damped: bool) -> Any:
        return _Damped if damped else _Exact


@register
class _DistinctFn(_Window):
    """``distinct(FIELD, by=K, window=60s)``: distinct values of FIELD for the key (exact)."""

    name = "distinct"
    uses = "cat"
    damped_ok = False
    signature = Signature((CAT,), kwargs={"by": KEY, "window": SECONDS, "decay": SECONDS})

    def state_of(self, damped: bool) -> Any:
        return _Distinct

    def value(self, st: Any, t: float, v: Any, param: float, span: float, push: bool) -> float:
        if t < st.last:
            t = st.last
        if not push:
            lo = t - param
            seen = {x for a, x in st.pairs() if a > lo}
            return float(len(seen | {v}))
        st._expire(t, param)
        st.ev.append(t)
        st.ev.append(v)
        st.counts[v] = st.counts.get(v, 0) + 1
        st.last = t
        return float(len(st.counts))


class _Intervals:
    """Gaps between one key's events: an exact or damped moment state over the gaps."""

    __slots__ = ("gaps", "last", "seen")

    def __init__(self, gaps: Any) -> None:
        self.last = -math.inf
        self.gaps = gaps
        self.seen = 0  # gaps ever seen: a damped weight never says "two gaps" by itself

    def dump(self) -> list[Any]:
        return [self.last, type(self.gaps) is _Damped, self.gaps.dump(), self.seen]

    def load(self, d: list[Any]) -> None:
        self.last = _time(d[0])
        self.gaps = _Damped() if d[1] else _Exact()
        self.gaps.load(d[2])
        self.seen = int(d[3])

    @property
    def size(self) -> int:
        return self.gaps.size + 1


def _interval_value(kind: str) -> Any:
    def value(st: Any, t: float, v: Any, param: float, span: float, push: bool) -> float:
        gaps = st.gaps
        if t < st.last:
            t = st.last
        exact = type(gaps) is _Exact
        if st.last == -math.inf:
            if push:
                st.last = t
            return span
        gap = t - st.last
        enough = st.seen + 1 >= 2
        if push:
            gaps.add(t, gap, param)
            st.last = t
            st.seen += 1
            if exact:
                # A gap belongs to the window while the event that opened it does.
                n, s, q = float(gaps.count), gaps.s, gaps.q
                ev, h = gaps.ev, gaps.head
                if h < len(ev) and ev[h] - ev[h + 1] <= t - param:
                    first = ev[h + 1]
                    n, s, q = n - 1.0, s - first, q - first * first
            else:
                n, s, q = gaps.w, gaps.s, gaps.q
        else:
            if exact:
                lo = t - param
                kept = [b for a, b in zip(gaps.times, gaps.values, strict=True) if a - b > lo]
                n = float(len(kept) + 1)
                s = math.fsum(kept) + gap
                q = math.fsum(b * b for b in kept) + gap * gap
            else:
                f = math.exp(-param * (t - gaps.last)) if gaps.w and t > gaps.last else 1.0
                n, s, q = gaps.w * f + 1.0, gaps.s * f + gap, gaps.q * f + gap * gap
        if (n < 2.0) if exact else not enough:
            return span
        mean, std = _moments(n, s, q)
        return mean if kind == "mean" else std

    return value


class _IntervalFn(_Window):
    signature = Signature((), kwargs={"by": KEY, "window": SECONDS, "decay": SECONDS})

    def state_of(self, damped: bool) -> Any:
        inner = _Damped if damped else _Exact
        return lambda: _Intervals(inner())


def _define(base: type[_Window], name: str, value: Any, doc: str) -> None:
    """Register one more window function that differs from ``base`` only in its value."""
    register(type(f"_{name}", (base,), {"name": name, "value": staticmethod(value),
                                        "__doc__": doc}))


for _name, _doc in (
    ("sum", "``sum(EXPR, by=K, window=60s)``: EXPR summed over the key's events."),
    ("mean", "``mean(EXPR, by=K, window=60s)``."),
    ("std", "``std(EXPR, by=K, window=60s)``: population standard deviation."),
):
    _define(_Moment, _name, _stat_value(_name), _doc)
for _name, _doc in (
    ("interval_mean", "``interval_mean(by=K, window=60s)``: mean gap between the key's events."),
    ("interval_std", "``interval_std(by=K, window=60s)``: the gaps' standard deviation "
                     "(beacons: ~0)."),
):
    _define(_IntervalFn, _name, _interval_value(_name.removeprefix("interval_")), _doc)


# ---- state identity and serialisation --------------------------------------------------


def signature(apply: Apply) -> str:
    """The identity of a window's state: function, argument, key and span, canonical.

    Two models (or two versions of one) that declare the same window share its
    state, so a hot reload to a retrained model keeps the windows warm.
    """
    cached = getattr(apply, "_sig", None)
    if cached is not None:
        return cached
    call = apply.node
    arg = ""
    if apply.args:
        a = apply.args[0]
        arg = a.node.source(_root_text(apply)) if hasattr(a, "node") else str(a)
    kw = apply.kwargs
    span = f"window={kw['window']!r}" if "window" in kw else f"decay={kw['decay']!r}"
    sig = f"{call.name}({arg};by={'>'.join(kw['by'])};{span})"
    apply._sig = sig  # type: ignore[attr-defined]
    return sig


def _root_text(apply: Apply) -> str:
    text = getattr(apply, "_text", None)
    if text is None:
        raise AssertionError("window apply without its expression text")  # set by the spec
    return text


def dump_state(st: Any) -> list[Any]:
    """A state as a JSON-safe list, tagged with its class."""
    return [type(st).__name__, st.dump()]


_CLASSES: Final = {c.__name__: c for c in (_Exact, _Damped, _Distinct)}


def load_state(d: Sequence[Any]) -> Any:
    """The state :func:`dump_state` wrote."""
    name, body = d[0], d[1]
    st = _Intervals(None) if name == "_Intervals" else _CLASSES[name]()
    st.load(list(body))
    return st


__all__ = ["BAD_TIMESTAMP", "MAX_EVENTS", "OK", "SEP", "Cat", "dump_state", "load_state",
           "signature"]
