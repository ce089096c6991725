"""Event times: a record's timestamp field as seconds since the epoch.

Recorded flows carry time as ISO 8601 text (JSONL, Parquet after reading) or
as epoch seconds (Zeek ``ts``, CSV). Pacing by recorded gaps needs one number
for both, and so will event-time windows.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any, Final

#: Text that is a number (also what the file readers take as one).
FLOAT_RE: Final = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?")

__all__ = ["FLOAT_RE", "epoch_seconds"]


def epoch_seconds(value: Any) -> float | None:
    """Seconds since the epoch from an ISO 8601 string or a number of seconds; None if neither."""
    # bool is an int to Python, but True is not a moment in 1970.
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, datetime):
        stamp = value
    elif isinstance(value, str):
        text = value.strip()
        # Epoch seconds written as text (a CSV cell, a quoted JSON value).
        if FLOAT_RE.fullmatch(text):
            return float(text)
        try:
            stamp = datetime.fromisoformat(text)
        except ValueError:
            return None
    else:
        return None
    if stamp.tzinfo is None:
        # A time without a zone is taken as UTC, as the Parquet reader does.
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()
