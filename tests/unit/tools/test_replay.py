"""Pacing, pump and the producer of stream.tools.replay, and one replay of every format into a
broker.

The readers, format detection and mappings it relies on are tested in test_sources.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from stream.generate import generate_flows, write_jsonl
from stream.ingest.files import iter_records
from stream.tools.replay import Pacing, ReplayError, pump, replay
from tests.unit.ingest.test_files import BROKEN_JSONL

# --------------------------------------------------------------------------- pump and pacing


class Recorder:
    """A ``send`` that remembers what it got and when."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.messages: list[tuple[bytes | None, dict]] = []

    def __call__(self, key: bytes | None, value: bytes) -> None:
        self.times.append(time.monotonic())
        self.messages.append((key, orjson.loads(value)))


def _rows(records: list[dict]) -> list[tuple[int, dict, None]]:
    return [(i + 1, r, None) for i, r in enumerate(records)]


def test_pump_keys_by_tenant_and_collects_rejections(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(BROKEN_JSONL)
    rec = Recorder()
    sent, rejected = pump([(str(path), iter_records(path))], rec, pacing=Pacing.unlimited())
    assert sent == 3
    assert [k for k, _ in rec.messages] == [b"acme", b"globex", b"initech"]
    assert rec.messages[1][1] == {"tenant_id": "globex", "bytes_transferred": 20}
    assert [(p, n) for p, n, _ in rejected] == [
        (str(path), 3),
        (str(path), 4),
        (str(path), 5),
        (str(path), 7),
    ]


def test_pump_strict_stops_at_first_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(BROKEN_JSONL)
    rec = Recorder()
    with pytest.raises(ReplayError) as info:
        pump([(str(path), iter_records(path))], rec, pacing=Pacing.unlimited(), strict=True)
    assert str(info.value).startswith(f"{path}:3: malformed JSON")
    assert info.value.line_no == 3
    assert len(rec.messages) == 1


def test_records_without_tenant_have_no_key() -> None:
    rec = Recorder()
    pump([("mem", _rows([{"a": 1}]))], rec, pacing=Pacing.unlimited())
    assert rec.messages == [(None, {"a": 1})]


def _timed(check: Callable[[], None], attempts: int = 3) -> None:
    """Run a timing check up to ``attempts`` times.

    A busy machine can delay one wake-up by tens of ms; a pacing bug fails every attempt.
    """
    for attempt in range(attempts):
        try:
            check()
            return
        except AssertionError:
            if attempt == attempts - 1:
                raise


def _send_times(records: list[dict], pacing: Pacing, **kwargs: Any) -> np.ndarray:
    """Seconds from the first send to each send."""
    rec = Recorder()
    pump([("mem", _rows(records))], rec, pacing=pacing, **kwargs)
    return np.array(rec.times) - rec.times[0]


@pytest.mark.parametrize("stamp", ["iso", "epoch"])
def test_speed_keeps_recorded_gaps_divided_by_factor(stamp: str) -> None:
    t0 = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)
    times = [t0 + timedelta(seconds=0.2 * i) for i in range(6)]
    records = [
        {"timestamp": t.isoformat().replace("+00:00", "Z") if stamp == "iso" else t.timestamp()}
        for t in times
    ]

    def check() -> None:
        gaps = np.diff(_send_times(records, Pacing.at_speed(2.0)))
        assert len(gaps) == 5
        # 0.2 s recorded at 2x: 0.1 s, each gap within 10%.
        assert np.all(np.abs(gaps - 0.1) < 0.01), gaps

    _timed(check)


def test_speed_uses_the_named_timestamp_field_and_skips_missing_ones() -> None:
    records = [{"ts": 100.0}, {"ts": 100.3}, {"note": "no time"}, {"ts": 100.6}]

    def check() -> None:
        offsets = _send_times(records, Pacing.at_speed(3.0), timestamp_field="ts")
        assert offsets[1] == pytest.approx(0.1, abs=0.01)
        assert offsets[2] == pytest.approx(0.1, abs=0.01)  # no timestamp: sent right away
        assert offsets[3] == pytest.approx(0.2, abs=0.01)

    _timed(check)


def test_rate_does_not_drift() -> None:
    records = [{"i": i} for i in range(301)]

    def check() -> None:
        offsets = _send_times(records, Pacing.at_rate(1000.0))
        # 300 intervals of 1 ms: any per-event oversleep would add up to far more than 10 ms.
        assert offsets[-1] == pytest.approx(0.3, abs=0.01)

    _timed(check)


def test_pacing_validation() -> None:
    with pytest.raises(ValueError):
        Pacing("rate", 0)
    with pytest.raises(ValueError):
        Pacing("speed", None)
    with pytest.raises(ValueError):
        Pacing("warp", 1.0)  # type: ignore[arg-type]
    assert str(Pacing.at_rate(500)) == "500 events/s"


def test_undeliverable_messages_are_counted(tmp_path: Path) -> None:
    from stream.kafka.embedded import free_port

    path = tmp_path / "in.jsonl"
    write_jsonl(path, generate_flows(5))
    # Nothing listens there; messages expire after 300 ms and must show up as failures.
    summary = replay(
        [path],
        bootstrap=f"127.0.0.1:{free_port()}",
        pacing=Pacing.unlimited(),
        progress=False,
        producer_config={"message.timeout.ms": "300", "log_level": "0"},
    )
    assert summary.sent == 5
    assert summary.delivery_failures == 5
    assert summary.delivered == 0


def test_missing_file_is_a_replay_error(tmp_path: Path) -> None:
    with pytest.raises(ReplayError, match="no such file"):
        replay([tmp_path / "nope.jsonl"], bootstrap="127.0.0.1:1", pacing=Pacing.unlimited())


# --------------------------------------------------------------------------- real broker






