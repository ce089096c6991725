"""HeapFreezer: the long-lived heap is frozen once, and again only after the model set changed."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from stream.consumer.heap import HeapFreezer


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    yield
    gc.unfreeze()


def test_freezes_at_first_then_only_after_a_change() -> None:
    changes = [0]
    h = HeapFreezer(lambda: changes[0])
    assert h.maybe_freeze() is True
    frozen = gc.get_freeze_count()
    assert frozen > 1000  # this interpreter's modules, at least
    assert h.maybe_freeze() is False
    kept = [[i] for i in range(5000)]  # long-lived objects made after the first freeze
    changes[0] += 1  # a model was installed
    assert h.maybe_freeze() is True
    assert gc.get_freeze_count() >= frozen + len(kept)
    assert h.freezes == 2


def test_young_collection_frees_cycles_made_since_the_last_freeze() -> None:
    changes = [0]
    h = HeapFreezer(lambda: changes[0])
    h.maybe_freeze()

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # type: ignore[attr-defined]
    del a, b
    changes[0] += 1
    h.maybe_freeze()
    assert not any(type(o) is Node for o in gc.get_objects())


def test_full_collection_after_the_window_when_models_changed() -> None:
    changes = [0]
    h = HeapFreezer(lambda: changes[0], full_every=0.0)
    h.maybe_freeze()

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # type: ignore[attr-defined]
    changes[0] += 1
    h.maybe_freeze()  # young: the pair is still referenced, so it is frozen
    del a, b  # now a cycle among frozen objects: only a full collection frees it
    gc.collect()  # walks the unfrozen generations only: the frozen pair survives
    gc.unfreeze()
    assert sum(type(o) is Node for o in gc.get_objects()) == 2
    gc.freeze()
    assert h.maybe_freeze() is True  # window passed with a change since the last full one
    gc.unfreeze()
    assert not any(type(o) is Node for o in gc.get_objects())
