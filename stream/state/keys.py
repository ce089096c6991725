"""State keys of window functions: their text (what the changelog names) and keyed hash.

A key's text is its prefix (the scope, then the tenant: ``"2\\x1eacme\\x1f"``) and its
parts joined by ``>`` (``by=src_ip>dst_ip``). A ``>`` or ``\\`` inside a part is escaped
(``\\>``, ``\\\\``), so ``("a>b", "c")`` and ``("a", "b>c")`` are two keys, not one; a
part without either character is written as it is, which keeps the keys an earlier
changelog wrote.

Keys are found by a keyed 64-bit hash of that text, SipHash-1-3 (what CPython uses for
``str``) with a secret key drawn once per process: texts chosen to collide with another
tenant's keys cannot be computed without it. The compiled index (``_wincore``) hashes
the parts as they come, without building the text; :func:`key_hash` here gives the same
number for the text (in Python when the extension is not built). Hashes are never
stored, so a new key at each start changes nothing a restore reads.
"""

from __future__ import annotations

import os
from typing import Any, Final

_M64: Final = (1 << 64) - 1
#: The secret of this process's key hashes (16 bytes).
KEY: Final = os.urandom(16)
_K0: Final = int.from_bytes(KEY[:8], "little")
_K1: Final = int.from_bytes(KEY[8:], "little")
#: Separates tenant, key parts and nothing else in a state key (never in sensor text).
SEP: Final = "\x1f"


def escape(part: Any) -> str:
    """A key part's text, ``>`` and ``\\`` escaped (what an f-string writes otherwise)."""
    text = part if isinstance(part, str) else format(part, "")
    if ">" in text or "\\" in text:
        return text.replace("\\", "\\\\").replace(">", "\\>")
    return text


def key_text(prefix: str, a: Any, b: Any = None, pair: bool = False) -> str:
    """The text of the key of parts ``a`` (and ``b`` when ``pair``) under ``prefix``."""
    if pair:
        return f"{prefix}{escape(a)}>{escape(b)}"
    return f"{prefix}{escape(a)}"


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M64


def _round(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & _M64
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & _M64
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & _M64
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & _M64
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def _siphash13(data: bytes) -> int:
    v0 = _K0 ^ 0x736F6D6570736575
    v1 = _K1 ^ 0x646F72616E646F6D
    v2 = _K0 ^ 0x6C7967656E657261
    v3 = _K1 ^ 0x7465646279746573
    full = len(data) - len(data) % 8
    for i in range(0, full, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = _round(v0, v1, v2, v3)
        v0 ^= m
    b = ((len(data) & 0xFF) << 56) | int.from_bytes(data[full:], "little")
    v3 ^= b
    v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def _key_hash_py(text: str) -> int:
    return _siphash13(text.encode())


try:
    from stream.state import _wincore

    _wincore.set_key(KEY)
    key_hash = _wincore.key_hash
except ImportError:  # built without a C compiler
    key_hash = _key_hash_py

__all__ = ["KEY", "escape", "key_hash", "key_text"]
