"""A TLS listener in front of the embedded broker, and the certificates tests make for it.

Tansu 0.6.0 (the embedded broker) has ``--cert`` and ``--key`` but its command line
declares them as conflicting ("the argument '--cert <CERT>' cannot be used with
'--key <KEY>'"), and with ``--cert`` alone it listens in plain text (seen here). So TLS
is terminated by stunnel (Debian's ``stunnel4``, a well-kept TLS wrapper) on the
address the broker *advertises*: every connection a client makes, the bootstrap one
and the broker one its metadata names, is TLS; nothing in the client can reach the
plain port by mistake, because no metadata names it. stunnel can also require a
client certificate signed by the test's CA (mutual TLS), which is how these tests
authenticate clients: Tansu's SCRAM users cannot be created with its memory storage
(``tansu user create`` against a broker started with ``--authentication`` is refused
with NotAuthenticated before any user exists, seen here).

Certificates are made with ``cryptography`` (the library MLflow and pip already use):
a CA, a server certificate for ``localhost`` and 127.0.0.1, an expired one, and client
certificates, one with its key encrypted under a password.
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import time
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stream.kafka.embedded import broker_binary, free_port, stop_process, wait_for_port


def stunnel() -> str | None:
    """stunnel's path, or None (``.ci/run`` installs Debian's ``stunnel4``)."""
    return shutil.which("stunnel4") or shutil.which("stunnel")


@dataclass
class Issued:
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path, password: str | None) -> None:
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode()) if password
        else serialization.NoEncryption())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8, enc))


class CA:
    """A certificate authority of the test's own, written under ``folder``."""

    def __init__(self, folder: Path, name: str = "stream test CA") -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = folder / f"{name.replace(' ', '-')}.pem"
        self.pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, *, client: bool = False, expired: bool = False,
              password: str | None = None) -> Issued:
        """A certificate for ``cn`` (a server's also names localhost and 127.0.0.1)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        start, end = ((now - dt.timedelta(days=10), now - dt.timedelta(days=1)) if expired
                      else (now - dt.timedelta(hours=1), now + dt.timedelta(days=7)))
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn)).issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False)
        )
        if not client:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ip_address("127.0.0.1"))]),
                critical=False)
        cert = b.sign(self.key, hashes.SHA256())
        stem = self.folder / cn.replace(" ", "-")
        out = Issued(stem.with_suffix(".crt"), stem.with_suffix(".key"))
        out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, out.key, password)
        return out


class TlsBroker:
    """The embedded broker, reachable only through a TLS listener on ``localhost:port``.

    ``client_ca``: the listener requires a client certificate signed by it.
    """

    def __init__(self, folder: Path, server: Issued, *, client_ca: CA | None = None) -> None:
        self.folder, self.server, self.client_ca = folder, server, client_ca
        self.port = free_port()
        self._plain_port = free_port()
        self._broker_proc: subprocess.Popen[bytes] | None = None
        self._tunnel: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"localhost:{self.port}"

    def start(self) -> TlsBroker:
        exe = stunnel()
        assert exe, "stunnel is not installed"
        # The broker advertises the TLS address, so clients come back through it.
        self._broker_proc = subprocess.Popen(
            [broker_binary(), "broker",
             "--listener-url", f"tcp://127.0.0.1:{self._plain_port}",
             "--advertised-listener-url", f"tcp://localhost:{self.port}", "--silent"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for_port("127.0.0.1", self._plain_port)
        conf = self.folder / f"stunnel-{self.port}.conf"
        lines = ["foreground = yes", "pid =", f"output = {self.folder / 'stunnel.log'}",
                 "[kafka]", f"accept = 127.0.0.1:{self.port}",
                 f"connect = 127.0.0.1:{self._plain_port}",
                 f"cert = {self.server.cert}", f"key = {self.server.key}"]
        if self.client_ca is not None:
            lines += [f"CAfile = {self.client_ca.pem}", "verifyChain = yes",
                      "requireCert = yes"]
        conf.write_text("\n".join(lines) + "\n")
        self._tunnel = subprocess.Popen([exe, str(conf)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for_port("127.0.0.1", self.port)
        time.sleep(0.2)
        return self

    def stop(self) -> None:
        for proc in (self._tunnel, self._broker_proc):
            stop_process(proc)
        self._tunnel = self._broker_proc = None

    def __enter__(self) -> TlsBroker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
