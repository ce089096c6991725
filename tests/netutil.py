"""A network path of the test's own: the broker on one host, the consumer on another.

The consumer runs in a network namespace made for the test (``ip netns``), joined to the
root namespace, where the embedded broker listens, by a veth pair on a /30 of private
addresses the test picks (10.231.x.0/30: test hosts of its own, nobody else's). Faults
are made on the consumer's side only, so the test's producer and readers see a healthy
broker while the consumer does not, as when one client's link is bad:

* ``loss(p)``: iptables in the namespace drops each packet in and out with probability p
  (``tc netem`` is not in this kernel);
* ``rate(kbit)``: a token bucket (``tc qdisc tbf``) on both ends of the link: queueing
  delay under load;
* ``partition()`` / ``heal()``: every packet dropped, then none.

Needs root, ``ip`` (iproute2) and ``iptables`` (``.ci/run`` installs it); ``unavailable()``
says why not, for a skip. Everything made is removed on exit, namespace and link.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import zlib
from pathlib import Path
from types import TracebackType

from stream.kafka.embedded import broker_binary, free_port, stop_process, wait_for_port


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30)


def unavailable() -> str | None:
    """None when namespaces can be made here, else why not (a skip reason)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/run installs iptables; iproute2 has ip, tc)"
    probe = f"stp{os.getpid() % 100000}"
    try:
        _run("ip", "netns", "add", probe)
        _run("ip", "netns", "exec", probe, "iptables", "-L", "-n")
    except (subprocess.CalledProcessError, OSError) as e:
        err = getattr(e, "stderr", "") or str(e)
        return f"cannot make a network namespace with iptables here: {err.strip()[:200]}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None


class NetLab:
    """The consumer's namespace and its link to the root namespace, and the broker."""

    def __init__(self, unique: str, folder: Path) -> None:
        n = zlib.crc32(unique.encode()) % 64
        self.ns = f"stream-{unique[:8]}"
        self.outer, self.inner = f"sv{unique[:6]}a", f"sv{unique[:6]}b"
        self.broker_ip, self.consumer_ip = f"10.231.{n * 4 % 256}.1", f"10.231.{n * 4 % 256}.2"
        self.folder = folder
        self.port = free_port()
        self._broker: subprocess.Popen[bytes] | None = None
        self._rules: list[list[str]] = []
        self._qdiscs: list[tuple[bool, str]] = []

    @property
    def bootstrap(self) -> str:
        return f"{self.broker_ip}:{self.port}"

    def inside(self, *cmd: str) -> list[str]:
        """``cmd`` run in the consumer's namespace."""
        return ["ip", "netns", "exec", self.ns, *cmd]

    def up(self) -> NetLab:
        _run("ip", "netns", "add", self.ns)
        _run("ip", "link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
        _run("ip", "link", "set", self.inner, "netns", self.ns)
        _run("ip", "addr", "add", f"{self.broker_ip}/30", "dev", self.outer)
        _run("ip", "link", "set", self.outer, "up")
        _run(*self.inside("ip", "addr", "add", f"{self.consumer_ip}/30", "dev", self.inner))
        _run(*self.inside("ip", "link", "set", self.inner, "up"))
        _run(*self.inside("ip", "link", "set", "lo", "up"))
        url = f"tcp://{self.broker_ip}:{self.port}"
        self._broker = subprocess.Popen(
            [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--silent"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for_port(self.broker_ip, self.port)
        return self

    # ---- faults, on the consumer's side --------------------------------------------------

    def _rule(self, *spec: str) -> None:
        for chain in ("INPUT", "OUTPUT"):
            rule = [chain, *spec]
            _run(*self.inside("iptables", "-I", *rule))
            self._rules.append(rule)

    def loss(self, probability: float) -> None:
        self._rule("-m", "statistic", "--mode", "random", "--probability", f"{probability}",
                   "-j", "DROP")

    def partition(self) -> None:
        self._rule("-j", "DROP")

    def heal(self) -> None:
        """Every iptables rule removed (loss and partition)."""
        while self._rules:
            rule = self._rules.pop()
            _run(*self.inside("iptables", "-D", *rule))

    def rate(self, kbit: int) -> None:
        for inner, dev in ((True, self.inner), (False, self.outer)):
            cmd = ["tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{kbit}kbit",
                   "burst", "32kbit", "latency", "500ms"]
            _run(*(self.inside(*cmd) if inner else cmd))
            self._qdiscs.append((inner, dev))

    def unlimited(self) -> None:
        while self._qdiscs:
            inner, dev = self._qdiscs.pop()
            cmd = ["tc", "qdisc", "del", "dev", dev, "root"]
            _run(*(self.inside(*cmd) if inner else cmd))

    def down(self) -> None:
        stop_process(self._broker)
        self._broker = None
        # Deleting the namespace deletes the veth end inside it, and so the pair.
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.outer], capture_output=True, timeout=30)

    def __enter__(self) -> NetLab:
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.down()
