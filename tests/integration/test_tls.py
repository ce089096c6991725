"""TLS with client certificates, end to end: every command passes ``-X`` through, and a
wrong CA, an expired certificate or a wrong key password ends in one line naming it.

The broker is the embedded one, reachable only through a TLS listener that requires a
client certificate signed by the test's CA (``tests/tlsutil.py`` says why stunnel
terminates TLS, and why SCRAM users cannot be made on the embedded broker). The client's
key is encrypted: its password is the secret that must never show in a log, an output
or the metrics.
"""

from __future__ import annotations

import re
import secrets
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from confluent_kafka import Consumer, Producer, TopicPartition

from stream.cli import main
from stream.generate import write_jsonl
from stream.kafka.clients import create_topics
from tests import faultutil as fu
from tests import tlsutil
from tests.integration.test_windows_e2e import _events, windowed_model
from tests.kafkautil import read_all
from tests.servers import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(tlsutil.stunnel() is None,
                       reason="stunnel is not installed (.ci/run installs stunnel4)"),
]

PASSWORD = "pw-" + secrets.token_hex(8)


class Tls:
    def __init__(self, folder: Path) -> None:
        self.ca = tlsutil.CA(folder / "ca")
        self.other_ca = tlsutil.CA(folder / "other", "someone else's CA")
        self.client = self.ca.issue("stream client", client=True, password=PASSWORD)
        self.broker = tlsutil.TlsBroker(folder, self.ca.issue("broker"), client_ca=self.ca)

    def props(self, **over: str) -> dict[str, str]:
        p = {"security.protocol": "SSL", "ssl.ca.location": str(self.ca.pem),
             "ssl.certificate.location": str(self.client.cert),
             "ssl.key.location": str(self.client.key), "ssl.key.password": PASSWORD}
        p.update(over)
        return p

    def conf(self, **over: str) -> dict[str, Any]:
        return {"bootstrap.servers": self.broker.bootstrap, **self.props(**over)}

    def x(self, **over: str) -> list[str]:
        """The properties as ``-X`` flags."""
        return [a for k, v in self.props(**over).items() for a in ("-X", f"{k}={v}")]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Any:
    t = Tls(tmp_path_factory.mktemp("tls"))
    with t.broker:
        yield t


def _committed(conf: dict[str, Any], group: str, topic: str, parts: int) -> int:
    c = Consumer({**conf, "group.id": group, "enable.auto.commit": False})
    try:
        got = c.committed([TopicPartition(topic, p) for p in range(parts)], timeout=10)
    finally:
        c.close()
    return sum(max(tp.offset, 0) for tp in got)


def _invoke(args: list[str]) -> Any:
    return CliRunner().invoke(main, args)


def test_every_command_works_over_tls_with_a_client_certificate(
    tls: Tls, tracking_uri: str, unique: str, tmp_path: Path
) -> None:
    base = windowed_model(tracking_uri)
    conf = tls.conf()
    topics = fu.Topics(unique)
    incidents, entities = f"incidents-{unique}", f"entities-{unique}"
    feedback_topic, changelog = f"feedback-{unique}", f"changelog-{unique}"
    create_topics(conf, [topics.input], 2, 1)
    create_topics(conf, [topics.alerts, topics.dlq, feedback_topic], 1, 1)
    create_topics(conf, [incidents, entities], 1, 1, config={"cleanup.policy": "compact"})
    events = _events(3000, seed=31)
    path = tmp_path / "events.jsonl"
    write_jsonl(path, events)
    n = len(events) + 1

    # replay: the producer over TLS (and one record for the dead-letter topic, which
    # replay would refuse to send).
    r = _invoke(["replay", str(path), "--bootstrap-servers", tls.broker.bootstrap,
                 "--topic", topics.input, *tls.x()])
    assert r.exit_code == 0, r.output
    p = Producer(conf)
    p.produce(topics.input, b"{not json", partition=0)
    assert p.flush(30) == 0

    # run: exactly-once, windows in a changelog topic, incidents and entity alerts.
    metrics_port = free_port()
    props = ",".join(f"{k}={v}" for k, v in tls.props().items())
    env = fu.stream_env(tls.broker.bootstrap, topics, tracking_uri, base,
                        STREAM_DELIVERY="exactly-once", STREAM_INCIDENT_TOPIC=incidents,
                        STREAM_ENTITY_ALERT_TOPIC=entities, STREAM_STATE_TOPIC=changelog,
                        STREAM_METRICS_PORT=str(metrics_port),
                        STREAM_KAFKA_PROPERTIES=f"{props},transactional.id=tls-{unique}")
    proc = fu.StreamProcess(env, tmp_path / "run.log").start()
    try:
        fu.wait_until(lambda: _committed(conf, topics.group, topics.input, 2) >= n, 180,
                      "every event committed over TLS", state=lambda: proc.log()[-2000:])
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as rsp:
            metrics = rsp.read().decode()
        assert proc.stop() == 0, proc.log()[-3000:]
    finally:
        if proc.alive:
            proc.kill()
    log = proc.log()
    assert "consuming " in log and "Traceback" not in log

    # alerts, with the incidents and entity alerts beside them.
    r = _invoke(["alerts", "--bootstrap-servers", tls.broker.bootstrap, "--topic", topics.alerts,
                 "--json", *tls.x()])
    assert r.exit_code == 0, r.output
    alerts = [orjson.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert len({a["event"]["flow_id"] for a in alerts}) == len(events)
    r = _invoke(["alerts", "--bootstrap-servers", tls.broker.bootstrap, "--entities",
                 "--entity-alert-topic", entities, "--json", *tls.x()])
    assert r.exit_code == 0, r.output

    # feedback: a verdict written, then read back into precision.
    normal = next(a for a in alerts if a["event"].get("label") == "normal")
    fb = ["--bootstrap-servers", tls.broker.bootstrap, "--alert-topic", topics.alerts,
          "--feedback-topic", feedback_topic, "--dlq-topic", topics.dlq, *tls.x()]
    r = _invoke(["feedback", *fb, "add", "--alert-id", normal["alert_id"],
                 "--verdict", "false_positive"])
    assert r.exit_code == 0, r.output
    r = _invoke(["feedback", *fb, "--json"])
    assert r.exit_code == 0, r.output
    report = orjson.loads(r.stdout.strip().splitlines()[-1])
    assert report["per_tenant"][normal["tenant_id"]]["false_positive"] == 1

    # dead-letters: the one bad record, with its reason.
    r = _invoke(["dead-letters", "--bootstrap-servers", tls.broker.bootstrap, "--topic", topics.dlq,
                 "--json", *tls.x()])
    assert r.exit_code == 0, r.output
    assert "malformed_json" in r.output

    # The window state went to the changelog topic, over TLS too.
    got = read_all(tls.broker.bootstrap, changelog, **tls.props())
    assert got, "nothing in the changelog topic"

    # The key's password is nowhere: not in the log, the outputs, or the metrics.
    assert PASSWORD not in log and PASSWORD not in metrics
    print(f"\nTLS with a client certificate: replay, run (exactly-once, changelog, incidents, "
          f"entity alerts), alerts, feedback and dead-letters; {n} records, "
          f"{len(alerts)} alerts, changelog records read {len(got)}")


def _one_line_exit_3(args: list[str], *words: str) -> str:
    t0 = time.monotonic()
    r = _invoke(args)
    took = time.monotonic() - t0
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert r.exit_code == 3, r.output
    assert len(lines) == 1, r.output
    assert all(w in lines[0] for w in words), lines[0]
    assert "%3|" not in r.output and PASSWORD not in r.output
    assert took < 15, took
    return f"{lines[0]} ({took:.1f} s)"


def test_a_wrong_ca_an_expired_certificate_and_a_wrong_password_each_say_so(
    tls: Tls, tmp_path: Path
) -> None:
    said = []
    alerts = ["alerts", "--bootstrap-servers", tls.broker.bootstrap, "--topic", "nothing"]
    said.append(_one_line_exit_3([*alerts, *tls.x(**{"ssl.ca.location": str(tls.other_ca.pem)})],
                                 "not signed by a CA in ssl.ca.location"))
    said.append(_one_line_exit_3(
        ["dead-letters", "--bootstrap-servers", tls.broker.bootstrap,
         *tls.x(**{"ssl.key.password": "not-" + PASSWORD})],
        "ssl.key.password does not open the key"))
    intruder = tls.other_ca.issue("intruder", client=True)
    said.append(_one_line_exit_3(
        [*alerts, *tls.x(**{"ssl.certificate.location": str(intruder.cert),
                            "ssl.key.location": str(intruder.key)})],
        "did not accept the client certificate"))
    with tlsutil.TlsBroker(tmp_path, tls.ca.issue("expired broker", expired=True)) as old:
        said.append(_one_line_exit_3(
            ["replay", "--bootstrap-servers", old.bootstrap, "--topic", "x", "/dev/null",
             *tls.x()], "certificate has expired"))
    print("\n" + "\n".join(said))


def test_run_waits_on_a_wrong_ca_warning_once_and_not_ready(
    tls: Tls, tracking_uri: str, unique: str, tmp_path: Path
) -> None:
    metrics_port = free_port()
    props = ",".join(f"{k}={v}" for k, v in
                     tls.props(**{"ssl.ca.location": str(tls.other_ca.pem)}).items())
    base = windowed_model(tracking_uri)
    env = fu.stream_env(tls.broker.bootstrap, fu.Topics(unique), tracking_uri, base,
                        STREAM_METRICS_PORT=str(metrics_port), STREAM_KAFKA_PROPERTIES=props)
    proc = fu.StreamProcess(env, tmp_path / "run.log").start()

    def readyz() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz",
                                        timeout=2) as rsp:
                return rsp.status, rsp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError as e:
            return 0, str(e)

    try:
        fu.wait_until(lambda: "not signed by a CA" in readyz()[1], 60, "/readyz to say why",
                      state=lambda: proc.log()[-2000:])
        time.sleep(5)  # a few more probes
        status, text = readyz()
        assert proc.alive and status == 503, (status, text)
        log = proc.log()
        warnings = [x for x in log.splitlines() if "WARNING" in x and "Kafka at" in x]
        assert len(warnings) == 1 and "not signed by a CA in ssl.ca.location" in warnings[0], log
        assert not re.search(r"SSL handshake failed", log), log  # not librdkafka's loop
        assert PASSWORD not in log and PASSWORD not in text
        assert proc.stop() == 0
    finally:
        if proc.alive:
            proc.kill()
    print(f"\nrun with a wrong CA: {warnings[0].strip()}\n/readyz {status}: {text.strip()}")


def test_plain_producer_is_refused(tls: Tls) -> None:
    """The listener takes TLS only: a client without it never gets a record in."""
    p = Producer({"bootstrap.servers": tls.broker.bootstrap, "message.timeout.ms": 3000})
    reports: list[Any] = []
    p.produce("refused", b"x", on_delivery=lambda err, _m: reports.append(err))
    p.flush(10)
    assert len(reports) == 1 and reports[0] is not None, reports
