"""``stream dead-letters --redrive``: dead letters back to their input, headers and all.

On the real broker and registry: events whose tenant comes from a message header
(``--tenant-from header:tenant``) and whose tenant has no model yet are
dead-lettered ``no_model`` (with their original headers kept); once the model is
trained, a redrive sends them back with their key and headers, the consumer scores
them as that tenant, and a second redrive sends nothing again.
"""

from __future__ import annotations

import os

import orjson
import pytest
from click.testing import CliRunner
from confluent_kafka import Producer

from stream import registry
from stream.cli import main
from stream.consumer import service
from stream.generate import generate_flows, training_flows
from stream.kafka.embedded import EmbeddedBroker
from tests import faultutil as fu

pytestmark = pytest.mark.integration


def test_no_model_dead_letters_come_back_with_their_headers_once_the_model_exists(
    broker: EmbeddedBroker, tracking_uri: str, unique: str
) -> None:
    base = "redrive_" + os.urandom(3).hex()
    registry.train(training_flows("acme", 600, seed=1), tenant="acme", model_name=base,
                   uri=tracking_uri, n_estimators=20, do_promote=True)
    topics = fu.Topics(unique)
    topics.create(broker, 2)
    events = list(generate_flows(1200, ("acme", "globex"), seed=2))
    globex = sum(e["tenant_id"] == "globex" for e in events)
    p = Producer({"bootstrap.servers": broker.bootstrap})
    for e in events:
        tenant = e.pop("tenant_id")  # the tenant travels in a header only
        p.produce(topics.input, orjson.dumps(e), key=e["flow_id"].encode(),
                  headers=[("tenant", tenant.encode())])
    assert p.flush(30) == 0
    s = fu.settings(broker.bootstrap, topics, tracking_uri, base, tenant_from="header:tenant",
                    reload_interval=1.0)
    pipeline = service.build(s)
    thread = fu.start(pipeline)
    try:
        fu.wait_until(lambda: pipeline.stats.consumed >= len(events), 60, "the input read")
        dead = fu.read_topic(broker.bootstrap, topics.dlq)
        assert pipeline.stats.dead_letters == len(dead) > 0
        # Dead letters keep the original headers, then say why.
        h = dead[0].headers()
        assert h[0] == ("tenant", b"globex") and dict(h)["reason"] == b"no_model"
        assert len(dead) == globex, (len(dead), globex)

        registry.train(training_flows("globex", 600, seed=3), tenant="globex", model_name=base,
                       uri=tracking_uri, n_estimators=20, do_promote=True)
        fu.wait_until(lambda: f"{base}_globex" in pipeline.table.view.production, 30,
                      "the registry view to name the new model")
        args = ["dead-letters", "--redrive", "--reason", "no_model", "--bootstrap-servers",
                broker.bootstrap, "--dlq-topic", topics.dlq, "--group", f"redrive-{unique}"]
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0, r.output
        assert f"sent back to the topics they came from: {len(dead)} {{'no_model': " in r.output
        fu.wait_until(lambda: pipeline.stats.consumed >= len(events) + len(dead), 60,
                      "the redriven events scored")
        # Run again: the group remembers; nothing is sent twice.
        again = CliRunner().invoke(main, args)
        assert again.exit_code == 0 and "sent back to the topics they came from: 0 {}" in \
            again.output, again.output
    finally:
        fu.stop(pipeline, thread)
    alerts = [orjson.loads(m.value()) for m in fu.read_topic(broker.bootstrap, topics.alerts)]
    redriven = [a for a in alerts if a["tenant_id"] == "globex"]
    assert len(redriven) == len(dead)
    assert {a["model"]["name"] for a in redriven} == {f"{base}_globex"}
    assert pipeline.stats.dead_letters == len(dead)  # none of them came back a second time


def test_redrive_needs_a_reason_and_knows_the_reasons() -> None:
    r = CliRunner().invoke(main, ["dead-letters", "--redrive"])
    assert r.exit_code == 2 and "--redrive needs the --reason(s)" in r.output
    r = CliRunner().invoke(main, ["dead-letters", "--redrive", "--reason", "nope"])
    assert r.exit_code == 2 and "nope: not a dead-letter reason" in r.output
