"""Cost of risk per entity and suppression-rule matching, per event of a micro-batch.

Micro-batches of 5,000 events of 50 tenants, 2% of them alerts at medium or above,
against a window store that already holds the risk of 100,000 live entities, and 1,000
suppression rules (20 per tenant on sources, destinations, ports, protocols and fields,
and 10 for every tenant); about a tenth of the alerts match a rule. Both stages are
timed as the batch calls them (``RuleSet.match`` on the alert rows, then
``Risk.members`` on the rows left), on the batch's decoded columns (the first to read a
column pays for extracting it), amortized over every event of the batch.

    python -m bench.risk_rules [--rows 5000] [--rate 0.02] [--repeat 30]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import orjson

from stream.features import RecordColumns, WindowStore
from stream.ingest.decode import DecodedBatch
from stream.ingest.view import columns_for
from stream.outcomes.risk import Risk, event_summaries
from stream.outcomes.suppress import Rule, RuleSet

TENANTS = [f"t{k:02d}" for k in range(50)]


def _rules(rng: np.random.Generator, n: int = 1000) -> RuleSet:
    out = []
    for k in range(n - 10):
        t = TENANTS[k % len(TENANTS)]
        kind = k % 4
        doc: dict[str, object] = {"id": f"r{k}", "tenant": t, "reason": "bench",
                                  "author": "bench"}
        if kind == 0:
            doc["src"] = f"10.{rng.integers(256)}.{rng.integers(256)}.0/24"
        elif kind == 1:
            doc.update(dst=f"192.168.{rng.integers(256)}.0/24", port=str(rng.integers(1, 1024)))
        elif kind == 2:
            doc.update(proto="udp", port=f"{rng.integers(1000, 2000)}-{rng.integers(2000, 3000)}")
        else:
            doc["fields"] = {"service": f"svc{rng.integers(100)}"}
        out.append(Rule.from_dict(doc))
    out += [Rule.from_dict({"id": f"g{k}", "port": str(60000 + k), "reason": "bench",
                            "author": "bench"}) for k in range(10)]
    return RuleSet(out)


def _events(rng: np.random.Generator, n: int, t0: float, hosts: int) -> list[dict[str, object]]:
    return [{"tenant_id": TENANTS[int(rng.integers(len(TENANTS)))], "timestamp": t0 + i * 1e-3,
             "src_ip": f"10.{rng.integers(256)}.{rng.integers(256)}.{rng.integers(hosts)}",
             "dst_ip": f"192.168.{rng.integers(256)}.{rng.integers(256)}",
             "dst_port": int(rng.integers(1, 3000)), "protocol": "tcp" if i % 3 else "udp",
             "service": f"svc{rng.integers(100)}"} for i in range(n)]


#: Leading features the alerts' explanations name.
FEATURES = ("rare_port", "pair_beacon", "src_port_spread", "log_bytes", "rare_dst")


def measure(rows: int = 5000, rate: float = 0.02, repeat: int = 30) -> dict[str, float]:
    rng = np.random.default_rng(0)
    rules = _rules(rng)
    risk = Risk("src_ip", 3600.0, 12.0)
    store = WindowStore(ttl=86400.0, max_bytes=2**31)
    # 100,000 live entities: one alert each, in batches as the consumer would add them.
    warm = 100_000
    for lo in range(0, warm, 10_000):
        evs = [{"tenant_id": TENANTS[i % len(TENANTS)], "timestamp": 1000.0 + (lo + i) * 1e-3,
                "src_ip": f"172.{(lo + i) >> 16}.{((lo + i) >> 8) & 255}.{(lo + i) & 255}"}
               for i in range(10_000)]
        src = RecordColumns(evs)
        r = np.arange(len(evs))
        risk.members(src, r, np.full(len(evs), 2, dtype=np.int8),
                     [str(e["tenant_id"]) for e in evs], store, None)
    live = store.entities
    t_match = t_risk = 0.0
    matched = alerts = 0
    for k in range(repeat):
        evs = _events(rng, rows, 2000.0 + k * 10.0, 64)
        # The batch's own columns, as the consumer decodes them (decoding is paid anyway;
        # the columns the rules and risk read are extracted when they first ask).
        batch = DecodedBatch([orjson.dumps(e) for e in evs], 1_000_000)
        src = columns_for(batch, "native")
        tenants = batch.tenants
        levels = np.zeros(rows, dtype=np.int8)
        alert_rows = np.sort(rng.choice(rows, int(rows * rate), replace=False))
        levels[alert_rows] = rng.integers(1, 4, len(alert_rows))
        scores = rng.normal(0.0, 0.1, rows)
        leads = {i: FEATURES[i % len(FEATURES)] for i in alert_rows.tolist()}
        t0 = time.perf_counter()
        # As the batch does it: the alerts' own columns, then the rules.
        at = alert_rows.tolist()
        alerting = RecordColumns([batch.doc(i) for i in at])
        hit = rules.match([tenants[i] for i in at], alerting, [None] * len(at))
        kept = alert_rows[~np.isin(alert_rows, [at[j] for j in hit])]
        t1 = time.perf_counter()
        # As the batch calls it: alert ids, scores and leading features, for the episodes.
        risk.members(src, kept, levels, tenants, store, None, alert_ids=lambda i: f"f/0/{i}",
                     scores=scores, leads=leads, summaries=event_summaries(alerting, at))
        t2 = time.perf_counter()
        t_match += t1 - t0
        t_risk += t2 - t1
        matched += len(hit)
        alerts += len(alert_rows)
    events = rows * repeat
    return {"match_us": t_match / events * 1e6, "risk_us": t_risk / events * 1e6,
            "rules": float(len(rules)), "live_entities": float(live),
            "matched_share": matched / max(1, alerts)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--rate", type=float, default=0.02)
    ap.add_argument("--repeat", type=int, default=30)
    a = ap.parse_args()
    r = measure(a.rows, a.rate, a.repeat)
    total = r["match_us"] + r["risk_us"]
    print(f"{int(r['rules']):,} rules, {int(r['live_entities']):,} live entity states, "
          f"{a.rate:.0%} alerts, {r['matched_share']:.0%} of them suppressed")
    print(f"rule matching {r['match_us']:.3f} us/event, risk {r['risk_us']:.3f} us/event, "
          f"together {total:.3f} us/event; target <= 1 us/event: "
          f"{'met' if total <= 1.0 else 'MISSED'}")


if __name__ == "__main__":
    main()
