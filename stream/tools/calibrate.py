"""``stream calibrate``: an alert budget for a model version already registered.

``stream train --entity-alerts-per-day N`` sets the entity-alert threshold of the version
it registers from its own training traffic. A version trained without one, or whose
network changed since, is calibrated here: a baseline file is scored by that version
exactly as ``stream score`` would (its levels, in file order), and
:func:`stream.outcomes.risk.budget_threshold` finds the lowest threshold at which that
traffic raises at most N entity alerts a day. The result is stored as a tag of the
registered model (``stream.registry.admin.set_calibration``: a version's artifacts are
immutable and hashed), which ``stream describe``, ``stream score`` and running
consumers (at their next registry poll) read in place of the training's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from stream.config import Settings
from stream.features import RecordColumns, WindowStore
from stream.ingest.mapping import FieldMapping
from stream.ingest.schemas import WIRE_FORMS
from stream.ingest.view import columns_for
from stream.outcomes.risk import EntityBudget, budget_threshold
from stream.registry import LoadedModel
from stream.tools.offline import ScoreSummary, score_batches

__all__ = ["calibrate"]


class _OneModel:
    """What ``score_batches`` asks of a model table, serving one version to every tenant."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.where = f"{model.name} v{model.version}"

    def resolve(self, tenants: Sequence[str]) -> list[LoadedModel]:
        return [self.model] * len(tenants)

    def wait_for_loads(self, timeout: float) -> bool:
        return True


def calibrate(paths: Sequence[Path], model: LoadedModel, settings: Settings, per_day: float,
              *, fmt: str | None = None, mapping: FieldMapping | None = None,
              tenant: str | None = None) -> tuple[EntityBudget | None, ScoreSummary]:
    """The entity budget ``model`` keeps to on ``paths`` (None when no alert's entity and
    time can be read), and what scoring them counted."""
    # Only the levels are wanted: no risk, deduplication or rules while scoring.
    plain = dataclasses.replace(settings, risk_by="", dedup_window=0.0)
    summary = ScoreSummary()
    docs: list[Any] = []
    levels: list[np.ndarray] = []
    tenants: list[str] = []
    for outcome in score_batches(list(paths), cast(Any, _OneModel(model)), plain,
                                 min_level="low", fmt=fmt, mapping=mapping, tenant=tenant,
                                 summary=summary):
        rows = np.flatnonzero(outcome.levels >= 0)
        d = outcome.decoded.docs
        docs.extend(d[i] for i in rows.tolist())
        levels.append(outcome.levels[rows])
        tenants.extend(outcome.decoded.tenants[i] for i in rows.tolist())
    if not docs:
        return None, summary
    budget = budget_threshold(
        columns_for(RecordColumns(docs), WIRE_FORMS.get(settings.input_schema,
                                                        settings.input_schema)),
        np.concatenate(levels),
        tenants, WindowStore(lateness=settings.lateness, ttl=settings.state_ttl),
        by=settings.risk_by, half_life=settings.risk_half_life, per_day=per_day)
    return budget, summary
