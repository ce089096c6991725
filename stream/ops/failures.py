"""One failure policy for every command: bounded waits, one clear line, quiet retries.

* **Commands** (``models``, ``train``, ``score``, ``alerts``, ``replay``, ...) check the
  broker and the registry they need before using them (:func:`require_kafka`,
  :func:`require_registry`): a TCP connect to each address (``--connect-timeout``,
  3 s), then, for Kafka, a metadata request (``--kafka-timeout``, 10 s). What cannot be reached
  raises :class:`Unreachable`, which the command line turns into one line naming
  what was tried and why (``cannot reach Kafka at 127.0.0.1:19999: connection
  refused``) and exit status 3, well within 15 s.
* **MLflow's HTTP client** retries a failed request 7 times with exponential backoff
  and waits up to 120 s per attempt (about four minutes to fail): every command sets
  one retry and a 10 s timeout unless the user set them (:func:`mlflow_http_defaults`).
* **The consumer** (``stream run``) must outlive an outage: it waits for the broker and
  the registry as long as it takes (:func:`wait_until_reachable`), says so once at
  WARNING with the address and the reason, then again at growing intervals (up to
  every 5 minutes), and stops at once when asked.
* **librdkafka's own log lines** go through the ``stream.kafka.clients.librdkafka`` logger
  (:func:`kafka_logger`), each distinct line once per ``REPEAT_S``, with a count of
  the repeats it held back: a dead broker is one line a minute, not twenty a second.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, Final
from urllib.parse import urlparse

from stream.errors import StreamError
from stream.ops import secured

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S: Final = 3.0
KAFKA_TIMEOUT_S: Final = 10.0
REPEAT_S: Final = 60.0
#: Exit status of a command that could not reach what it needs.
EXIT_UNREACHABLE: Final = 3

MLFLOW_HTTP_DEFAULTS: Final[dict[str, str]] = {
    # One immediate retry absorbs a keep-alive connection the server closed meanwhile.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    # Seconds without an answer before a request fails: bounds a hung server.
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    # Connections kept per host: the consumer loads up to 4 models at once, each
    # download on several threads; MLflow's 10 made urllib3 warn "Connection pool is
    # full, discarding connection" at every start with an HTTP registry (seen here).
    "MLFLOW_HTTP_POOL_MAXSIZE": "32",
}


class Unreachable(StreamError):
    """The broker or the registry did not answer; ``str()`` is the line a user reads."""


class ModelsNotLoaded(StreamError, RuntimeError):
    """A production model that should score some records could not be loaded: an offline
    run stops with this line (exit 1) rather than dead-letter what no model could score."""


class BadSetting(StreamError):
    """A setting that cannot work as given (a busy port); ``str()`` names the flag."""


#: Exit status of a setting that cannot work (as click's usage errors).
EXIT_BAD_SETTING: Final = 2


_CREDENTIALS = re.compile(r"://([^:/@\s]+):[^@\s/]+@")
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")
_API_CALL = re.compile(r"^(API request to \S+?)(?:\?\S*)? failed")


def brief(e: BaseException | str, limit: int = 200) -> str:
    """An error in one line a user can read: the cause of a connection failure rather
    than urllib3's whole chain, cut at a word (with an ellipsis) when it is long."""
    text = str(e) or (type(e).__name__ if isinstance(e, BaseException) else "")
    text = _CREDENTIALS.sub(r"://\1:***@", text)  # a URI's password, wherever it appears
    lines = text.strip().splitlines()
    first = lines[0].strip() if lines else ""
    errno = _ERRNO.search(text)
    if errno:
        why = errno.group(1).strip().rstrip(".").lower()
        call = _API_CALL.match(first)
        first = f"{call.group(1)} failed: {why}" if call else why
    elif "Read timed out" in text:
        call = _API_CALL.match(first)
        first = f"{call.group(1)} failed: read timed out" if call else "read timed out"
    if len(first) > limit:
        cut = first[:limit].rsplit(" ", 1)[0]
        first = (cut if len(cut) > limit // 2 else first[:limit]) + "…"
    return first


def redact_uri(uri: str) -> str:
    """A URI as a log line or message may show it: its password masked (``user:***@``),
    and a relative SQLite path followed by the absolute file it names."""
    try:
        p = urlparse(uri)
    except ValueError:
        return "(unparseable URI)"
    out = uri
    if p.password:
        out = out.replace(f":{p.password}@", ":***@", 1)
    if p.scheme == "sqlite" and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = uri[len("sqlite:///"):].split("?", 1)[0]
        if path and path != ":memory:":
            out = f"{out} ({os.path.abspath(path)})"
    return out


def missing_sqlite(uri: str) -> str | None:
    """The absolute path of a SQLite registry file that does not exist (None otherwise):
    MLflow would create an empty registry there without a word."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    path = os.path.abspath(path)
    return None if os.path.exists(path) else path


def require_existing_registry(uri: str, *, can_create: bool = False) -> None:
    """BadSetting (one line, exit 2) when ``uri`` names a SQLite file that is not there;
    ``can_create``: the command has ``--create``, which the line then mentions."""
    path = missing_sqlite(uri)
    if path is not None:
        raise BadSetting(
            f"no registry at {uri}: {path} does not exist (give --tracking-uri, or "
            "MLFLOW_TRACKING_URI, the registry `stream train` wrote to"
            + ("; --create starts an empty one)" if can_create else ")"))


def mlflow_http_defaults(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set MLflow's HTTP client defaults where unset; returns what it set."""
    env = os.environ if environ is None else environ
    applied = {k: v for k, v in MLFLOW_HTTP_DEFAULTS.items() if k not in env}
    env.update(applied)
    return applied


# ---- probes ------------------------------------------------------------------------------


def _addresses(bootstrap: str) -> list[tuple[str, int]]:
    out = []
    for part in bootstrap.split(","):
        part = part.strip()
        if "://" in part:
            part = part.split("://", 1)[1]
        host, _, port = part.rpartition(":")
        if host and port.isdigit():
            out.append((host.strip("[]"), int(port)))
    return out


def _connect_error(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection opens, else why not, in a few words."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except ConnectionRefusedError:
        return "connection refused"
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except socket.gaierror as e:
        return f"cannot resolve {host}: {e.strerror or e}"
    except OSError as e:
        return e.strerror or str(e)


class _Heard:
    """librdkafka's log lines for one probe: a line about TLS or SASL is kept as the
    cause (and not logged: the probe's one line says it); the rest go to the usual,
    deduplicated logger."""

    #: A hang-up at the first request is taken as the cause only when it repeats: once
    #: may be a broker going down.
    REPEATS: Final = 3

    def __init__(self) -> None:
        self.cause: str | None = None
        self._seen: dict[str, int] = {}

    def log(self, level: int, fmt: str, *args: Any) -> None:
        text = fmt % args if args else fmt
        cause = secured.explain(text)
        if cause is None:
            kafka_logger().log(level, "%s", text)
            return
        n = self._seen[cause] = self._seen.get(cause, 0) + 1
        if self.cause is None and (n >= self.REPEATS or not cause.startswith("the broker closed")):
            self.cause = cause


def kafka_problem(conf: dict[str, Any], timeout: float = KAFKA_TIMEOUT_S,
                  connect_timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """None when the cluster answers a metadata request, else why not.

    ``connect_timeout`` bounds each TCP connect, ``timeout`` the metadata request
    (settings ``--connect-timeout`` and ``--kafka-timeout``). A TLS or SASL refusal ends
    the wait at once, named (:mod:`stream.ops.secured`): a wrong CA, an expired
    certificate, a client certificate or a password the broker refuses.
    """
    bootstrap = str(conf.get("bootstrap.servers", ""))
    addrs = _addresses(bootstrap)
    if not addrs:
        return f"no host:port in {bootstrap!r}"
    errors = [_connect_error(h, p, connect_timeout) for h, p in addrs]
    if all(errors):
        return errors[0]
    files = secured.files_problem(conf)
    if files:
        return files
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    heard = _Heard()
    try:
        admin = AdminClient({**conf, "logger": heard})  # type: ignore[dict-item]
    except KafkaException as e:
        return f"the Kafka client refused its properties ({e.args[0].str() if e.args else e})"
    deadline = time.monotonic() + timeout
    # Short waits first, so a refusal is named at once; longer ones after, so a slow
    # broker's answer (one that takes longer than a short wait) is still taken.
    step = 0.5
    while True:
        left = deadline - time.monotonic()
        try:
            admin.list_topics(timeout=max(0.05, min(step, left)))
            return None
        except KafkaException as e:
            failed = e
        admin.poll(0)  # hands librdkafka's log lines to ``heard``
        if heard.cause is not None:
            if secured.uses_tls(conf) and heard.cause.startswith("TLS"):
                host, port = next(a for a, err in zip(addrs, errors, strict=True) if not err)
                return secured.handshake_problem(host, port, conf) or heard.cause
            return heard.cause
        if left <= step:
            why = failed.args[0].str() if failed.args else failed
            return f"no metadata within {timeout:g} s ({why})"
        step = min(step * 2, 4.0)


def registry_problem(uri: str, connect_timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """None when an HTTP registry's port accepts connections (or it is a local store)."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return _connect_error(parsed.hostname or "localhost", port, connect_timeout)


def require_kafka(conf: dict[str, Any], timeout: float = KAFKA_TIMEOUT_S,
                  connect_timeout: float = CONNECT_TIMEOUT_S) -> None:
    problem = kafka_problem(conf, timeout, connect_timeout)
    if problem:
        raise Unreachable(f"cannot reach Kafka at {conf.get('bootstrap.servers')}: {problem}")


def require_registry(uri: str, connect_timeout: float = CONNECT_TIMEOUT_S) -> None:
    problem = registry_problem(uri, connect_timeout)
    if problem:
        raise Unreachable(f"cannot reach the MLflow registry at {redact_uri(uri)}: {problem}")


# ---- the consumer's patience -------------------------------------------------------------


class OutageLog:
    """WARNING when an outage starts, then at growing intervals; INFO when it ends."""

    def __init__(self, what: str, first: float = 30.0, cap: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what, self.first, self.cap, self.clock = what, first, cap, clock
        self._next = 0.0
        self._gap = first
        self._since: float | None = None
        self.lines = 0

    def failed(self, reason: str) -> None:
        now = self.clock()
        if self._since is None:
            self._since = now
            self._next = now
        if now >= self._next:
            down = now - self._since
            extra = f" (for {down:.0f} s)" if down >= 1 else ""
            log.warning("%s: %s%s; retrying until it answers", self.what, reason, extra)
            self.lines += 1
            self._next = now + self._gap
            self._gap = min(self._gap * 2, self.cap)

    def recovered(self) -> None:
        if self._since is not None:
            log.info("%s: answering again after %.0f s", self.what, self.clock() - self._since)
        self._since = None
        self._gap = self.first


def wait_until_reachable(
    probe: Callable[[], str | None],
    what: str,
    stop: threading.Event,
    *,
    step: float = 1.0,
    cap: float = 15.0,
) -> bool:
    """Probe until it reports no problem (True), or until ``stop`` is set (False)."""
    outage = OutageLog(what)
    delay = step
    while not stop.is_set():
        problem = probe()
        if problem is None:
            outage.recovered()
            return True
        outage.failed(problem)
        stop.wait(delay)
        delay = min(delay * 2, cap)
    return False


# ---- librdkafka's log lines --------------------------------------------------------------


class _Dedup(logging.Filter):
    """Each distinct message once per ``REPEAT_S``; the next one says how many were held."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.clock = clock
        self._seen: dict[str, list[float]] = {}  # text -> [last shown, held back since]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        text = _strip_timestamp(record.getMessage())
        now = self.clock()
        with self._lock:
            seen = self._seen.get(text)
            if seen is not None and now - seen[0] < REPEAT_S:
                seen[1] += 1
                return False
            held = int(seen[1]) if seen is not None else 0
            if len(self._seen) > 1000:
                self._seen.clear()
            self._seen[text] = [now, 0]
        record.msg, record.args = text + (f" ({held} more like it)" if held else ""), ()
        return True


def _strip_timestamp(text: str) -> str:
    # librdkafka's text carries its own time and counters ("after 3ms"): drop what varies.
    import re

    return re.sub(r"\(after \d+ms[^)]*\)", "", text).strip()


_LOGGER: logging.Logger | None = None


def kafka_logger() -> logging.Logger:
    """The logger librdkafka writes through (pass as the client's ``logger`` property)."""
    global _LOGGER
    if _LOGGER is None:
        lg = logging.getLogger("stream.kafka.clients.librdkafka")
        lg.addFilter(_Dedup())
        _LOGGER = lg
    return _LOGGER


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT and SIGTERM set the yielded event instead of ending the process.

    For the reading loops (``alerts``, ``dead-letters``, ``feedback`` with ``--follow``):
    they check it between polls of at most half a second, so a stop ends them within a
    second, cleanly (the consumer closed, the summary printed, exit 0), where SIGTERM's
    default would kill the process. Handlers can only be set in the main thread; in
    another, the event is yielded and the process keeps its handlers.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.signal(sig, lambda *_a: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
