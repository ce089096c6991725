"""The registry's production and challenger versions: promote, demote, poll, list, resolve.

"Production" is alias ``production`` first, stage ``Production`` second (the
challenger: alias ``challenger``, then stage ``Staging``); ``resolve`` is the one
place that rule is written, used by the consumer's watcher (``poll``), ``stream
models`` (``list_models``) and the design note's API (``production_version``).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from stream.registry.client import (
    CHALLENGER_ALIAS,
    CHALLENGER_STAGE,
    PRODUCTION_ALIAS,
    PRODUCTION_STAGE,
    client,
)

log = logging.getLogger(__name__)


def resolve(aliases: Mapping[str, Any], stages: Mapping[str, Any], role: str) -> str | None:
    """The version a model's aliases and per-stage latest versions name for ``role``.

    ``role`` is ``"production"`` (alias production, else stage Production) or
    ``"challenger"`` (alias challenger, else stage Staging).
    """
    alias, stage = (
        (PRODUCTION_ALIAS, PRODUCTION_STAGE) if role == "production"
        else (CHALLENGER_ALIAS, CHALLENGER_STAGE)
    )
    found = aliases.get(alias) or stages.get(stage)
    return None if found is None else str(found)


def _versions(rm: Any) -> tuple[dict[str, str], dict[str, str]]:
    """(aliases, stage -> latest version) of a RegisteredModel."""
    aliases = {k: str(v) for k, v in (getattr(rm, "aliases", None) or {}).items()}
    stages = {mv.current_stage: str(mv.version) for mv in (rm.latest_versions or [])}
    return aliases, stages


def promote(name: str, version: str | int, *, uri: str | None = None) -> None:
    """Point alias ``production`` at ``version`` and move stage ``Production`` there too.

    Both are set so that modern (alias) and legacy (stage) readers agree; the
    previous Production version is archived.
    """
    c = client(uri)
    version = str(version)
    c.get_model_version(name, version)  # fails clearly for an unknown model/version
    # The alias first: it is what the consumer's watcher reads, so the change is one
    # atomic step for it whatever happens to the stage calls below.
    c.set_registered_model_alias(name, PRODUCTION_ALIAS, version)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        c.transition_model_version_stage(name, version, PRODUCTION_STAGE)
        # Archived one by one: archive_existing_versions=True makes a PostgreSQL-backed
        # tracking server fail the call (it compares the integer version column with a
        # string parameter), while plain transitions work on every backend.
        for mv in c.search_model_versions(f"name='{name}'"):
            if mv.current_stage == PRODUCTION_STAGE and str(mv.version) != version:
                c.transition_model_version_stage(name, str(mv.version), "Archived")


def set_challenger(name: str, version: str | int, *, uri: str | None = None) -> None:
    """Point alias ``challenger`` (and stage ``Staging``) at ``version``: shadow-scored only."""
    c = client(uri)
    version = str(version)
    c.get_model_version(name, version)
    c.set_registered_model_alias(name, CHALLENGER_ALIAS, version)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        c.transition_model_version_stage(name, version, CHALLENGER_STAGE)


def demote(name: str, *, uri: str | None = None) -> list[str]:
    """Remove a model's production alias and stage (its tenant falls back to the global model).

    Returns the versions that were in production (empty: nothing was).
    """
    c = client(uri)
    try:
        mv = c.get_model_version_by_alias(name, PRODUCTION_ALIAS)
        c.delete_registered_model_alias(name, PRODUCTION_ALIAS)
        versions = [str(mv.version)]
    except Exception:
        versions = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        for mv in c.search_model_versions(f"name='{name}'"):
            if mv.current_stage == PRODUCTION_STAGE or str(mv.version) in versions:
                c.transition_model_version_stage(name, mv.version, "Archived")
                if str(mv.version) not in versions:
                    versions.append(str(mv.version))
    return versions


#: A registered model's tag holding the entity-alert threshold ``stream calibrate`` set for
#: one of its versions (the version's own artifacts are immutable and hashed).
CALIBRATION_TAG: Final = "stream.entity_budget.v"


def calibration(tags: Mapping[str, Any], version: str) -> dict[str, Any] | None:
    """The calibrated entity budget of ``version`` in a registered model's ``tags``; None
    if there is none, or it is not one (a tag anyone can write is checked, never trusted)."""
    raw = tags.get(CALIBRATION_TAG + str(version))
    if not isinstance(raw, str):
        return None
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    ok = (isinstance(d, dict) and isinstance(d.get("threshold"), int | float)
          and not isinstance(d.get("threshold"), bool) and math.isfinite(d["threshold"])
          and d["threshold"] > 0 and isinstance(d.get("by"), str)
          and isinstance(d.get("half_life"), int | float) and d["half_life"] > 0)
    return d if ok else None


def set_calibration(name: str, version: str, budget: Mapping[str, Any], *,
                    uri: str | None = None) -> None:
    """Store ``budget`` as ``version``'s calibrated entity budget (running consumers pick
    it up with their next registry poll)."""
    client(uri).set_registered_model_tag(name, CALIBRATION_TAG + str(version),
                                         orjson.dumps(dict(budget)).decode())


@dataclass(frozen=True)
class RegistryView:
    """One poll of the registry: production and challenger version per model name, and
    the calibrated entity budget of each production version that has one."""

    production: dict[str, str] = field(default_factory=dict)
    challenger: dict[str, str] = field(default_factory=dict)
    requests: int = 0
    budgets: dict[str, dict[str, Any]] = field(default_factory=dict)


def poll(base_name: str, *, uri: str | None = None, page_size: int = 1000) -> RegistryView:
    """Production/challenger versions of ``base_name`` and every ``base_name_*`` model.

    Uses paged ``search_registered_models``, whose results carry each model's
    aliases and latest per-stage versions, so the request count grows with
    pages (1,000 models a page), not with models.
    """
    c = client(uri)
    production: dict[str, str] = {}
    challenger: dict[str, str] = {}
    budgets: dict[str, dict[str, Any]] = {}
    token: str | None = None
    requests = 0
    # LIKE's '_' is a wildcard; the exact-prefix check below filters the extras.
    filt = "name LIKE '{}%'".format(base_name.replace("'", "''"))
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            page = c.search_registered_models(
                filter_string=filt, max_results=page_size, page_token=token
            )
        requests += 1
        for rm in page:
            if rm.name != base_name and not rm.name.startswith(base_name + "_"):
                continue
            aliases, stages = _versions(rm)
            prod = resolve(aliases, stages, "production")
            if prod is not None:
                production[rm.name] = prod
                budget = calibration(getattr(rm, "tags", None) or {}, prod)
                if budget is not None:
                    budgets[rm.name] = budget
            chal = resolve(aliases, stages, "challenger")
            if chal is not None:
                challenger[rm.name] = chal
        token = page.token
        if not token:
            break
    return RegistryView(production=production, challenger=challenger, requests=requests,
                        budgets=budgets)


def list_models(*, uri: str | None = None) -> list[dict[str, Any]]:
    """Every registered model with its production and challenger versions."""
    c = client(uri)
    out: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            page = c.search_registered_models(max_results=1000, page_token=token)
        for rm in page:
            aliases, stages = _versions(rm)
            latest = max((int(mv.version) for mv in (rm.latest_versions or [])), default=None)
            out.append(
                {
                    "name": rm.name,
                    "production": resolve(aliases, stages, "production"),
                    "challenger": resolve(aliases, stages, "challenger"),
                    "latest": str(latest) if latest is not None else None,
                    "aliases": aliases,
                }
            )
        token = page.token
        if not token:
            break
    return sorted(out, key=lambda m: m["name"])


def production_version(
    name: str, *, uri: str | None = None, fallback_to_latest: bool = False
) -> str | None:
    """The production version of one model (``resolve``), or None when it has none.

    ``fallback_to_latest`` is the design note's documented rule for its
    ``load_production_model``: a model with no production version serves its latest
    version. That fallback is logged, never silent. A model that is not registered
    is None; a registry that cannot be reached raises.
    """
    from mlflow.exceptions import MlflowException

    c = client(uri)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            rm = c.get_registered_model(name)
        except MlflowException as e:
            if getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
    aliases, stages = _versions(rm)
    version = resolve(aliases, stages, "production")
    if version is not None or not fallback_to_latest:
        return version
    latest = max((int(mv.version) for mv in (rm.latest_versions or [])), default=None)
    if latest is None:
        return None
    log.warning(
        "%s has no production version (alias %s or stage %s): using its latest version %d",
        name, PRODUCTION_ALIAS, PRODUCTION_STAGE, latest,
    )
    return str(latest)
