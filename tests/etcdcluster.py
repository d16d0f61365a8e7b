"""A real 3-member etcd cluster for tests and benchmarks, on free 127.0.0.1 ports.

`EtcdCluster(root)` runs Debian's `etcd` binary (package etcd-server, installed by
scripts/setup) as child processes with their data directories under `root`, waits until
every member answers /health, and offers `kill(i)` (SIGKILL by pid), `start(i)` (the
same member again, on its old ports and data), `pause(i)` / `resume(i)` (SIGSTOP and
SIGCONT), `leader_index()` and `stop()` (all, by pid). Leaving the
`with` block always stops every member it started. `wait_healthy(members)` waits until
each answers /health (an https member, tests/etcd_pki.py, verified by its `verify`).
`etcd_binary()` skips the calling test loudly where no etcd is installed. Nothing is killed by name; no service is used.
"""
import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

HEALTH_TIMEOUT_S = 30.0


def etcd_binary() -> str:
    """The etcd program, or a skip that says why (scripts/setup installs it)."""
    found = shutil.which("etcd")
    if not found:
        pytest.skip("*** etcd is not installed (apt-get install etcd-server, or scripts/setup): "
                    "ETCD CLUSTER TESTS ARE SKIPPED ***")
    return found


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports nobody listens on right now (all held open while chosen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class EtcdMember:
    """One member: its name, client and peer URLs, data directory, log and process."""

    def __init__(self, name: str, client_port: int, peer_port: int, root: Path):
        self.name = name
        self.client_url = f"http://127.0.0.1:{client_port}"
        self.peer_url = f"http://127.0.0.1:{peer_port}"
        self.data_dir = root / f"{name}.etcd"
        self.log_path = root / f"{name}.log"
        self.process: subprocess.Popen | None = None
        self.verify: ssl.SSLContext | bool = True  # how /health's answer is verified (https members: their CA)

    def command(self, binary: str, initial_cluster: str) -> list[str]:
        """etcd's arguments; heartbeat and election timeout are etcd's defaults (100 ms, 1 s)."""
        return [binary, "--name", self.name, "--data-dir", str(self.data_dir),
                "--listen-client-urls", self.client_url, "--advertise-client-urls", self.client_url,
                "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", initial_cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", "apeinxfs-test", "--heartbeat-interval", "100",
                "--election-timeout", "1000"]

    def start(self, binary: str, initial_cluster: str) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(binary, initial_cluster), stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to this member's own pid and reap it."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)
            self.process.wait(timeout=30)
        self.process = None

    def healthy(self) -> bool:
        """Whether the member answers /health with health true (it has a leader)."""
        if self.process is None or self.process.poll() is not None:
            return False
        try:
            answer = httpx.get(f"{self.client_url}/health", verify=self.verify, timeout=1.0)
            return answer.json().get("health") == "true"
        except (httpx.HTTPError, ValueError):
            return False

    def status(self) -> dict:
        """The member's /v3/maintenance/status: its own id (header.member_id) and its leader's."""
        return httpx.post(f"{self.client_url}/v3/maintenance/status", json={}, timeout=5.0).json()

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""


class EtcdCluster:
    """`size` etcd members under `root` (or a temporary directory of their own, removed at the end),
    started on entry and stopped (by pid) on exit."""

    def __init__(self, root: Path | None = None, size: int = 3):
        self.binary = etcd_binary()
        self.own_root = root is None
        root = Path(tempfile.mkdtemp(prefix="apeinx-etcd-")) if root is None else root
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        ports = free_ports(2 * size)
        self.members = [EtcdMember(f"m{i}", ports[2 * i], ports[2 * i + 1], root) for i in range(size)]
        self.initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoints(self) -> list[str]:
        """Every member's client URL, running or not."""
        return [member.client_url for member in self.members]

    def __enter__(self) -> "EtcdCluster":
        try:
            for member in self.members:
                member.start(self.binary, self.initial_cluster)
            wait_healthy(self.members)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def kill(self, index: int) -> None:
        """SIGKILL member `index` (by its pid)."""
        self.members[index].kill()

    def pause(self, index: int) -> None:
        """SIGSTOP member `index`: it keeps its connections but answers nothing (SIGKILL still ends it)."""
        os.kill(self.members[index].process.pid, signal.SIGSTOP)

    def resume(self, index: int) -> None:
        os.kill(self.members[index].process.pid, signal.SIGCONT)

    @contextlib.contextmanager
    def down(self, *indices: int):
        """Members `indices` killed (in that order) for the `with` block; started again at its end, also when
        it fails, and waited for until healthy."""
        try:
            for index in indices:
                self.kill(index)
            yield self
        finally:
            stopped = [self.members[index] for index in indices if self.members[index].process is None]
            for member in stopped:
                member.start(self.binary, self.initial_cluster)
            wait_healthy(stopped)

    def start(self, index: int, wait: bool = True) -> None:
        """Start member `index` again on its ports and data; with `wait`, until it is healthy."""
        member = self.members[index]
        member.start(self.binary, self.initial_cluster)
        if wait:
            wait_healthy([member])

    def leader_index(self) -> int:
        """The index of the member that leads the cluster now (asked of the first running member)."""
        running = [member for member in self.members if member.process is not None]
        leader_id = running[0].status()["leader"]
        return next(i for i, member in enumerate(self.members)
                    if member in running and member.status()["header"]["member_id"] == leader_id)

    def stop(self) -> None:
        """Kill every member by pid; remove the data directories if this cluster made their root."""
        for member in self.members:
            member.kill()
        if self.own_root:
            shutil.rmtree(self.root, ignore_errors=True)

def wait_healthy(members: list[EtcdMember]) -> None:
    """Wait until every one of `members` answers /health; fail with their logs after HEALTH_TIMEOUT_S (a hang
    guard, not a timing check)."""
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while not all(member.healthy() for member in members):
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {m.name}\n{m.log_tail()}" for m in members)
            raise AssertionError(f"etcd not healthy within {HEALTH_TIMEOUT_S}s:\n{logs}")
        time.sleep(0.1)
