"""Process-wide logging: readable text by default, JSON lines with ``--log-format json``.

``BurstLog`` turns a condition that recurs batch after batch (dead letters) into one
line when it starts and then at most one summary line per interval, so a steady
trickle of bad records cannot flood the logs; the exact counts are in the metrics.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__
) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, ``extra`` fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and key not in doc:
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        # default=str: an extra field that JSON cannot hold still yields a valid line.
        return orjson.dumps(doc, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


class _LibraryTracebacks(logging.Filter):
    """A library's own error line without its traceback: MLflow logs a whole SQLAlchemy
    chain (about a hundred lines) at ERROR before raising the exception that our code
    then reports in one line. The traceback stays available with --log-level DEBUG."""

    LIBRARIES = ("mlflow", "sqlalchemy", "alembic", "urllib3", "skops")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.name.split(".", 1)[0] in self.LIBRARIES:
            record.exc_info = None
            record.exc_text = None
            lines = record.getMessage().splitlines()
            record.msg, record.args = (lines[0] if lines else ""), ()
        return True


def setup(fmt: str = "text", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if level > logging.DEBUG:
        handler.addFilter(_LibraryTracebacks())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Python warnings (e.g. a library's deprecation notice) would otherwise be printed
    # straight to stderr: a plain-text line in the middle of the JSON lines.
    logging.captureWarnings(True)
    # MLflow and alembic are chatty at INFO; their warnings still come through, and
    # everything they say with --log-level DEBUG.
    for noisy in ("mlflow", "alembic", "urllib3", "skops", "py.warnings"):
        logging.getLogger(noisy).setLevel(logging.WARNING if level > logging.DEBUG
                                          else logging.NOTSET)


class _MlflowPrints:
    """Where MLflow's ``eprint`` writes once routed: each line to the ``mlflow.print`` logger."""

    enabled = True

    def __init__(self) -> None:
        self._log = logging.getLogger("mlflow.print")

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                self._log.info(line)
        return len(text)

    def flush(self) -> None:
        return None


def route_mlflow_prints() -> None:
    """MLflow's plain prints ("Successfully registered model ...") through our logging.

    MLflow prints some messages straight to stderr (``eprint``), whatever its logger
    says: under ``--log-format json`` they were the lines that were not JSON, and
    they showed without ``-v``. Routed, they are INFO records of ``mlflow.print``
    (shown with ``--log-level DEBUG`` like MLflow's other INFO lines). Called where
    stream uses MLflow, after it is imported: importing it here would cost every
    command a second and more.
    """
    mod = sys.modules.get("mlflow.utils.logging_utils")
    if mod is not None and not isinstance(getattr(mod, "MLFLOW_LOGGING_STREAM", None),
                                          _MlflowPrints):
        setattr(mod, "MLFLOW_LOGGING_STREAM", _MlflowPrints())  # noqa: B010 - not typed


#: Kinds a BurstLog line names (the JSON form carries them all).
SHOWN_KINDS = 10


class BurstLog:
    """Logs a recurring condition once when it starts, then one summary per ``interval``.

    ``add`` is called for every occurrence (e.g. every batch that had dead letters) with
    its counts by kind. The first occurrence after a quiet ``interval`` is logged at once;
    later ones are summed and logged together by the first ``add`` after ``interval`` has
    passed, or by ``flush`` (call it at shutdown). JSON logs carry the counts as fields.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        interval: float = 30.0,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0, got {interval}")
        self._log = logger
        self._what = what
        self._interval = interval
        self._level = level
        self._clock = clock
        self._last_line = -float("inf")
        self._counts: Counter[str] = Counter()
        self._occurrences = 0
        self._records = 0
        self._since = 0.0
        self.lines = 0  # lines written, for tests and the final summary

    def add(self, counts: Mapping[str, int], records: int) -> None:
        """One occurrence: ``counts`` by kind among ``records`` records (e.g. one batch)."""
        if not counts:
            return
        now = self._clock()
        if not self._occurrences:
            self._since = now
        self._counts.update(counts)
        self._occurrences += 1
        self._records += records
        if now - self._last_line >= self._interval:
            self._emit(now)

    def flush(self) -> None:
        """Log what was summed since the last line, if anything."""
        if self._occurrences:
            self._emit(self._clock())

    def _emit(self, now: float) -> None:
        n = sum(self._counts.values())
        counts = dict(self._counts.most_common())
        # Kinds can be tenants: the line names the largest few.
        shown = dict(self._counts.most_common(SHOWN_KINDS))
        more = f" and {len(counts) - len(shown)} more" if len(counts) > len(shown) else ""
        if self._occurrences == 1:
            text = f"{self._what} {n} of {self._records} records: {shown}{more}"
        else:
            text = (
                f"{self._what} {n} of {self._records} records in {self._occurrences} batches "
                f"over {now - self._since:.0f}s: {shown}{more}"
            )
        self._log.log(
            self._level,
            "%s",
            text,
            extra={"counts": counts, "records": self._records, "batches": self._occurrences},
        )
        self.lines += 1
        self._last_line = now
        self._counts.clear()
        self._occurrences = 0
        self._records = 0
