"""Deduplication: at most one published alert per tenant, entity and behaviour per window.

A scan of a thousand ports is a thousand alerts that say the same thing: this host,
this behaviour, again. With ``--dedup-window SECONDS``, an alert is published only if
no alert of its tenant, entity (``--incident-by``, default ``src_ip``) and leading
feature (the first of its explanation; none for a model without a baseline) was
published in the window before it, in event time. The alerts it stands for are not
published, but they still add risk and join incidents (an entity's episode and an
incident count every alert), and they are counted (``stream_deduplicated_total``).
Each published alert says the window, and the next one of the same key how many the
previous one stood for (itself included):

    "dedup": {"window": 300.0, "previous_alert_id": "flows/0/17", "previous_count": 41}

The state per key (the window's start, its first alert, and the count) is a note in
the window store (:meth:`~stream.state.store.WindowStore.set_note`): committed with the
batch in the changelog, restored after a restart, and the same in ``stream score``,
so a replay publishes the same alerts as the stream did. Off (0) by default: every
alert is published, as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from stream.features.columns import ColumnSource
from stream.state.store import event_times

__all__ = ["Dedup", "dedup_of"]


@dataclass(frozen=True)
class Dedup:
    """``--dedup-window`` seconds of event time per (tenant, ``by``, leading feature)."""

    window: float
    by: str = "src_ip"
    timestamp_field: str = "timestamp"

    def apply(self, source: ColumnSource, rows: Sequence[int], tenants: Sequence[str],
              leads: Mapping[int, str], store: Any, scopes: np.ndarray | None,
              alert_ids: Callable[[int], str]) -> tuple[set[int], dict[int, bytes]]:
        """(the rows not to publish, and the ``,"dedup":{...}`` member of each published
        row: the window, and what the previous alert of its key stood for). Rows whose
        entity or time cannot be read are always published, as they are."""
        dropped: set[int] = set()
        members: dict[int, bytes] = {}
        if not len(rows):
            return dropped, members
        entities, codes = source.strings(self.by)
        times = event_times(source, self.timestamp_field)[0]
        for i in rows:
            t = float(times[i])
            if codes[i] != 0 or not math.isfinite(t):
                continue
            sc = 0 if scopes is None else int(scopes[i])
            key = f"dedup\x1f{tenants[i]}\x1f{self.by}={entities[i]}\x1f{leads.get(i, '')}"
            note = store.note(sc, key)
            if not (isinstance(note, dict) and isinstance(note.get("start"), float | int)
                    and isinstance(note.get("count"), int)):
                note = None  # none, or not one of ours (restored from another build)
            if note is not None and abs(t - note["start"]) < self.window:
                note["count"] += 1
                store.set_note(sc, key, note)
                dropped.add(i)
                continue
            said: dict[str, Any] = {"window": self.window}
            if note is not None:
                said.update(previous_alert_id=note["alert_id"], previous_count=note["count"])
            members[i] = b',"dedup":' + orjson.dumps(said)
            store.set_note(sc, key, {"start": t, "count": 1, "alert_id": alert_ids(i)})
        return dropped, members


def dedup_of(settings: Any) -> Dedup | None:
    """The deduplication a ``Settings`` asks for (None with ``--dedup-window 0``)."""
    if not settings.dedup_window:
        return None
    return Dedup(float(settings.dedup_window), settings.incident_by)
