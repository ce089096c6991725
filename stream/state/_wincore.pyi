"""Types of the compiled window kernels (``_wincore.pyx``), for the type checker.

The Python forms beside them (``windows.PyKernel``, ``store.PyKeyIndex``) are what these
must match; the tests run both.
"""

from typing import Any, Final

import numpy as np
import numpy.typing as npt

KINDS: Final[dict[str, int]]

def hash_text(s: object) -> int: ...
def hash_texts(values: list[Any]) -> npt.NDArray[np.uint64]: ...
def set_key(key: bytes) -> None: ...
def key_hash(text: str) -> int: ...
def late_rows(
    times: npt.NDArray[np.float64],
    bad: npt.NDArray[np.uint8],
    scope: npt.NDArray[np.int64],
    marks: npt.NDArray[np.float64],
    lateness: float,
    late: npt.NDArray[np.uint8],
    clock: npt.NDArray[np.float64],
) -> Any: ...
def encode(
    kernels: list[Kernel],
    sigs: list[str] | list[bytes],
    slots: npt.NDArray[np.int64],
    newest: npt.NDArray[np.float64],
) -> list[bytes | None]: ...

class KeyIndex:
    used: int
    def insert(self, hashes: npt.NDArray[np.uint64], slots: npt.NDArray[np.int64]) -> None: ...
    def remove(self, hashes: npt.NDArray[np.uint64]) -> None: ...
    def get(self, h: int) -> int: ...
    def nbytes(self) -> int: ...
    def find(
        self,
        prefix: object,
        a: list[Any],
        b: object,
        bad: npt.NDArray[np.uint8],
        out: npt.NDArray[np.int32],
        hashes: npt.NDArray[np.uint64],
    ) -> Any: ...

class Kernel:
    kind: int
    damped: bool
    param: float
    span: float
    live: int
    def __init__(self, kind: int, damped: bool, param: float, span: float,
                 max_events: int) -> None: ...
    def run(
        self,
        slots: npt.NDArray[np.int32],
        times: npt.NDArray[np.float64],
        vals: npt.NDArray[np.float64],
        hashes: npt.NDArray[np.uint64],
        push: npt.NDArray[np.uint8],
        out: npt.NDArray[np.float64],
        newest: npt.NDArray[np.float64],
        touch: npt.NDArray[np.int64],
        dirty: npt.NDArray[np.uint8],
        seq: int,
        expire: npt.NDArray[np.float64],
    ) -> None: ...
    def is_live(self, i: int) -> bool: ...
    def clear(self, slots: npt.NDArray[np.int64]) -> None: ...
    def compact(self, keep: npt.NDArray[np.int64]) -> None: ...
    def nbytes(self) -> int: ...
    def variable_bytes(self) -> int: ...
    def load_raw(self, i: int, buf: bytes | memoryview, off: int, size: int) -> None: ...
    def dump(self, i: int) -> list[Any]: ...
    def load(self, i: int, dumped: list[Any]) -> None: ...
