"""Why a TLS or SASL connection to the broker fails, in one line a user can act on.

librdkafka reports a refused handshake as a log line per attempt, many a second, and
its words do not always name the cause: an expired broker certificate and one from an
unknown CA both read "certificate verify failed: broker certificate could not be
verified"; a wrong ``ssl.key.password`` reads "ssl.key.location failed: ... PEM lib".
So before a client is made, :func:`files_problem` checks the files the properties name
(and that the key opens with the password given); and when a handshake fails,
:func:`handshake_problem` repeats it once with Python's ``ssl`` module (the same
OpenSSL), whose verification error says which check failed. :func:`explain` turns
librdkafka's own line into the cause when that is all there is (a SASL refusal, a
client certificate the broker did not take).

Secrets: nothing here puts a property's value in a message, only property names and
file paths.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
from pathlib import Path
from typing import Any

_SECURED = ("ssl", "sasl_ssl")


def uses_tls(conf: dict[str, Any]) -> bool:
    return str(conf.get("security.protocol", "plaintext")).lower() in _SECURED


def files_problem(conf: dict[str, Any]) -> str | None:
    """None when every file a TLS property names can be read (and a key opens with the
    password given), else which property and why, without any secret's value."""
    if not uses_tls(conf):
        return None
    for prop in ("ssl.ca.location", "ssl.certificate.location", "ssl.key.location"):
        value = conf.get(prop)
        if not value or (prop == "ssl.ca.location" and str(value) == "probe"):
            continue
        path = Path(str(value))
        if not path.exists():
            return f"{prop}: {path} does not exist"
        if not path.is_file() and prop != "ssl.ca.location":
            return f"{prop}: {path} is not a file"
        try:
            if path.is_file():
                path.read_bytes()
        except OSError as e:
            return f"{prop}: cannot read {path} ({e.strerror or e})"
    key, cert = conf.get("ssl.key.location"), conf.get("ssl.certificate.location")
    if key and cert:
        password = conf.get("ssl.key.password")
        encrypted = b"ENCRYPTED" in Path(str(key)).read_bytes()
        if encrypted and not password:
            return f"ssl.key.location: {key} is encrypted and no ssl.key.password is given"
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            ctx.load_cert_chain(str(cert), str(key), password=str(password) if password else None)
        except ssl.SSLError as e:
            if encrypted:
                return f"ssl.key.password does not open the key in {key}"
            return (f"ssl.certificate.location and ssl.key.location: {cert} and {key} "
                    f"are not a certificate and its key ({e.reason or e})")
    return None


def _context(conf: dict[str, Any]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca = conf.get("ssl.ca.location")
    if ca and str(ca) != "probe":
        if Path(str(ca)).is_dir():
            ctx.load_verify_locations(capath=str(ca))
        else:
            ctx.load_verify_locations(cafile=str(ca))
    else:
        ctx.load_default_certs()
    algo = str(conf.get("ssl.endpoint.identification.algorithm", "https")).lower()
    ctx.check_hostname = algo == "https"
    if str(conf.get("enable.ssl.certificate.verification", "true")).lower() == "false":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    cert, key = conf.get("ssl.certificate.location"), conf.get("ssl.key.location")
    if cert and key:
        password = conf.get("ssl.key.password")
        ctx.load_cert_chain(str(cert), str(key), password=str(password) if password else None)
    return ctx


_VERIFY_WORDS = {
    "certificate has expired": "the broker's certificate has expired",
    "certificate is not yet valid": "the broker's certificate is not valid yet",
    "unable to get local issuer certificate":
        "the broker's certificate is not signed by a CA in ssl.ca.location",
    "self-signed certificate in certificate chain":
        "the broker's certificate is not signed by a CA in ssl.ca.location",
    "self-signed certificate": "the broker's certificate is self-signed and not in "
                               "ssl.ca.location",
    "Hostname mismatch": "the broker's certificate does not name the host connected to",
    "IP address mismatch": "the broker's certificate does not name the address connected to",
}


def handshake_problem(host: str, port: int, conf: dict[str, Any],
                      timeout: float = 3.0) -> str | None:
    """One TLS handshake to ``host:port`` as the client's properties ask: None when it
    completes, else the cause (the verification check that failed, or what the broker
    answered)."""
    try:
        ctx = _context(conf)
    except (ssl.SSLError, OSError) as e:
        return f"cannot set up TLS from the ssl.* properties ({getattr(e, 'reason', None) or e})"
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as tls:
            # TLS 1.3 sends the server's verdict on a client certificate after the
            # handshake: one read surfaces it (a broker sends nothing unasked).
            tls.settimeout(0.5)
            with contextlib.suppress(TimeoutError):
                tls.recv(1)
    except ssl.SSLCertVerificationError as e:
        why = str(e.verify_message or e.reason or e)
        for words, said in _VERIFY_WORDS.items():
            if words.lower() in why.lower():
                return f"TLS handshake failed: {said} ({why})"
        return f"TLS handshake failed: the broker's certificate was refused ({why})"
    except ssl.SSLError as e:
        return f"TLS handshake failed: {_alert(str(e.reason or e))}"
    except OSError:
        return None  # not a TLS problem: the caller reports what librdkafka saw
    return None


def _alert(reason: str) -> str:
    r = reason.lower().replace("_", " ")
    if "certificate required" in r:
        return ("the broker requires a client certificate (ssl.certificate.location, "
                f"ssl.key.location) signed by a CA it trusts ({reason})")
    if "unknown ca" in r or "bad certificate" in r or "certificate unknown" in r:
        return f"the broker did not accept the client certificate ({reason})"
    if "wrong version number" in r or "record layer failure" in r:
        return f"the broker does not speak TLS on that port ({reason})"
    return reason


_OPENSSL_CODE = re.compile(r"error:[0-9A-Fa-f]+:[^:]*:+")
_AFTER = re.compile(r"\s*\(after \d+ms[^)]*\)")
_BROKER = re.compile(r"^\S+://\S+?/\S+?: ")


def explain(line: str) -> str | None:
    """librdkafka's log line as a cause, when it is about security; None otherwise.

    >>> explain("sasl_ssl://b:9093/bootstrap: SASL authentication error: Authentication "
    ...         "failed: invalid credentials (after 5ms in state AUTH_REQ)")
    'SASL authentication failed: Authentication failed: invalid credentials'
    >>> explain("b:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused")
    """
    text = _AFTER.sub("", _BROKER.sub("", line.strip()))
    low = text.lower()
    if "disconnected" in low and "apiversion_query" in line.lower():
        # The broker hung up at the first request: a TLS or SASL listener spoken to in
        # plain text does that (seen here with a TLS one).
        return ("the broker closed the connection at the first request: does it expect "
                "TLS or SASL (security.protocol)?")
    if "sasl" in low and ("authentication" in low or "mechanism" in low):
        why = re.sub(r"^.*?SASL authentication error:\s*", "", text)
        return f"SASL authentication failed: {why}"
    if "ssl handshake failed" in low or "ssl routines" in low or "certificate" in low:
        return "TLS handshake failed: " + _alert(_OPENSSL_CODE.sub("", text).replace(
            "SSL handshake failed: ", "").replace("Receive failed: ", "").strip())
    return None
