"""The changelog's binary form of window state: one value per state key, every window on it.

A changed key of a slot table (one ``by``) is written as one record whose value
holds the state of every window keyed that way, so a batch writes one record
per changed key and ``by`` rather than one per window, and no JSON. Format 1,
little-endian:

* ``b"SW1L"``, the key's newest event time (float64), the number of states (uint16);
* per state: the window's signature (uint16 length, UTF-8), the state's length
  (uint32) and the state: kind, damped, saturated, 0 (uint8 each), the event
  count n (int32), last, w, s, q, olast (float64), seen (int64), then n events
  of (time float64, value: float64, or uint64 for ``distinct``'s value hashes).

The compiled kernels write and read it in C (``_wincore.encode``,
``Kernel.load_raw``), the Python kernels with :mod:`struct`; both give the same
bytes. Values in the earlier form (a JSON list per window and key) still load.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Final

import numpy as np

MAGIC: Final = b"SW1L"
HEAD: Final = struct.Struct("<4sdH")
STATE: Final = struct.Struct("<BBBxidddddq")  # 56 bytes, the compiled kernel's STATE_HEAD
_SIG: Final = struct.Struct("<H")
_LEN: Final = struct.Struct("<I")


def is_blob(value: Any) -> bool:
    return isinstance(value, (bytes, bytearray, memoryview)) and bytes(value[:4]) == MAGIC


def newest(value: bytes) -> float:
    """The key's newest event time a value records."""
    return float(HEAD.unpack_from(value)[1])


def split(value: bytes) -> tuple[float, list[tuple[str, int, int]]]:
    """(newest time, [(window signature, offset, length) per state]); ValueError if malformed."""
    try:
        magic, t, count = HEAD.unpack_from(value)
        if magic != MAGIC:
            raise ValueError("not a window state value")
        off = HEAD.size
        out = []
        for _ in range(count):
            (n,) = _SIG.unpack_from(value, off)
            sig = bytes(value[off + 2 : off + 2 + n]).decode()
            off += 2 + n
            (size,) = _LEN.unpack_from(value, off)
            off += 4
            if size < STATE.size or off + size > len(value):
                raise ValueError("window state value is cut short")
            events = STATE.unpack_from(value, off)[3]
            if events < 0 or STATE.size + 16 * events != size:
                raise ValueError("window state value does not add up")
            out.append((sig, off, size))
            off += size
        if off != len(value):
            raise ValueError("window state value has trailing bytes")
        return float(t), out
    except struct.error as e:
        raise ValueError(f"window state value is cut short: {e}") from e


def encode(kernels: Sequence[Any], sigs: Sequence[str], slots: np.ndarray,
           times: np.ndarray) -> list[bytes | None]:
    """One value per slot (None where no window holds state for it)."""
    slots = np.ascontiguousarray(slots, dtype=np.int64)
    times = np.ascontiguousarray(times, dtype=np.float64)
    if _compiled is not None and all(type(k) is _compiled.Kernel for k in kernels):
        return _compiled.encode(list(kernels), list(sigs), slots, times)
    out: list[bytes | None] = []
    enc = [s.encode() for s in sigs]
    for slot, t in zip(slots.tolist(), times.tolist(), strict=True):
        parts = [b"".join((_SIG.pack(len(sig)), sig, _LEN.pack(len(raw)), raw))
                 for sig, k in zip(enc, kernels, strict=True) if k.is_live(slot)
                 for raw in (k.raw(slot),)]
        out.append(HEAD.pack(MAGIC, t, len(parts)) + b"".join(parts) if parts else None)
    return out


try:  # (the compiled kernels are only made on little-endian hosts: windows.make_kernel)
    from stream.state import _wincore as _compiled
except ImportError:
    _compiled = None  # type: ignore[assignment]
