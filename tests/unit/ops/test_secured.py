"""Why a secured connection fails, named: the files the ssl.* properties give, a
handshake repeated with Python's ssl module, and librdkafka's lines read for the cause.

Against a TLS server of the test's own on a loopback port (Python's ``ssl``); the
broker end to end is in ``tests/integration/test_tls.py``.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.ops import failures, secured
from tests.tlsutil import CA, Issued

PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("pki")
    ca, other = CA(d / "ca"), CA(d / "other", "other CA")
    return {"ca": ca, "other": other, "server": ca.issue("server"),
            "expired": ca.issue("old server", expired=True),
            "client": ca.issue("client", client=True, password=PASSWORD)}


def _serve(server: Issued, client_ca: CA | None = None) -> Iterator[int]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(server.cert), str(server.key))
    if client_ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(client_ca.pem))
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    stop = threading.Event()

    def loop() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(1)
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    yield port
    stop.set()
    t.join()
    sock.close()


def _conf(pki: dict[str, object], **over: str) -> dict[str, str]:
    ca, client = pki["ca"], pki["client"]
    assert isinstance(ca, CA) and isinstance(client, Issued)
    return {"security.protocol": "SSL", "ssl.ca.location": str(ca.pem),
            "ssl.certificate.location": str(client.cert), "ssl.key.location": str(client.key),
            "ssl.key.password": PASSWORD, **over}


def test_files_a_missing_ca_an_encrypted_key_without_or_with_a_wrong_password(
        pki: dict[str, object], tmp_path: Path) -> None:
    assert secured.files_problem(_conf(pki)) is None
    assert secured.files_problem({"security.protocol": "PLAINTEXT",
                                  "ssl.ca.location": "/nowhere"}) is None
    missing = str(tmp_path / "nope.pem")
    assert secured.files_problem(_conf(pki, **{"ssl.ca.location": missing})) == (
        f"ssl.ca.location: {missing} does not exist")
    no_pw = _conf(pki)
    del no_pw["ssl.key.password"]
    assert "is encrypted and no ssl.key.password is given" in str(secured.files_problem(no_pw))
    wrong = secured.files_problem(_conf(pki, **{"ssl.key.password": "wrong"}))
    assert wrong is not None and wrong.startswith("ssl.key.password does not open the key")
    assert "wrong" not in wrong and PASSWORD not in wrong  # never the secret


def test_handshake_names_the_expired_certificate_and_the_wrong_ca(
        pki: dict[str, object]) -> None:
    server, expired, other = pki["server"], pki["expired"], pki["other"]
    assert isinstance(server, Issued) and isinstance(expired, Issued) and isinstance(other, CA)
    for port in _serve(server):
        assert secured.handshake_problem("localhost", port, _conf(pki)) is None
        wrong = secured.handshake_problem("localhost", port,
                                          _conf(pki, **{"ssl.ca.location": str(other.pem)}))
        assert wrong is not None and "not signed by a CA in ssl.ca.location" in wrong
    for port in _serve(expired):
        said = secured.handshake_problem("localhost", port, _conf(pki))
        assert said == ("TLS handshake failed: the broker's certificate has expired "
                        "(certificate has expired)")


def test_handshake_names_a_client_certificate_the_server_refuses(
        pki: dict[str, object]) -> None:
    server, ca, other = pki["server"], pki["ca"], pki["other"]
    assert isinstance(server, Issued) and isinstance(ca, CA) and isinstance(other, CA)
    intruder = other.issue("intruder", client=True)
    for port in _serve(server, client_ca=ca):
        assert secured.handshake_problem("localhost", port, _conf(pki)) is None
        bare = _conf(pki)
        for k in ("ssl.certificate.location", "ssl.key.location", "ssl.key.password"):
            del bare[k]
        said = secured.handshake_problem("localhost", port, bare)
        assert said is not None and "requires a client certificate" in said
        said = secured.handshake_problem("localhost", port, _conf(
            pki, **{"ssl.certificate.location": str(intruder.cert),
                    "ssl.key.location": str(intruder.key), "ssl.key.password": ""}))
        assert said is not None and "did not accept the client certificate" in said


def test_librdkafka_lines_read_for_the_cause() -> None:
    assert secured.explain(
        "ssl://b:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::"
        "certificate verify failed: broker certificate could not be verified (after 5ms in "
        "state SSL_HANDSHAKE)") == ("TLS handshake failed: certificate verify failed: broker "
                                    "certificate could not be verified")
    assert "requires a client certificate" in str(secured.explain(
        "ssl://b:9093/bootstrap: Receive failed: error:0A00045C:SSL routines::tlsv13 alert "
        "certificate required: SSL alert number 116 (after 2ms in state APIVERSION_QUERY)"))
    assert secured.explain("b:9092/1: Disconnected (after 60000ms in state UP)") is None


def test_a_hang_up_at_the_first_request_is_the_cause_only_when_it_repeats() -> None:
    line = "b:9092/bootstrap: Disconnected: connection reset by peer (after 1ms in state " \
           "APIVERSION_QUERY)"
    heard = failures._Heard()
    heard.log(6, "%s", line)
    assert heard.cause is None  # a broker going down, maybe
    heard.log(6, "%s", line)
    heard.log(6, "%s", line)
    assert heard.cause is not None and "security.protocol" in heard.cause
    sasl = failures._Heard()
    sasl.log(3, "%s", "sasl_ssl://b:9093/bootstrap: SASL authentication error: Authentication "
             "failed during authentication due to invalid credentials with SASL mechanism "
             "SCRAM-SHA-512 (after 5ms in state AUTH_REQ)")
    assert sasl.cause is not None and sasl.cause.startswith("SASL authentication failed: ")
