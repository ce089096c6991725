"""Start and stop a real MLflow tracking server backed by PostgreSQL, for tests.

`MlflowServer` runs `mlflow server` on a free loopback port against a fresh
PostgreSQL database and a temporary artifact directory, so that a test can talk
to the registry over HTTP exactly as the consumer does in production, and can
stop and restart it (same port, same data) to simulate an outage.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

# Where the test PostgreSQL lives; overridable so CI or a developer can point elsewhere.
PG_URL = os.environ.get("STREAM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432")
# An existing database to connect to for CREATE/DROP DATABASE (those cannot run inside
# the database they act on).
PG_ADMIN_DB = os.environ.get("STREAM_TEST_PG_ADMIN_DB", "test")


def _admin_conninfo() -> str:
    return f"{PG_URL}/{PG_ADMIN_DB}"


def postgres_available(timeout: float = 2.0) -> bool:
    """True if the test PostgreSQL accepts a connection (tests skip otherwise)."""
    try:
        with psycopg.connect(_admin_conninfo(), connect_timeout=max(1, int(timeout))):
            return True
    except psycopg.Error:
        return False


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class MlflowServer:
    """A `mlflow server` subprocess on 127.0.0.1 with its own database and artifact dir.

    Usage::

        with MlflowServer() as server:      # created, started and healthy
            mlflow.set_tracking_uri(server.uri)
            ...
            server.stop()                   # the registry "goes away"
            server.start()                  # ... and comes back, same port and data
    """

    def __init__(
        self,
        *,
        workers: int = 1,
        startup_timeout: float = 120.0,
        start: bool = True,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.port: int = free_port()
        self.uri: str = f"http://127.0.0.1:{self.port}"
        self.db_name: str = f"stream_test_{secrets.token_hex(6)}"
        self.backend_store_uri: str = f"{PG_URL}/{self.db_name}"
        self.workers = workers
        self.startup_timeout = startup_timeout
        self.extra_env = dict(extra_env or {})
        self._tmpdir = Path(tempfile.mkdtemp(prefix="stream-mlflow-"))
        self.artifacts_dir: Path = self._tmpdir / "artifacts"
        self.artifacts_dir.mkdir()
        self.log_path: Path = self._tmpdir / "server.log"
        # Seconds from spawn to a 200 from /health, one entry per start().
        self.startup_seconds: list[float] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False

        with psycopg.connect(_admin_conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.db_name)))
        if start:
            try:
                self.start()
            except BaseException:
                self.close()
                raise

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        return [
            # The interpreter running the tests has mlflow installed; no PATH lookup needed.
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--backend-store-uri",
            self.backend_store_uri,
            # Proxied artifact serving: clients upload/download through this server, so
            # the client needs no access to the directory itself.
            "--serve-artifacts",
            "--artifacts-destination",
            str(self.artifacts_dir),
            # One uvicorn worker: with one worker uvicorn runs in-process (no supervisor
            # and forked workers), which keeps a 2-core test machine responsive.
            "--workers",
            str(self.workers),
        ]

    def start(self) -> float:
        """Spawn the server (same port, database and artifacts as before) and wait for health.

        Returns the seconds it took until `GET /health` answered 200.
        """
        if self._closed:
            raise RuntimeError("MlflowServer is closed")
        if self.running:
            raise RuntimeError("MlflowServer is already running")
        if _port_open(self.port):
            raise RuntimeError(f"port {self.port} is already in use")
        env = os.environ.copy()
        # The job runner (huey consumers for GenAI evaluation jobs) forks ~8 extra
        # Python processes; the registry does not need it.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        # A client-side setting inherited from a test must not steer the server.
        env.pop("MLFLOW_TRACKING_URI", None)
        env.update(self.extra_env)
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self._tmpdir,
                # Own process group: stop() kills the CLI and the uvicorn child it spawns
                # in one signal.
                start_new_session=True,
            )
        try:
            self._wait_healthy(t0)
        except BaseException:
            self.stop()
            raise
        elapsed = time.monotonic() - t0
        self.startup_seconds.append(elapsed)
        return elapsed

    def _wait_healthy(self, t0: float) -> None:
        deadline = t0 + self.startup_timeout
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"mlflow server not healthy after {self.startup_timeout:.0f}s:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> None:
        """Kill the server's process group and wait until nothing listens on the port."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        pgid = proc.pid  # start_new_session made the CLI its own group leader
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            proc.wait(timeout=timeout)
        # The CLI can exit before its uvicorn child; a worker left holding the socket
        # would make the "server is down" phase of a test lie.
        deadline = time.monotonic() + timeout
        while _group_alive(pgid) or _port_open(self.port):
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                if time.monotonic() > deadline + timeout:
                    raise RuntimeError(f"mlflow server still up on port {self.port}")
            time.sleep(0.05)

    def close(self) -> None:
        """Stop the server, drop its database and delete its artifacts."""
        if self._closed:
            return
        self._closed = True
        try:
            self.stop()
        finally:
            try:
                with psycopg.connect(_admin_conninfo(), autocommit=True) as conn:
                    # FORCE: a pooled connection of a killed server may linger briefly.
                    conn.execute(
                        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                            sql.Identifier(self.db_name)
                        )
                    )
            finally:
                shutil.rmtree(self._tmpdir, ignore_errors=True)

    def analyze(self) -> None:
        """Refresh PostgreSQL planner statistics for the server's database.

        Call after bulk-creating models. Where autovacuum is off (as on the test
        PostgreSQL here), tables filled after the server's start keep "empty" statistics
        and a search_registered_models page of 1,000 models takes seconds instead of
        sub-second (nested-loop plan for the latest-versions query).
        """
        with psycopg.connect(f"{PG_URL}/{self.db_name}", autocommit=True) as conn:
            conn.execute("ANALYZE")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> MlflowServer:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _group_alive(pgid: int) -> bool:
    """True while a live (non-zombie) process is left in the process group.

    Zombies are ignored: a worker orphaned by the CLI is reparented to whatever init
    the machine has, which may reap it late or never, and a zombie holds no socket.
    """
    proc_root = Path("/proc")
    if not proc_root.is_dir():  # not Linux: fall back to the signal probe
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for stat in proc_root.glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # the process went away while we looked
        # Fields after the parenthesised command name: state ppid pgrp ...
        fields = text[text.rindex(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False
