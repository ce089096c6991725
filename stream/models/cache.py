"""The loaded model versions: production per model name, least recently used first, and
the challenger shadow-scored beside each.

Bounded: past ``size`` production versions the least recently used goes (its challenger
with it), the global model never (tenants without a model of their own need it). No
lock of its own: the model table (``stream.models.table``) calls it under its lock.
"""

from __future__ import annotations

from collections import OrderedDict

from stream.registry import LoadedModel


class ModelCache:
    """Production versions in LRU order and their challengers; see the module docstring."""

    def __init__(self, base_name: str, size: int) -> None:
        self.base_name = base_name
        self.size = max(1, size)
        self.production: OrderedDict[str, LoadedModel] = OrderedDict()  # LRU order
        self.challengers: dict[str, LoadedModel] = {}
        self.evictions = 0
        # Bumped whenever a model enters or leaves (heap.HeapFreezer watches it).
        self.changes = 0

    def get(self, name: str) -> LoadedModel | None:
        return self.production.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self.production

    def touch(self, name: str) -> None:
        """``name`` was just used: the last to be evicted."""
        if name in self.production:
            self.production.move_to_end(name)

    def put(self, model: LoadedModel) -> LoadedModel | None:
        """Serve ``model`` for its name; the version it replaces, if any."""
        old = self.production.get(model.name)
        self.production[model.name] = model
        self.production.move_to_end(model.name)
        self.changes += 1
        self.evict()
        return old

    def drop(self, name: str) -> LoadedModel:
        """``name`` lost its production version: no longer served."""
        self.changes += 1
        return self.production.pop(name)

    def put_challenger(self, model: LoadedModel) -> LoadedModel | None:
        old = self.challengers.get(model.name)
        self.challengers[model.name] = model
        self.changes += 1
        return old

    def end_challenger(self, name: str) -> None:
        del self.challengers[name]

    def evict(self) -> None:
        while len(self.production) > self.size:
            victim = next((n for n in self.production if n != self.base_name), None)
            if victim is None:
                break
            del self.production[victim]
            self.challengers.pop(victim, None)
            self.evictions += 1
            self.changes += 1

    def room(self) -> int:
        return self.size - len(self.production)
