"""Hostile input, property-based: thousands of generated bad or odd messages never crash
the consumer; every bad one is dead-lettered with a reason, every good one is scored.

Hypothesis builds each message together with what it must become: good events
(plain, or odd but valid: unicode and nested extra fields, other number
spellings, other JSON layouts, unknown but well-formed tenants), and bad ones
by kind (truncated JSON, deep nesting, numbers beyond a double, wrong types,
unicode or non-string tenant ids, empty and whitespace values, oversize
values, missing fields, non-objects, invalid UTF-8, NaN literals, random
bytes). All of them go through one running pipeline on the real embedded
broker; then every input offset is matched with its outcome.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message, Producer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.consumer import service
from stream.consumer.loop import Pipeline
from stream.ingest.decode import TENANT_RE
from stream.kafka.embedded import EmbeddedBroker
from stream.outcomes.reasons import REASONS
from tests import faultutil as fu

# Real broker, registry or child processes: not part of the fast unit run.
pytestmark = pytest.mark.integration

FEATURES = ("bytes_transferred", "packet_count", "connection_duration")
MAX_BYTES = fu.MAX_MESSAGE_BYTES
ANY_REASON = frozenset(REASONS.values())
EXAMPLES = 300  # x 20-40 messages each: ~9,000 messages, ~85% of them bad


@dataclass(frozen=True)
class Case:
    value: bytes
    kind: str
    reasons: frozenset[str]  # empty: must be scored; else the reasons it may be dead-lettered for

    @property
    def good(self) -> bool:
        return not self.reasons


def bad(value: bytes, kind: str, *reasons: str) -> Case:
    return Case(value, kind, frozenset(reasons) or ANY_REASON)


# ---- good events --------------------------------------------------------------------

tenants = st.sampled_from(["acme", "globex", "initech"]) | st.from_regex(
    TENANT_RE, fullmatch=True)
numbers = st.integers(0, 10**12) | st.floats(0, 1e12, allow_nan=False, allow_infinity=False)
scalars = (st.none() | st.booleans() | st.integers(-(2**53), 2**53)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
extra_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(max_size=5), inner, max_size=3), max_leaves=8)
extras = st.dictionaries(st.text(max_size=10).filter(lambda k: k not in ("tenant_id", *FEATURES)),
                         extra_values, max_size=4)


@st.composite
def events(draw: st.DrawFn, *, odd: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {"tenant_id": draw(tenants)}
    for f in FEATURES:
        doc[f] = draw(numbers)
    if odd:
        doc.update(draw(extras))
    return doc


def encode(draw: st.DrawFn, doc: Any) -> bytes:
    """Compact, spaced or indented JSON, ASCII-escaped or not."""
    layout = draw(st.sampled_from(["compact", "spaced", "indented"]))
    ascii_only = draw(st.booleans())
    if layout == "compact":
        text = json.dumps(doc, separators=(",", ":"), ensure_ascii=ascii_only)
    elif layout == "spaced":
        text = json.dumps(doc, ensure_ascii=ascii_only)
    else:
        text = json.dumps(doc, indent=2, ensure_ascii=ascii_only)
    return text.encode()


@st.composite
def good_cases(draw: st.DrawFn) -> Case:
    odd = draw(st.booleans())
    doc = draw(events(odd=odd))
    value = encode(draw, doc)
    if odd and draw(st.booleans()):
        # Deep but legal nesting inside an extra field (parsers allow 1,000 levels).
        depth = draw(st.integers(1, 500))
        value = value[:-1] + b',"deep":' + b"[" * depth + b"]" * depth + b"}"
    if odd and draw(st.booleans()):
        # Other spellings of the same numbers: exponent form, trailing zeros.
        f = draw(st.sampled_from(FEATURES))
        value = value.replace(f'"{f}":'.encode(), f'"{f}":1.0e2,"_{f}":'.encode(), 1)
    if len(value) > MAX_BYTES:
        value = encode(draw, {k: doc[k] for k in ("tenant_id", *FEATURES)})
    return Case(value, "odd" if odd else "good", frozenset())


# ---- bad messages -------------------------------------------------------------------


def plain(draw: st.DrawFn, **override: Any) -> dict[str, Any]:
    doc = draw(events(odd=False))
    doc.update(override)
    return doc


@st.composite
def bad_cases(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from([
        "truncated", "deep", "deep_top", "huge_number", "wrong_type", "null_feature",
        "unicode_tenant", "typed_tenant", "empty", "whitespace", "oversize", "missing_feature",
        "missing_tenant", "not_object", "invalid_utf8", "nan_literal", "random_bytes",
    ]))
    if kind == "truncated":
        full = encode(draw, plain(draw))
        cut = draw(st.integers(0, len(full) - 1))
        return bad(full[:cut], kind, "malformed_json", "empty_message")
    if kind == "deep":
        depth = draw(st.integers(1025, 20000))
        head = json.dumps(plain(draw), separators=(",", ":")).encode()[:-1]
        return bad(head + b',"x":' + b"[" * depth + b"]" * depth + b"}", kind,
                   "malformed_json", "oversize")
    if kind == "deep_top":
        depth = draw(st.integers(1025, 20000))
        opener = draw(st.sampled_from([b"[", b'{"a":']))
        closer = b"]" if opener == b"[" else b"}"
        return bad(opener * depth + closer * depth, kind,
                   "malformed_json", "not_object", "oversize")
    if kind == "huge_number":
        f = draw(st.sampled_from(FEATURES))
        literal = draw(st.sampled_from(["1e400", "-1e400", "1" + "0" * 400, "2E+999", "1.8e308"]))
        doc = plain(draw)
        doc[f] = 0
        raw = json.dumps(doc, separators=(",", ":")).replace(f'"{f}":0', f'"{f}":{literal}')
        return bad(raw.encode(), kind, "non_finite_feature", "non_numeric_feature",
                   "malformed_json")
    if kind == "wrong_type":
        f = draw(st.sampled_from(FEATURES))
        wrong = draw(st.booleans() | st.text(max_size=10) | st.lists(numbers, max_size=2)
                     | st.dictionaries(st.text(max_size=3), numbers, max_size=2))
        return bad(encode(draw, plain(draw, **{f: wrong})), kind, "non_numeric_feature")
    if kind == "null_feature":
        f = draw(st.sampled_from(FEATURES))
        return bad(encode(draw, plain(draw, **{f: None})), kind, "missing_feature")
    if kind == "unicode_tenant":
        tenant = draw(st.text(min_size=0, max_size=80).filter(
            lambda t: TENANT_RE.fullmatch(t) is None))
        return bad(encode(draw, plain(draw, tenant_id=tenant)), kind, "invalid_tenant")
    if kind == "typed_tenant":
        tenant = draw(st.none() | st.booleans() | numbers | st.lists(st.text(max_size=3),
                                                                     max_size=2))
        return bad(encode(draw, plain(draw, tenant_id=tenant)), kind, "invalid_tenant")
    if kind == "empty":
        return bad(b"", kind, "empty_message")
    if kind == "whitespace":
        return bad(draw(st.sampled_from([b" ", b"\n", b"\t \r\n"])), kind,
                   "empty_message", "malformed_json")
    if kind == "oversize":
        doc = plain(draw)
        doc["pad"] = "x" * draw(st.integers(MAX_BYTES, 3 * MAX_BYTES))
        return bad(encode(draw, doc), kind, "oversize")
    if kind == "missing_feature":
        doc = plain(draw)
        del doc[draw(st.sampled_from(FEATURES))]
        return bad(encode(draw, doc), kind, "missing_feature")
    if kind == "missing_tenant":
        doc = plain(draw)
        del doc["tenant_id"]
        return bad(encode(draw, doc), kind, "invalid_tenant")
    if kind == "not_object":
        value = draw(st.lists(numbers, max_size=3) | numbers | st.text(max_size=10)
                     | st.none() | st.booleans())
        return bad(json.dumps(value).encode(), kind, "not_object")
    if kind == "invalid_utf8":
        junk = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80"]))
        head = json.dumps(plain(draw), separators=(",", ":")).encode()[:-1]
        return bad(head + b',"note":"' + junk + b'"}', kind, "malformed_json")
    if kind == "nan_literal":
        f = draw(st.sampled_from(FEATURES))
        literal = draw(st.sampled_from(["NaN", "Infinity", "-Infinity"]))
        doc = plain(draw)
        doc[f] = 0
        raw = json.dumps(doc, separators=(",", ":")).replace(f'"{f}":0', f'"{f}":{literal}')
        return bad(raw.encode(), kind, "malformed_json", "non_finite_feature")
    return bad(draw(st.binary(max_size=300)), kind)  # random bytes: never a valid event


messages = st.lists(st.one_of(good_cases(), bad_cases(), bad_cases(), bad_cases(),
                              bad_cases(), bad_cases()), min_size=20, max_size=40)


# ---- the run ------------------------------------------------------------------------


@pytest.fixture
def running(broker: EmbeddedBroker, tracking_uri: str) -> Iterator[tuple[Pipeline, fu.Topics]]:
    topics = fu.Topics(uuid.uuid4().hex[:8])
    topics.create(broker, 3)
    pipeline = service.build(fu.settings(broker.bootstrap, topics, tracking_uri,
                                         fu.shared_model(tracking_uri)))
    thread = fu.start(pipeline)
    yield pipeline, topics
    fu.stop(pipeline, thread)


def test_generated_hostile_messages_are_dead_lettered_and_good_ones_scored(
    broker: EmbeddedBroker, running: tuple[Pipeline, fu.Topics],
) -> None:
    pipeline, topics = running
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
    sent: list[Case] = []
    where: dict[int, tuple[int, int]] = {}
    lock = threading.Lock()

    def delivered(err: KafkaError | None, msg: Message) -> None:
        assert err is None, err
        with lock:
            where[int(msg.key())] = (msg.partition(), msg.offset())

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.function_scoped_fixture])
    @given(messages)
    def send(cases: list[Case]) -> None:
        for case in cases:
            producer.produce(topics.input, case.value, key=str(len(sent)).encode(),
                             on_delivery=delivered)
            sent.append(case)
        producer.poll(0)

    send()
    assert producer.flush(60) == 0
    n = len(sent)
    n_bad = sum(not c.good for c in sent)
    assert n_bad >= 5000 and n - n_bad >= 500, (n, n_bad)
    fu.wait_until(lambda: pipeline.stats.consumed >= n, 180, "every message to be consumed",
                  state=lambda: pipeline.stats)

    led = fu.ledger(broker.bootstrap, topics)
    assert len(led.inputs) == n and not led.lost and led.duplicates == 0 and led.stray == 0
    wrong: list[str] = []
    kinds: dict[str, int] = {}
    for i, case in enumerate(sent):
        [copy] = led.copies[where[i]]
        kinds[case.kind] = kinds.get(case.kind, 0) + 1
        if case.good:
            if copy.score is None:
                wrong.append(f"{case.kind} {case.value[:80]!r} -> {copy.alert_id}")
        else:
            reason = copy.alert_id.rsplit("/", 1)[1] if copy.score is None else "scored"
            if reason not in case.reasons:
                wrong.append(f"{case.kind} {case.value[:80]!r} -> {reason}, "
                             f"expected one of {sorted(case.reasons)}")
    assert not wrong, f"{len(wrong)} messages with the wrong outcome, e.g. {wrong[:5]}"
    st_ = pipeline.stats
    assert st_.dead_letters == n_bad and st_.scored == n - n_bad
    print(f"\nhostile: {n} messages ({n_bad} bad, {n - n_bad} good) -> "
          f"{st_.dead_letters} dead-lettered, {st_.scored} scored; by kind {kinds}; "
          f"dead-letter reasons {dict(led.dead_letter_reasons())}")
