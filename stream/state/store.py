"""Window state: per-entity state of every window, bounded, with change tracking.

A :class:`WindowStore` holds the state of every window function, per *scope*
(in the stream a scope is one input partition, so a partition's state moves
with it on a rebalance; offline and in training there is one scope, 0), per
window signature, per state key (tenant and entity). Its layout is made for
batches: the keys of one ``by`` (``src_ip``, ``src_ip>dst_ip``, ...) are
numbered once per batch in a :class:`SlotTable` shared by every window keyed
that way, and each window's state lives in a kernel (``_wincore.Kernel``, in C
arrays indexed by slot; :class:`~stream.features.windows.PyKernel` without a
compiler) that evaluates the whole batch in one call. The store is bounded twice:

* an entity TTL: a key whose newest event is older than its tenant's newest
  event in the scope by more than ``ttl`` seconds (or the longest window on its
  ``by``, when that is longer) has expired: the kernels treat
  it as absent from then on (whether or not it was evicted yet, so when eviction
  runs never changes a value), and the next pass drops it;
* a memory cap: beyond ``max_bytes`` (see :meth:`WindowStore.bytes`: the
  kernels' own allocations, counted, and the key strings and index, estimated)
  the least recently updated keys are evicted first, and a table most of whose
  slots are free is compacted, so a burst of keys gives its memory back.

Both count as evictions. Event time is kept per *clock* (:class:`Clocks`: one
per scope and tenant), so lateness and the TTL of one tenant's keys depend on
that tenant's events only: a tenant never makes another's events late, nor its
keys expire. (The memory cap is the one bound shared by every tenant of a
process: under it the least recently updated keys go, whoever owns them.)
With ``track=True`` the store remembers which keys
changed since :meth:`take_changes` (the changelog writes them with each
commit, one record per key and ``by`` holding every window on it, in the
binary form of :mod:`stream.state.codec`; evicted keys as tombstones).

:class:`WindowRun` is what one :meth:`FeatureSpec.compute` call hands the
window functions: event times, late flags, which rows update the state, and
each row's slot per ``by``.
"""

from __future__ import annotations

import builtins
import logging
import math
import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import orjson

from stream.ingest.timestamps import epoch_seconds
from stream.outcomes.reasons import BAD_TIMESTAMP, OK
from stream.state import codec as state_codec
from stream.state.keys import SEP, key_hash, key_text

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from stream.features.columns import ColumnSource

try:
    from stream.state import _wincore
except ImportError:  # built without a C compiler: the Python forms below
    _wincore = None  # type: ignore[assignment]

#: Defaults: a minute's out-of-order tolerance is Zeek's habit; an hour covers every recipe window.
DEFAULT_LATENESS_S: Final = 5.0
DEFAULT_TTL_S: Final = 3600.0
DEFAULT_MAX_BYTES: Final = 256 * 2**20


@dataclass
class Scope:
    """One scope (an input partition): its keys evicted since take_changes, and its notes."""

    gone: set[tuple[str, str]] = field(default_factory=set)
    #: Notes: small records other stages keep per key beside the windows (an entity's
    #: risk episode): JSON-able objects, written to the changelog as JSON and restored
    #: with the windows. Their owner changes them in place and says so (``set_note``): a
    #: failed batch drops the scope, which is restored from the changelog.
    notes: OrderedDict[str, Any] = field(default_factory=OrderedDict)
    noted: set[str] = field(default_factory=set)  # notes changed since take_changes


#: The table name notes travel under in the changelog (no field name starts with NUL).
NOTES: Final = "\x00notes"
#: Notes kept per scope; beyond, the least recently set are removed.
MAX_NOTES: Final = 100_000


class Clocks:
    """Event-time clocks: the newest event time of each tenant in each scope.

    A row is late when it is older than its own clock by more than the lateness,
    and a key expires when it is older than its own clock by more than the TTL:
    neither reads another tenant's events. Clocks are numbered (``ids_for``) so a
    batch's rows index one float array (``marks``); the numbers of a dropped scope
    are reused. ``moved`` holds the clocks advanced since the changelog last took
    them (``take``).
    """

    def __init__(self) -> None:
        self.ids: dict[tuple[int, str], int] = {}
        self.marks = np.full(64, -math.inf)
        self.owner: list[tuple[int, str] | None] = []  # clock id -> (scope, tenant)
        self.free: list[int] = []
        # Scope -> the mark a tenant's clock starts from when none was restored for it
        # (a changelog of the earlier form kept one clock per partition).
        self.base: dict[int, float] = {}
        self.moved: set[int] = set()

    def id(self, sc: int, tenant: str) -> int:
        got = self.ids.get((sc, tenant))
        if got is not None:
            return got
        if self.free:
            i = self.free.pop()
            self.owner[i] = (sc, tenant)
        else:
            i = len(self.owner)
            self.owner.append((sc, tenant))
            if i >= len(self.marks):
                grown = np.full(2 * len(self.marks), -math.inf)
                grown[: len(self.marks)] = self.marks
                self.marks = grown
        self.marks[i] = self.base.get(sc, -math.inf)
        self.ids[(sc, tenant)] = i
        return i

    def ids_for(self, scopes: list[int], tenants: Sequence[Any] | None) -> np.ndarray:
        """The clock of each row (tenant None: one clock per scope, its tenant '')."""
        if tenants is None:
            ids = {sc: self.id(sc, "") for sc in set(scopes)}
            return np.fromiter(map(ids.__getitem__, scopes), dtype=np.int64, count=len(scopes))
        pairs = list(zip(scopes, map(str, tenants), strict=True))
        by_pair = {pair: self.id(*pair) for pair in set(pairs)}
        return np.fromiter(map(by_pair.__getitem__, pairs), dtype=np.int64, count=len(pairs))

    def of_scope(self, sc: int) -> dict[str, float]:
        """Tenant -> newest event time, for scope ``sc``."""
        return {t: float(self.marks[i]) for (s, t), i in self.ids.items() if s == sc}

    def take(self, sc: int) -> dict[str, float]:
        """The clocks of scope ``sc`` that moved since the last take (tenant -> mark)."""
        out: dict[str, float] = {}
        for i in list(self.moved):
            owner = self.owner[i]
            if owner is None:
                self.moved.discard(i)
            elif owner[0] == sc:
                out[owner[1]] = float(self.marks[i])
                self.moved.discard(i)
        return out

    def set(self, sc: int, marks: Mapping[str, float], base: float) -> None:
        """Scope ``sc``'s clocks as restored (after ``clear``)."""
        self.base[sc] = base
        for tenant, mark in marks.items():
            self.marks[self.id(sc, tenant)] = mark

    def clear(self, sc: int) -> None:
        for key in [k for k in self.ids if k[0] == sc]:
            i = self.ids.pop(key)
            self.owner[i] = None
            self.moved.discard(i)
            self.free.append(i)
        self.base.pop(sc, None)

    def nbytes(self) -> int:
        # A dict entry with its tuple key and text, and a list entry, per clock.
        return int(self.marks.nbytes + 8 * len(self.owner) + 160 * len(self.ids))


@dataclass
class StoreStats:
    """Counters the metrics read: late events and evictions (TTL and memory cap)."""

    late: int = 0
    evicted_ttl: int = 0
    evicted_cap: int = 0
    #: Restored states that did not fit their window (a changelog record from another
    #: build, or tampered with): the key starts afresh.
    unfit: int = 0


#: Between a scope number and its state key in a slot table's index (never in sensor text).
_SCOPE_SEP: Final = "\x1e"


class SlotTable:
    """The state keys of one ``by`` (over every scope), numbered: slots.

    Every window keyed the same way shares the table, so a batch looks each key
    up once, not once per window; each window's kernel keeps its state in arrays
    indexed by slot. Keys are found by the 64-bit hash of their text
    (``_wincore.KeyIndex``: SipHash with a per-process secret, computed from the key's
    parts, ``stream.state.keys``; the text is built only for a new key, which the
    changelog names). Per slot: its key text, hash,
    scope and clock, its newest event time (the TTL reads it), when it was last updated
    (``touch``: LRU eviction reads it) and, when the store tracks changes,
    whether it changed since the last take.
    """

    def __init__(self, by: tuple[str, ...], track: bool, ttl: float = DEFAULT_TTL_S) -> None:
        self.name = ">".join(by)  # what the changelog calls it
        # Event time a key may go without an event: the store's TTL, or the longest window
        # on the table (a day-long ``since`` must not forget a key after an hour).
        self.ttl = ttl
        self.index: Any = _KeyIndex()  # key hash -> slot
        self.keys: list[str | None] = []  # slot -> "<scope>\x1e<tenant>\x1f<key>" (None: free)
        self.free: list[int] = []
        self.kernels: list[tuple[str, Any]] = []  # (signature, kernel) of each window on it
        self.track = track
        # Bytes of the key texts held, counted as they come and go (a sample of the last
        # few would let long keys hide behind short ones from the memory cap).
        self.key_bytes = 0
        self._no_slots()

    def _no_slots(self) -> None:
        """The per-slot arrays, empty (``_grow`` sizes them)."""
        self.hash_of = np.zeros(0, dtype=np.uint64)
        self.scope_of = np.zeros(0, dtype=np.int64)
        self.clock_of = np.zeros(0, dtype=np.int64)
        self.newest = np.zeros(0, dtype=np.float64)
        self.touch = np.zeros(0, dtype=np.int64)
        self.inuse = np.zeros(0, dtype=np.uint8)
        self.dirty = np.zeros(0, dtype=np.uint8)

    @property
    def used(self) -> int:
        return int(self.index.used)

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return (self.hash_of, self.scope_of, self.clock_of, self.newest, self.touch, self.inuse,
                self.dirty)

    def _alloc_many(self, ikeys: list[str], hashes: np.ndarray, scopes: np.ndarray,
                    clocks: np.ndarray) -> np.ndarray:
        """Slots for new keys (freed slots first): marked in use, in their scope and clock,
        unseen."""
        m = len(ikeys)
        reuse = min(m, len(self.free))
        taken = [self.free.pop() for _ in range(reuse)]
        start = len(self.keys)
        if m > reuse:
            self.keys.extend([None] * (m - reuse))
            if len(self.keys) > len(self.newest):
                self._grow(len(self.keys))
        slots = np.array(taken + list(range(start, start + m - reuse)), dtype=np.int64)
        keys = self.keys
        for slot, k in zip(slots.tolist(), ikeys, strict=True):
            keys[slot] = k
        self.key_bytes += sum(map(sys.getsizeof, ikeys))
        self.index.insert(hashes, slots)
        self.hash_of[slots] = hashes
        self.scope_of[slots] = scopes
        self.clock_of[slots] = clocks
        self.newest[slots] = -math.inf
        self.inuse[slots] = 1
        return slots

    def key(self, slot: int) -> str:
        """The state key (tenant and entity) of a slot, as the changelog names it."""
        return self.keys[slot].partition(_SCOPE_SEP)[2]  # type: ignore[union-attr]

    def _grow(self, need: int) -> None:
        cap = max(64, need + need // 4)  # not doubling: the arrays count against the cap
        old = len(self.newest)

        def grown(a: np.ndarray, fill: Any) -> np.ndarray:
            b = np.full(cap, fill, dtype=a.dtype)
            b[:old] = a
            return b

        self.hash_of = grown(self.hash_of, 0)
        self.scope_of = grown(self.scope_of, 0)
        self.clock_of = grown(self.clock_of, 0)
        self.newest = grown(self.newest, -math.inf)
        self.touch = grown(self.touch, 0)
        self.inuse = grown(self.inuse, 0)
        self.dirty = grown(self.dirty, 0) if self.track else self.dirty

    def slots(self, prefix: str | list[str], parts: list[list[Any]], bad: np.ndarray,
              scopes: np.ndarray, clocks: np.ndarray) -> np.ndarray:
        """The slot of each row's key (allocated when new); -1 where ``bad``.

        A row's key text is its prefix then its parts, escaped, joined by ``>``
        (``keys.key_text``).
        """
        n = len(parts[0])
        out = np.empty(n, dtype=np.int32)
        hashes = np.empty(n, dtype=np.uint64)
        a = parts[0]
        b = parts[1] if len(parts) > 1 else None
        misses = self.index.find(prefix, a, b, bad, out, hashes)
        if misses:
            hs = hashes[misses].tolist()
            first: dict[int, int] = {}  # each new key's hash and the first row that has it
            for h, i in zip(hs, misses, strict=True):
                first.setdefault(h, i)
            rows = list(first.values())
            pre = [prefix] * len(rows) if isinstance(prefix, str) else [prefix[i] for i in rows]
            if b is None:
                texts = [key_text(p, a[i]) for p, i in zip(pre, rows, strict=True)]
            else:
                texts = [key_text(p, a[i], b[i], True) for p, i in zip(pre, rows, strict=True)]
            new = self._alloc_many(texts, np.array(list(first), dtype=np.uint64),
                                   scopes[rows], clocks[rows])
            slot_of = dict(zip(first, new.tolist(), strict=True))
            out[misses] = [slot_of[h] for h in hs]
        return out

    def slot_of(self, sc: int, key: str, clock: int = -1) -> int:
        """The slot of a state key of scope ``sc``; allocated on clock ``clock`` when new
        (-1: not allocated, -1 returned)."""
        ikey = f"{sc}{_SCOPE_SEP}{key}"
        h = key_hash(ikey)
        slot = int(self.index.get(h))
        if slot < 0 and clock >= 0:
            slot = int(self._alloc_many([ikey], np.array([h], dtype=np.uint64),
                                        np.array([sc], dtype=np.int64),
                                        np.array([clock], dtype=np.int64))[0])
        return slot

    def release(self, slots: np.ndarray) -> None:
        """Forget these slots (every kernel on the table has cleared them)."""
        self.index.remove(np.ascontiguousarray(self.hash_of[slots]))
        keys, free = self.keys, self.free
        for slot in slots.tolist():
            k = keys[slot]
            if k is not None:
                self.key_bytes -= sys.getsizeof(k)
            keys[slot] = None
            free.append(slot)
        self.inuse[slots] = 0
        self.newest[slots] = -math.inf
        if self.track:
            self.dirty[slots] = 0

    def compact(self) -> None:
        """Renumber the slots in use from 0 and shrink every array to fit (and the index)."""
        n = len(self.keys)
        keep = np.ascontiguousarray(np.flatnonzero(self.inuse[:n]), dtype=np.int64)
        for _sig, kernel in self.kernels:
            kernel.compact(keep)
        keys = self.keys
        self.keys = [keys[i] for i in keep.tolist()]
        old = self._arrays()
        self._no_slots()
        m = len(keep)
        self._grow(m)
        for new, was in zip(self._arrays(), old, strict=True):
            if len(new):
                new[:m] = was[keep]
        self.free = []
        self.index = _KeyIndex()
        self.index.insert(np.ascontiguousarray(self.hash_of[:m]), np.arange(m, dtype=np.int64))

    def encode(self, slots: np.ndarray) -> list[bytes | None]:
        """The changelog value of each slot: every window state on it."""
        return state_codec.encode([k for _s, k in self.kernels], [s for s, _k in self.kernels],
                                  slots, self.newest[slots])

    def fixed_bytes(self) -> int:
        """The part of the bytes that freeing slots keeps: arrays, the index's table."""
        arrays = sum(a.nbytes for a in self._arrays())
        kernels = sum(k.nbytes() - k.variable_bytes() for _s, k in self.kernels)
        return kernels + arrays + self.index.nbytes() + 8 * len(self.keys)

    @property
    def sparse(self) -> bool:
        """Whether most of the allocated slots are free (compacting would pay)."""
        return len(self.newest) > 1024 and 2 * self.used < len(self.newest)

    def in_scope(self, sc: int) -> np.ndarray:
        n = len(self.keys)
        return np.flatnonzero(self.inuse[:n].astype(bool) & (self.scope_of[:n] == sc))

    def nbytes(self) -> int:
        """Bytes of the index, the key texts (each counted) and the per-slot arrays."""
        arrays = sum(a.nbytes for a in self._arrays())
        return int(self.index.nbytes() + 8 * len(self.keys) + self.key_bytes + arrays)


class PyKeyIndex:
    """``_wincore.KeyIndex`` in Python (a dict of key hashes): the same slots, slower."""

    def __init__(self) -> None:
        self.map: dict[int, int] = {}

    @property
    def used(self) -> int:
        return len(self.map)

    def insert(self, hashes: np.ndarray, slots: np.ndarray) -> None:
        self.map.update(zip(hashes.tolist(), slots.tolist(), strict=True))

    def remove(self, hashes: np.ndarray) -> None:
        for h in hashes.tolist():
            self.map.pop(h, None)

    def get(self, h: int) -> int:
        return self.map.get(int(h), -1)

    def nbytes(self) -> int:
        return sys.getsizeof(self.map) + 64 * len(self.map)

    def find(self, prefix: str | list[str], a: list[Any], b: list[Any] | None, bad: np.ndarray,
             out: np.ndarray, hashes: np.ndarray) -> list[int]:
        misses = []
        badl = bad.tolist()
        for i in range(len(a)):
            if badl[i]:
                out[i] = -1
                hashes[i] = 0
                continue
            p = prefix if isinstance(prefix, str) else prefix[i]
            h = key_hash(key_text(p, a[i], None if b is None else b[i], b is not None))
            hashes[i] = h
            out[i] = self.map.get(h, -1)
            if out[i] < 0:
                misses.append(i)
        return misses


class WindowStore:
    """State of every window function, per scope; see the module docstring."""

    def __init__(
        self,
        *,
        lateness: float = DEFAULT_LATENESS_S,
        ttl: float = DEFAULT_TTL_S,
        max_bytes: int = DEFAULT_MAX_BYTES,
        track: bool = False,
    ) -> None:
        self.lateness, self.ttl, self.max_bytes, self.track = lateness, ttl, max_bytes, track
        self.scopes: dict[int, Scope] = {}
        self.clocks = Clocks()
        self.tables: dict[tuple[str, ...], SlotTable] = {}
        self.kernels: dict[str, tuple[Any, SlotTable]] = {}
        # Restored states of windows no spec has evaluated yet: loaded when one does.
        self.pending: dict[str, list[tuple[int, str, Any, float]]] = {}
        self.stats = StoreStats()
        self.seq = 0  # update sequence: a slot's touch is the seq of its last update
        self._ttl_mark = np.zeros(0)  # the clocks' marks at the last TTL pass

    # ---- what window functions call ---------------------------------------------------

    def scope(self, sc: int) -> Scope:
        s = self.scopes.get(sc)
        if s is None:
            s = self.scopes[sc] = Scope()
        return s

    def table(self, by: tuple[str, ...]) -> SlotTable:
        t = self.tables.get(by)
        if t is None:
            t = self.tables[by] = SlotTable(by, self.track, self.ttl)
        return t

    def kernel(
        self, sig: str, by: tuple[str, ...], make: Callable[[], Any]
    ) -> tuple[Any, SlotTable]:
        """The kernel holding window ``sig``'s state (made, and restored states loaded, once)."""
        got = self.kernels.get(sig)
        if got is None:
            table = self.table(by)
            got = self.kernels[sig] = (make(), table)
            table.kernels.append((sig, got[0]))
            table.ttl = max(table.ttl, float(got[0].span))
            for sc, key, state, t in self.pending.pop(sig, ()):
                self._load(got[0], table, sc, key, state, t, sig)
        return got

    def _load(self, kernel: Any, table: SlotTable, sc: int, key: str, state: Any,
              t: float, sig: str) -> None:
        """One restored state: (value, offset, length) in the binary form, or a JSON list."""
        # The key's tenant is its text before the separator ('' for keys without one).
        tenant = key.partition(SEP)[0] if SEP in key else ""
        slot = table.slot_of(sc, key, self.clocks.id(sc, tenant))
        if isinstance(state, tuple):
            try:
                kernel.load_raw(slot, *state)
            except ValueError as e:
                # Never a crash, for every tenant, over one record: that key starts afresh.
                self.stats.unfit += 1
                log.warning("window state of %r in %s not restored (%s): the key starts "
                            "afresh", key, sig, e)
                return
        else:
            kernel.load(slot, state)
            # Migrated: the next commit writes the key in the binary form and a tombstone
            # for its record of the earlier form (keyed by the window's signature), which
            # would otherwise stay in the compacted topic and be restored at every start.
            if self.track:
                table.dirty[slot] = 1
                self.scopes[sc].gone.add((sig, key))
        table.newest[slot] = max(table.newest[slot], t)
        self.seq += 1
        table.touch[slot] = self.seq

    # ---- bounds -----------------------------------------------------------------------

    @property
    def entities(self) -> int:
        """States held (one per window and key), over every scope."""
        return sum(k.live for k, _t in self.kernels.values())

    def entities_in(self, sc: int) -> int:
        """States held in scope ``sc``."""
        n = 0
        for table in self.tables.values():
            slots = table.in_scope(sc).tolist()
            n += sum(k.is_live(i) for _sig, k in table.kernels for i in slots)
        return n

    def live(self, sig: str) -> int:
        """Keys holding state for window ``sig``."""
        got = self.kernels.get(sig)
        return 0 if got is None else got[0].live

    def holds(self, sc: int, sig: str, key: str) -> bool:
        """Whether window ``sig`` holds state for ``key`` in scope ``sc``."""
        got = self.kernels.get(sig)
        if got is None:
            return False
        slot = got[1].slot_of(sc, key)
        return slot >= 0 and got[0].is_live(slot)

    def bytes(self) -> int:
        """Bytes held: every kernel's arrays and event buffers, the slot tables, the clocks."""
        return sum(k.nbytes() for k, _t in self.kernels.values()) + sum(
            t.nbytes() for t in self.tables.values()
        ) + self.clocks.nbytes()

    def maintain(self) -> None:
        """Evict keys past their TTL, then the least recently updated beyond the cap.

        The TTL pass reads every slot, so it runs once some clock has moved on by a
        64th of the TTL since the last one (an expired key is treated as absent until
        then, so when it goes changes nothing but memory).
        """
        marks = self.clocks.marks
        last = self._ttl_mark
        if len(last) != len(marks) or np.any(marks >= last + self.ttl / 64):
            self._ttl_mark = marks.copy()
            self._expire()
        self._compact(only_sparse=True)
        for _ in range(8):
            total = self.bytes()
            used_slots = sum(t.used for t in self.tables.values())
            if total <= self.max_bytes or not used_slots:
                return
            # What evicting a key frees: its strings, its index entry and its states' events.
            # The per-slot arrays stay for reuse, unless they hold most of the cap (a burst
            # of keys): then the tables are compacted, and the arrays shrink with the keys.
            fixed = sum(t.fixed_bytes() for t in self.tables.values())
            burst = fixed > self.max_bytes / 2
            per_slot = (total if burst else max(1, total - fixed)) / used_slots
            # 2% more than the estimate: a second pass over every slot costs more than that.
            over = min(used_slots, math.ceil(1.02 * (total - self.max_bytes) / per_slot) + 1)
            # The oldest slots of each table, proportionally to its size.
            for table in self.tables.values():
                if not table.used:
                    continue
                k = min(table.used, math.ceil(over * table.used / used_slots))
                used = np.flatnonzero(table.inuse[: len(table.keys)])
                oldest = used[np.argpartition(table.touch[used], k - 1)[:k]] \
                    if k < len(used) else used
                self.stats.evicted_cap += self._evict(table, oldest)
            self._compact(only_sparse=not burst)

    def _expire(self) -> None:
        marks = self.clocks.marks
        for table in self.tables.values():
            used = np.flatnonzero(table.inuse[: len(table.keys)])
            if not len(used):
                continue
            # Each key against its own clock (its tenant in its scope).
            old = used[table.newest[used] < marks[table.clock_of[used]] - table.ttl]
            if len(old):
                self.stats.evicted_ttl += self._evict(table, old)

    def _compact(self, only_sparse: bool) -> None:
        for table in self.tables.values():
            if table.sparse or not only_sparse:
                table.compact()

    def _evict(self, table: SlotTable, slots: np.ndarray) -> int:
        """Drop these slots' states, remembering them as gone; how many states went."""
        slots = np.ascontiguousarray(slots, dtype=np.int64)
        if self.track:
            for slot in slots.tolist():
                if any(k.is_live(slot) for _sig, k in table.kernels):
                    self.scope(int(table.scope_of[slot])).gone.add((table.name, table.key(slot)))
        gone = sum(kernel.clear(slots) for _sig, kernel in table.kernels)
        table.release(slots)
        return gone

    # ---- changes and restore (the changelog's side) ----------------------------------

    def note(self, sc: int, key: str) -> Any:
        """Scope ``sc``'s note under ``key`` (None: none)."""
        s = self.scopes.get(sc)
        return None if s is None else s.notes.get(key)

    def set_note(self, sc: int, key: str, value: Any) -> None:
        """Set (None: remove) a note; the next :meth:`take_changes` writes it."""
        s = self.scope(sc)
        if value is None:
            if s.notes.pop(key, None) is not None:
                s.gone.add((NOTES, key))
            s.noted.discard(key)
            return
        s.notes[key] = value
        s.notes.move_to_end(key)  # least recently set first
        s.noted.add(key)
        s.gone.discard((NOTES, key))
        while len(s.notes) > MAX_NOTES:
            old, _v = s.notes.popitem(last=False)
            s.noted.discard(old)
            s.gone.add((NOTES, old))

    def notes_of(self, sc: int) -> Mapping[str, Any]:
        s = self.scopes.get(sc)
        return {} if s is None else s.notes

    def take_changes(
        self, sc: int
    ) -> tuple[dict[tuple[str, str], builtins.bytes], set[tuple[str, str]]]:
        """Scope ``sc``'s changes since the last call: (table, key) -> value, and keys gone.

        A value holds every window state of one key of one slot table (``by``), in
        the binary form of :mod:`stream.state.codec`; the table is named
        by its key fields (``src_ip``, ``src_ip>dst_ip``).
        """
        s = self.scopes.get(sc)
        if s is None or not self.track:
            return {}, set()
        changed: dict[tuple[str, str], builtins.bytes] = {}
        for table in self.tables.values():
            n = len(table.keys)
            slots = np.flatnonzero(table.dirty[:n].astype(bool) & (table.scope_of[:n] == sc))
            if not len(slots):
                continue
            changed.update(
                ((table.name, table.key(slot)), value)
                for slot, value in zip(slots.tolist(), table.encode(slots), strict=True)
                if value is not None
            )
            table.dirty[slots] = 0
        changed.update(((NOTES, k), orjson.dumps(s.notes[k])) for k in s.noted if k in s.notes)
        s.noted = set()
        gone = s.gone - set(changed)
        s.gone = set()
        return changed, gone

    def snapshot(self, sc: int) -> dict[tuple[str, str], builtins.bytes]:
        """Every state of scope ``sc``, as :meth:`take_changes` writes them."""
        out: dict[tuple[str, str], builtins.bytes] = {}
        for table in self.tables.values():
            slots = table.in_scope(sc)
            out.update(((table.name, table.key(slot)), value)
                       for slot, value in zip(slots.tolist(), table.encode(slots), strict=True)
                       if value is not None)
        out.update(((NOTES, k), orjson.dumps(v)) for k, v in self.notes_of(sc).items())
        return out

    def restore(
        self, sc: int, items: Sequence[tuple[str, str, Any]],
        marks: Mapping[str, float] | float, base: float = -math.inf,
    ) -> None:
        """Replace scope ``sc`` by the given (table, key, value) items and clocks.

        A value is what :meth:`take_changes` wrote (bytes), or the earlier form: one
        window's state as a JSON list, with the window's signature for the table.
        ``marks``: each tenant's clock (:meth:`Clocks.of_scope`); a number is the
        earlier form's one clock per scope, where every tenant's clock starts (as
        ``base`` does for tenants ``marks`` does not name).
        """
        self._clear(sc)
        if not isinstance(marks, Mapping):
            base = float(marks)
            marks = {}
        self.scopes[sc] = Scope()
        self.clocks.set(sc, marks, base)
        loads: list[tuple[float, str, str, Any]] = []
        notes = self.scopes[sc].notes
        for name, key, value in items:
            if name == NOTES:
                notes[key] = orjson.loads(value)
            elif state_codec.is_blob(value):
                t, states = state_codec.split(value)
                loads.extend((t, sig, key, (value, off, size)) for sig, off, size in states)
            else:
                loads.append((_last(value), name, key, value))
        # Restored in least-recently-updated order, so LRU eviction still picks the oldest.
        loads.sort(key=lambda it: it[0])
        for t, sig, key, state in loads:
            got = self.kernels.get(sig)
            if got is None:
                self.pending.setdefault(sig, []).append((sc, key, state, t))
            else:
                self._load(got[0], got[1], sc, key, state, t, sig)

    def drop(self, sc: int) -> None:
        """Forget scope ``sc`` (its partition was revoked or its batch failed)."""
        self._clear(sc)

    def _clear(self, sc: int) -> None:
        for table in self.tables.values():
            slots = np.ascontiguousarray(table.in_scope(sc), dtype=np.int64)
            if len(slots):
                for _sig, kernel in table.kernels:
                    kernel.clear(slots)
                table.release(slots)
        for sig, items in list(self.pending.items()):
            kept = [it for it in items if it[0] != sc]
            if kept:
                self.pending[sig] = kept
            else:
                del self.pending[sig]
        self.scopes.pop(sc, None)
        self.clocks.clear(sc)


def _last(dumped: list[Any]) -> float:
    body = dumped[1]
    t = body[0]
    return -math.inf if t is None else float(t)


def _late_py(times: np.ndarray, bad: np.ndarray, scope: np.ndarray, marks: np.ndarray,
             lateness: float, late: np.ndarray, clock: np.ndarray) -> None:
    ts, badl, sl = times.tolist(), bad.tolist(), scope.tolist()
    for i in range(len(ts)):
        late[i] = 0
        if badl[i]:
            clock[i] = -math.inf
            continue
        wm = marks[sl[i]]
        t = ts[i]
        if t < wm - lateness:
            late[i] = 1
        elif t > wm:
            marks[sl[i]] = wm = t
        clock[i] = wm


if _wincore is not None:
    _KeyIndex, _late_rows = _wincore.KeyIndex, _wincore.late_rows
else:
    _KeyIndex, _late_rows = PyKeyIndex, _late_py


# ---- one compute call's inputs -----------------------------------------------------------


class WindowRun:
    """Event times, late flags, clocks and state key prefix per row for one compute call."""

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
        self._bad_time = codes
        self.times = np.ascontiguousarray(times, dtype=np.float64)
        self.scope_array = (np.zeros(n, dtype=np.int64) if scopes is None
                            else np.asarray(scopes, dtype=np.int64))
        self.scope_list: list[int] = self.scope_array.tolist()
        scope_text = {sc: f"{sc}{_SCOPE_SEP}" for sc in set(self.scope_list)}
        for sc in scope_text:
            store.scope(sc)
        if tenants is None:
            if len(scope_text) == 1:
                self._prefix: list[str] | str = next(iter(scope_text.values()))
            else:
                self._prefix = [scope_text[sc] for sc in self.scope_list]
        else:
            self._prefix = [f"{scope_text[sc]}{t}{SEP}"
                            for sc, t in zip(self.scope_list, tenants, strict=True)]
        self._slots: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray | None]] = {}
        # Each row's clock: its tenant's newest event time in its scope.
        self.clock_ids = store.clocks.ids_for(self.scope_list, tenants)
        late, clock = self._late(codes)
        self.late_rows = np.flatnonzero(late)
        self.late = len(self.late_rows)
        # Rows that update the state: on time, and not a dry run.
        self.push = np.zeros(n, dtype=np.uint8) if dry else (1 - late).astype(np.uint8)
        # Each row's clock: a key older than it by its table's TTL has expired (Kernel.run).
        self.clock = clock
        # Each row's update sequence is seq + its row: LRU order is event order.
        self.seq = store.seq + 1
        if not dry:
            store.stats.late += self.late
            store.seq += n + 1

    def _late(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows older than their clock's newest event by more than the lateness, and each
        row's clock after it; advances the clocks (unless dry)."""
        n = self.n
        late = np.zeros(n, dtype=np.uint8)
        clock = np.empty(n, dtype=np.float64)
        clocks = self.store.clocks
        marks = clocks.marks.copy() if self.dry else clocks.marks
        used = np.unique(self.clock_ids)
        before = marks[used]
        _late_rows(self.times, np.ascontiguousarray(codes, dtype=np.uint8), self.clock_ids,
                   marks, self.store.lateness, late, clock)
        if not self.dry:
            clocks.moved.update(used[marks[used] != before].tolist())
        return late, clock

    def slots(self, ctx: Any, by: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray | None]:
        """The slot of each row's state key (-1 where the key or time is unusable), and the
        key's reason codes."""
        got = self._slots.get(by)
        if got is not None:
            return got
        cats = [ctx.strings(p) for p in by]
        parts = [c.values.tolist() for c in cats]
        codes = None
        for c in cats:
            if c.codes is not None:
                codes = c.codes if codes is None else np.maximum(codes, c.codes)
        bad = self._bad_time if codes is None else np.maximum(self._bad_time, codes)
        slots = self.store.table(by).slots(self._prefix, parts,
                                           np.ascontiguousarray(bad, dtype=np.uint8),
                                           self.scope_array, self.clock_ids)
        got = self._slots[by] = (slots, codes)
        return got


def event_times(source: ColumnSource, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Seconds since the epoch per row and codes: ``BAD_TIMESTAMP`` where missing or unreadable."""
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
