"""Window state: per-scope tables of per-entity state, bounded, with change tracking.

A :class:`WindowStore` holds the state of every window function, per *scope*
(in the stream a scope is one input partition, so a partition's state moves
with it on a rebalance; offline and in training there is one scope, 0), per
window signature, per state key (tenant and entity). It is bounded twice:

* an entity TTL: a key whose newest event is older than the scope's newest
  event by more than ``ttl`` seconds is dropped (its windows are empty anyway
  once the TTL exceeds the longest window);
* a memory cap: beyond ``max_bytes`` (estimated, see :meth:`WindowStore.bytes`)
  the least recently updated keys are evicted first.

Both count as evictions. With ``track=True`` the store remembers which keys
changed since :meth:`take_changes` (the changelog writes them with each
commit, and evicted keys as tombstones).

:class:`WindowRun` is what one :meth:`FeatureSpec.compute` call hands the
window functions: event times, late flags, scope and state key per row.
"""

from __future__ import annotations

import math
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from stream.features.columns import ColumnSource
from stream.features.windows import SEP, dump_state, load_state
from stream.reasons import BAD_TIMESTAMP, OK

#: Defaults: a minute's out-of-order tolerance is Zeek's habit; an hour covers every recipe window.
DEFAULT_LATENESS_S: Final = 5.0
DEFAULT_TTL_S: Final = 3600.0
DEFAULT_MAX_BYTES: Final = 256 * 2**20
#: Keys sampled to estimate the bytes per key.
_SAMPLE: Final = 32


@dataclass
class Scope:
    """The state of one scope (an input partition): tables per window, and its clock."""

    tables: dict[str, OrderedDict[str, Any]] = field(default_factory=dict)
    watermark: float = -math.inf  # newest event time seen in this scope
    dirty: set[tuple[str, str]] | None = None
    gone: set[tuple[str, str]] = field(default_factory=set)  # evicted since take_changes


@dataclass
class StoreStats:
    """Counters the metrics read: late events and evictions (TTL and memory cap)."""

    late: int = 0
    evicted_ttl: int = 0
    evicted_cap: int = 0


class WindowStore:
    """State of every window function, per scope; see the module docstring."""

    def __init__(
        self,
        *,
        lateness: float = DEFAULT_LATENESS_S,
        ttl: float = DEFAULT_TTL_S,
        max_bytes: int = DEFAULT_MAX_BYTES,
        track: bool = False,
        loader: Callable[[int], None] | None = None,
    ) -> None:
        self.lateness, self.ttl, self.max_bytes, self.track = lateness, ttl, max_bytes, track
        self.scopes: dict[int, Scope] = {}
        # Called (once per scope until it is dropped) before a window first reads it.
        self.loader = loader
        self._loaded: set[int] = set()
        self.stats = StoreStats()
        self._per_key = 200.0  # bytes per key, re-estimated by maintain()

    # ---- what window functions call ---------------------------------------------------

    def ensure(self, scopes: Iterable[int]) -> None:
        """Load (restore) each scope not loaded since it was last dropped."""
        if self.loader is None:
            return
        for sc in set(scopes) - self._loaded:
            self.loader(sc)
            self._loaded.add(sc)

    def scope(self, sc: int) -> Scope:
        s = self.scopes.get(sc)
        if s is None:
            s = self.scopes[sc] = Scope(dirty=set() if self.track else None)
        return s

    def table(self, sc: int, sig: str) -> OrderedDict[str, Any]:
        tables = self.scope(sc).tables
        t = tables.get(sig)
        if t is None:
            t = tables[sig] = OrderedDict()
        return t

    def dirty_set(self, sc: int) -> set[tuple[str, str]] | None:
        return self.scope(sc).dirty

    # ---- bounds -----------------------------------------------------------------------

    @property
    def entities(self) -> int:
        """State keys held, over every scope and window."""
        return sum(len(t) for s in self.scopes.values() for t in s.tables.values())

    def bytes(self) -> int:
        """Estimated bytes held: keys times the sampled size of a key's state."""
        return int(self.entities * self._per_key)

    def maintain(self) -> None:
        """Evict keys past their TTL, then the least recently updated beyond the cap."""
        self._estimate()
        for s in self.scopes.values():
            horizon = s.watermark - self.ttl
            for sig, table in s.tables.items():
                while table:
                    key, st = next(iter(table.items()))
                    if st.last >= horizon:
                        break
                    self._evict(s, sig, table, key)
                    self.stats.evicted_ttl += 1
        cap = max(1, int(self.max_bytes / self._per_key))
        over = self.entities - cap
        if over <= 0:
            return
        # Evict the oldest keys of the largest tables first, proportionally.
        tables = [(s, sig, t) for s in self.scopes.values() for sig, t in s.tables.items() if t]
        total = sum(len(t) for _, _, t in tables)
        for s, sig, table in tables:
            k = min(len(table), math.ceil(over * len(table) / total))
            for _ in range(k):
                key = next(iter(table))
                self._evict(s, sig, table, key)
                self.stats.evicted_cap += 1

    def _evict(self, s: Scope, sig: str, table: OrderedDict[str, Any], key: str) -> None:
        del table[key]
        if s.dirty is not None:
            s.dirty.discard((sig, key))
            s.gone.add((sig, key))

    def _estimate(self) -> None:
        sizes = []
        for s in self.scopes.values():
            for table in s.tables.values():
                for key in list(table)[-_SAMPLE:]:
                    sizes.append(_sizeof(key, table[key]))
                if len(sizes) >= _SAMPLE:
                    break
        if sizes:
            self._per_key = max(64.0, sum(sizes) / len(sizes))

    # ---- changes and restore (the changelog's side) ----------------------------------

    def take_changes(
        self, sc: int
    ) -> tuple[dict[tuple[str, str], list[Any]], set[tuple[str, str]]]:
        """(changed key -> dumped state, evicted keys) of scope ``sc`` since the last call."""
        s = self.scopes.get(sc)
        if s is None or s.dirty is None:
            return {}, set()
        changed = {}
        for sig, key in s.dirty:
            st = s.tables.get(sig, {}).get(key)
            if st is not None:
                changed[(sig, key)] = dump_state(st)
        gone = s.gone - set(changed)
        s.dirty, s.gone = set(), set()
        return changed, gone

    def restore(
        self, sc: int, items: Sequence[tuple[str, str, list[Any]]], watermark: float
    ) -> None:
        """Replace scope ``sc`` by the given (signature, key, dumped state) items."""
        s = self.scopes[sc] = Scope(dirty=set() if self.track else None, watermark=watermark)
        # Restored in least-recently-updated order, so LRU eviction still picks the oldest.
        for sig, key, dumped in sorted(items, key=lambda it: _last(it[2])):
            st = load_state(dumped)
            s.tables.setdefault(sig, OrderedDict())[key] = st

    def drop(self, sc: int) -> None:
        """Forget scope ``sc`` (its partition was revoked or its batch failed)."""
        self.scopes.pop(sc, None)
        self._loaded.discard(sc)


def _last(dumped: list[Any]) -> float:
    body = dumped[1]
    return float(body[0])


def _sizeof(key: str, st: Any) -> int:
    n = sys.getsizeof(key) + sys.getsizeof(st) + 120  # dict slots of the key in its table
    for name in st.__slots__:
        v = getattr(st, name)
        n += sys.getsizeof(v)
        if isinstance(v, (list, tuple)) or type(v).__name__ == "deque":
            n += 24 * len(v)
        elif isinstance(v, dict):
            n += 60 * len(v)
        elif hasattr(v, "__slots__"):
            n += _sizeof("", v)
    return n


# ---- one compute call's inputs -----------------------------------------------------------


class WindowRun:
    """Event times, late flags, scope and state key prefix per row for one compute call."""

    def __init__(
        self,
        source: ColumnSource,
        time_field: str,
        store: WindowStore,
        *,
        scopes: np.ndarray | None = None,
        tenants: Sequence[Any] | None = None,
        dry: bool = False,
    ) -> None:
        n = source.n
        self.store, self.dry, self.n = store, dry, n
        times, codes = event_times(source, time_field)
        self.time_codes = codes if codes.any() else None
        self.times_list: list[float] = times.tolist()
        self.scope_list: list[int] = [0] * n if scopes is None else np.asarray(scopes).tolist()
        store.ensure(self.scope_list)
        self._prefix: list[str] = (
            [""] * n if tenants is None else [f"{t}{SEP}" for t in tenants]
        )
        self._keys: dict[tuple[str, ...], tuple[list[Any], np.ndarray | None]] = {}
        self.late_list = self._late(codes)
        self.late = sum(self.late_list)
        if not dry:
            store.stats.late += self.late

    def _late(self, codes: np.ndarray) -> list[bool]:
        """Rows older than their scope's newest event by more than the lateness; advances it."""
        late = [False] * self.n
        lateness = self.store.lateness
        times, scopes, bad = self.times_list, self.scope_list, codes.tolist()
        marks: dict[int, float] = {}
        for i in range(self.n):
            if bad[i]:
                continue
            sc = scopes[i]
            wm = marks.get(sc)
            if wm is None:
                wm = self.store.scope(sc).watermark
            t = times[i]
            if t < wm - lateness:
                late[i] = True
            elif t > wm:
                wm = t
            marks[sc] = wm
        if not self.dry:
            for sc, wm in marks.items():
                self.store.scope(sc).watermark = wm
        return late

    def keys(self, ctx: Any, by: tuple[str, ...]) -> tuple[list[Any], np.ndarray | None]:
        """State keys (tenant, then the key fields joined by ">") and the key's reason codes."""
        got = self._keys.get(by)
        if got is not None:
            return got
        cats = [ctx.strings(p) for p in by]
        parts = [c.values.tolist() for c in cats]
        codes = None
        for c in cats:
            if c.codes is not None:
                codes = c.codes if codes is None else np.maximum(codes, c.codes)
        if len(parts) == 1:
            keys = [f"{p}{a}" for p, a in zip(self._prefix, parts[0], strict=True)]
        else:
            keys = [
                f"{p}{a}>{b}" for p, a, b in zip(self._prefix, parts[0], parts[1], strict=True)
            ]
        got = self._keys[by] = (keys, codes)
        return got


def event_times(source: ColumnSource, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Seconds since the epoch per row and codes: ``BAD_TIMESTAMP`` where missing or unreadable."""
    from stream.sources.timestamps import epoch_seconds  # sources imports features: late

    values, codes = source.numeric(path)
    times = values.copy()
    out = np.zeros(source.n, dtype=np.uint8)
    bad = np.flatnonzero(codes != OK)
    if len(bad):
        texts, _ = source.strings(path)
        for i in bad.tolist():
            t = epoch_seconds(texts[i]) if texts[i] is not None else None
            if t is None:
                out[i] = BAD_TIMESTAMP
                times[i] = math.nan
            else:
                times[i] = t
    return times, out
