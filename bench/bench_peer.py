"""Node-to-node requests per second and stream bytes per second (apeinxfs/cluster/peer_*.py).

One daemon, a cluster node (tests/etcdcluster.py's etcd) with a peer server on 127.0.0.1
(`[cluster]` advertise and token_file), and one finished task of 5,000 tokens; this process is the
asking node, with peer_client.Peer over one keep-alive connection per worker. Measured,
interleaved over BENCH_ROUNDS rounds of BENCH_SECONDS each: `status` through the peer
with 1 and 16 concurrent workers, and the task's whole `stream` through the peer (frames),
each against its baseline in the same run, the same file read through the FUSE mount by
this process (open, read to EOF, close). Medians are printed, raw and as ratios. A figure
to watch, with no target (not in bench/run): both sides are Python on the same 2 CPUs.
"""
import os
import sys
import tempfile
import time

import trio

from common import ROUNDS, SECONDS, concurrent_rate, cpu_seconds, make_daemon, median, rate, read_all, sim_config
from daemon import poll_until
from engines import free_port
from etcdcluster import EtcdCluster

from apeinxfs.cluster.peer_client import Peer
from apeinxfs.nodes.base import Caller

CALLER = Caller(uid=os.getuid(), gid=os.getgid(), pid=os.getpid())
TOKEN = b"bench-token"


async def peer_rate(url: str, action, workers: int) -> float:
    """Completed `action(peer)`s per second with `workers` concurrent loops over SECONDS."""
    async with Peer(url, TOKEN) as peer:
        await action(peer)  # the connection is open before the clock starts
        return await concurrent_rate(lambda _worker: action(peer), workers)


def measures(daemon, url: str, pid: int) -> dict:
    """name -> function giving one round's rate (per second)."""
    status, stream = daemon.path("tasks", str(pid), "status"), daemon.path("tasks", str(pid), "stream")

    async def peer_status(peer):
        await peer.status(pid, CALLER)

    async def peer_stream(peer):
        async with peer.stream(pid, CALLER) as chunks:
            async for _ in chunks:
                pass
    return {
        "status fuse": lambda: rate(lambda: read_all(status)),
        "status peer x1": lambda: trio.run(peer_rate, url, peer_status, 1),
        "status peer x16": lambda: trio.run(peer_rate, url, peer_status, 16),
        "stream fuse": lambda: rate(lambda: read_all(stream)),
        "stream peer": lambda: trio.run(peer_rate, url, peer_stream, 1),
    }


def report(rates: dict, stream_bytes: int) -> None:
    print(f"{'measure':16} {'per s':>9} {'vs fuse':>7}   rounds")
    for name, found in rates.items():
        baseline = median(rates[name.split()[0] + " fuse"])
        print(f"{name:16} {median(found):9,.0f} {median(found) / baseline:7.2f}   "
              + " ".join(f"{value:,.0f}" for value in found))
    for name in ("stream fuse", "stream peer"):
        print(f"{name}: {median(rates[name]) * stream_bytes / 1e6:,.1f} MB/s of a {stream_bytes:,}-byte stream")


def cpu_per_request(daemon, pid: int, url: str) -> tuple[float, float]:
    """Milliseconds of CPU of this client and of the daemon per `status` through the peer."""
    client, server = time.process_time(), cpu_seconds(daemon.proc.pid)
    requests = trio.run(peer_rate, url, lambda peer: peer.status(pid, CALLER), 1) * SECONDS
    return (time.process_time() - client) / requests * 1e3, (cpu_seconds(daemon.proc.pid) - server) / requests * 1e3


def peer_config(endpoints: list[str], port: int, token_path: str) -> str:
    urls = ", ".join(f'"{url}"' for url in endpoints)
    return (sim_config(0.01) + f'\n[cluster]\netcd = [{urls}]\nadvertise = "127.0.0.1:{port}"\n'
            f'token_file = "{token_path}"\n')


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="apeinx-bench-peer-") as tmp:
        token_path, port = os.path.join(tmp, "token"), free_port()
        with open(os.open(token_path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as file:
            file.write(TOKEN)
        with EtcdCluster() as etcd, make_daemon(tmp, peer_config(etcd.endpoints, port, token_path), "peer") as daemon:
            poll_until(lambda: "PidsLeft:\t0\n" not in open(daemon.path("cluster")).read(), 60, "a pid block")
            pid = daemon.submit("bench 5000 5")
            stream_bytes = len(open(daemon.path("tasks", str(pid), "stream"), "rb").read())  # blocks until done
            rates: dict = {name: [] for name in measures(daemon, "", pid)}
            for _ in range(ROUNDS):
                for name, measure in measures(daemon, f"http://127.0.0.1:{port}", pid).items():
                    rates[name].append(measure())
            client_ms, server_ms = cpu_per_request(daemon, pid, f"http://127.0.0.1:{port}")
    print(f"one daemon's peer server on 127.0.0.1, {ROUNDS} rounds of {SECONDS:g} s per measure, medians:")
    report(rates, stream_bytes)
    print(f"CPU a status through the peer: this client {client_ms:.2f} ms, the daemon {server_ms:.2f} ms; "
          f"{os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
