"""Detection on real captures and on the generator: ``python -m bench.detection``.

Per labelled capture in ``../shared/datasets/`` (when that folder is there; else it
says so and goes on with the generator): the records split by time as a user would
have them, a baseline period first (``--split``, default the first half of the
capture's time span) and evaluation after it. A model is trained on the baseline with
``stream train``'s own code (``registry.train``, into a temporary SQLite registry)
and the evaluation period is scored with ``stream score``'s (``offline.score_batches``,
the consumer's batch code). Twice: with the attack rows removed from the baseline
(``clean``: a user whose baseline predates the infection) and with them left in
(``as recorded``). Reported, for the capture's attack label: ROC AUC, recall at 1%
false positives (the cut at the 99th percentile of the other records' anomaly), and
the share of attack and other records flagged at the alert threshold (medium or above).

Unlabelled captures: which entities rank first by their flows' highest anomaly in the
evaluation period (the scanning host of 002; the trojan's port, 1337, of 003, whose
baseline ends at its first connection there).

The generator, at five seeds other than the demo's: trained as the demo trains
(normal traffic only: a global model and per-tenant ones), scored on 20,000 flows
with attacks; recall per attack kind at the alert threshold and at 1% false positives
on normal flows (per tenant), as the demo reports it.

Label columns are kept aside and never reach training or scoring.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from stream.outcomes.risk import LEVEL_POINTS

#: Where the real captures are, relative to the repository (override: STREAM_DATASETS).
DATASETS = Path(os.environ.get("STREAM_DATASETS")
                or Path(__file__).resolve().parents[1].parent / "shared" / "datasets")
LABEL_FIELDS = ("label", "detailedlabel", "detailed-label", "detailed_label")
ATTACK = "Malicious"


@dataclass(frozen=True)
class Capture:
    name: str
    path: str
    #: Unlabelled captures: what the evaluation should rank first, and by which field.
    entity: tuple[str, str] | None = None
    #: Where the baseline ends for an unlabelled capture (the first record of the entity).
    baseline_until_entity: bool = False


CAPTURES = (
    Capture("001 NjRAT (C&C)", "001-zeek-scenario-malicious/labeled-conn.log"),
    Capture("008 attacked host, day 1", "008-zeek-mixed/conn.log.labeled"),
    Capture("010 attacked host, day 2", "010-zeek-mixed/conn.log.labeled"),
    Capture("012 attacked host, day 2", "012-zeek-mixed/conn.log.labeled"),
    Capture("RemcosRAT exfiltration", "ctu-sme-11-remcos/conn.log.labeled"),
    Capture("002 Nmap scans", "002-zeek-scenario-port-scanning/conn.log",
            entity=("src_ip", "172.16.1.11")),
    Capture("003 AndroidTester RAT", "003-zeek-scenario-malicious/conn.log",
            entity=("dst_port", "1337"), baseline_until_entity=True),
)
DEMO_SEED = 7
SEEDS = (11, 12, 13, 14, 15)


@dataclass
class Row:
    name: str
    run: str
    baseline: int = 0
    evaluated: int = 0
    attacks: int = 0
    auc: float = math.nan
    recall_1pct: float = math.nan
    flagged_attack: float = math.nan
    flagged_other: float = math.nan
    dead_letters: int = 0
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _quiet() -> None:
    logging.basicConfig(level=logging.WARNING)
    for name in ("mlflow", "alembic", "urllib3", "stream"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")


def auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else math.nan


def recall_at(y: np.ndarray, s: np.ndarray, fpr: float = 0.01) -> float:
    """Share of positives above the (1 - fpr) quantile of the negatives' anomaly."""
    neg, pos = s[y == 0], s[y == 1]
    if not len(neg) or not len(pos):
        return math.nan
    cut = np.quantile(neg, 1 - fpr, method="higher")
    return float(np.mean(pos > cut))


def _strip(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    labels = [str(r.get("label", "")) for r in records]
    clean = [{k: v for k, v in r.items() if k not in LABEL_FIELDS} for r in records]
    return clean, labels


def _score(uri: str, base: str, records: list[dict[str, Any]], tmp: Path, tag: str,
           entities: list[dict[str, Any]] | None = None, risk_by: str = "src_ip",
           ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]], int]:
    """Anomaly (higher = more anomalous: -decision score) and level of each scored record,
    those records as scored, and the dead letters, through stream score's code; the
    entity alert records (risk by ``risk_by``, the default threshold) into ``entities``."""
    from stream.config import Settings
    from stream.consumer import service
    from stream.generate import write_jsonl
    from stream.tools.offline import ScoreSummary, score_batches

    path = tmp / f"{tag}.jsonl"
    write_jsonl(path, records)
    settings = Settings(tracking_uri=uri, model_name=base, min_level="low", risk_by=risk_by)
    table = service.build_table(settings)
    table.refresh()
    summary = ScoreSummary()
    scores, levels, docs = [], [], []
    try:
        for outcome in score_batches([path], table, settings, min_level="low", summary=summary):
            rows = np.flatnonzero(outcome.levels >= 0)
            scores.append(-outcome.scores[rows])
            levels.append(outcome.levels[rows])
            d = outcome.decoded.docs
            docs.extend(d[i] for i in rows.tolist())
            if entities is not None:
                entities.extend(orjson.loads(v) for _k, v in outcome.entity_records)
    finally:
        table.stop()
    dead = sum(summary.dead_letters.values())
    if not scores:
        return np.empty(0), np.empty(0, dtype=np.int8), [], dead
    return np.concatenate(scores), np.concatenate(levels), docs, dead


def _train(uri: str, base: str, records: list[dict[str, Any]], args: argparse.Namespace,
           tenant: str | None = None) -> None:
    from stream import registry
    from stream.features.recipes import recipe

    per_day = None
    if args.entity_budget:
        # --entity-budget per 1,000 active hosts (distinct sources of the baseline), at
        # least that many a day.
        hosts = len({r.get("src_ip") for r in records})
        per_day = args.entity_budget * max(1.0, hosts / 1000.0)
    registry.train(records, tenant=tenant, model_name=base, uri=uri,
                   features=recipe(args.recipe), detector=args.detector,
                   calibrate=tuple(args.calibrate), do_promote=True,
                   min_records=min(256, max(2, len(records) // 2)),
                   entity_alerts_per_day=per_day, risk_by=args.risk_by)


def run_capture(cap: Capture, uri: str, tmp: Path, args: argparse.Namespace) -> list[Row]:
    from stream.ingest.files import load_records

    loaded = load_records(DATASETS / cap.path)
    records, labels = _strip(loaded.records)
    times = np.array([float(r.get("timestamp", 0.0)) for r in records])
    y = np.array([lab == ATTACK for lab in labels], dtype=np.int64)
    t0, t1 = float(times.min()), float(times.max())
    if cap.baseline_until_entity and cap.entity is not None:
        f, v = cap.entity
        cut = min(t for t, r in zip(times, records, strict=True) if str(r.get(f)) == v)
    else:
        cut = t0 + args.split * (t1 - t0)
    base_mask = times < cut
    rows = []
    runs = [("clean", True), ("as recorded", False)] if cap.entity is None else [("", False)]
    for run, clean in runs:
        keep = base_mask & ((y == 0) if clean else True)
        baseline = [r for r, k in zip(records, keep.tolist(), strict=True) if k]
        evaluation = [{**r, "tenant_id": "t"} for r, b in zip(records, base_mask.tolist(),
                                                               strict=True) if not b]
        ye = y[~base_mask]
        row = Row(cap.name, run, len(baseline), len(evaluation), int(ye.sum()))
        base = "det_" + os.urandom(4).hex()
        try:
            _train(uri, base, [{**r, "tenant_id": "t"} for r in baseline], args, tenant="t")
        except Exception as e:  # a baseline the recipe cannot learn from
            rows.append(replace(row, note=f"not trained: {str(e)[:80]}"))
            continue
        entity_alerts: list[dict[str, Any]] = []
        s, levels, docs, dead = _score(uri, base, evaluation, tmp, base, entity_alerts,
                                       args.risk_by)
        row.dead_letters = dead
        if cap.entity is None:
            # Entities (sources) as an analyst's entity queue shows them: the attacking or
            # infected hosts surfaced by an entity alert, and the others alerted.
            bad = {str(r.get("src_ip")) for r, a in zip(evaluation, ye.tolist(), strict=True)
                   if a}
            hit = {str(r.get("dst_ip")) for r, a in zip(evaluation, ye.tolist(), strict=True)
                   if a}
            by_src = [e for e in entity_alerts if e["by"] == "src_ip"]
            raised = {str(e["entity"]) for e in by_src}
            high = {str(e["entity"]) for e in by_src
                    if e["threat_level"] in ("high", "critical")}
            # The other end of the attack's flows (the attacked host, the C&C server), when
            # risk adds up by destination too.
            dsts = {str(e["entity"]) for e in entity_alerts if e["by"] == "dst_ip"}
            others = {(e["by"], str(e["entity"])) for e in entity_alerts
                      if not (e["by"] == "src_ip" and str(e["entity"]) in bad)
                      and not (e["by"] == "dst_ip" and str(e["entity"]) in hit)}
            span = (max(float(r.get("timestamp", 0.0)) for r in evaluation)
                    - min(float(r.get("timestamp", 0.0)) for r in evaluation))
            days = max(span, 3600.0) / 86400.0
            n_raised = sum(e["status"] == "raised" for e in entity_alerts)
            row.extra.update(malicious=len(bad), surfaced=len(bad & raised),
                             surfaced_high=len(bad & high), benign_alerted=len(others),
                             others_per_day=len(others) / days,
                             targets=len(hit), targets_surfaced=len(hit & dsts),
                             raised=n_raised, per_day=n_raised / days)
            by_dst = (f", {len(hit & dsts)}/{len(hit)} of their destinations"
                      if "dst_ip" in args.risk_by.split(",") else "")
            row.note = (f"entities: {len(bad & raised)}/{len(bad)} attacking or infected "
                        f"sources surfaced ({len(bad & high)} by a high+ alert){by_dst}, "
                        f"{len(others)} others ({len(others) / days:.1f}/day); {n_raised} "
                        f"raised ({n_raised / days:.1f}/day)")
            flow_ids = [str(d.get("flow_id")) for d in docs]
            lab = {str(r.get("flow_id")): yy for r, yy in zip(evaluation, ye.tolist(),
                                                               strict=True)}
            yy = np.array([lab[f] for f in flow_ids], dtype=np.int64)
            row.auc, row.recall_1pct = auc(yy, s), recall_at(yy, s)
            flagged = levels >= 1
            row.flagged_attack = float(flagged[yy == 1].mean()) if yy.sum() else math.nan
            row.flagged_other = float(flagged[yy == 0].mean()) if (yy == 0).any() else math.nan
        else:
            f, v = cap.entity
            best: dict[str, float] = {}
            alerts: Counter[str] = Counter()
            points: Counter[str] = Counter()
            for d, a, lv in zip(docs, s.tolist(), levels.tolist(), strict=True):
                proto = str(d.get("protocol", d.get("proto", ""))).lower()
                if f.endswith("_port") and proto.startswith("icmp"):
                    continue  # Zeek writes ICMP's type and code where ports go: not ports
                key = str(d.get(f))
                best[key] = max(best.get(key, -math.inf), a)
                alerts[key] += lv >= 1
                points[key] += float(LEVEL_POINTS[max(lv, 0)])
            # Two queues: by the entity's most anomalous flow, and as an analyst works
            # through alerts (most alerted flows first, then the most anomalous).
            by_max = sorted(best, key=lambda k: -best[k])
            by_alerts = sorted(best, key=lambda k: (-alerts[k], -best[k]))
            # And as entity risk adds up (stream.outcomes.risk's points, no fading here).
            by_risk = sorted(best, key=lambda k: (-points[k], -best[k]))
            rank = by_max.index(v) + 1 if v in by_max else None
            rank_alerts = by_alerts.index(v) + 1 if v in by_alerts else None
            row.extra = {"rank": rank, "rank_alerts": rank_alerts, "of": len(by_max)}
            rank_risk = by_risk.index(v) + 1 if v in by_risk else None
            row.extra["rank_risk"] = rank_risk
            row.note = (f"{f}={v}: rank {rank} by top anomaly (first: {', '.join(by_max[:3])}),"
                        f" {rank_alerts} by alerts ({alerts[v]}; first: "
                        f"{', '.join(f'{k} {alerts[k]}' for k in by_alerts[:3])}), "
                        f"{rank_risk} by risk points ({points[v]:g}; first: "
                        f"{', '.join(f'{k} {points[k]:g}' for k in by_risk[:3])}) of "
                        f"{len(by_max)} values")
        rows.append(row)
    return rows


def run_generator(seed: int, uri: str, args: argparse.Namespace) -> dict[str, Any]:
    """As the demo: normal traffic only for training, then 20,000 flows with attacks."""
    from stream.generate import generate_flows
    from stream.tools.demo import FALLBACK_TENANT, OWN_MODEL_TENANTS, detection

    tenants = (*OWN_MODEL_TENANTS, FALLBACK_TENANT)
    base = "gen_" + os.urandom(4).hex()
    mixed = list(generate_flows(9000, tenants, seed=seed + 10, attack_rate=0.0))
    own = list(generate_flows(20000, tenants, seed=seed + 1, attack_rate=0.0))
    _train(uri, base, mixed, args)
    for t in OWN_MODEL_TENANTS:
        _train(uri, base, [r for r in own if r["tenant_id"] == t], args, tenant=t)
    flows = list(generate_flows(args.generator_events, tenants, seed=seed))
    entity_alerts: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-gen-") as tmp:
        s, levels, docs, dead = _score(uri, base, flows, Path(tmp), base, entity_alerts,
                                       args.risk_by)
    alerted = [(str(d.get("label")), str(d.get("tenant_id")), -a)
               for d, a, lv in zip(docs, s.tolist(), levels.tolist(), strict=True)]
    # detection() reads alerts: every scored event here (min level low), and the
    # alert threshold as the level the consumer alerts at (medium).
    det = detection(flows, alerted)
    at_alert: Counter[str] = Counter(str(d.get("label")) for d, lv in
                                     zip(docs, levels.tolist(), strict=True) if lv >= 1)
    total = Counter(f["label"] for f in flows)
    det["recall_at_alert"] = {k: round(at_alert[k] / total[k], 3)
                              for k in det["recall_at_fpr"]}
    det["fpr_at_alert"] = round(at_alert["normal"] / (total["normal"] or 1), 4)
    det["dead_letters"] = dead
    # Entities: the attacking sources (per tenant) surfaced by an entity alert at high or
    # above, and the other entities raised; a day is the flows' span, at least an hour.
    bad = {(f["tenant_id"], f["src_ip"]) for f in flows if f["label"] != "normal"}
    mine = [e for e in entity_alerts if e["by"] == "src_ip"]
    high = {(e["tenant_id"], str(e["entity"])) for e in mine
            if e["threat_level"] in ("high", "critical")}
    raised = {(e["tenant_id"], e["by"], str(e["entity"])) for e in entity_alerts}
    others = {k for k in raised if not (k[1] == "src_ip" and (k[0], k[2]) in bad)}
    times = [float(f["timestamp"]) if not isinstance(f["timestamp"], str) else 0.0
             for f in flows]
    days = max(max(times) - min(times), 3600.0) / 86400.0
    dsts = {(e["tenant_id"], str(e["entity"])) for e in entity_alerts
            if e["by"] == "dst_ip" and e["threat_level"] in ("high", "critical")}
    per_kind = {}
    for kind in sorted({f["label"] for f in flows} - {"normal"}):
        srcs = {(f["tenant_id"], f["src_ip"]) for f in flows if f["label"] == kind}
        victims = {(f["tenant_id"], f["dst_ip"]) for f in flows if f["label"] == kind}
        per_kind[kind] = (len(srcs & high), len(srcs), len(victims & dsts), len(victims))
    det["entities"] = {"attacking": len(bad), "surfaced_high": len(bad & high),
                       "others": len(others), "others_per_day": len(others) / days,
                       "per_kind": per_kind}
    return det


def _fmt(x: float, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.0%}" if pct else f"{x:.3f}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.detection",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=None, help="[default: the default recipe]")
    ap.add_argument("--detector", default=None, help="[default: the trainer's default]")
    ap.add_argument("--split", type=float, default=0.5,
                    help="share of a capture's time span that is baseline")
    ap.add_argument("--calibrate", type=float, nargs=3, default=(0.002, 0.01, 0.03),
                    metavar=("CRITICAL", "HIGH", "MEDIUM"),
                    help="alert rates on training traffic, as the demo calibrates")
    ap.add_argument("--seeds", type=int, nargs="*", default=list(SEEDS))
    ap.add_argument("--generator-events", type=int, default=20000)
    ap.add_argument("--only", default="", help="substring of the captures to run")
    ap.add_argument("--risk-by", default="src_ip",
                    help="entities risk adds up by, as stream run's --risk-by [src_ip]")
    ap.add_argument("--entity-budget", type=float, default=None, metavar="PER_1000",
                    help="train with an entity-alert budget of PER_1000 a day per 1,000 "
                    "active hosts of the baseline (at least PER_1000)")
    args = ap.parse_args(argv)
    _quiet()
    from stream.features.recipes import DEFAULT_RECIPE
    from stream.registry.training import DEFAULT_DETECTOR

    args.recipe = args.recipe or DEFAULT_RECIPE
    args.detector = args.detector or DEFAULT_DETECTOR
    print(f"recipe {args.recipe}, detector {args.detector}, baseline: the first "
          f"{args.split:.0%} of each capture's time span")
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-detection-") as tmpdir:
        tmp = Path(tmpdir)
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        os.environ["MLFLOW_TRACKING_URI"] = uri
        if DATASETS.is_dir():
            print(f"\nreal captures ({DATASETS.name}/): attack label {ATTACK!r}")
            print(f"{'capture':<28}{'baseline':<13}{'base':>6}{'eval':>6}{'attacks':>8}"
                  f"{'AUC':>7}{'rec@1%':>8}{'flag atk':>9}{'flag oth':>9}{'dlq':>5}  note")
            for cap in CAPTURES:
                if args.only and args.only not in cap.name:
                    continue
                for r in run_capture(cap, uri, tmp, args):
                    print(f"{r.name:<28}{r.run:<13}{r.baseline:>6}{r.evaluated:>6}"
                          f"{r.attacks:>8}{_fmt(r.auc):>7}{_fmt(r.recall_1pct):>8}"
                          f"{_fmt(r.flagged_attack, True):>9}{_fmt(r.flagged_other, True):>9}"
                          f"{r.dead_letters:>5}  {r.note}", flush=True)
        else:
            print(f"\n(no real captures: {DATASETS} is not there)")
        if args.seeds:
            print(f"\ngenerator, seeds {args.seeds} (the demo's is {DEMO_SEED}): recall per "
                  "attack kind at the alert threshold / at 1% false positives")
            for seed in args.seeds:
                det = run_generator(seed, uri, args)
                kinds = ", ".join(f"{k} {det['recall_at_alert'][k]:.2f}/"
                                  f"{det['recall_at_fpr'][k]:.2f}" for k in det["recall_at_fpr"])
                ent = det["entities"]
                print(f"  seed {seed}: {kinds}; false positives {det['fpr_at_alert']:.2%}/"
                      f"{det['fpr_at_cut']:.2%}; dead letters {det['dead_letters']}; "
                      f"entities (sources / their destinations surfaced by a high+ entity "
                      f"alert): " + ", ".join(
                          f"{k} {a}/{b}" + (f" / {c}/{d}" if "dst_ip" in args.risk_by else "")
                          for k, (a, b, c, d) in ent["per_kind"].items())
                      + f"; {ent['others']} other entities raised", flush=True)
    print(f"\n{time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
