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

Three more keep a bounded state per key whatever the traffic's rate, so their spans
can run from minutes to a day: ``since`` (seconds since the key's previous event:
novelty, "first time this host talks to that destination today"), ``beacon`` (RITA's
regularity of the gaps and sizes of the key's last 32 events) and ``spread``
(distinct values among the key's last 32 events: fan-out that does not grow with how
long a host has been busy). ``cardinality`` counts distinct values over a window of any
length: exactly while a key has at most 64 in it (one entry per value, not per event),
then with a HyperLogLog per quarter window; ``regularity`` is ``beacon`` over every event
of a key, damped, from quantile sketches (log buckets) of its gaps and sizes. A table
keeps its keys for its longest window, when that is longer than the store's TTL.

Event time comes from the spec's timestamp field (ISO 8601 or epoch seconds).
An event older than the newest event of its key counts at that newest time;
an event older than the newest event of its tenant in its scope by more than the
store's lateness (default 5 s) is *late*: it is scored against the current state
and leaves it unchanged. A key's state whose newest event is older than its
tenant's newest by more than the store's TTL has expired: an event meets no state
(as if the key were new), whether or not the store has evicted it yet. A missing
or unparseable timestamp rejects the row (``bad_timestamp``); a missing key field
makes the feature missing, which ``fill`` can replace.

Every scorer computes windows with this module, in event order: training and
offline scoring over a whole file at once, the stream batch by batch over the
durable :class:`~stream.state.store.WindowStore`. The arithmetic per key is
the same sequence of float operations in each, so the values are identical.

The state classes and value functions below are the reference form. The batch
loop runs in a kernel: the compiled ``_wincore.Kernel`` (C, built by ``pip
install``; the same float operations in the same order, proved bit for bit in
the tests) or, without a C compiler, :class:`PyKernel` over these classes.
``distinct`` counts 64-bit hashes of the values (``hash_text``), in both forms.
"""

from __future__ import annotations

import logging
import math
import struct
import sys
from collections.abc import Sequence
from typing import Any, ClassVar, Final

import numpy as np

from stream.features.expr import (
    CAT,
    FUNCTIONS,
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
from stream.outcomes.reasons import BAD_TIMESTAMP, MISSING_FEATURE, OK
from stream.state.codec import STATE
from stream.state.keys import SEP

#: Events kept per key of an exact window; older ones beyond this are forgotten early.
MAX_EVENTS: Final = 4096
_LN2: Final = math.log(2.0)

log = logging.getLogger(__name__)


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
    #: The kernel whose state it reads, when not its own (first_seen reads since's).
    state_kind: ClassVar[str | None] = None

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
        by = apply.kwargs["by"]
        arg = args[0] if args else None
        slots, kcodes = run.slots(ctx, by)
        codes = merge_codes(kcodes, None if arg is None else arg.codes, run.time_codes)
        if arg is not None and arg.codes is not None:
            slots = np.where(arg.codes != OK, np.int32(-1), slots)
        kernel, table = run.store.kernel(signature(apply), by, lambda: self.kernel(apply))
        vals, hashes = _EMPTY_F, _EMPTY_U
        if self.uses == "num":
            assert arg is not None  # the signature's first argument
            vals = np.ascontiguousarray(np.broadcast_to(arg.values, (n,)), dtype=np.float64)
        elif self.uses == "cat":
            assert arg is not None
            hashes = hash_texts(arg.values.tolist())
        out = np.empty(n, dtype=np.float64)
        kernel.run(slots, run.times, vals, hashes, run.push, out, table.newest, table.touch,
                   table.dirty, run.seq, run.clock - table.ttl)
        if codes is not None:
            codes = codes.astype(np.uint8, copy=False)
        return Col(out, codes)

    def kernel(self, apply: Apply) -> Any:
        """A fresh kernel (compiled when it is built) for this window's state."""
        decay = apply.kwargs.get("decay")
        span = apply.kwargs["window"] if decay is None else decay
        param = span if decay is None else _LN2 / decay
        return make_kernel(self.state_kind or self.name, decay is not None, float(param),
                           float(span))

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
            n = s = q = 0.0
            for a, b in zip(st.times, st.values, strict=True):
                if a > lo:
                    n += 1.0
                    s += b
                    q += b * b
            n, s, q = n + 1.0, s + v, q + v * v
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

    value = staticmethod(_stat_value("count"))


class _Moment(_Window):
    uses = "num"
    signature = Signature((NUM,), kwargs={"by": KEY, "window": SECONDS, "decay": SECONDS})

    def state_of(self, damped: bool) -> Any:
        return _Damped if damped else _Exact


def _distinct_value(st: Any, t: float, v: Any, param: float, span: float, push: bool) -> float:
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


@register
class _DistinctFn(_Window):
    """``distinct(FIELD, by=K, window=60s)``: distinct values of FIELD for the key (exact)."""

    name = "distinct"
    tail = 1
    uses = "cat"
    damped_ok = False
    signature = Signature((CAT,), kwargs={"by": KEY, "window": SECONDS, "decay": SECONDS})

    def state_of(self, damped: bool) -> Any:
        return _Distinct

    value = staticmethod(_distinct_value)


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
                n = s = q = 0.0
                for a, b in zip(gaps.times, gaps.values, strict=True):
                    if a - b > lo:
                        n += 1.0
                        s += b
                        q += b * b
                n, s, q = n + 1.0, s + gap, q + gap * gap
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


class _Since:
    """The newest event time of one key (``since``)."""

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last = -math.inf

    def dump(self) -> list[Any]:
        return [self.last]

    def load(self, d: list[Any]) -> None:
        self.last = _time(d[0])

    @property
    def size(self) -> int:
        return 1


def _since_value(st: Any, t: float, v: Any, param: float, span: float, push: bool) -> float:
    if st.last == -math.inf:
        val = span
    else:
        val = t - st.last if t > st.last else 0.0
        if val > span:
            val = span
    if push and t > st.last:
        st.last = t
    return val


@register
class _SinceFn(_Window):
    """``since(by=K, window=1d)``: seconds since the key's previous event, at most the
    window; the window itself for a key not seen within it. Novelty: the first flow from
    a host to a destination in a day reads 86400, the tenth within a minute a few
    seconds. O(1) state per key, kept (like every window) as long as the window."""

    name = "since"
    tail = 1
    damped_ok = False
    signature = Signature((), kwargs={"by": KEY, "window": SECONDS, "decay": SECONDS})

    def state_of(self, damped: bool) -> Any:
        return _Since

    value = staticmethod(_since_value)


@register
class _FirstSeenFn(_SinceFn):
    """``first_seen(by=K, window=30d)``: 1 for the key's first event within the window (a
    host talking to a destination it has not talked to in 30 days), else 0. It reads
    ``since``'s state (O(1) per key; a ``since`` over the same key and window shares it),
    which keeps learning as the stream runs, as durable as any window; the window is how
    long a key is remembered."""

    name = "first_seen"
    state_kind = "since"

    def eval(self, apply: Apply, args: list[Any], ctx: EvalContext, state: Any) -> Col:
        col = super().eval(apply, args, ctx, state)
        span = float(apply.kwargs["window"])
        v = col.values
        return Col(np.where(np.isnan(v), v, (v >= span).astype(np.float64)), col.codes)


#: Events a beacon window keeps per key (the compiled kernel's BEACON_N).
BEACON_N: Final = 32


class _Beacon:
    """One key's last ``BEACON_N`` events in the window: times and sizes."""

    __slots__ = ("ev", "last")

    def __init__(self) -> None:
        self.ev: list[tuple[float, float]] = []
        self.last = -math.inf

    def dump(self) -> list[Any]:
        return [self.last, [t for t, _ in self.ev], [s for _, s in self.ev]]

    def load(self, d: list[Any]) -> None:
        self.last = _time(d[0])
        self.ev = [(float(t), float(s)) for t, s in zip(d[1], d[2], strict=True)]

    @property
    def size(self) -> int:
        return len(self.ev)


def _quantile(x: list[float], q: float) -> float:
    pos = q * (len(x) - 1)
    lo = int(pos)
    hi = lo + 1 if lo + 1 < len(x) else lo
    return x[lo] + (x[hi] - x[lo]) * (pos - lo)


def _regularity(values: list[float]) -> float:
    """RITA's statistical score: the mean of 1 - |Bowley skew| and (median - MAD) /
    median, each in [0, 1] (the compiled kernel's arithmetic, operation for operation)."""
    x = sorted(values)
    q1, q2, q3 = _quantile(x, 0.25), _quantile(x, 0.5), _quantile(x, 0.75)
    den = q3 - q1
    skew = (q1 + q3 - 2.0 * q2) / den if den > 0.0 and q2 != q1 and q2 != q3 else 0.0
    skew_score = max(1.0 - (skew if skew >= 0.0 else -skew), 0.0)
    dev = sorted(v - q2 if v >= q2 else q2 - v for v in x)
    mad = _quantile(dev, 0.5)
    mad_score = max((q2 - mad) / q2, 0.0) if q2 > 0.0 else 0.0
    return (skew_score + mad_score) / 2.0


def _beacon_score(ev: list[tuple[float, float]]) -> float:
    if len(ev) < 4:
        return 0.0
    gaps = [ev[k + 1][0] - ev[k][0] for k in range(len(ev) - 1)]
    return (_regularity(gaps) + _regularity([s for _, s in ev])) / 2.0


def _beacon_value(st: Any, t: float, v: Any, param: float, span: float, push: bool) -> float:
    if t < st.last:
        t = st.last
    lo = t - param
    kept = [e for e in st.ev if e[0] > lo]
    if push:
        # As the ring drops its front: expired events, then beyond BEACON_N - 1.
        head = 0
        while head < len(st.ev) and (st.ev[head][0] <= lo or len(st.ev) - head >= BEACON_N):
            head += 1
        st.ev = [*st.ev[head:], (t, v)]
        st.last = t
        return _beacon_score(st.ev)
    return _beacon_score([*kept[-(BEACON_N - 1):], (t, v)])


@register
class _BeaconFn(_Window):
    """``beacon(bytes, by=src_ip>dst_ip, window=1h)``: how regular the key's last 32
    events in the window are, in [0, 1]: the mean of RITA's timestamp score (the gaps'
    1 - |Bowley skew| and (median - MAD) / median) and the same data size score of
    ``bytes``; 0 before four events. Command-and-control check-ins score near 1; so do
    NTP and directory services, which is why it reads with the destination's rarity."""

    name = "beacon"
    tail = 1
    uses = "num"
    damped_ok = False
    signature = Signature((NUM,), kwargs={"by": KEY, "window": SECONDS, "decay": SECONDS})

    def state_of(self, damped: bool) -> Any:
        return _Beacon

    value = staticmethod(_beacon_value)


class _Spread(_Beacon):
    """One key's last ``BEACON_N`` events in the window: times and value hashes."""

    __slots__ = ()

    def load(self, d: list[Any]) -> None:
        self.last = _time(d[0])
        self.ev = [(float(t), int(h)) for t, h in zip(d[1], d[2], strict=True)]


def _spread_value(st: Any, t: float, v: Any, param: float, span: float, push: bool) -> float:
    if t < st.last:
        t = st.last
    lo = t - param
    if push:
        head = 0
        while head < len(st.ev) and (st.ev[head][0] <= lo or len(st.ev) - head >= BEACON_N):
            head += 1
        st.ev = [*st.ev[head:], (t, v)]
        st.last = t
        return float(len({h for _, h in st.ev}))
    kept = [h for a, h in st.ev if a > lo][-(BEACON_N - 1):]
    return float(len({*kept, v}))


@register
class _SpreadFn(_Window):
    """``spread(FIELD, by=K, window=1h)``: distinct values of FIELD among the key's last 32
    events in the window, this one included (1 to 32). Fan-out that does not depend on
    the traffic's rate or on how long a host has been busy: a scan's last 32 flows went
    to 32 ports, a browser's to two or three; O(32) state per key."""

    name = "spread"
    tail = 1
    uses = "cat"
    damped_ok = False
    signature = Signature((CAT,), kwargs={"by": KEY, "window": SECONDS, "decay": SECONDS})

    def state_of(self, damped: bool) -> Any:
        return _Spread

    value = staticmethod(_spread_value)


#: ``cardinality``: distinct values kept exactly per key up to this many, then a sketch.
CARD_EXACT: Final = 64
#: The sketch: a HyperLogLog of 2**6 one-byte registers (standard error 1.04 / 8, 13%) per
#: pane of a quarter window, for the window's last ``CARD_PANES`` quarters (the one the
#: window's start falls in counts in proportion: no bias from the rounding).
CARD_M: Final = 64
CARD_PANES: Final = 5
_CARD_ALPHA: Final = 0.709  # Flajolet et al.'s bias constant for 64 registers


class _Card:
    """One key's distinct values for ``cardinality``: exact, then a windowed HyperLogLog.

    Exact form (``panes`` None): ``ev``, one ``(last seen, hash)`` per distinct value,
    oldest first: memory grows with the distinct values, not with the events. Past
    ``CARD_EXACT`` of them, ``panes``: ``CARD_PANES`` HyperLogLogs, each ``[pane
    index, registers]`` (index ``-inf`` for an empty pane), pane ``k`` holding the
    values seen in ``[k, k + 1) * window / 4``; a pane wholly before the window is
    emptied. Back to the exact form once every pane has expired.
    """

    __slots__ = ("ev", "last", "panes")

    def __init__(self) -> None:
        self.ev: list[tuple[float, int]] = []
        self.panes: list[list[Any]] | None = None
        self.last = -math.inf

    def dump(self) -> list[Any]:
        if self.panes is None:
            return [self.last, False, [t for t, _ in self.ev], [h for _, h in self.ev]]
        live = [p for p in self.panes if p[0] != -math.inf]
        return [self.last, True, [p[0] for p in live], [list(p[1]) for p in live]]

    def load(self, d: list[Any]) -> None:
        self.last = _time(d[0])
        if not d[1]:
            self.panes = None
            self.ev = [(float(t), int(h)) for t, h in zip(d[2], d[3], strict=True)]
            return
        self.ev = []
        self.panes = [[-math.inf, bytearray(CARD_M)] for _ in range(CARD_PANES)]
        for idx, regs in zip(d[2], d[3], strict=True):
            self.panes[int(idx) % CARD_PANES] = [float(idx), bytearray(regs)]

    @property
    def size(self) -> int:
        return len(self.ev) if self.panes is None else CARD_PANES * (1 + CARD_M // 16)


def _hll_add(regs: Any, h: int) -> None:
    """Register ``h >> 58`` keeps the most leading zeros (+1) seen in the other 58 bits."""
    j = h >> 58
    w = (h << 6) & _M64
    rho = 65 - w.bit_length() if w else 59
    if regs[j] < rho:
        regs[j] = rho


def _hll_estimate(regs: Any) -> float:
    """HyperLogLog's estimate, with linear counting while it is small (Flajolet et al.)."""
    z = 0.0
    zeros = 0
    for r in regs:
        z += 2.0 ** -r
        if r == 0:
            zeros += 1
    e = _CARD_ALPHA * 64.0 * 64.0 / z
    if e <= 160.0 and zeros > 0:
        e = 64.0 * math.log(64.0 / zeros)
    return e


def _card_merge(st: _Card, oldest: int) -> bytearray:
    """The registers of the panes from ``oldest`` on (max per register)."""
    out = bytearray(CARD_M)
    assert st.panes is not None
    for idx, regs in st.panes:
        if idx != -math.inf and int(idx) >= oldest:
            for j in range(CARD_M):
                if regs[j] > out[j]:
                    out[j] = regs[j]
    return out


def _card_estimate(st: _Card, cur: int, frac: float, h: Any) -> float:
    """The estimate over the panes wholly inside the window, plus ``frac`` (the share of
    the oldest pane the window still covers) of what that pane adds; ``h`` (a peeked
    value, or None) counted in both."""
    inner = _card_merge(st, cur - CARD_PANES + 2)
    outer = _card_merge(st, cur - CARD_PANES + 1)
    if h is not None:
        _hll_add(inner, h)
        _hll_add(outer, h)
    e_in = _hll_estimate(inner)
    return e_in + frac * (_hll_estimate(outer) - e_in)


def _card_value(st: Any, t: float, v: Any, param: float, span: float, push: bool) -> float:
    h = v  # the value's 64-bit hash
    if t < st.last:
        t = st.last
    lo = t - param
    pw = param / (CARD_PANES - 1)
    cur = math.floor(t / pw)
    oldest = cur - CARD_PANES + 1
    if st.panes is not None and push:
        for p in st.panes:
            if p[0] != -math.inf and int(p[0]) < oldest:
                p[0] = -math.inf
                p[1] = bytearray(CARD_M)
        if all(p[0] == -math.inf for p in st.panes):  # every pane expired: exact again
            st.panes = None
            st.ev = []
    if st.panes is None:
        if not push:
            inside = [x for a, x in st.ev if a > lo]
            return float(len(inside) + (0 if h in inside else 1))
        ev = [(a, x) for a, x in st.ev if a > lo and x != h]
        if len(ev) < CARD_EXACT:
            ev.append((t, h))
            st.ev = ev
            st.last = t
            return float(len(ev))
        # Past CARD_EXACT distinct values: the same values into the panes, then on.
        st.panes = [[-math.inf, bytearray(CARD_M)] for _ in range(CARD_PANES)]
        st.ev = []
        for a, x in ev:
            idx = math.floor(a / pw)
            if idx >= oldest:
                _card_pane(st, idx)
                _hll_add(st.panes[idx % CARD_PANES][1], x)
    frac = ((oldest + 1) * pw - lo) / pw
    if not push:
        if not any(p[0] != -math.inf and int(p[0]) >= oldest for p in st.panes):
            return 1.0
        return _card_estimate(st, cur, frac, h)
    st.last = t
    _card_pane(st, cur)
    _hll_add(st.panes[cur % CARD_PANES][1], h)
    return _card_estimate(st, cur, frac, None)


def _card_pane(st: _Card, idx: int) -> None:
    """Pane ``idx``'s slot, emptied first if it held an older pane."""
    assert st.panes is not None
    p = st.panes[idx % CARD_PANES]
    if p[0] != float(idx):
        p[0] = float(idx)
        p[1] = bytearray(CARD_M)


@register
class _CardinalityFn(_Window):
    """``cardinality(FIELD, by=K, window=1h)``: distinct values of FIELD for the key in the
    window, this one included, over windows of any length: exact while the key has at
    most 64 distinct values in it, then a HyperLogLog estimate (13% standard error)
    over the window in quarters. Memory per key: 16 bytes per distinct value up to 64,
    then 400 bytes whatever the traffic: fan-out over an hour or a day that
    ``distinct`` (every event kept, at most 4,096 per key) cannot hold."""

    name = "cardinality"
    tail = 1
    uses = "cat"
    damped_ok = False
    signature = Signature((CAT,), kwargs={"by": KEY, "window": SECONDS, "decay": SECONDS})

    def state_of(self, damped: bool) -> Any:
        return _Card

    value = staticmethod(_card_value)


#: ``regularity``'s sketch: entries (series, bucket) kept per key; buckets of relative width
#: 25% (DDSketch's log mapping: a value is read back within 11%; 32 buckets span three
#: orders of magnitude, jitter within a bucket reads as none); an entry whose weight has
#: faded below ``SKETCH_MIN_WEIGHT`` is dropped; past ``SKETCH_CAP`` entries the fuller
#: series folds its lighter end bucket into its neighbour (DDSketch collapses the lowest;
#: quartiles keep best when the tails give way).
SKETCH_CAP: Final = 64
SKETCH_GAMMA: Final = 1.25
_SKETCH_LG: Final = math.log(SKETCH_GAMMA)
SKETCH_MIN_WEIGHT: Final = 1e-3
_ZERO_BUCKET: Final = -32768
_GAPS: Final = 1 << 16  # a gap's entry code: the series bit above the bucket's 16 bits


def _bucket(x: float) -> int:
    """The bucket of a value: ceil(log_gamma(x)), clamped; 0 and below in their own."""
    if not x > 1e-9:
        return _ZERO_BUCKET
    b = math.ceil(math.log(x) / _SKETCH_LG)
    return -32767 if b < -32767 else 32767 if b > 32767 else b


def _rep(b: int) -> float:
    """A bucket's value: the middle of [gamma^(b-1), gamma^b] in relative terms."""
    return 0.0 if b == _ZERO_BUCKET else 2.0 * math.exp(b * _SKETCH_LG) / (1.0 + SKETCH_GAMMA)


class _Sketch:
    """One key's damped quantile sketches (``regularity``): ``entries`` of ``[code,
    weight]`` in the order they were made, a code being the series (``_GAPS`` for a
    gap, 0 for a size) plus the bucket + 32768; ``last`` the newest event time."""

    __slots__ = ("entries", "last")

    def __init__(self) -> None:
        self.entries: list[list[Any]] = []
        self.last = -math.inf

    def dump(self) -> list[Any]:
        return [self.last, [c for c, _ in self.entries], [w for _, w in self.entries]]

    def load(self, d: list[Any]) -> None:
        self.last = _time(d[0])
        self.entries = [[int(c), float(w)] for c, w in zip(d[1], d[2], strict=True)]
        if len(self.entries) > SKETCH_CAP:
            raise ValueError("window state record does not fit this window")

    @property
    def size(self) -> int:
        return len(self.entries)


def _sketch_step(entries: list[list[Any]], last: float, t: float, v: float, rate: float
                 ) -> list[list[Any]]:
    """The entries after an event at ``t`` of size ``v``: faded by the time since the last
    one, then its size and its gap counted (the compiled kernel's, step for step)."""
    f = math.exp(-rate * (t - last)) if last != -math.inf else 1.0
    out = []
    for c, w in entries:
        w = w * f
        if w >= SKETCH_MIN_WEIGHT:
            out.append([c, w])
    codes = [_bucket(v) + 32768]
    if last != -math.inf:
        codes.append(_GAPS + _bucket(t - last) + 32768)
    for code in codes:
        for e in out:
            if e[0] == code:
                e[1] = e[1] + 1.0
                break
        else:
            out.append([code, 1.0])
    while len(out) > SKETCH_CAP:
        gaps = sum(1 for c, _ in out if c >= _GAPS)
        series = _GAPS if gaps > len(out) - gaps else 0
        mine = sorted((c, k) for k, (c, _) in enumerate(out) if (c >= _GAPS) == bool(series))
        (_a, lo), (_b, lo2), (_c, hi2), (_d, hi) = mine[0], mine[1], mine[-2], mine[-1]
        if out[lo][1] <= out[hi][1]:
            out[lo2][1] = out[lo2][1] + out[lo][1]
            del out[lo]
        else:
            out[hi2][1] = out[hi2][1] + out[hi][1]
            del out[hi]
    return out


def _weighted_quantile(bw: list[tuple[float, float]], total: float, q: float) -> float:
    """The first value (of value, weight pairs in order) whose running weight reaches
    ``q`` of the total."""
    cut = q * total
    cum = 0.0
    for x, w in bw:
        cum += w
        if cum >= cut:
            return x
    return bw[-1][0]


def _sketch_regularity(entries: list[list[Any]], series: int) -> tuple[float, float]:
    """RITA's score of one series (as ``_regularity``: 1 - |Bowley skew| and (median -
    MAD) / median, averaged) from its buckets, and the series' total weight."""
    mine = sorted((c - series - 32768, w) for c, w in entries if (c >= _GAPS) == bool(series))
    total = 0.0
    for _b, w in mine:
        total += w
    if not mine:
        return 0.0, 0.0
    vals = [(_rep(b), w) for b, w in mine]
    q1 = _weighted_quantile(vals, total, 0.25)
    q2 = _weighted_quantile(vals, total, 0.5)
    q3 = _weighted_quantile(vals, total, 0.75)
    den = q3 - q1
    skew = (q1 + q3 - 2.0 * q2) / den if den > 0.0 and q2 != q1 and q2 != q3 else 0.0
    skew_score = max(1.0 - (skew if skew >= 0.0 else -skew), 0.0)
    # Stable on the deviation alone: ties keep bucket order, as the compiled insertion sort.
    dev = sorted((((x - q2 if x >= q2 else q2 - x), w) for x, w in vals), key=_first)
    mad = _weighted_quantile(dev, total, 0.5)
    mad_score = max((q2 - mad) / q2, 0.0) if q2 > 0.0 else 0.0
    return (skew_score + mad_score) / 2.0, total


def _first(p: tuple[float, float]) -> float:
    return p[0]


def _sketch_score(entries: list[list[Any]]) -> float:
    gaps, weight = _sketch_regularity(entries, _GAPS)
    if weight < 3.0:  # about four events within a half-life
        return 0.0
    sizes, _w = _sketch_regularity(entries, 0)
    return (gaps + sizes) / 2.0


def _sketch_value(st: Any, t: float, v: Any, param: float, span: float, push: bool) -> float:
    if t < st.last:
        t = st.last
    entries = _sketch_step([list(e) for e in st.entries], st.last, t, v, param)
    if push:
        st.entries = entries
        st.last = t
    return _sketch_score(entries)


@register
class _RegularityFn(_Window):
    """``regularity(bytes, by=src_ip>dst_ip, decay=1h)``: RITA's beacon score (as
    ``beacon``) over every event of the key, each weighing half as much every half-life,
    from damped quantile sketches of its gaps and of ``bytes`` (log buckets of 25%,
    at most 64 per key: about 1 kB whatever the key's traffic). ``beacon`` reads the
    key's last 32 events exactly; this reads a day of them, for check-ins an hour
    apart. 0 until the gaps weigh 3 (about four events within a half-life)."""

    name = "regularity"
    tail = 1
    uses = "num"
    exact_ok: ClassVar[bool] = False
    signature = Signature((NUM,), kwargs={"by": KEY, "window": SECONDS, "decay": SECONDS})

    def check(self, call: Call, args: list[Any], kwargs: dict[str, Any]) -> None:
        super().check(call, args, kwargs)
        if "window" in kwargs:
            raise SpecError(f"'{self.name}' is damped: use decay=HALF_LIFE",
                            position=call.pos)

    def state_of(self, damped: bool) -> Any:
        return _Sketch

    value = staticmethod(_sketch_value)


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
    assert isinstance(call, Call)
    arg = ""
    if apply.args:
        a = apply.args[0]
        arg = a.node.source(_root_text(apply)) if hasattr(a, "node") else str(a)
    kw = apply.kwargs
    span = f"window={kw['window']!r}" if "window" in kw else f"decay={kw['decay']!r}"
    name = getattr(apply.fn, "state_kind", None) or call.name
    sig = f"{name}({arg};by={'>'.join(kw['by'])};{span})"
    apply._sig = sig  # type: ignore[attr-defined]
    return sig


def _root_text(apply: Apply) -> str:
    text = getattr(apply, "_text", None)
    if text is None:
        raise AssertionError("window apply without its expression text")  # set by the spec
    return text


def dump_state(st: Any) -> list[Any]:
    """A state as a JSON-safe list, tagged with its class (a distinct state holds hashes)."""
    return ["_DistinctH" if type(st) is _Distinct else type(st).__name__, st.dump()]


_CLASSES: Final[dict[str, Any]] = {
    "_Exact": _Exact, "_Damped": _Damped, "_DistinctH": _Distinct, "_Since": _Since,
    "_Beacon": _Beacon, "_Spread": _Spread, "_Card": _Card, "_Sketch": _Sketch,
}


def load_state(d: Sequence[Any]) -> Any:
    """The state :func:`dump_state` (or the compiled kernel) wrote.

    ``_Distinct`` is the earlier form, with the values themselves: they are hashed.
    """
    name, body = d[0], list(d[1])
    if name == "_Distinct":
        name, body = "_DistinctH", [*body[:3], [hash_text(v) for v in body[3]]]
    st = _Intervals(None) if name == "_Intervals" else _CLASSES[name]()
    st.load(body)
    return st


# ---- kernels: one window function's state for every slot, and the batch loop -----------

_M64: Final = (1 << 64) - 1


def _hash_text_py(s: Any) -> int:
    """FNV-1a over the UTF-8 text, then splitmix64's finaliser (the compiled kernel's hash)."""
    if s is None:
        return 0
    h = 0xCBF29CE484222325
    for b in str(s).encode():
        h = ((h ^ b) * 0x100000001B3) & _M64
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & _M64
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & _M64
    return h ^ (h >> 31)


def _hash_texts_py(values: list[Any]) -> np.ndarray:
    memo: dict[Any, int] = {}
    out = []
    for v in values:
        h = memo.get(v)
        if h is None:
            h = memo[v] = _hash_text_py(v)
        out.append(h)
    return np.array(out, dtype=np.uint64)


class PyKernel:
    """The Python form of ``_wincore.Kernel``: the same interface and floats, slower.

    ``states[slot]`` is one of the state classes above, or None (no state yet).
    """

    def __init__(self, kind: str, damped: bool, param: float, span: float) -> None:
        fn = FUNCTIONS_BY_KIND[kind]
        self.kind, self.damped, self.param, self.span = kind, damped, param, span
        self._make = fn.state_of(damped)
        self._value = fn.value
        self.states: list[Any] = []
        self.live = 0

    def run(self, slots: np.ndarray, times: np.ndarray, vals: np.ndarray, hashes: np.ndarray,
            push: np.ndarray, out: np.ndarray, newest: np.ndarray, touch: np.ndarray,
            dirty: np.ndarray, seq: int, expire: np.ndarray) -> None:
        n = len(slots)
        sl = slots.tolist()
        top = max(sl, default=-1)
        states = self.states
        if top >= len(states):
            states.extend([None] * (top + 1 - len(states)))
        ts, ps, ex = times.tolist(), push.tolist(), expire.tolist()
        if self.kind in ("distinct", "spread", "cardinality"):
            vs = hashes.tolist()
        else:
            vs = vals.tolist() if len(vals) else [0.0] * n
        make, value, param, span = self._make, self._value, self.param, self.span
        track = len(dirty) > 0
        for j in range(n):
            i = sl[j]
            if i < 0:
                out[j] = math.nan
                continue
            st = states[i]
            if st is not None and st.last < ex[j]:
                # Expired (idle past the TTL): as if evicted, whether or not it was yet.
                if not ps[j]:
                    out[j] = value(make(), ts[j], vs[j], param, span, False)
                    continue
                states[i] = st = None
                self.live -= 1
            fresh = st is None
            if fresh:
                st = make()
            t, p = ts[j], ps[j]
            out[j] = value(st, t, vs[j], param, span, p)
            if p:
                if fresh:
                    states[i] = st
                    self.live += 1
                if t > newest[i]:
                    newest[i] = t
                touch[i] = seq + j
                if track:
                    dirty[i] = 1

    def is_live(self, i: int) -> bool:
        return 0 <= i < len(self.states) and self.states[i] is not None

    def clear(self, slots: np.ndarray) -> int:
        cleared = 0
        for i in slots.tolist():
            if self.is_live(i):
                self.states[i] = None
                cleared += 1
        self.live -= cleared
        return cleared

    def nbytes(self) -> int:
        """Bytes held, estimated from a sample of the live states."""
        live = [st for st in self.states[-4 * _SAMPLE:] if st is not None][-_SAMPLE:]
        per = sum(map(_sizeof, live)) / len(live) if live else 0.0
        return int(8 * len(self.states) + per * self.live)

    def compact(self, keep: np.ndarray) -> None:
        states = self.states
        self.states = [states[i] if i < len(states) else None for i in keep.tolist()]
        self.live = sum(st is not None for st in self.states)

    def variable_bytes(self) -> int:
        """The part of :meth:`nbytes` that clearing states frees."""
        return self.nbytes() - 8 * len(self.states)

    def dump(self, i: int) -> list[Any]:
        return dump_state(self.states[i])

    def raw(self, i: int) -> bytes:
        """Slot ``i``'s state in the changelog's binary form (``state_codec``)."""
        st = self.states[i]
        olast, seen = -math.inf, 0
        if type(st) is _Intervals:
            olast, seen, st = st.last, st.seen, st.gaps
        sat = False
        if type(st) is _Since:
            last, w, s, q, events = st.last, 0.0, 0.0, 0.0, b""
        elif type(st) is _Beacon:
            last, w, s, q = st.last, 0.0, 0.0, 0.0
            events = b"".join(struct.pack("<dd", t, v) for t, v in st.ev)
        elif type(st) is _Spread:
            last, w, s, q = st.last, 0.0, 0.0, 0.0
            events = b"".join(struct.pack("<dQ", t, h) for t, h in st.ev)
        elif type(st) is _Sketch:
            last, w, s, q = st.last, 0.0, 0.0, 0.0
            events = b"".join(struct.pack("<dQ", wt, c) for c, wt in st.entries)
        elif type(st) is _Card:
            last, w, s, q, sat = st.last, 0.0, 0.0, 0.0, st.panes is not None
            if st.panes is None:
                events = b"".join(struct.pack("<dQ", t, h) for t, h in st.ev)
            else:  # per pane: its index, then its registers (16 to an event's 16 bytes)
                events = b"".join(struct.pack("<dQ", idx, 0) + bytes(regs)
                                  for idx, regs in st.panes)
        elif type(st) is _Damped:
            last, w, s, q, events = st.last, st.w, st.s, st.q, b""
        elif type(st) is _Exact:
            last, w, s, q, sat = st.last, 0.0, st.s, st.q, st.saturated
            flat = st.ev[st.head :]
            events = struct.pack(f"<{len(flat)}d", *flat)
        else:  # _Distinct: times and value hashes
            last, w, s, q, sat = st.last, 0.0, 0.0, 0.0, st.saturated
            pairs = st.pairs()
            events = b"".join(struct.pack("<dQ", t, h) for t, h in pairs)
        n = len(events) // 16
        return STATE.pack(KINDS[self.kind], self.damped, sat, n, last, w, s, q, olast,
                          seen) + events

    def load_raw(self, i: int, buf: bytes, off: int, size: int) -> None:
        kind, damped, sat, n, last, w, s, q, olast, seen = STATE.unpack_from(buf, off)
        if kind != KINDS[self.kind] or bool(damped) != self.damped or \
                STATE.size + 16 * n != size or off + size > len(buf):
            raise ValueError("window state record does not fit this window")
        body = off + STATE.size
        st: Any
        if self.kind == "since":
            st = _Since()
            st.last = last
        elif self.kind == "beacon":
            st = _Beacon()
            st.last = last
            st.ev = [struct.unpack_from("<dd", buf, body + 16 * k) for k in range(n)]
        elif self.kind == "spread":
            st = _Spread()
            st.last = last
            st.ev = [struct.unpack_from("<dQ", buf, body + 16 * k) for k in range(n)]
        elif self.kind == "regularity":
            if n > SKETCH_CAP:
                raise ValueError("window state record does not fit this window")
            st = _Sketch()
            st.last = last
            st.entries = [[c, wt] for wt, c in (struct.unpack_from("<dQ", buf, body + 16 * k)
                                                for k in range(n))]
        elif self.kind == "cardinality":
            st = _Card()
            st.last = last
            if not sat and n > CARD_EXACT:
                raise ValueError("window state record does not fit this window")
            if not sat:
                st.ev = [struct.unpack_from("<dQ", buf, body + 16 * k) for k in range(n)]
            elif n != CARD_PANES * (1 + CARD_M // 16):
                raise ValueError("window state record does not fit this window")
            else:
                per = 16 * (1 + CARD_M // 16)
                st.panes = [[struct.unpack_from("<d", buf, body + per * k)[0],
                             bytearray(buf[body + per * k + 16 : body + per * (k + 1)])]
                            for k in range(CARD_PANES)]
        elif self.damped:
            st = _Damped()
            st.last, st.w, st.s, st.q = last, w, s, q
        elif self.kind == "distinct":
            st = _Distinct()
            st.last, st.saturated = last, bool(sat)
            for k in range(n):
                t, h = struct.unpack_from("<dQ", buf, body + 16 * k)
                st.ev += [t, h]
                st.counts[h] = st.counts.get(h, 0) + 1
        else:
            st = _Exact()
            st.last, st.s, st.q, st.saturated = last, s, q, bool(sat)
            st.ev = list(struct.unpack_from(f"<{2 * n}d", buf, body))
        if self.kind in ("interval_mean", "interval_std"):
            outer = _Intervals(st)
            outer.last, outer.seen = olast, int(seen)
            st = outer
        if i >= len(self.states):
            self.states.extend([None] * (i + 1 - len(self.states)))
        if self.states[i] is None:
            self.live += 1
        self.states[i] = st

    def load(self, i: int, dumped: list[Any]) -> None:
        if i >= len(self.states):
            self.states.extend([None] * (i + 1 - len(self.states)))
        if self.states[i] is None:
            self.live += 1
        self.states[i] = load_state(dumped)


_SAMPLE: Final = 32


def _sizeof(st: Any) -> int:
    n = sys.getsizeof(st)
    for name in st.__slots__:
        v = getattr(st, name)
        n += sys.getsizeof(v)
        if isinstance(v, list):
            n += 24 * len(v)
        elif isinstance(v, dict):
            n += 60 * len(v)
        elif hasattr(v, "__slots__"):
            n += _sizeof(v)
    return n


FUNCTIONS_BY_KIND: Final[dict[str, _Window]] = {
    name: fn for name, fn in FUNCTIONS.items() if isinstance(fn, _Window)
}

try:
    from stream.state import _wincore
except ImportError:  # built without a C compiler: the Python kernels, said once when first used
    _wincore = None  # type: ignore[assignment]

_EMPTY_F: Final = np.empty(0, dtype=np.float64)
_EMPTY_U: Final = np.empty(0, dtype=np.uint64)
_said = False


#: ``_wincore.KINDS``: a state's kind in the changelog's binary form.
KINDS: Final = {"count": 0, "sum": 1, "mean": 2, "std": 3, "distinct": 4,
                "interval_mean": 5, "interval_std": 6, "since": 7, "beacon": 8,
                "spread": 9, "cardinality": 10, "regularity": 11}


def make_kernel(kind: str, damped: bool, param: float, span: float) -> Any:
    """The compiled kernel for one window function, or :class:`PyKernel` without it.

    (The compiled kernels write the changelog's little-endian form in native byte
    order: a big-endian host uses the Python ones.)
    """
    global _said
    if _wincore is not None and not FORCE_PYTHON and sys.byteorder == "little":
        return _wincore.Kernel(_wincore.KINDS[kind], damped, param, span, MAX_EVENTS)
    if not _said and _wincore is None:
        _said = True
        log.warning("the compiled window kernels are not built (no C compiler at install): "
                    "window features use the Python kernels, several times slower")
    return PyKernel(kind, damped, param, span)


#: Tests set this to run the Python kernels beside the compiled ones.
FORCE_PYTHON = False

if _wincore is not None:
    hash_text, hash_texts = _wincore.hash_text, _wincore.hash_texts
else:
    hash_text, hash_texts = _hash_text_py, _hash_texts_py


__all__ = ["BAD_TIMESTAMP", "MAX_EVENTS", "OK", "SEP", "Cat", "PyKernel", "dump_state",
           "hash_text", "hash_texts", "load_state", "make_kernel", "signature"]
