"""Faults against real `stream run` processes on the embedded broker: nothing is lost.

- crash: the consumer is killed with SIGKILL at random points, at least three
  times, and restarted; every input offset still gets an outcome. Duplicates
  are counted and must be exact copies (same alert id, score, model version)
  written by a life that was killed. In exactly-once mode they are the records
  of the transaction each killed process left open, which its successor aborts
  (same transactional.id): Tansu returns aborted records to read_committed
  readers, so they show up here; on Apache Kafka that reader would not see them.
- group: two processes share six partitions; one is killed; the other takes
  over every partition and nothing is lost.
- network cut: the consumer reaches the broker only through a Kafka-protocol
  proxy, which is killed for 10 s and restarted; processing resumes (in process
  in the default suite, as `stream run` in the soak).

Accounting is by input offset (``tests/faultutil.py``). The default suite runs
short versions; ``--soak`` adds long ones.
"""

from __future__ import annotations

import bisect
import random
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from stream.consumer import service
from stream.kafka.embedded import EmbeddedBroker
from stream.ops.metrics import HealthServer, Metrics
from tests import faultutil as fu

# Real broker, registry or child processes: not part of the fast unit run.
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def model(tracking_uri: str) -> str:
    return fu.shared_model(tracking_uri)


def _done(bootstrap: str, topics: fu.Topics) -> int:
    """Input records committed by the group so far."""
    return sum(max(0, o) for o in fu.committed(bootstrap, topics.group, topics.input).values())


def _check_no_loss(led: fu.Ledger) -> None:
    lost = sorted(led.lost)
    assert not lost, f"{len(lost)} input offsets without an outcome: {lost[:10]}"
    assert led.stray == 0, "an outcome names an offset that is not in the input"
    assert led.inexact() == [], "a duplicate differs from its original (id, score or model)"
    reasons = led.dead_letter_reasons()
    assert reasons and set(reasons) <= fu.HOSTILE_REASONS, reasons  # hostile input, dead-lettered


# ---- crash ------------------------------------------------------------------------------

@dataclass
class CrashRun:
    mode: str
    lives: list[tuple[float, float]]  # wall-clock start and end of each process; all but the
    ledger: fu.Ledger                 # last one ended by SIGKILL
    seconds: float

    @property
    def kills(self) -> int:
        return len(self.lives) - 1

    def life_of(self, copy: fu.Copy) -> int:
        return bisect.bisect_right([s for s, _ in self.lives], copy.timestamp_ms / 1000.0) - 1


def _crash_run(broker: EmbeddedBroker, tracking_uri: str, model: str, log: Path, *, mode: str,
               events: int, kills: int, seed: int, batch_size: int = 500) -> CrashRun:
    t0 = time.monotonic()
    bootstrap = broker.bootstrap
    topics = fu.Topics(f"crash{seed}-{mode[:5]}-{random.randrange(16**6):06x}")
    topics.create(broker, 3)
    n = fu.fill(bootstrap, topics.input, events, seed=seed)
    # A stable transactional.id: each restart fences its killed predecessor and aborts
    # the transaction it left open (with a fresh id that transaction would stay open).
    env = fu.stream_env(bootstrap, topics, tracking_uri, model, STREAM_DELIVERY=mode,
                        STREAM_BATCH_SIZE=str(batch_size),
                        STREAM_KAFKA_PROPERTIES=f"transactional.id=stream-{topics.unique}")
    rng = random.Random(seed)
    lives: list[tuple[float, float]] = []
    procs: list[fu.StreamProcess] = []
    try:
        for k in range(kills):
            before = fu.high_watermarks(bootstrap, topics.alerts)
            start = time.time()
            proc = fu.StreamProcess(env, log).start()
            procs.append(proc)
            fu.wait_until(lambda: fu.high_watermarks(bootstrap, topics.alerts) > before,  # noqa: B023
                          120, f"life {k} to produce alerts")
            time.sleep(rng.uniform(0.05, 0.5))  # a random point: mid-batch, mid-commit, ...
            assert proc.alive, proc.log()[-2000:]
            proc.kill()
            lives.append((start, time.time()))
            assert _done(bootstrap, topics) < n, f"input exhausted before kill {k}: add events"
        start = time.time()
        final = fu.StreamProcess(env, log).start()
        procs.append(final)
        fu.wait_until(lambda: _done(bootstrap, topics) >= n, 240, "the last life to finish")
        assert final.stop() == 0, final.log()[-3000:]
        lives.append((start, time.time()))
    finally:
        for p in procs:
            if p.alive:
                p.kill()
    led = fu.ledger(bootstrap, topics)  # read_committed, as an alert subscriber should read
    assert len(led.inputs) == n
    return CrashRun(mode, lives, led, time.monotonic() - t0)


def _check_crash(run: CrashRun, batch_size: int = 500) -> None:
    led = run.ledger
    _check_no_loss(led)
    per_life = [0] * len(run.lives)
    for key, copies in led.duplicated().items():
        lives = sorted(run.life_of(c) for c in copies)
        # Never twice by one process: the extra copies come from lives that were killed.
        assert len(set(lives)) == len(lives), f"{key} processed twice by one process: {lives}"
        for life in lives[:-1]:
            assert life < run.kills, f"{key}: a copy from the last life is not the final one"
            per_life[life] += 1
    # What a killed process can leave behind is its one unsettled batch.
    assert max(per_life) <= batch_size, per_life
    print(f"\ncrash {run.mode}: {len(led.inputs)} input offsets, {run.kills} SIGKILLs, "
          f"lost {len(led.lost)}, duplicates {led.duplicates} (per killed life "
          f"{per_life[:-1]}), {run.seconds:.0f}s")


def _crash_both_modes(broker: EmbeddedBroker, tracking_uri: str, model: str, tmp_path: Path,
                      *, events: int, kills: int) -> None:
    """Both delivery modes side by side (separate topics and groups): half the wall time."""
    runs = fu.concurrently(*(
        lambda m=mode, s=seed: _crash_run(broker, tracking_uri, model, tmp_path / f"{m}.log",
                                          mode=m, events=events, kills=kills, seed=s)
        for mode, seed in (("at-least-once", 21), ("exactly-once", 22))
    ))
    for run in runs:
        _check_crash(run)


def test_crash_sigkill_three_times_loses_nothing(
    broker: EmbeddedBroker, tracking_uri: str, model: str, tmp_path: Path
) -> None:
    _crash_both_modes(broker, tracking_uri, model, tmp_path, events=100000, kills=3)


@pytest.mark.soak
def test_soak_crash_200k_events_five_sigkills(
    broker: EmbeddedBroker, tracking_uri: str, model: str, tmp_path: Path
) -> None:
    _crash_both_modes(broker, tracking_uri, model, tmp_path, events=200000, kills=5)


# ---- group ------------------------------------------------------------------------------

def _group_takeover(broker: EmbeddedBroker, tracking_uri: str, model: str, tmp_path: Path,
                    unique: str, *, mode: str, rate: float, after_kill: float) -> None:
    bootstrap = broker.bootstrap
    topics = fu.Topics(unique)
    topics.create(broker, 6)
    feed = fu.PacedProducer(bootstrap, topics.input, fu.flow_values(200000, seed=31), rate)
    feed.start()
    env = fu.stream_env(bootstrap, topics, tracking_uri, model, STREAM_DELIVERY=mode)
    a = fu.StreamProcess(env | {"STREAM_KAFKA_PROPERTIES": f"transactional.id=a-{unique}"},
                         tmp_path / "a.log").start()
    b = fu.StreamProcess(env | {"STREAM_KAFKA_PROPERTIES": f"transactional.id=b-{unique}"},
                         tmp_path / "b.log").start()
    try:
        fu.wait_until(lambda: fu.assignment(a.log()) and fu.assignment(b.log())
                      and len(fu.assignment(a.log()) | fu.assignment(b.log())) == 6,
                      120, "both processes to own partitions")
        owned_a, owned_b = fu.assignment(a.log()), fu.assignment(b.log())
        assert not owned_a & owned_b  # shared, not duplicated
        fu.wait_until(lambda: _done(bootstrap, topics) > 0, 60, "progress")
        time.sleep(2)
        before = fu.committed(bootstrap, topics.group, topics.input)
        a.kill()
        killed_at = time.monotonic()
        fu.wait_until(lambda: fu.assignment(b.log()) == set(range(6)), 60, "the takeover")
        takeover = time.monotonic() - killed_at

        def resumed() -> bool:
            now = fu.committed(bootstrap, topics.group, topics.input)
            return all(now[p] > before[p] for p in owned_a)

        fu.wait_until(resumed, 60, "progress on the killed process's partitions")
        resumed_after = time.monotonic() - killed_at
        time.sleep(after_kill)
        n = feed.stop()
        fu.wait_until(lambda: _done(bootstrap, topics) >= n, 120, "the survivor to finish")
        assert b.stop() == 0, b.log()[-3000:]
    finally:
        feed.stop()
        for p in (a, b):
            if p.alive:
                p.kill()
    led = fu.ledger(bootstrap, topics, isolation="read_uncommitted" if mode == "exactly-once"
                    else "read_committed")
    assert len(led.inputs) == n
    _check_no_loss(led)
    print(f"\ngroup {mode}: {n} events over 6 partitions, A owned {sorted(owned_a)}, B owned "
          f"{sorted(owned_b)}; A killed; B owned all 6 after {takeover:.1f}s and committed on "
          f"A's partitions after {resumed_after:.1f}s; lost 0, duplicates {led.duplicates}")


def test_group_survivor_takes_over_killed_members_partitions(
    broker: EmbeddedBroker, tracking_uri: str, model: str, tmp_path: Path, unique: str
) -> None:
    _group_takeover(broker, tracking_uri, model, tmp_path, unique, mode="at-least-once",
                    rate=1500, after_kill=2)


@pytest.mark.soak
@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
def test_soak_group_takeover(
    broker: EmbeddedBroker, tracking_uri: str, model: str, tmp_path: Path, unique: str, mode: str
) -> None:
    # Exactly-once, read_uncommitted: the killed process's open transaction is never
    # aborted here (nobody restarts with its transactional.id) and Tansu never times it
    # out, so a read_committed reader would stop there for good.
    _group_takeover(broker, tracking_uri, model, tmp_path, unique, mode=mode,
                    rate=3000, after_kill=30)


# ---- network cut ---------------------------------------------------------------------------

def _network_cut(broker: EmbeddedBroker, tracking_uri: str, model: str, tmp_path: Path,
                 unique: str, *, mode: str, cuts: int, in_process: bool) -> None:
    bootstrap = broker.bootstrap
    topics = fu.Topics(unique)
    topics.create(broker, 3)
    proxy = fu.Proxy(bootstrap).start()
    feed = fu.PacedProducer(bootstrap, topics.input, fu.flow_values(200000, seed=41), 1000)
    feed.start()
    tid = f"cut-{unique}"
    proc: fu.StreamProcess | None = None
    health: HealthServer | None = None
    said: list[str] = []  # what /readyz said during each cut
    if in_process:  # the same loop without the seconds a `stream run` start costs
        health = HealthServer(0, Metrics(), host="127.0.0.1")
        health.start()
        pipeline = service.build(fu.settings(proxy.bootstrap, topics, tracking_uri, model,
                                             delivery=mode, stall_after=3.0,
                                             kafka_properties=(("transactional.id", tid),)),
                                 metrics=health.metrics, health=health)
        thread = fu.start(pipeline)
    else:
        env = fu.stream_env(proxy.bootstrap, topics, tracking_uri, model, STREAM_DELIVERY=mode,
                            STREAM_KAFKA_PROPERTIES=f"transactional.id={tid}")
        proc = fu.StreamProcess(env, tmp_path / "cut.log").start()
    recoveries = []
    try:
        fu.wait_until(lambda: _done(bootstrap, topics) > 0, 120, "progress")
        for _ in range(cuts):
            time.sleep(1)
            proxy.stop()
            time.sleep(1)  # what was in flight settles or fails
            at_cut = _done(bootstrap, topics)
            time.sleep(9)
            assert _done(bootstrap, topics) == at_cut, "committed through a cut link"
            if health is not None:
                # Stuck for longer than --stall-after: not ready, and why.
                status, text = health.readiness()
                assert status == 503, text
                said.append(text.strip())
            proxy.start()
            restored = time.monotonic()
            fu.wait_until(lambda: _done(bootstrap, topics) > at_cut, 120,  # noqa: B023
                          "processing to resume")
            recoveries.append(time.monotonic() - restored)
            if health is not None:
                fu.wait_until(lambda: health.readiness()[0] == 200, 60,
                              "ready again", state=health.readiness)
        time.sleep(1)
        n = feed.stop()
        fu.wait_until(lambda: _done(bootstrap, topics) >= n, 120, "the rest of the input")
        if proc is not None:
            assert proc.stop() == 0, proc.log()[-3000:]
        else:
            fu.stop(pipeline, thread)
    finally:
        feed.stop()
        if proc is not None and proc.alive:
            proc.kill()
        proxy.stop()
        if health is not None:
            health.stop()
    led = fu.ledger(bootstrap, topics)
    assert len(led.inputs) == n
    _check_no_loss(led)
    print(f"\nnetwork cut {mode}: {n} events, {cuts} cut(s) of 10s, processing resumed "
          f"{', '.join(f'{r:.1f}s' for r in recoveries)} after the proxy came back; lost 0, "
          f"duplicates {led.duplicates}" + (f"; /readyz during the cut: {said}" if said else ""))


def test_network_cut_processing_resumes(
    broker: EmbeddedBroker, tracking_uri: str, model: str, tmp_path: Path, unique: str
) -> None:
    """Exactly-once, in process: during the cut /readyz is 503 with the cause, and after
    it the batches commit again without a restart, nothing lost."""
    _network_cut(broker, tracking_uri, model, tmp_path, unique, mode="exactly-once", cuts=1,
                 in_process=True)


@pytest.mark.soak
@pytest.mark.parametrize("mode", ["at-least-once", "exactly-once"])
def test_soak_network_cuts(
    broker: EmbeddedBroker, tracking_uri: str, model: str, tmp_path: Path, unique: str, mode: str
) -> None:
    _network_cut(broker, tracking_uri, model, tmp_path, unique, mode=mode, cuts=3,
                 in_process=False)
