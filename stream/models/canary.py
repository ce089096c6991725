"""The canary: a few recent real events, overall and per tenant, and the check a new
model version must pass on them before it serves.

The batches hand their valid events over (as they decoded them: nothing is parsed
again); a version is refused unless at least one event of its own tenant (else of any
tenant) carries every feature it declares and all those that do score to finite
numbers. Events under a thousand made-up tenant ids cannot push out the events a
served tenant's next version is checked on: beyond ``MAX_CANARY_TENANTS`` the tenants
that go first are those without a model of their own.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from stream.features import RecordColumns
from stream.ingest.view import columns_for
from stream.registry import LoadedModel, ModelLoadError

__all__ = ["CANARY_PER_TENANT", "MAX_CANARY_TENANTS", "Canary"]

#: Tenants whose recent events are kept as their own canary batch.
MAX_CANARY_TENANTS = 1024
CANARY_PER_TENANT = 8


class Canary:
    """Recent events (``size`` overall, ``CANARY_PER_TENANT`` per tenant) and the check.

    Thread-safe: the consumer thread remembers, the loader threads check.
    """

    def __init__(self, size: int = 64, schema: str = "native") -> None:
        # The sensor schema of the events (--input-schema): they are read through it.
        self.schema = schema
        self._lock = threading.Lock()
        self._recent: deque[Any] = deque(maxlen=size)
        self.by_tenant: OrderedDict[str, deque[Any]] = OrderedDict()

    def __len__(self) -> int:
        """Recent events kept overall."""
        return len(self._recent)

    def remember(self, tenants: Sequence[str], docs: Sequence[Any],
                 served: Callable[[str], bool]) -> None:
        """Keep ``docs`` (the batch's valid events, ``tenants`` their tenant ids);
        ``served(tenant)``: whether the tenant has a model of its own (kept first)."""
        with self._lock:
            self._recent.extend(docs)
            for t, doc in zip(tenants, docs, strict=True):
                q = self.by_tenant.get(t)
                if q is None:
                    q = self.by_tenant[t] = deque(maxlen=CANARY_PER_TENANT)
                    if len(self.by_tenant) > MAX_CANARY_TENANTS:
                        self._drop_one(served)
                else:
                    self.by_tenant.move_to_end(t)
                q.append(doc)

    def _drop_one(self, served: Callable[[str], bool]) -> None:
        """The least recently seen tenant without a model of its own goes (else the least
        recently seen one); caller holds the lock."""
        for t in self.by_tenant:
            if not served(t):
                del self.by_tenant[t]
                return
        self.by_tenant.popitem(last=False)

    def check(self, model: LoadedModel, tenant: str | None) -> None:
        """Refuse (``ModelLoadError``) a version that cannot score recent real events to
        finite numbers; ``tenant`` is the model's own tenant (None: the global model).
        Before any traffic has been seen the model only has to score a synthetic row."""
        source = f"models:/{model.name}/{model.version}"
        with self._lock:
            own = list(self.by_tenant.get(tenant, ())) if tenant is not None else []
            sample = own or list(self._recent)
        if sample:
            computed = model.spec.compute(columns_for(RecordColumns(sample), self.schema))
            ok = computed.reason == 0
            X = computed.X[ok]
            if len(X) == 0:
                whose = f"of tenant {tenant}" if own else "of any tenant"
                reasons = sorted(set(computed.detail.values()))[:3]
                raise ModelLoadError(
                    f"{source}: declares features {list(model.spec.names)} but none of "
                    f"{len(sample)} recent events {whose} has them ({'; '.join(reasons)})"
                )
        else:
            X = np.zeros((1, len(model.features)))
        try:
            scores = np.asarray(model.score(X), dtype=np.float64)
        except Exception as e:
            raise ModelLoadError(f"{source}: canary scoring failed: {e}") from e
        if scores.shape != (len(X),) or not np.all(np.isfinite(scores)):
            raise ModelLoadError(f"{source}: canary scores are not {len(X)} finite numbers")
