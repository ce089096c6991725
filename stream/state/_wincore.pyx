# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: cdivision=True
"""Compiled window kernels: the per-key state of one window function in C arrays.

Built by ``pip install`` from this file (Cython); :mod:`stream.features.windows`
uses it when it imports and falls back to its Python state classes when it does
not. A :class:`Kernel` holds one window function's state for every slot (a state
key, numbered by :class:`stream.state.store.SlotTable`) and evaluates a whole
batch in one call. The arithmetic per key is the Python classes' own, in the same
order (no fast-math), so both give the same floats; ``tests/unit/features/test_windows.py``
proves it on random streams. Memory comes from Python's raw allocator, so
``tracemalloc`` sees it.

``distinct`` counts 64-bit hashes of the values (FNV-1a over UTF-8, then a
finaliser): two different values count once only if their hashes collide, with
probability about k^2 / 2^65 for k values in one key's window.
"""

from cpython.mem cimport PyMem_RawCalloc as calloc
from cpython.mem cimport PyMem_RawFree as free
from cpython.mem cimport PyMem_RawMalloc as malloc
from cpython.mem cimport PyMem_RawRealloc as realloc
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.math cimport INFINITY, NAN, ceil, exp, floor, ldexp, log, sqrt
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport qsort
from libc.string cimport memcpy, memset


cdef extern from *:
    int __builtin_clzll(unsigned long long) nogil

import numpy as np

cdef enum:
    K_COUNT = 0
    K_SUM = 1
    K_MEAN = 2
    K_STD = 3
    K_DISTINCT = 4
    K_IMEAN = 5
    K_ISTD = 6
    K_SINCE = 7
    K_BEACON = 8
    K_SPREAD = 9
    K_CARD = 10
    K_REG = 11
    # Events a beacon window keeps per key (the most recent): its quartiles and medians
    # are exact over them, at a bounded cost per event.
    BEACON_N = 32
    # cardinality: exact up to CARD_EXACT distinct values per key, then CARD_PANES
    # HyperLogLogs of CARD_M one-byte registers (a quarter window each), each pane an
    # index event and CARD_M / 16 events of registers (16 bytes each): CARD_PER events.
    CARD_EXACT = 64
    CARD_M = 64
    CARD_PANES = 5
    CARD_PER = 5
    # regularity: (series, bucket) entries kept per key, and one step's extra room.
    SKETCH_CAP = 64

KINDS = {"count": K_COUNT, "sum": K_SUM, "mean": K_MEAN, "std": K_STD,
         "distinct": K_DISTINCT, "interval_mean": K_IMEAN, "interval_std": K_ISTD,
         "since": K_SINCE, "beacon": K_BEACON, "spread": K_SPREAD, "cardinality": K_CARD,
         "regularity": K_REG}


ctypedef union Val:
    double d
    uint64_t u


ctypedef struct Ev:
    double t
    Val v


ctypedef struct Ring:
    # One key's events, oldest first, in a power-of-two circular buffer.
    Ev* buf
    int32_t head
    int32_t n
    int32_t cap


ctypedef struct Entry:
    # One (slot, value hash) of a distinct window and how many events in it carry it.
    uint64_t h
    int64_t slot
    int64_t count


cdef inline uint64_t _mix(uint64_t x) nogil:
    # splitmix64's finaliser: FNV's low bits alone spread poorly over a power-of-two table.
    x ^= x >> 30
    x *= 0xBF58476D1CE4E5B9ULL
    x ^= x >> 27
    x *= 0x94D049BB133111EBULL
    x ^= x >> 31
    return x


cdef uint64_t _hash_bytes(const char* p, Py_ssize_t n) nogil:
    cdef uint64_t h = 0xCBF29CE484222325ULL
    cdef Py_ssize_t i
    for i in range(n):
        h ^= <uint8_t>p[i]
        h *= 0x100000001B3ULL
    return _mix(h)


cpdef uint64_t hash_text(object s):
    """The 64-bit hash ``distinct`` counts for one value (its text; 0 for None)."""
    cdef Py_ssize_t n
    cdef const char* p
    if s is None:
        return 0
    if not isinstance(s, str):
        s = str(s)
    p = PyUnicode_AsUTF8AndSize(s, &n)
    return _hash_bytes(p, n)


def hash_texts(list values):
    """:func:`hash_text` of every value, as a uint64 array."""
    cdef Py_ssize_t i, n = len(values)
    out = np.empty(n, dtype=np.uint64)
    cdef uint64_t[::1] o = out
    for i in range(n):
        o[i] = hash_text(values[i])
    return out


# ---- keyed hashing of state keys: SipHash-1-3 ---------------------------------------------
#
# A state key's slot is found by the hash of its text. An unkeyed hash (FNV) lets a sender
# compute texts that collide with another tenant's keys and write its window state; a
# keyed one with a secret key drawn per process (SipHash, as CPython hashes str) does not.
# Hashes are never stored (the changelog names keys by their text), so a new key per
# process costs nothing at restore.

cdef uint64_t _K0 = 0, _K1 = 0


def set_key(bytes key):
    """The 16-byte secret key of state-key hashes (``stream.state.keys`` draws it)."""
    global _K0, _K1
    if len(key) != 16:
        raise ValueError("the key is 16 bytes")
    memcpy(&_K0, <const char*>key, 8)
    memcpy(&_K1, <const char*>key + 8, 8)


ctypedef struct Sip:
    uint64_t v0, v1, v2, v3
    uint64_t tail
    uint64_t total


cdef inline uint64_t _rotl(uint64_t x, int b) noexcept nogil:
    return (x << b) | (x >> (64 - b))


cdef inline void _round(Sip* s) noexcept nogil:
    s.v0 += s.v1
    s.v1 = _rotl(s.v1, 13)
    s.v1 ^= s.v0
    s.v0 = _rotl(s.v0, 32)
    s.v2 += s.v3
    s.v3 = _rotl(s.v3, 16)
    s.v3 ^= s.v2
    s.v0 += s.v3
    s.v3 = _rotl(s.v3, 21)
    s.v3 ^= s.v0
    s.v2 += s.v1
    s.v1 = _rotl(s.v1, 17)
    s.v1 ^= s.v2
    s.v2 = _rotl(s.v2, 32)


cdef inline void _sip_init(Sip* s) noexcept nogil:
    s.v0 = _K0 ^ 0x736f6d6570736575ULL
    s.v1 = _K1 ^ 0x646f72616e646f6dULL
    s.v2 = _K0 ^ 0x6c7967656e657261ULL
    s.v3 = _K1 ^ 0x7465646279746573ULL
    s.tail = 0
    s.total = 0


cdef inline void _sip_byte(Sip* s, uint8_t c) noexcept nogil:
    s.tail |= (<uint64_t>c) << (8 * (s.total & 7))
    s.total += 1
    if (s.total & 7) == 0:
        s.v3 ^= s.tail
        _round(s)
        s.v0 ^= s.tail
        s.tail = 0


cdef inline uint64_t _sip_final(Sip* s) noexcept nogil:
    cdef uint64_t b = (s.total << 56) | s.tail
    s.v3 ^= b
    _round(s)
    s.v0 ^= b
    s.v2 ^= 0xff
    _round(s)
    _round(s)
    _round(s)
    return s.v0 ^ s.v1 ^ s.v2 ^ s.v3


cdef inline int _sip_part(Sip* s, object part, bint escape) except -1:
    """Feed a key part's text (what an f-string writes); ``escape``: a ``>`` or ``\\`` in
    it is fed as ``\\>`` / ``\\\\`` (``stream.state.keys.escape``), so parts never
    run into each other."""
    cdef Py_ssize_t n, i
    cdef const char* p
    cdef uint8_t c
    if not isinstance(part, str):
        part = format(part, "")
    p = PyUnicode_AsUTF8AndSize(part, &n)
    for i in range(n):
        c = <uint8_t>p[i]
        if escape and (c == 62 or c == 92):
            _sip_byte(s, 92)
        _sip_byte(s, c)
    return 0


def key_hash(str text):
    """The keyed 64-bit hash of a state key's text (already escaped)."""
    cdef Sip s
    _sip_init(&s)
    _sip_part(&s, text, False)
    return _sip_final(&s)


ctypedef struct KEntry:
    uint64_t h
    int64_t slot  # -1: empty


cdef class KeyIndex:
    """State key -> slot, by the key text's 64-bit hash (the text itself is never built).

    A row's key is its prefix (scope, tenant) and one or two parts joined by ``>``;
    the hash is :func:`hash_text` of that text, computed part by part. Two keys
    share a slot only if their hashes collide: about k^2 / 2^65 for k keys.
    """

    cdef KEntry* t
    cdef int64_t mask
    cdef readonly int64_t used

    def __cinit__(self):
        self.t = NULL
        self._alloc(1024)

    def __dealloc__(self):
        free(self.t)

    cdef int _alloc(self, int64_t size) except -1:
        cdef int64_t i
        self.t = <KEntry*>malloc(size * sizeof(KEntry))
        if self.t == NULL:
            raise MemoryError()
        for i in range(size):
            self.t[i].slot = -1
        self.mask = size - 1
        self.used = 0
        return 0

    cdef inline int64_t _get(self, uint64_t h) noexcept nogil:
        cdef int64_t i = <int64_t>(h & <uint64_t>self.mask)
        while self.t[i].slot >= 0:
            if self.t[i].h == h:
                return self.t[i].slot
            i = (i + 1) & self.mask
        return -1

    cdef void _put(self, uint64_t h, int64_t slot) noexcept nogil:
        cdef int64_t i = <int64_t>(h & <uint64_t>self.mask)
        while self.t[i].slot >= 0:
            if self.t[i].h == h:
                self.t[i].slot = slot
                return
            i = (i + 1) & self.mask
        self.t[i].h, self.t[i].slot = h, slot
        self.used += 1

    cdef int _resize(self, int64_t size) except -1:
        cdef KEntry* old = self.t
        cdef int64_t old_size = self.mask + 1, i
        self._alloc(size)
        for i in range(old_size):
            if old[i].slot >= 0:
                self._put(old[i].h, old[i].slot)
        free(old)
        return 0

    def insert(self, const uint64_t[::1] hashes, const int64_t[::1] slots):
        cdef Py_ssize_t j, n = hashes.shape[0]
        cdef int64_t size = self.mask + 1
        while (self.used + n) * 2 > size:
            size *= 2
        if size != self.mask + 1:
            self._resize(size)
        for j in range(n):
            self._put(hashes[j], slots[j])

    def remove(self, const uint64_t[::1] hashes):
        cdef Py_ssize_t m
        cdef int64_t i, j, k
        cdef uint64_t h
        for m in range(hashes.shape[0]):
            h = hashes[m]
            i = <int64_t>(h & <uint64_t>self.mask)
            while self.t[i].slot >= 0 and self.t[i].h != h:
                i = (i + 1) & self.mask
            if self.t[i].slot < 0:
                continue
            j = i
            while True:  # backward-shift deletion, as in the distinct table
                j = (j + 1) & self.mask
                if self.t[j].slot < 0:
                    break
                k = <int64_t>(self.t[j].h & <uint64_t>self.mask)
                if (k <= i or k > j) if i <= j else (k <= i and k > j):
                    self.t[i] = self.t[j]
                    i = j
            self.t[i].slot = -1
            self.used -= 1

    def get(self, uint64_t h) -> int:
        return self._get(h)

    def nbytes(self) -> int:
        return (self.mask + 1) * <int64_t>sizeof(KEntry)

    def find(self, object prefix, list a, object b, const uint8_t[::1] bad,
             int32_t[::1] out, uint64_t[::1] hashes):
        """Slot (or -1) and key hash per row; the rows whose key is not in the index.

        ``prefix``: one text for every row or a list of one per row; ``a`` (and ``b``,
        or None): the key's parts per row. The hash is ``key_hash`` of the key's text
        (``stream.state.keys.key_text``: the prefix, then the parts escaped and
        joined by ``>``), fed part by part. Rows flagged ``bad`` get -1 and no hash.
        """
        cdef Py_ssize_t i, n = len(a)
        cdef list misses = []
        cdef list prefixes = prefix if isinstance(prefix, list) else None
        cdef list bl = b
        cdef Sip s0, s
        cdef uint64_t h
        cdef int64_t slot
        if prefixes is None:
            _sip_init(&s0)
            _sip_part(&s0, prefix, False)
        for i in range(n):
            if bad[i]:
                out[i] = -1
                hashes[i] = 0
                continue
            if prefixes is None:
                s = s0
            else:
                _sip_init(&s)
                _sip_part(&s, prefixes[i], False)
            _sip_part(&s, a[i], True)
            if bl is not None:
                _sip_byte(&s, 62)  # ">"
                _sip_part(&s, bl[i], True)
            h = _sip_final(&s)
            hashes[i] = h
            slot = self._get(h)
            out[i] = slot
            if slot < 0:
                misses.append(i)
        return misses


def late_rows(const double[::1] times, const uint8_t[::1] bad, const int64_t[::1] scope,
              double[::1] marks, double lateness, uint8_t[::1] late, double[::1] clock):
    """Flag rows older than their clock's newest event by more than ``lateness``.

    ``scope`` numbers each row's clock (one per partition and tenant) into ``marks``
    (their newest times so far), which advance as the rows go; ``clock[i]`` is row
    i's clock after it (what the TTL of its key is measured against).
    """
    cdef Py_ssize_t i, n = times.shape[0]
    cdef double t, wm
    with nogil:
        for i in range(n):
            late[i] = 0
            if bad[i]:
                clock[i] = -INFINITY
                continue
            wm = marks[scope[i]]
            t = times[i]
            if t < wm - lateness:
                late[i] = 1
            elif t > wm:
                marks[scope[i]] = t
                wm = t
            clock[i] = wm


cdef int _cmp_u64(const void* a, const void* b) noexcept nogil:
    cdef uint64_t x = (<const uint64_t*>a)[0], y = (<const uint64_t*>b)[0]
    return (x > y) - (x < y)


cdef inline Ev* _at(Ring* r, int32_t i) noexcept nogil:
    return &r.buf[(r.head + i) & (r.cap - 1)]


cdef class Kernel:
    """State of one window function for every slot, and the batch loop over it.

    ``kind``: one of :data:`KINDS`; ``damped``: a half-life instead of a window;
    ``param``: the window length in seconds, or ln 2 / half-life; ``span``: the
    window length or half-life (what interval functions give before two gaps).
    """

    cdef readonly int kind
    cdef readonly bint damped
    cdef readonly double param, span
    cdef readonly int64_t live
    cdef int32_t max_events
    cdef int64_t cap
    cdef double* last
    cdef double* w
    cdef double* s
    cdef double* q
    cdef double* olast
    cdef int64_t* seen
    cdef int64_t* dn
    cdef uint8_t* sat
    cdef uint8_t* alive
    cdef Ring* rings
    cdef int64_t ring_bytes
    cdef Entry* table
    cdef int64_t tmask
    cdef int64_t tused
    cdef uint64_t* scratch
    cdef int64_t scratch_cap

    def __cinit__(self, int kind, bint damped, double param, double span, int max_events):
        self.kind, self.damped, self.param, self.span = kind, damped, param, span
        self.max_events = max_events
        self.cap = 0
        self.tmask = -1

    def __dealloc__(self):
        cdef int64_t i
        if self.rings != NULL:
            for i in range(self.cap):
                free(self.rings[i].buf)
        free(self.last)
        free(self.w)
        free(self.s)
        free(self.q)
        free(self.olast)
        free(self.seen)
        free(self.dn)
        free(self.sat)
        free(self.alive)
        free(self.rings)
        free(self.table)
        free(self.scratch)

    # ---- storage ----------------------------------------------------------------------

    cdef void _reset(self, int64_t i) noexcept nogil:
        self.last[i] = -INFINITY
        self.olast[i] = -INFINITY
        self.w[i] = 0.0
        self.s[i] = 0.0
        self.q[i] = 0.0
        self.seen[i] = 0
        self.dn[i] = 0
        self.sat[i] = 0
        self.alive[i] = 0
        self.rings[i].head = 0
        self.rings[i].n = 0

    cdef void _fresh(self, int64_t i) noexcept nogil:
        # A slot with no state and no event buffer (whatever it held was moved or freed).
        self.rings[i].buf = NULL
        self.rings[i].cap = 0
        self._reset(i)

    cdef int _grow(self, int64_t need) except -1:
        if need < self.cap:
            return 0
        # Not doubling: the arrays count against the memory cap.
        return self._resize(max(64, need + need // 4 + 1))

    cdef int _resize(self, int64_t cap) except -1:
        """Every per-slot array to ``cap`` slots; new slots fresh."""
        cdef int64_t i, old = self.cap
        self.last = <double*>_re(self.last, cap * sizeof(double))
        self.w = <double*>_re(self.w, cap * sizeof(double))
        self.s = <double*>_re(self.s, cap * sizeof(double))
        self.q = <double*>_re(self.q, cap * sizeof(double))
        self.olast = <double*>_re(self.olast, cap * sizeof(double))
        self.seen = <int64_t*>_re(self.seen, cap * sizeof(int64_t))
        self.dn = <int64_t*>_re(self.dn, cap * sizeof(int64_t))
        self.sat = <uint8_t*>_re(self.sat, cap * sizeof(uint8_t))
        self.alive = <uint8_t*>_re(self.alive, cap * sizeof(uint8_t))
        self.rings = <Ring*>_re(self.rings, cap * sizeof(Ring))
        for i in range(old, cap):
            self._fresh(i)
        self.cap = cap
        return 0

    cdef int _push(self, Ring* r, double t, Val v) except -1:
        cdef int32_t cap, k
        cdef Ev* buf
        if r.n == r.cap:
            cap = 4 if r.cap == 0 else r.cap * 2
            buf = <Ev*>malloc(cap * sizeof(Ev))
            if buf == NULL:
                raise MemoryError()
            for k in range(r.n):
                buf[k] = _at(r, k)[0]
            free(r.buf)
            self.ring_bytes += (cap - r.cap) * <int64_t>sizeof(Ev)
            r.buf, r.cap, r.head = buf, cap, 0
        k = (r.head + r.n) & (r.cap - 1)
        r.buf[k].t = t
        r.buf[k].v = v
        r.n += 1
        return 0

    cdef void _release(self, int64_t i) noexcept nogil:
        cdef Ring* r = &self.rings[i]
        cdef int32_t k
        if self.kind == K_DISTINCT:
            for k in range(r.n):
                self._dec(i, _at(r, k).v.u)
        self.ring_bytes -= r.cap * <int64_t>sizeof(Ev)
        free(r.buf)
        r.buf = NULL
        r.cap = 0
        if self.alive[i]:
            self.live -= 1
        self._reset(i)

    # ---- distinct: an open-addressing table of (slot, hash) -> count ------------------

    cdef inline int64_t _home(self, int64_t slot, uint64_t h) noexcept nogil:
        return <int64_t>(_mix(h ^ (<uint64_t>slot * 0x9E3779B97F4A7C15ULL)) & <uint64_t>self.tmask)

    cdef int _inc(self, int64_t slot, uint64_t h) except -1:
        """Count one more event with hash ``h``; 1 if the value is new to the slot's window."""
        cdef int64_t i
        if self.tmask < 0 or (self.tused + 1) * 2 > self.tmask + 1:
            self._rehash()
        i = self._home(slot, h)
        while self.table[i].count:
            if self.table[i].h == h and self.table[i].slot == slot:
                self.table[i].count += 1
                return 0
            i = (i + 1) & self.tmask
        self.table[i].h, self.table[i].slot, self.table[i].count = h, slot, 1
        self.tused += 1
        return 1

    cdef int _dec(self, int64_t slot, uint64_t h) noexcept nogil:
        """One event with hash ``h`` left the window; 1 if it was the value's last."""
        cdef int64_t i = self._home(slot, h), j, k
        while self.table[i].count:
            if self.table[i].h == h and self.table[i].slot == slot:
                break
            i = (i + 1) & self.tmask
        else:
            return 0
        self.table[i].count -= 1
        if self.table[i].count:
            return 0
        # Backward-shift deletion: close the gap so every probe chain stays unbroken.
        j = i
        while True:
            j = (j + 1) & self.tmask
            if not self.table[j].count:
                break
            k = self._home(self.table[j].slot, self.table[j].h)
            if (k <= i or k > j) if i <= j else (k <= i and k > j):
                self.table[i] = self.table[j]
                i = j
        self.table[i].count = 0
        self.tused -= 1
        return 1

    cdef int _rehash(self) except -1:
        return self._rebuild(1024 if self.tmask < 0 else (self.tmask + 1) * 2, NULL)

    cdef int _rebuild(self, int64_t size, const int64_t* where) except -1:
        """The distinct table at ``size`` entries; each slot renumbered by ``where`` if given."""
        cdef int64_t i, j
        cdef Entry* old = self.table
        cdef int64_t old_size = self.tmask + 1
        self.table = <Entry*>calloc(size, sizeof(Entry))
        if self.table == NULL:
            self.table = old
            raise MemoryError()
        self.tmask = size - 1
        for i in range(old_size):
            if old[i].count:
                if where != NULL:
                    old[i].slot = where[old[i].slot]
                j = self._home(old[i].slot, old[i].h)
                while self.table[j].count:
                    j = (j + 1) & self.tmask
                self.table[j] = old[i]
        free(old)
        return 0

    # ---- the per-event arithmetic (the Python classes', operation for operation) -----

    cdef int _exact_add(self, int64_t i, double t, double v) except -1:
        cdef Ring* r = &self.rings[i]
        cdef double lo
        cdef Ev* e
        cdef Val x
        if t < self.last[i]:
            t = self.last[i]
        lo = t - self.param
        while r.n:
            e = _at(r, 0)
            if not (e.t <= lo or r.n >= self.max_events):
                break
            if e.t > lo:
                self.sat[i] = 1
            self.s[i] -= e.v.d
            self.q[i] -= e.v.d * e.v.d
            r.head = (r.head + 1) & (r.cap - 1)
            r.n -= 1
        x.d = v
        self._push(r, t, x)
        self.s[i] += v
        self.q[i] += v * v
        self.last[i] = t
        return 0

    cdef void _damped_add(self, int64_t i, double t, double v) noexcept nogil:
        cdef double f
        if t > self.last[i]:
            if self.w[i]:
                f = exp(-self.param * (t - self.last[i]))
                self.w[i] *= f
                self.s[i] *= f
                self.q[i] *= f
            self.last[i] = t
        self.w[i] += 1.0
        self.s[i] += v
        self.q[i] += v * v

    cdef double _stat(self, int64_t i, double t, double v, bint push) except? -1.0:
        cdef double n, s, q, f, lo, a
        cdef Ring* r
        cdef int32_t k
        cdef Ev* e
        if push:
            if self.damped:
                self._damped_add(i, t, v)
                n = self.w[i]
            else:
                self._exact_add(i, t, v)
                n = <double>self.rings[i].n
            s, q = self.s[i], self.q[i]
        elif self.damped:
            f = exp(-self.param * (t - self.last[i])) if self.w[i] and t > self.last[i] else 1.0
            n, s, q = self.w[i] * f + 1.0, self.s[i] * f + v, self.q[i] * f + v * v
        else:
            lo = (t if t > self.last[i] else self.last[i]) - self.param
            r = &self.rings[i]
            n, s, q = 0.0, 0.0, 0.0
            for k in range(r.n):
                e = _at(r, k)
                if e.t > lo:
                    a = e.v.d
                    n += 1.0
                    s += a
                    q += a * a
            n, s, q = n + 1.0, s + v, q + v * v
        return _finish(self.kind, n, s, q)

    cdef double _distinct(self, int64_t i, double t, uint64_t h, bint push) except? -1.0:
        cdef Ring* r = &self.rings[i]
        cdef double lo
        cdef Ev* e
        cdef Val x
        cdef int32_t k, m
        cdef int64_t uniq
        if t < self.last[i]:
            t = self.last[i]
        lo = t - self.param
        if not push:
            if self.scratch_cap < r.n + 1:
                self.scratch_cap = 2 * (r.n + 1)
                self.scratch = <uint64_t*>_re(self.scratch, self.scratch_cap * sizeof(uint64_t))
            m = 0
            for k in range(r.n):
                e = _at(r, k)
                if e.t > lo:
                    self.scratch[m] = e.v.u
                    m += 1
            self.scratch[m] = h
            m += 1
            qsort(self.scratch, m, sizeof(uint64_t), _cmp_u64)
            uniq = 1
            for k in range(1, m):
                if self.scratch[k] != self.scratch[k - 1]:
                    uniq += 1
            return <double>uniq
        while r.n:
            e = _at(r, 0)
            if not (e.t <= lo or r.n >= self.max_events):
                break
            if e.t > lo:
                self.sat[i] = 1
            self.dn[i] -= self._dec(i, e.v.u)
            r.head = (r.head + 1) & (r.cap - 1)
            r.n -= 1
        x.u = h
        self._push(r, t, x)
        self.dn[i] += self._inc(i, h)
        self.last[i] = t
        return <double>self.dn[i]

    cdef double _interval(self, int64_t i, double t, bint push) except? -1.0:
        cdef double gap, n, s, q, f, lo, a
        cdef bint enough
        cdef Ring* r = &self.rings[i]
        cdef Ev* e
        cdef int32_t k
        if t < self.olast[i]:
            t = self.olast[i]
        if self.olast[i] == -INFINITY:
            if push:
                self.olast[i] = t
            return self.span
        gap = t - self.olast[i]
        enough = self.seen[i] + 1 >= 2
        if push:
            if self.damped:
                self._damped_add(i, t, gap)
                n, s, q = self.w[i], self.s[i], self.q[i]
            else:
                self._exact_add(i, t, gap)
                n, s, q = <double>r.n, self.s[i], self.q[i]
                # A gap belongs to the window while the event that opened it does.
                if r.n:
                    e = _at(r, 0)
                    if e.t - e.v.d <= t - self.param:
                        a = e.v.d
                        n, s, q = n - 1.0, s - a, q - a * a
            self.olast[i] = t
            self.seen[i] += 1
        elif self.damped:
            f = exp(-self.param * (t - self.last[i])) if self.w[i] and t > self.last[i] else 1.0
            n, s, q = self.w[i] * f + 1.0, self.s[i] * f + gap, self.q[i] * f + gap * gap
        else:
            lo = t - self.param
            n, s, q = 0.0, 0.0, 0.0
            for k in range(r.n):
                e = _at(r, k)
                if e.t - e.v.d > lo:
                    a = e.v.d
                    n += 1.0
                    s += a
                    q += a * a
            n, s, q = n + 1.0, s + gap, q + gap * gap
        if (not enough) if self.damped else n < 2.0:
            return self.span
        return _finish(K_MEAN if self.kind == K_IMEAN else K_STD, n, s, q)

    cdef double _since(self, int64_t i, double t, bint push) noexcept nogil:
        """Seconds since the key's previous event, at most the window (the window for a
        key never seen, or not within it)."""
        cdef double val
        if self.last[i] == -INFINITY:
            val = self.span
        else:
            val = t - self.last[i] if t > self.last[i] else 0.0
            if val > self.span:
                val = self.span
        if push and t > self.last[i]:
            self.last[i] = t
        return val

    cdef double _beacon(self, int64_t i, double t, double v, bint push) except? -1.0:
        """The key's regularity over its last ``BEACON_N`` events in the window: the mean
        of RITA's timestamp and data size scores (``_regularity`` of the gaps and of the
        sizes); 0 before four events."""
        cdef Ring* r = &self.rings[i]
        cdef double times[BEACON_N]
        cdef double sizes[BEACON_N]
        cdef double lo
        cdef Ev* e
        cdef Val x
        cdef int32_t k, m = 0, start
        if t < self.last[i]:
            t = self.last[i]
        lo = t - self.param
        if push:
            while r.n and (_at(r, 0).t <= lo or r.n >= BEACON_N):
                r.head = (r.head + 1) & (r.cap - 1)
                r.n -= 1
            x.d = v
            self._push(r, t, x)
            self.last[i] = t
            for k in range(r.n):
                e = _at(r, k)
                times[k] = e.t
                sizes[k] = e.v.d
            return _beacon_score(times, sizes, r.n)
        start = 0
        for k in range(r.n):  # the events a push would keep, then this one
            if _at(r, k).t <= lo:
                start = k + 1
        if r.n - start > BEACON_N - 1:
            start = r.n - (BEACON_N - 1)
        for k in range(start, r.n):
            e = _at(r, k)
            times[m] = e.t
            sizes[m] = e.v.d
            m += 1
        times[m] = t
        sizes[m] = v
        return _beacon_score(times, sizes, m + 1)

    cdef double _spread(self, int64_t i, double t, uint64_t h, bint push) except? -1.0:
        """Distinct value hashes among the key's last ``BEACON_N`` events in the window,
        this one included (1 to ``BEACON_N``)."""
        cdef Ring* r = &self.rings[i]
        cdef uint64_t seen[BEACON_N]
        cdef double lo
        cdef Val x
        cdef int32_t k, m = 0, start
        if t < self.last[i]:
            t = self.last[i]
        lo = t - self.param
        if push:
            while r.n and (_at(r, 0).t <= lo or r.n >= BEACON_N):
                r.head = (r.head + 1) & (r.cap - 1)
                r.n -= 1
            x.u = h
            self._push(r, t, x)
            self.last[i] = t
            for k in range(r.n):
                seen[k] = _at(r, k).v.u
            return _count_distinct(seen, r.n)
        start = 0
        for k in range(r.n):  # the events a push would keep, then this one
            if _at(r, k).t <= lo:
                start = k + 1
        if r.n - start > BEACON_N - 1:
            start = r.n - (BEACON_N - 1)
        for k in range(start, r.n):
            seen[m] = _at(r, k).v.u
            m += 1
        seen[m] = h
        return _count_distinct(seen, m + 1)

    cdef double _card(self, int64_t i, double t, uint64_t h, bint push) except? -1.0:
        """Distinct value hashes of the key in the window, this one included: exact up
        to ``CARD_EXACT`` (one event per value, its last time), then HyperLogLog panes
        (``sat`` set). The Python ``_card_value``, step for step."""
        cdef Ring* r = &self.rings[i]
        cdef double lo, pw, frac
        cdef int64_t cur, oldest, idx
        cdef int32_t k, m, found, c
        cdef Ev* e
        cdef Ev* hdr
        cdef Val x
        cdef double keep_t[CARD_EXACT]
        cdef uint64_t keep_h[CARD_EXACT]
        if t < self.last[i]:
            t = self.last[i]
        lo = t - self.param
        pw = self.param / (CARD_PANES - 1)
        cur = <int64_t>floor(t / pw)
        oldest = cur - CARD_PANES + 1
        if self.sat[i] and push:
            found = 0
            for k in range(CARD_PANES):
                hdr = &r.buf[k * CARD_PER]
                if hdr.t != -INFINITY and <int64_t>hdr.t < oldest:
                    hdr.t = -INFINITY
                    memset(<void*>&r.buf[k * CARD_PER + 1], 0, CARD_M)
                if hdr.t != -INFINITY:
                    found = 1
            if not found:  # every pane expired: exact again
                self.sat[i] = 0
                r.n = 0
                r.head = 0
        if not self.sat[i]:
            if not push:
                m = 0
                found = 0
                for k in range(r.n):
                    e = _at(r, k)
                    if e.t > lo:
                        m += 1
                        if e.v.u == h:
                            found = 1
                return <double>(m + (0 if found else 1))
            while r.n and _at(r, 0).t <= lo:
                r.head = (r.head + 1) & (r.cap - 1)
                r.n -= 1
            for k in range(r.n):
                if _at(r, k).v.u == h:
                    for m in range(k, r.n - 1):
                        _at(r, m)[0] = _at(r, m + 1)[0]
                    r.n -= 1
                    break
            if r.n < CARD_EXACT:
                x.u = h
                self._push(r, t, x)
                self.last[i] = t
                return <double>r.n
            # Past CARD_EXACT distinct values: the same values into the panes, then on.
            c = r.n
            for k in range(c):
                e = _at(r, k)
                keep_t[k] = e.t
                keep_h[k] = e.v.u
            r.n = 0
            r.head = 0
            x.u = 0
            for k in range(CARD_PANES * CARD_PER):
                self._push(r, -INFINITY if k % CARD_PER == 0 else 0.0, x)
            memset(<void*>r.buf, 0, CARD_PANES * CARD_PER * sizeof(Ev))
            for k in range(CARD_PANES):
                r.buf[k * CARD_PER].t = -INFINITY
            self.sat[i] = 1
            for k in range(c):
                idx = <int64_t>floor(keep_t[k] / pw)
                if idx >= oldest:
                    _hll_add(self._pane(r, idx), keep_h[k])
        frac = (<double>(oldest + 1) * pw - lo) / pw
        if not push:
            found = 0
            for k in range(CARD_PANES):
                hdr = &r.buf[k * CARD_PER]
                if hdr.t != -INFINITY and <int64_t>hdr.t >= oldest:
                    found = 1
            if not found:
                return 1.0
            return self._card_estimate(r, cur, frac, h, 1)
        self.last[i] = t
        _hll_add(self._pane(r, cur), h)
        return self._card_estimate(r, cur, frac, 0, 0)

    cdef double _card_estimate(self, Ring* r, int64_t cur, double frac, uint64_t h,
                               bint peek) noexcept nogil:
        """The estimate over the panes wholly inside the window, plus ``frac`` of what the
        oldest (which the window's start falls in) adds (the Python ``_card_estimate``)."""
        cdef uint8_t inner[CARD_M]
        cdef uint8_t outer[CARD_M]
        cdef int32_t k
        cdef Ev* hdr
        cdef double e_in
        cdef int32_t oldest = -1
        memset(inner, 0, CARD_M)
        for k in range(CARD_PANES):
            hdr = &r.buf[k * CARD_PER]
            if hdr.t == -INFINITY:
                continue
            if <int64_t>hdr.t >= cur - CARD_PANES + 2:
                _hll_max(inner, <uint8_t*>&r.buf[k * CARD_PER + 1])
            elif <int64_t>hdr.t == cur - CARD_PANES + 1:
                oldest = k
        if peek:
            _hll_add(inner, h)
        e_in = _hll_estimate(inner)
        if oldest < 0 or frac == 0.0:  # nothing to add: the same float as adding 0
            return e_in
        memcpy(outer, inner, CARD_M)
        _hll_max(outer, <uint8_t*>&r.buf[oldest * CARD_PER + 1])
        return e_in + frac * (_hll_estimate(outer) - e_in)

    cdef inline uint8_t* _pane(self, Ring* r, int64_t idx) noexcept nogil:
        """Pane ``idx``'s registers, its slot emptied first if it held an older pane."""
        cdef int64_t s = idx % CARD_PANES
        if s < 0:
            s += CARD_PANES
        if r.buf[s * CARD_PER].t != <double>idx:
            r.buf[s * CARD_PER].t = <double>idx
            memset(<void*>&r.buf[s * CARD_PER + 1], 0, CARD_M)
        return <uint8_t*>&r.buf[s * CARD_PER + 1]

    cdef double _regularity(self, int64_t i, double t, double v, bint push) except? -1.0:
        """RITA's beacon score from the key's damped sketches of gaps and sizes: each
        entry (an event of the ring: weight as ``t``, code as ``v.u``) faded since the
        last event, this one's size and gap counted, the two lowest buckets of the
        fuller series merged past ``SKETCH_CAP`` (the Python ``_sketch_value``)."""
        cdef Ring* r = &self.rings[i]
        cdef uint64_t codes[SKETCH_CAP + 2]
        cdef double ws[SKETCH_CAP + 2]
        cdef int32_t n = 0, k, m, add, gaps, lo, nxt, hi, prv
        cdef uint64_t code, series, best0, best1
        cdef double f = 1.0, w, last = self.last[i]
        cdef uint64_t new_codes[2]
        cdef Ev* e
        cdef Val x
        if t < last:
            t = last
        if last != -INFINITY:
            f = exp(-self.param * (t - last))
        for k in range(r.n):
            e = _at(r, k)
            w = e.t * f
            if w >= SKETCH_MIN_WEIGHT and n < SKETCH_CAP + 2:
                codes[n] = e.v.u
                ws[n] = w
                n += 1
        new_codes[0] = <uint64_t>(_sk_bucket(v) + 32768)
        add = 1
        if last != -INFINITY:
            new_codes[1] = SKETCH_GAPS + <uint64_t>(_sk_bucket(t - last) + 32768)
            add = 2
        for m in range(add):
            for k in range(n):
                if codes[k] == new_codes[m]:
                    ws[k] = ws[k] + 1.0
                    break
            else:
                codes[n] = new_codes[m]
                ws[n] = 1.0
                n += 1
        while n > SKETCH_CAP:
            gaps = 0
            for k in range(n):
                if codes[k] >= SKETCH_GAPS:
                    gaps += 1
            series = SKETCH_GAPS if gaps > n - gaps else 0
            lo = -1
            nxt = -1
            hi = -1
            prv = -1
            for k in range(n):
                if (codes[k] >= SKETCH_GAPS) != (series != 0):
                    continue
                if lo < 0 or codes[k] < codes[lo]:
                    nxt = lo
                    lo = k
                elif nxt < 0 or codes[k] < codes[nxt]:
                    nxt = k
                if hi < 0 or codes[k] > codes[hi]:
                    prv = hi
                    hi = k
                elif prv < 0 or codes[k] > codes[prv]:
                    prv = k
            if ws[lo] > ws[hi]:  # fold the lighter end into its neighbour
                lo, nxt = hi, prv
            ws[nxt] = ws[nxt] + ws[lo]
            for k in range(lo, n - 1):
                codes[k] = codes[k + 1]
                ws[k] = ws[k + 1]
            n -= 1
        if push:
            r.n = 0
            r.head = 0
            for k in range(n):
                x.u = codes[k]
                self._push(r, ws[k], x)
            self.last[i] = t
        return _sk_score(codes, ws, n)

    # ---- the batch --------------------------------------------------------------------

    def run(self, const int32_t[::1] slots, const double[::1] times, const double[::1] vals,
            const uint64_t[::1] hashes, const uint8_t[::1] push, double[::1] out,
            double[::1] newest, int64_t[::1] touch, uint8_t[::1] dirty, int64_t seq,
            const double[::1] expire):
        """Evaluate rows in order: ``out[i]`` is row i's value (NaN where its slot is -1).

        A row with ``push`` applies the event (marking its slot's ``newest`` time,
        ``touch`` sequence and ``dirty`` flag, when ``dirty`` is not empty); one
        without is scored against the state and leaves it unchanged. A state whose
        newest event is older than ``expire[i]`` (the row's clock minus the TTL) has
        expired: row i sees no state (a pushing row starts it afresh), whether or
        not the store has evicted it yet, so eviction never changes a value.
        """
        cdef Py_ssize_t j, n = slots.shape[0]
        cdef int64_t i, top = -1
        cdef double t, v
        cdef bint p, track = dirty.shape[0] > 0, has_vals = vals.shape[0] > 0
        cdef int kind = self.kind
        for j in range(n):
            if slots[j] > top:
                top = slots[j]
        self._grow(top)
        for j in range(n):
            i = slots[j]
            if i < 0:
                out[j] = NAN
                continue
            t = times[j]
            p = push[j]
            v = vals[j] if has_vals else 0.0
            if self.alive[i] and (self.olast[i] if kind == K_IMEAN or kind == K_ISTD
                                  else self.last[i]) < expire[j]:
                if not p:
                    out[j] = _alone(kind, v, self.span)
                    continue
                self._release(i)
            if kind == K_DISTINCT:
                out[j] = self._distinct(i, t, hashes[j], p)
            elif kind == K_SINCE:
                out[j] = self._since(i, t, p)
            elif kind == K_BEACON:
                out[j] = self._beacon(i, t, v, p)
            elif kind == K_SPREAD:
                out[j] = self._spread(i, t, hashes[j], p)
            elif kind == K_CARD:
                out[j] = self._card(i, t, hashes[j], p)
            elif kind == K_REG:
                out[j] = self._regularity(i, t, v, p)
            elif kind >= K_IMEAN:
                out[j] = self._interval(i, t, p)
            else:
                out[j] = self._stat(i, t, v, p)
            if p:
                if not self.alive[i]:
                    self.alive[i] = 1
                    self.live += 1
                if t > newest[i]:
                    newest[i] = t
                touch[i] = seq + j
                if track:
                    dirty[i] = 1

    def is_live(self, int64_t i) -> bool:
        return 0 <= i < self.cap and self.alive[i]

    def clear(self, const int64_t[::1] slots):
        """Forget the state of each slot; how many of them held state."""
        cdef Py_ssize_t j
        cdef int64_t was = self.live
        for j in range(slots.shape[0]):
            if slots[j] < self.cap:
                self._release(slots[j])
        return was - self.live

    def compact(self, const int64_t[::1] keep):
        """Renumber slots: ``keep[j]`` (increasing) becomes slot j; the rest are forgotten.

        Shrinks the arrays and the distinct table to fit, so a burst of keys that
        was evicted gives its memory back.
        """
        cdef int64_t j, i, m = keep.shape[0], old_cap = self.cap
        cdef int64_t cap = max(64, m + m // 4 + 1), size
        cdef int64_t* where = <int64_t*>malloc(max(1, old_cap) * sizeof(int64_t))
        if where == NULL:
            raise MemoryError()
        for i in range(old_cap):
            where[i] = -1
        for j in range(m):
            if keep[j] < old_cap:
                where[keep[j]] = j
        for i in range(old_cap):
            if where[i] < 0:
                self._release(i)
        # Moving down in increasing order only overwrites slots already moved or released.
        for j in range(m):
            i = keep[j]
            if i >= old_cap:
                if j < old_cap:
                    self._fresh(j)
                continue
            if i == j:
                continue
            self.last[j], self.w[j], self.s[j], self.q[j] = (
                self.last[i], self.w[i], self.s[i], self.q[i])
            self.olast[j], self.seen[j], self.dn[j] = self.olast[i], self.seen[i], self.dn[i]
            self.sat[j], self.alive[j], self.rings[j] = self.sat[i], self.alive[i], self.rings[i]
        if self.tmask >= 0:
            size = 1024
            while size < 2 * self.tused + 2:
                size *= 2
            try:
                self._rebuild(size, where)
            finally:
                free(where)
        else:
            free(where)
        if old_cap > m:
            for j in range(m, min(old_cap, cap)):
                self._fresh(j)
        if cap < old_cap or old_cap == 0:
            self._resize(cap)

    def nbytes(self) -> int:
        """Bytes held: the per-slot arrays, every event buffer and the distinct table."""
        cdef int64_t per = 6 * sizeof(double) + 2 * sizeof(int64_t) + 2 + sizeof(Ring)
        return self.cap * per + self.ring_bytes + (self.tmask + 1) * <int64_t>sizeof(Entry)

    def variable_bytes(self) -> int:
        """The part of :meth:`nbytes` that clearing states frees: the event buffers."""
        return self.ring_bytes

    # ---- the changelog's binary form (see stream.state.codec) --------------

    cdef Py_ssize_t _raw_size(self, int64_t i) noexcept nogil:
        return STATE_HEAD + 16 * <Py_ssize_t>self.rings[i].n

    cdef void _write_raw(self, int64_t i, char* p) noexcept nogil:
        cdef Ring* r = &self.rings[i]
        cdef int32_t k, n = r.n
        cdef Ev* e
        p[0] = <char>self.kind
        p[1] = <char>self.damped
        p[2] = <char>self.sat[i]
        p[3] = 0
        memcpy(p + 4, &n, 4)
        memcpy(p + 8, &self.last[i], 8)
        memcpy(p + 16, &self.w[i], 8)
        memcpy(p + 24, &self.s[i], 8)
        memcpy(p + 32, &self.q[i], 8)
        memcpy(p + 40, &self.olast[i], 8)
        memcpy(p + 48, &self.seen[i], 8)
        p += STATE_HEAD
        for k in range(n):
            e = _at(r, k)
            memcpy(p, &e.t, 8)
            memcpy(p + 8, &e.v, 8)
            p += 16

    def load_raw(self, int64_t i, const unsigned char[::1] buf, Py_ssize_t off,
                 Py_ssize_t size):
        """Set slot ``i`` from its binary form at ``buf[off:off + size]``."""
        cdef const unsigned char* p
        cdef int32_t n, k
        cdef Val x
        cdef double t
        if off < 0 or size < STATE_HEAD or off + size > buf.shape[0]:
            raise ValueError("window state record is cut short")
        p = &buf[off]
        memcpy(&n, p + 4, 4)
        if p[0] != self.kind or p[1] != self.damped or n < 0 or STATE_HEAD + 16 * <Py_ssize_t>n != size:
            raise ValueError("window state record does not fit this window")
        if self.kind == K_CARD and (n != CARD_PANES * CARD_PER if p[2] else n > CARD_EXACT):
            raise ValueError("window state record does not fit this window")
        if self.kind == K_REG and n > SKETCH_CAP:
            raise ValueError("window state record does not fit this window")
        self._grow(i)
        self._release(i)
        self.sat[i] = p[2]
        memcpy(&self.last[i], p + 8, 8)
        memcpy(&self.w[i], p + 16, 8)
        memcpy(&self.s[i], p + 24, 8)
        memcpy(&self.q[i], p + 32, 8)
        memcpy(&self.olast[i], p + 40, 8)
        memcpy(&self.seen[i], p + 48, 8)
        p += STATE_HEAD
        for k in range(n):
            memcpy(&t, p, 8)
            memcpy(&x, p + 8, 8)
            self._push(&self.rings[i], t, x)
            if self.kind == K_DISTINCT:
                self.dn[i] += self._inc(i, x.u)
            p += 16
        self.alive[i] = 1
        self.live += 1

    # ---- the changelog's form (the Python classes' dump format) -----------------------

    def dump(self, int64_t i) -> list:
        """Slot ``i``'s state as the tagged JSON-safe list the Python classes write."""
        cdef Ring* r = &self.rings[i]
        cdef int32_t k
        times = [_at(r, k).t for k in range(r.n)]
        if self.kind == K_DISTINCT:
            return ["_DistinctH", [self.last[i], bool(self.sat[i]), times,
                                   [_at(r, k).v.u for k in range(r.n)]]]
        if self.damped:
            inner = [self.last[i], self.w[i], self.s[i], self.q[i]]
        else:
            inner = [self.last[i], self.s[i], self.q[i], bool(self.sat[i]), times,
                     [_at(r, k).v.d for k in range(r.n)]]
        if self.kind == K_IMEAN or self.kind == K_ISTD:
            return ["_Intervals", [self.olast[i], bool(self.damped), inner, self.seen[i]]]
        if self.kind == K_SINCE:
            return ["_Since", [self.last[i]]]
        if self.kind == K_BEACON:
            return ["_Beacon", [self.last[i], times, [_at(r, k).v.d for k in range(r.n)]]]
        if self.kind == K_SPREAD:
            return ["_Spread", [self.last[i], times, [_at(r, k).v.u for k in range(r.n)]]]
        if self.kind == K_REG:
            return ["_Sketch", [self.last[i], [_at(r, k).v.u for k in range(r.n)], times]]
        if self.kind == K_CARD:
            if not self.sat[i]:
                return ["_Card", [self.last[i], False, times,
                                  [_at(r, k).v.u for k in range(r.n)]]]
            live = [k for k in range(CARD_PANES) if r.buf[k * CARD_PER].t != -INFINITY]
            return ["_Card", [self.last[i], True, [r.buf[k * CARD_PER].t for k in live],
                              [list((<uint8_t*>&r.buf[k * CARD_PER + 1])[:CARD_M])
                               for k in live]]]
        return ["_Damped" if self.damped else "_Exact", inner]

    def load(self, int64_t i, list dumped):
        """Set slot ``i`` to a state :meth:`dump` (or a Python class) wrote."""
        cdef Ring* r
        cdef Val x
        cdef int32_t k
        cdef uint8_t* pane
        self._grow(i)
        self._release(i)
        tag, body = dumped[0], dumped[1]
        r = &self.rings[i]
        if tag == "_Intervals":
            self.olast[i] = _time(body[0])
            self.seen[i] = int(body[3])
            body = body[2]
        if tag == "_Since":
            self.last[i] = _time(body[0])
        elif tag == "_Beacon":
            self.last[i] = _time(body[0])
            for t, v in zip(body[1], body[2]):
                x.d = float(v)
                self._push(r, float(t), x)
        elif tag == "_Spread":
            self.last[i] = _time(body[0])
            for t, v in zip(body[1], body[2]):
                x.u = v
                self._push(r, float(t), x)
        elif tag == "_Sketch":
            self.last[i] = _time(body[0])
            if len(body[1]) > SKETCH_CAP:
                raise ValueError("window state record does not fit this window")
            for c, w in zip(body[1], body[2]):
                x.u = c
                self._push(r, float(w), x)
        elif tag == "_Card":
            self.last[i] = _time(body[0])
            if not body[1]:
                if len(body[2]) > CARD_EXACT:
                    raise ValueError("window state record does not fit this window")
                for t, v in zip(body[2], body[3]):
                    x.u = v
                    self._push(r, float(t), x)
            else:
                x.u = 0
                for k in range(CARD_PANES * CARD_PER):
                    self._push(r, 0.0, x)
                memset(<void*>r.buf, 0, CARD_PANES * CARD_PER * sizeof(Ev))
                for k in range(CARD_PANES):
                    r.buf[k * CARD_PER].t = -INFINITY
                for idx, regs in zip(body[2], body[3]):
                    if len(regs) != CARD_M:
                        raise ValueError("window state record does not fit this window")
                    pane = self._pane(r, int(idx))
                    for k in range(CARD_M):
                        pane[k] = <uint8_t>min(int(regs[k]), 59)
                self.sat[i] = 1
        elif tag in ("_Distinct", "_DistinctH"):
            self.last[i], self.sat[i] = _time(body[0]), bool(body[1])
            for t, v in zip(body[2], body[3]):
                x.u = v if tag == "_DistinctH" else hash_text(v)
                self._push(r, float(t), x)
                self.dn[i] += self._inc(i, x.u)
        elif self.damped:
            self.last[i] = _time(body[0])
            self.w[i], self.s[i], self.q[i] = float(body[1]), float(body[2]), float(body[3])
        else:
            self.last[i], self.s[i], self.q[i] = _time(body[0]), float(body[1]), float(body[2])
            self.sat[i] = bool(body[3])
            for t, v in zip(body[4], body[5]):
                x.d = float(v)
                self._push(r, float(t), x)
        self.alive[i] = 1
        self.live += 1


cdef enum:
    # A state's binary head: kind, damped, saturated, 0, n (int32), last, w, s, q, olast
    # (float64), seen (int64); then n events of (t float64, value 8 bytes).
    STATE_HEAD = 56


def encode(list kernels, list sigs, const int64_t[::1] slots, const double[::1] newest):
    """One changelog value per slot: every live window state on it (``state_codec``).

    ``kernels`` and ``sigs`` (their signatures, UTF-8) are a slot table's windows; a
    slot none of them holds gives None.
    """
    cdef Py_ssize_t j, m = len(kernels), size, nsig
    cdef int64_t i
    cdef uint16_t count, siglen
    cdef uint32_t rawlen
    cdef Kernel k
    cdef char* p
    cdef list out = []
    cdef bytes blob
    cdef const char* sigp
    cdef Py_ssize_t slot_i
    cdef list sigbufs = [s if isinstance(s, bytes) else s.encode() for s in sigs]
    for slot_i in range(slots.shape[0]):
        i = slots[slot_i]
        size = BLOB_HEAD
        count = 0
        for j in range(m):
            k = <Kernel>kernels[j]
            if i < k.cap and k.alive[i]:
                size += 6 + len(<bytes>sigbufs[j]) + k._raw_size(i)
                count += 1
        if not count:
            out.append(None)
            continue
        blob = PyBytes_FromStringAndSize(NULL, size)
        p = PyBytes_AS_STRING(blob)
        memcpy(p, MAGIC, 4)
        memcpy(p + 4, &newest[slot_i], 8)
        memcpy(p + 12, &count, 2)
        p += BLOB_HEAD
        for j in range(m):
            k = <Kernel>kernels[j]
            if i < k.cap and k.alive[i]:
                sigp = <bytes>sigbufs[j]
                siglen = <uint16_t>len(<bytes>sigbufs[j])
                memcpy(p, &siglen, 2)
                memcpy(p + 2, sigp, siglen)
                p += 2 + siglen
                rawlen = <uint32_t>k._raw_size(i)
                memcpy(p, &rawlen, 4)
                p += 4
                k._write_raw(i, p)
                p += rawlen
        out.append(blob)
    return out


cdef enum:
    BLOB_HEAD = 14  # magic (4), newest time (float64), states (uint16)

cdef const char* MAGIC = b"SW1L"  # window states, format 1, little-endian


cdef inline double _alone(int kind, double v, double span) noexcept nogil:
    # The value of an event that meets no state (the Python classes' fresh state, peeked).
    if kind == K_DISTINCT or kind == K_SPREAD or kind == K_CARD:
        return 1.0
    if kind == K_BEACON or kind == K_REG:
        return 0.0
    if kind >= K_IMEAN:
        return span
    return _finish(kind, 1.0, v, v * v)


cdef inline double _quantile(const double* x, int32_t n, double q) noexcept nogil:
    # Linear between the order statistics (numpy's default), of sorted x[0:n].
    cdef double pos = q * (n - 1)
    cdef int32_t lo = <int32_t>pos
    cdef int32_t hi = lo + 1 if lo + 1 < n else lo
    return x[lo] + (x[hi] - x[lo]) * (pos - lo)


cdef inline void _sort(double* x, int32_t n) noexcept nogil:
    cdef int32_t a, b
    cdef double key
    for a in range(1, n):  # insertion sort: n is at most BEACON_N
        key = x[a]
        b = a - 1
        while b >= 0 and x[b] > key:
            x[b + 1] = x[b]
            b -= 1
        x[b + 1] = key


cdef double _regularity(const double* values, int32_t n) noexcept nogil:
    """RITA's statistical score of a series: the mean of 1 - |Bowley skew| and
    (median - MAD) / median, each in [0, 1] (1: perfectly regular)."""
    cdef double x[BEACON_N]
    cdef double dev[BEACON_N]
    cdef double q1, q2, q3, den, skew = 0.0, skew_score, mad, mad_score = 0.0
    cdef int32_t k
    for k in range(n):
        x[k] = values[k]
    _sort(x, n)
    q1 = _quantile(x, n, 0.25)
    q2 = _quantile(x, n, 0.5)
    q3 = _quantile(x, n, 0.75)
    den = q3 - q1
    if den > 0.0 and q2 != q1 and q2 != q3:
        skew = (q1 + q3 - 2.0 * q2) / den
    skew_score = 1.0 - (skew if skew >= 0.0 else -skew)
    if skew_score < 0.0:
        skew_score = 0.0
    for k in range(n):
        dev[k] = x[k] - q2 if x[k] >= q2 else q2 - x[k]
    _sort(dev, n)
    mad = _quantile(dev, n, 0.5)
    if q2 > 0.0:
        mad_score = (q2 - mad) / q2
        if mad_score < 0.0:
            mad_score = 0.0
    return (skew_score + mad_score) / 2.0


cdef double _count_distinct(uint64_t* x, int32_t n) noexcept nogil:
    """Distinct values among x[0:n] (n <= BEACON_N): a 64-slot open-addressed set, one
    probe per value on average (the hashes are SipHash's, so their low bits spread);
    a qsort with its comparison callback cost more than the rest of the window."""
    cdef uint64_t table[2 * BEACON_N]
    cdef uint8_t used[2 * BEACON_N]
    cdef int32_t k, c = 0
    cdef uint64_t h
    cdef uint32_t j
    memset(used, 0, sizeof(used))
    for k in range(n):
        h = x[k]
        j = <uint32_t>(h & (2 * BEACON_N - 1))
        while used[j] and table[j] != h:
            j = (j + 1) & (2 * BEACON_N - 1)
        if not used[j]:
            used[j] = 1
            table[j] = h
            c += 1
    return c


cdef double _beacon_score(const double* times, const double* sizes, int32_t n) noexcept nogil:
    cdef double gaps[BEACON_N]
    cdef int32_t k
    if n < 4:
        return 0.0
    for k in range(n - 1):
        gaps[k] = times[k + 1] - times[k]
    return (_regularity(gaps, n - 1) + _regularity(sizes, n)) / 2.0


cdef enum:
    SKETCH_GAPS = 65536  # a gap's entry code: the series bit above the bucket's 16 bits
    SK_ZERO = -32768

cdef double SKETCH_MIN_WEIGHT = 1e-3
cdef double SKETCH_GAMMA = 1.25
cdef double SK_LG = log(1.25)


cdef inline int32_t _sk_bucket(double x) noexcept nogil:
    cdef double b
    if not x > 1e-9:
        return SK_ZERO
    b = ceil(log(x) / SK_LG)
    if b < -32767:
        return -32767
    if b > 32767:
        return 32767
    return <int32_t>b


cdef inline double _sk_rep(int32_t b) noexcept nogil:
    if b == SK_ZERO:
        return 0.0
    return 2.0 * exp(b * SK_LG) / (1.0 + SKETCH_GAMMA)


cdef double _sk_quantile(const double* x, const double* w, int32_t n, double total,
                         double q) noexcept nogil:
    cdef double cut = q * total, cum = 0.0
    cdef int32_t k
    for k in range(n):
        cum += w[k]
        if cum >= cut:
            return x[k]
    return x[n - 1]


cdef double _sk_regularity(const uint64_t* codes, const double* ws, int32_t n,
                           uint64_t series, double* total) noexcept nogil:
    """One series' RITA score from its buckets (the Python ``_sketch_regularity``)."""
    cdef int32_t b[SKETCH_CAP + 2]
    cdef double w[SKETCH_CAP + 2]
    cdef double x[SKETCH_CAP + 2]
    cdef double dev[SKETCH_CAP + 2]
    cdef double dw[SKETCH_CAP + 2]
    cdef int32_t m = 0, k, a, bk
    cdef double key, kw, q1, q2, q3, den, skew = 0.0, skew_score, mad, mad_score = 0.0
    cdef double tot = 0.0
    for k in range(n):
        if (codes[k] >= SKETCH_GAPS) != (series != 0):
            continue
        bk = <int32_t>(<int64_t>(codes[k] - series) - 32768)
        kw = ws[k]
        a = m - 1  # insertion by bucket (each bucket once per series)
        while a >= 0 and b[a] > bk:
            b[a + 1] = b[a]
            w[a + 1] = w[a]
            a -= 1
        b[a + 1] = bk
        w[a + 1] = kw
        m += 1
    for k in range(m):
        tot += w[k]
    total[0] = tot
    if m == 0:
        return 0.0
    for k in range(m):
        x[k] = _sk_rep(b[k])
    q1 = _sk_quantile(x, w, m, tot, 0.25)
    q2 = _sk_quantile(x, w, m, tot, 0.5)
    q3 = _sk_quantile(x, w, m, tot, 0.75)
    den = q3 - q1
    if den > 0.0 and q2 != q1 and q2 != q3:
        skew = (q1 + q3 - 2.0 * q2) / den
    skew_score = 1.0 - (skew if skew >= 0.0 else -skew)
    if skew_score < 0.0:
        skew_score = 0.0
    for k in range(m):  # deviations, sorted (stable: ties keep bucket order)
        key = x[k] - q2 if x[k] >= q2 else q2 - x[k]
        kw = w[k]
        a = k - 1
        while a >= 0 and dev[a] > key:
            dev[a + 1] = dev[a]
            dw[a + 1] = dw[a]
            a -= 1
        dev[a + 1] = key
        dw[a + 1] = kw
    mad = _sk_quantile(dev, dw, m, tot, 0.5)
    if q2 > 0.0:
        mad_score = (q2 - mad) / q2
        if mad_score < 0.0:
            mad_score = 0.0
    return (skew_score + mad_score) / 2.0


cdef double _sk_score(const uint64_t* codes, const double* ws, int32_t n) noexcept nogil:
    cdef double gw = 0.0, sw = 0.0, gaps, sizes
    gaps = _sk_regularity(codes, ws, n, SKETCH_GAPS, &gw)
    if gw < 3.0:
        return 0.0
    sizes = _sk_regularity(codes, ws, n, 0, &sw)
    return (gaps + sizes) / 2.0


cdef double _POW2[64]
for _j in range(64):
    _POW2[_j] = ldexp(1.0, -_j)


cdef inline void _hll_add(uint8_t* regs, uint64_t h) noexcept nogil:
    # Register h >> 58 keeps the most leading zeros (+1) seen in the other 58 bits.
    cdef uint64_t w = h << 6
    cdef uint8_t rho = <uint8_t>(__builtin_clzll(w) + 1) if w else 59
    if regs[h >> 58] < rho:
        regs[h >> 58] = rho


cdef inline void _hll_max(uint8_t* out, const uint8_t* regs) noexcept nogil:
    cdef int32_t j
    for j in range(CARD_M):
        if regs[j] > out[j]:
            out[j] = regs[j]


cdef double _hll_estimate(const uint8_t* regs) noexcept nogil:
    # HyperLogLog's estimate, linear counting while small (the Python _hll_estimate).
    cdef double z = 0.0, e
    cdef int32_t j, zeros = 0
    for j in range(CARD_M):
        z += _POW2[regs[j]]  # 2 ** -register, exact
        if regs[j] == 0:
            zeros += 1
    e = 0.709 * 64.0 * 64.0 / z
    if e <= 160.0 and zeros > 0:
        e = 64.0 * log(64.0 / zeros)
    return e


cdef inline double _finish(int kind, double n, double s, double q) noexcept nogil:
    cdef double mean, var
    if kind == K_COUNT:
        return n
    if kind == K_SUM:
        return s
    mean = s / n
    if kind == K_MEAN:
        return mean
    var = q / n - mean * mean
    return sqrt(var) if var > 0.0 else 0.0


cdef double _time(object x):
    return -INFINITY if x is None else float(x)


cdef void* _re(void* p, size_t size) except NULL:
    cdef void* out = realloc(p, size)
    if out == NULL:
        raise MemoryError()
    return out
