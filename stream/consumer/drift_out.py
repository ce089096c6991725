"""Drift snapshots to ``--drift-topic``, for the console's drift charts.

A snapshot (``stream.ops.drift.snapshot_record``) is monitoring, not a result: it is
written outside the batch's transaction by a plain producer of its own, keyed by tenant,
after the batch it describes committed. One per tenant each time its drift window fills
(every half window), so a few records a minute at most. A write that fails is counted
and said once at WARNING; it is not retried (the next snapshot follows soon) and never
holds up a batch.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import orjson

from stream.config import Settings
from stream.kafka.clients import new_producer, producer_config

log = logging.getLogger(__name__)

__all__ = ["DriftOut"]


class DriftOut:
    """``publish(tenant, record)`` writes to ``settings.drift_topic``; ``close`` flushes."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.drift_topic
        self.producer = new_producer(producer_config(settings))
        self.sent = 0
        self.failed = 0
        self._warned = False
        self._lock = threading.Lock()

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is None:
            return
        with self._lock:
            self.failed += 1
            if not self._warned:
                self._warned = True
                log.warning("drift snapshots: cannot write to %s (%s); the console's drift "
                            "charts miss them meanwhile", self.topic, err)

    def publish(self, tenant: str, record: dict[str, Any]) -> None:
        try:
            self.producer.produce(self.topic, orjson.dumps(record), key=tenant.encode(),
                                  on_delivery=self._delivered)
            self.sent += 1
        except Exception as e:  # a full queue included: never hold up the stream for monitoring
            self._delivered(e, None)
        self.producer.poll(0)

    def close(self, timeout: float = 5.0) -> None:
        self.producer.flush(timeout)
