"""Scoring recorded files without a broker: ``stream score`` and ``stream evaluate``.

Records are read with ``stream.ingest.files``, encoded as the consumer would
receive them, and pushed through the same ``process_batch`` as the consumer:
same decode, routing, models, thresholds and alert format. An alert's
``source`` names the file (as ``topic``), partition 0 and the line number
(as ``offset``).
"""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from stream.config import Settings
from stream.consumer.batch import BatchOutcome, process_batch
from stream.ingest.files import FieldMapping, iter_records
from stream.ingest.schemas import WIRE_FORMS
from stream.ingest.where import Where
from stream.models.table import ModelTable
from stream.ops.failures import ModelsNotLoaded
from stream.outcomes.dedup import dedup_of
from stream.outcomes.reasons import REASONS
from stream.outcomes.records import LEVEL_CODES, dead_letter_json
from stream.outcomes.risk import risk_of
from stream.outcomes.suppress import RuleSet
from stream.state.store import WindowStore

#: Distinct (reason, detail) pairs a summary counts.
MAX_DETAILS = 1000
#: How long a model load may take before ``stream score`` gives up on it.
LOAD_WAIT_S = 120.0


@dataclass
class ScoreSummary:
    """Totals of one offline scoring run."""

    records: int = 0
    scored: int = 0
    alerts: int = 0
    unreadable: list[tuple[str, int, str]] = field(default_factory=list)
    dead_letters: Counter[str] = field(default_factory=Counter)
    alerts_by_level: Counter[str] = field(default_factory=Counter)
    filtered: int = 0  # records --where left out
    late: Counter[str] = field(default_factory=Counter)  # per tenant: see accounting.LATE_WHAT
    # (reason, detail) -> records: what the summary names (bounded: details are per row).
    details: Counter[tuple[str, str]] = field(default_factory=Counter)

    def note_details(self, outcome: BatchOutcome) -> None:
        d = outcome.decoded
        for i in outcome.rejected_rows.tolist():
            key = (REASONS[int(d.reason[i])], d.detail.get(i, ""))
            if key in self.details or len(self.details) < MAX_DETAILS:
                self.details[key] += 1


def _batches(
    paths: Sequence[Path],
    *,
    fmt: str | None,
    mapping: FieldMapping | None,
    tenant: str | None,
    batch_size: int,
    summary: ScoreSummary,
    raw: bool,
) -> Iterator[tuple[str, list[bytes], np.ndarray]]:
    for path in paths:
        values: list[bytes] = []
        lines: list[int] = []
        rows = iter_records(path, fmt=fmt, mapping=mapping, tenant=tenant, raw=raw)
        for line_no, record, reason in rows:
            if record is None:
                summary.unreadable.append((str(path), line_no, reason or "unreadable"))
                continue
            values.append(orjson.dumps(record, option=orjson.OPT_NON_STR_KEYS))
            lines.append(line_no)
            if len(values) >= batch_size:
                yield path.name, values, np.asarray(lines, dtype=np.int64)
                values, lines = [], []
        if values:
            yield path.name, values, np.asarray(lines, dtype=np.int64)


def score_batches(
    paths: Sequence[Path],
    table: ModelTable,
    settings: Settings,
    *,
    min_level: str = "medium",
    fmt: str | None = None,
    mapping: FieldMapping | None = None,
    tenant: str | None = None,
    batch_size: int = 10000,
    summary: ScoreSummary | None = None,
    rules: RuleSet | None = None,
) -> Iterator[BatchOutcome]:
    """Outcomes of every batch of ``paths``, scored exactly as the consumer would.

    The records are read in the sensor schema of ``settings.input_schema`` (a Zeek file
    keeps its own field names when the schema says zeek), and each event's tenant is
    ``tenant`` when given, else as ``settings.tenant_from`` says (a field, or a constant;
    files have no message keys or headers). ``rules``: the suppression rules in force
    (as of now: their expiry is read against the clock, as the consumer reads it).
    """
    summary = summary if summary is not None else ScoreSummary()
    level = LEVEL_CODES[min_level]
    where = Where.parse(settings.where) if settings.where else None
    src = settings.tenant_source
    if src.kind in ("key", "header"):
        raise ValueError(f"--tenant-from {src.kind}: files have no message keys or headers")
    # --tenant writes tenant_id into every record (as replay does); --tenant-from
    # const:T, like the consumer, leaves the records as they are.
    const = src.name if src.kind == "const" and tenant is None else None
    tenant_field = src.name if src.kind == "field" and tenant is None else "tenant_id"
    risk = risk_of(settings)
    dedup = dedup_of(settings)
    # One window state for the whole run: files are read in order, as a replay sends them.
    store = WindowStore(lateness=settings.lateness, ttl=settings.state_ttl,
                        max_bytes=int(settings.state_max_mb * 2**20))
    for name, values, lines in _batches(
        paths, fmt=fmt, mapping=mapping, tenant=tenant, batch_size=batch_size, summary=summary,
        raw=settings.input_schema != "native",
    ):
        for attempt in range(3):
            outcome = process_batch(
                values,
                table.resolve,
                topic=name,
                partitions=np.zeros(len(values), dtype=np.int64),
                offsets=lines,
                min_level=level,
                max_bytes=settings.max_message_bytes,
                # A file's records are already read from their wire form (a goflow2 .pb
                # file's, say): the schema that reads them is the one of that form's JSON.
                schema=WIRE_FORMS.get(settings.input_schema, settings.input_schema),
                tenant_field=tenant_field,
                tenants=None if const is None else [const] * len(values),
                store=store,
                where=where,
                risk=risk,
                rules=rules,
                emit_suppressed=settings.emit_suppressed,
                dedup=dedup,
            )
            if not outcome.waiting:
                break
            # A model still loading (or failed): wait for the loads, then try once more.
            if attempt == 2 or not table.wait_for_loads(LOAD_WAIT_S):
                raise ModelsNotLoaded(
                    f"cannot score {name}: models not loaded from the registry at "
                    f"{table.where}: {', '.join(map(str, outcome.waiting[:3]))}")
        store.maintain()
        summary.records += outcome.n
        summary.filtered += outcome.filtered
        summary.scored += outcome.scored
        summary.alerts += len(outcome.alerts)
        summary.dead_letters.update(outcome.reason_counts())
        summary.late.update(outcome.decoded.late_by)
        summary.note_details(outcome)
        for (_tenant, lv), n in outcome.alert_counts().items():
            summary.alerts_by_level[lv] += n
        yield outcome


def score_to_file(
    paths: Sequence[Path],
    table: ModelTable,
    settings: Settings,
    output: str,
    *,
    dead_letters: str | None = None,
    entity_alerts: str | None = None,
    **kwargs: Any,
) -> ScoreSummary:
    """Alerts as JSON lines to ``output`` ('-' = stdout); rejected records to
    ``dead_letters``; entity alerts (``stream.outcomes.risk``: one line per alert whose entity's
    risk is at or above the threshold, as the entity alert topic gets them) to
    ``entity_alerts``."""
    summary = ScoreSummary()
    with contextlib.ExitStack() as stack:
        out: IO[bytes] = (
            sys.stdout.buffer if output == "-" else stack.enter_context(open(output, "wb"))
        )
        dlq: IO[bytes] | None = (
            stack.enter_context(open(dead_letters, "wb")) if dead_letters else None
        )
        ent: IO[bytes] | None = (
            stack.enter_context(open(entity_alerts, "wb")) if entity_alerts else None
        )
        for outcome in score_batches(paths, table, settings, summary=summary, **kwargs):
            for alert in outcome.alerts:
                out.write(alert + b"\n")
            if ent is not None:
                for _key, value in outcome.entity_records:
                    ent.write(value + b"\n")
            if dlq is not None:
                # The same fields the dead-letter topic carries in headers (file = topic,
                # partition 0, line number = offset), then the original bytes.
                d = outcome.decoded
                for i in outcome.rejected_rows.tolist():
                    dlq.write(
                        dead_letter_json(
                            REASONS[int(d.reason[i])],
                            d.detail.get(i, ""),
                            outcome.topic,
                            int(outcome.partitions[i]),
                            int(outcome.offsets[i]),
                            d.values[i],
                        )
                        + b"\n"
                    )
    return summary


def collect_for_evaluation(
    paths: Sequence[Path],
    table: ModelTable,
    settings: Settings,
    label_field: str,
    **kwargs: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Any], ScoreSummary]:
    """Tenants, scores, levels and raw label values of every scored record."""
    summary = ScoreSummary()
    tenants: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    levels: list[np.ndarray] = []
    labels: list[Any] = []
    for outcome in score_batches(
        paths, table, settings, summary=summary, min_level="critical", **kwargs
    ):
        rows = np.flatnonzero(outcome.levels >= 0)
        docs = outcome.decoded.docs
        tenants.append(np.asarray(outcome.decoded.tenants, dtype=object)[rows])
        scores.append(outcome.scores[rows])
        levels.append(outcome.levels[rows].astype(np.int64))
        labels.extend(docs[i].get(label_field) for i in rows.tolist())
    if not scores:
        empty = np.empty(0)
        return empty.astype(object), empty, empty.astype(np.int64), [], summary
    return (
        np.concatenate(tenants),
        np.concatenate(scores),
        np.concatenate(levels),
        labels,
        summary,
    )
