"""Getting a scored batch out and its offsets committed: one class per delivery mode.

``Delivery`` is the whole interface the consume loop sees:

- ``settle(batch, waiter, deadline)``: produce the batch's records, wait for every
  acknowledgement, commit; the batch ends ``DONE`` (committed) or ``FAILED``
  (nothing of it committed). Never raises for a failed batch, only for a fatal
  client error.
- ``abandon(batch, waiter, deadline)``: give an open batch up (its partitions were
  lost): nothing of it is committed.
- ``after_failure(batch)``: repair what the failure showed (a replaced producer).
- ``rewind_targets(batch, owned)``: where each owned partition of a failed batch is
  redone from.

``AtLeastOnce`` and ``Transactional`` each write their commit steps as numbered
steps in the docstring and again as comments in ``settle``. Both share
``outbox.send`` (produce, wait for acknowledgements, pause while stalled).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stream.config import Settings
from stream.delivery.at_least_once import AtLeastOnce
from stream.delivery.inflight import (
    Batch,
    BatchState,
    Delivery,
    DeliveryError,
    InCallback,
    ProducerStuck,
    Record,
    Waiter,
)
from stream.delivery.transactional import Transactional

__all__ = [
    "AtLeastOnce",
    "Batch",
    "BatchState",
    "Delivery",
    "DeliveryError",
    "InCallback",
    "ProducerStuck",
    "Record",
    "Transactional",
    "Waiter",
    "make_delivery",
]


def make_delivery(
    settings: Settings,
    consumer: Any,
    *,
    heartbeat: Callable[[], None],
    stopping: Callable[[], bool],
    on_wait: Callable[[str, float], None] = lambda why, seconds: None,
) -> Delivery:
    """The delivery of ``settings.delivery``: at-least-once or exactly-once (transactional).

    ``heartbeat`` keeps the liveness probe fresh during long waits; ``stopping`` ends
    retry loops once the process is asked to stop; ``on_wait(why, seconds)`` hears, during
    a wait for the broker outside any batch (a new transactional producer), why and for
    how long it has lasted.
    """
    mode = Transactional if settings.delivery == "exactly-once" else AtLeastOnce
    return mode(settings, consumer, heartbeat=heartbeat, stopping=stopping, on_wait=on_wait)
