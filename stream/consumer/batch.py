"""One micro-batch from raw message values to outcomes, with no I/O.

decode -> route (distinct tenants once, rows grouped by model with index
arrays) -> score (one model call per model version) -> threshold -> encode
alerts. The consumer, ``stream score`` and the benchmarks all call
``process_batch``; only where the values come from and where the outcomes go
differ.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from stream.features.columns import ColumnSource, RecordColumns
from stream.ingest import goflow2pb
from stream.ingest.decode import DecodedBatch, RowSubset, compute_rows
from stream.ingest.schemas import WIRE_FORMS
from stream.ingest.view import columns_for
from stream.ingest.where import Where
from stream.outcomes import reasons
from stream.outcomes.dedup import Dedup
from stream.outcomes.incidents import Incidents
from stream.outcomes.reasons import FILTERED
from stream.outcomes.records import (
    ACTIONABLE_LEVEL,
    LEVEL_NAMES,
    alert_id,
    encode_alerts,
    model_ref,
    utc_now_iso,
)
from stream.outcomes.risk import Risk, close_covered, event_summaries
from stream.outcomes.suppress import RuleSet
from stream.registry import LoadedModel, NotLoaded
from stream.scoring.thresholds import threat_levels
from stream.state.store import WindowStore

Resolver = Callable[[Sequence[str]], list[LoadedModel | NotLoaded | None]]


@dataclass
class ShadowResult:
    """Challenger vs production on the same rows of one batch, for one model."""

    model: str
    production_version: str
    challenger_version: str
    tenant: str
    rows: int
    agree: int
    score_diff_sum: float

    def encode(self) -> bytes:
        """The record on ``--shadow-topic``."""
        return orjson.dumps(self.__dict__)


@dataclass
class BatchOutcome:
    """What became of every row: scored (with level) or rejected (with reason)."""

    decoded: DecodedBatch
    topic: str
    partitions: np.ndarray
    offsets: np.ndarray
    scores: np.ndarray
    levels: np.ndarray  # -1 for rejected rows
    model_index: np.ndarray  # index into ``models``, -1 for rejected rows
    models: list[LoadedModel]
    alert_rows: np.ndarray
    alerts: list[bytes]
    shadow: list[ShadowResult] = field(default_factory=list)
    # Batch row -> the alert's explanation (actionable alerts of models with a baseline).
    explanations: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    # Per model: (its index, the rows it scored, their inputs, their scores): for drift.
    inputs: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    min_level: int = 1  # the lowest level that made an alert
    source: ColumnSource | None = None  # the batch's columns as its sensor schema reads them
    # (key, value) records of the incidents this batch changed (with --incident-topic).
    incident_records: list[tuple[bytes, bytes]] = field(default_factory=list)
    #: Entity alerts (stream.outcomes.risk): (key, JSON) of the alerts whose entity's risk is at or
    #: above the threshold, the first of them "raised", the later "updated".
    entity_records: list[tuple[bytes, bytes]] = field(default_factory=list)
    # Batch row -> the suppression rule its alert matched (not published unless marked).
    suppressed: dict[int, str] = field(default_factory=dict)
    suppressed_emitted: bool = False  # with --emit-suppressed: they are among the alerts
    deduplicated: int = 0  # alerts --dedup-window left unpublished (counted, not lost)
    # Models that should score some of its rows but are not loaded: the batch was not
    # scored at all (no state touched) and must wait, never be committed or dead-lettered.
    waiting: list[NotLoaded] = field(default_factory=list)

    @property
    def n(self) -> int:
        return self.decoded.n

    @property
    def rejected_rows(self) -> np.ndarray:
        """Rows that become dead letters (rows ``--where`` filtered out do not)."""
        r = self.decoded.reason
        return np.flatnonzero((r != reasons.OK) & (r != FILTERED))

    def unalert(self, failed: dict[int, str], code: int) -> None:
        """Rows whose alert could not be written: dead letters with ``code`` instead."""
        keep = [k for k, i in enumerate(self.alert_rows.tolist()) if i not in failed]
        self.alerts = [self.alerts[k] for k in keep]
        self.alert_rows = self.alert_rows[keep]
        for i, why in failed.items():
            self.levels[i] = -1
            self.decoded.reason[i] = code
            self.decoded.detail[i] = why

    @property
    def filtered(self) -> int:
        """Rows ``--where`` left out."""
        return int(np.count_nonzero(self.decoded.reason == FILTERED))

    @property
    def scored(self) -> int:
        return int(np.count_nonzero(self.levels >= 0))

    def reason_counts(self) -> Counter[str]:
        r = self.decoded.reason
        codes = r[(r != reasons.OK) & (r != FILTERED)]
        return Counter(
            {
                reasons.REASONS[int(c)]: int(n)
                for c, n in zip(*np.unique(codes, return_counts=True), strict=True)
            }
        )

    def alert_counts(self) -> Counter[tuple[str, str]]:
        """(tenant, level name) -> alerts in this batch."""
        tenants = self.decoded.tenants
        return Counter(
            (tenants[i], LEVEL_NAMES[lv])
            for i, lv in zip(
                self.alert_rows.tolist(), self.levels[self.alert_rows].tolist(), strict=True
            )
        )


def group_rows(codes: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(code, row indices) for each distinct non-negative code, rows in ascending order."""
    valid = codes >= 0
    if not valid.any():
        return []
    order = np.argsort(codes, kind="stable")
    order = order[valid[order]]
    sorted_codes = codes[order]
    bounds = np.flatnonzero(np.diff(sorted_codes)) + 1
    return [(int(codes[g[0]]), g) for g in np.split(order, bounds) if len(g)]


def process_batch(
    values: Sequence[bytes | None],
    resolve: Resolver,
    *,
    topic: str,
    partitions: np.ndarray,
    offsets: np.ndarray,
    min_level: int = 1,
    max_bytes: int = 1_000_000,
    challenger: Callable[[LoadedModel], LoadedModel | None] | None = None,
    schema: str = "native",
    tenant_field: str = "tenant_id",
    tenants: Sequence[object] | None = None,
    store: WindowStore | None = None,
    incidents: Incidents | None = None,
    where: Where | None = None,
    risk: Risk | None = None,
    rules: RuleSet | None = None,
    emit_suppressed: bool = False,
    dedup: Dedup | None = None,
    closing: RuleSet | None = None,
) -> BatchOutcome:
    """Decode, route, score, threshold and encode alerts for one batch of message values.

    ``where`` (``--where``) leaves out the records that are not events to score. ``schema``
    names the sensor schema the events are in (``--input-schema``); the
    tenant of an event is its ``tenant_field``, or ``tenants`` when given (taken from
    the message key, a header or a constant: ``--tenant-from``). Alerts that a suppression
    rule of ``rules`` matches are left out (published marked with ``emit_suppressed``),
    before they join incidents or add risk. Window features keep
    their state in ``store`` (a ``WindowStore``), scoped by input partition; with
    ``incidents`` (``stream.outcomes.incidents.Incidents``) actionable alerts join incidents,
    staged until the caller commits or rolls them back. With ``dedup``
    (``--dedup-window``), alerts an earlier one of their entity and behaviour stands for
    are not published (they still join incidents and add risk). ``closing``: rules
    added since the last batch; the open incidents and entity episodes all of whose alerts
    one covers are closed first (their records say ``closed_by``).
    """
    unreadable: dict[int, str] = {}
    if schema in WIRE_FORMS:  # goflow2's protobuf: the records of its JSON
        values, unreadable = goflow2pb.as_json(values)
    batch = DecodedBatch(values, max_bytes, tenant_field=tenant_field, tenants=tenants)
    for i, detail in unreadable.items():
        batch.reject([i], reasons.MALFORMED_PROTOBUF, detail, first_wins=False)
    source = columns_for(batch, schema)
    if where is not None:
        # Records the filter leaves out are not events: skipped, never dead-lettered.
        left_out = ~where.mask(source) & (batch.reason == reasons.OK)
        batch.reason[left_out] = FILTERED
    n = batch.n
    scores = np.full(n, np.nan)
    levels = np.full(n, -1, dtype=np.int8)
    model_index = np.full(n, -1, dtype=np.int32)
    models: list[LoadedModel] = []
    shadow: list[ShadowResult] = []
    explanations: dict[int, list[dict[str, Any]]] = {}
    inputs: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
    explain_from = max(min_level, ACTIONABLE_LEVEL)

    uniques, tenant_codes, row_model, waiting = _route(batch, resolve, models)
    if waiting:
        return BatchOutcome(batch, topic, partitions, offsets, scores, levels, model_index,
                            models, np.empty(0, dtype=np.int64), [], waiting=waiting)
    for mi, rows in group_rows(row_model):
        model = models[mi]
        X, good = compute_rows(batch, source, rows, model.spec, store=store, scopes=partitions)
        if len(good) == 0:
            continue
        try:
            s = model.score(X)
        except Exception as e:
            batch.reject(
                good, reasons.MODEL_ERROR, f"models:/{model.name}/{model.version}: {e}"[:300]
            )
            continue
        scores[good] = s
        lv = threat_levels(s, model.thresholds)
        levels[good] = lv
        model_index[good] = mi
        inputs.append((mi, good, X, s))
        if model.baseline is not None:
            # Explained only where it is read: actionable alerts (about 1% of events).
            act = np.flatnonzero(lv >= explain_from)
            explained = model.baseline.explain(
                X[act], evidence=model.evidence(X[act]) if len(act) else None)
            explanations.update(zip(good[act].tolist(), explained, strict=True))
        if challenger is not None:
            ch = challenger(model)
            if ch is not None:
                shadow.extend(
                    _shadow(source, model, ch, good, X, s, tenant_codes, uniques, store,
                            partitions, batch.tenants)
                )

    alert_rows = np.flatnonzero(levels >= min_level)
    # The alerts' own columns (about 1% of the batch), as the schema reads them: what the
    # rules match on and what an entity's episode shows of its events.
    alerting: ColumnSource | None = None
    alerting_rows = alert_rows.tolist()  # row k of `alerting` is batch row alerting_rows[k]
    if len(alert_rows) and ((rules is not None and len(rules)) or incidents is not None or
                            (risk is not None and store is not None)):
        alerting = columns_for(RecordColumns([batch.doc(i) for i in alert_rows.tolist()]),
                               schema)
    suppressed = _suppressed(rules, alert_rows, alerting, batch.tenants, explanations)
    if suppressed:
        alert_rows = alert_rows[~np.isin(alert_rows, list(suppressed))]
    outcome = BatchOutcome(
        batch, topic, partitions, offsets, scores, levels, model_index, models, alert_rows,
        [], shadow, explanations, inputs, min_level, source, suppressed=suppressed,
    )
    detected_at = utc_now_iso()

    def ids(i: int) -> str:
        return alert_id(topic, int(partitions[i]), int(offsets[i]))

    leads = {i: ex[0]["feature"] for i in alert_rows.tolist()
             if (ex := explanations.get(i)) and "feature" in ex[0]}
    # Deduplicated alerts are not published, but they still join incidents and add risk.
    dropped: set[int] = set()
    members: dict[int, bytes] = {}
    if dedup is not None and store is not None and len(alert_rows):
        dropped, members = dedup.apply(source, alert_rows.tolist(), batch.tenants, leads,
                                       store, partitions, ids)
        outcome.deduplicated = len(dropped)
    # What a rule added since the last batch covers is closed, before this batch's alerts.
    if closing is not None and len(closing):
        if incidents is not None:
            outcome.incident_records.extend(incidents.close(closing))
        if risk is not None and store is not None:
            outcome.entity_records.extend(close_covered(
                store, closing, detected_at, np.unique(partitions).tolist()))
    summaries = (event_summaries(alerting, alerting_rows) if alerting is not None
                 else None)
    joined: dict[int, str] = {}
    if incidents is not None and len(alert_rows):
        records, joined = incidents.add(outcome, source, summaries)
        outcome.incident_records.extend(records)
    # Risk per entity: window state like the features', so only with the window store.
    risks: dict[int, bytes] = {}
    if risk is not None and store is not None and len(alert_rows):
        risks, entity_records = risk.members(
            source, alert_rows, levels, batch.tenants, store, partitions, ids, detected_at,
            thresholds=_budget_thresholds(risk, models, model_index), scores=scores,
            leads=leads, summaries=summaries)
        outcome.entity_records.extend(entity_records)
    if dropped:
        alert_rows = outcome.alert_rows = alert_rows[~np.isin(alert_rows, list(dropped))]
    for i, m in members.items():
        risks[i] = risks.get(i, b"") + m
    if emit_suppressed and suppressed:
        # Published after the others, marked with the rule: no incident, no risk.
        quiet = np.fromiter(suppressed, dtype=np.int64, count=len(suppressed))
        alert_rows = outcome.alert_rows = np.concatenate([alert_rows, quiet])
        outcome.suppressed_emitted = True
        risks.update((i, b',"suppressed_by":' + orjson.dumps(rid))
                     for i, rid in suppressed.items())
    outcome.alerts = encode_alerts(
        topic=topic,
        rows=alert_rows,
        partitions=partitions,
        offsets=offsets,
        tenants=batch.tenants,
        levels=levels,
        scores=scores,
        model_index=model_index,
        models=[model_ref(m.name, m.version) for m in models] if len(alert_rows) else [],
        detected_at=detected_at,
        events=batch.values,
        explanations=explanations,
        incidents=joined,
        risks=risks,
    )
    return outcome


def _suppressed(rules: RuleSet | None, alert_rows: np.ndarray, alerting: ColumnSource | None,
                tenants: Sequence[str], explanations: dict[int, list[dict[str, Any]]],
                ) -> dict[int, str]:
    """Batch row -> the suppression rule its alert matches, read on the alerts' own
    columns (``alerting``, row k for ``alert_rows[k]``)."""
    if rules is None or not len(rules) or not len(alert_rows) or alerting is None:
        return {}
    at = alert_rows.tolist()
    lead = [(explanations.get(i) or [{}])[0].get("feature") for i in at]
    hit = rules.match([tenants[i] for i in at], alerting, lead)
    return {at[k]: rid for k, rid in hit.items()}


def _budget_thresholds(risk: Risk, models: Sequence[LoadedModel], model_index: np.ndarray
                       ) -> np.ndarray | None:
    """Per row, the entity-alert threshold its model's alert budget set (NaN where its
    model has none, or one set for another --risk-by or half-life); None if no model has."""
    own = []
    for m in models:
        b = m.info.get("entity_budget")
        fits = b is not None and b.get("by") == risk.by and b.get("half_life") == risk.half_life
        own.append(float(b["threshold"]) if fits and b is not None else np.nan)
    if not own or np.isnan(own).all():
        return None
    return np.array([*own, np.nan])[model_index]  # -1 (no model) reads the trailing NaN


def _route(
    batch: DecodedBatch, resolve: Resolver, models: list[LoadedModel]
) -> tuple[list[str], np.ndarray, np.ndarray, list[NotLoaded]]:
    """Each usable row's model: (distinct tenants, tenant code per row, index into
    ``models`` per row, -1 for none, the models the batch waits for). Rows of a tenant
    without a model (and no global one) are rejected ``no_model``. Fills ``models``, one
    entry per model version."""
    n = batch.n
    usable = batch.reason == reasons.OK
    # Distinct tenants in first-seen order and a code per row, all in C-level loops.
    uniques = list(dict.fromkeys(batch.tenants))
    index = {t: k for k, t in enumerate(uniques)}
    tenant_codes = np.fromiter(map(index.__getitem__, batch.tenants), dtype=np.int64, count=n)
    tenant_codes = np.where(usable, tenant_codes, -1)
    # Tenants served by the same model version are scored together in one call.
    slot: dict[tuple[str, str], int] = {}
    tenant_to_model = np.full(len(uniques) + 1, -1, dtype=np.int32)
    waiting: dict[str, NotLoaded] = {}
    for ti, model in enumerate(resolve(uniques)):
        if model is None:
            continue
        if isinstance(model, NotLoaded):
            # Only tenants with usable rows count: a batch is not held up by a tenant
            # id that appears only on records that are dead letters anyway.
            if (tenant_codes == ti).any():
                waiting.setdefault(model.name, model)
            continue
        if model.key not in slot:
            slot[model.key] = len(models)
            models.append(model)
        tenant_to_model[ti] = slot[model.key]
    row_model = np.where(tenant_codes >= 0, tenant_to_model[tenant_codes], -1)
    no_model = usable & (row_model < 0)
    if no_model.any():
        batch.reject(
            np.flatnonzero(no_model), reasons.NO_MODEL, "no model for tenant and no global model"
        )
    return uniques, tenant_codes, row_model, list(waiting.values())


def _shadow(
    source: ColumnSource,
    prod: LoadedModel,
    chal: LoadedModel,
    rows: np.ndarray,
    X: np.ndarray,
    prod_scores: np.ndarray,
    tenant_codes: np.ndarray,
    uniques: Sequence[str],
    store: WindowStore | None = None,
    partitions: np.ndarray | None = None,
    tenants: Sequence[str] = (),
) -> list[ShadowResult]:
    """Score the challenger on the same rows; agreement on level and mean score difference.

    The challenger's own feature spec computes its inputs; rows it cannot compute are
    left out of the comparison (shadow scoring changes no outcome). Its windows read
    the production state without changing it (``dry``): the comparison is approximate
    for window features, never a second count of the same events.
    """
    if chal.spec is not prod.spec and not (
        chal.spec.is_plain and prod.spec.is_plain and chal.features == prod.features
    ):
        windowed = chal.spec.windowed
        computed = chal.spec.compute(
            RowSubset(source, rows),
            store=store,
            scopes=None if partitions is None or not windowed else partitions[rows],
            tenants=[tenants[i] for i in rows.tolist()] if windowed else None,
            dry=True,
        )
        keep = computed.reason == reasons.OK
        rows, X, prod_scores = rows[keep], computed.X[keep], prod_scores[keep]
    if len(rows) == 0:
        return []
    try:
        cs = chal.score(X)
    except Exception:
        return []
    pl = threat_levels(prod_scores, prod.thresholds)
    cl = threat_levels(cs, chal.thresholds)
    out = []
    tcodes = tenant_codes[rows]
    for tc in np.unique(tcodes).tolist():
        sel = tcodes == tc
        out.append(
            ShadowResult(
                model=prod.name,
                production_version=prod.version,
                challenger_version=chal.version,
                tenant=str(uniques[tc]),
                rows=int(sel.sum()),
                agree=int(np.count_nonzero(pl[sel] == cl[sel])),
                score_diff_sum=float(np.sum(cs[sel] - prod_scores[sel])),
            )
        )
    return out
