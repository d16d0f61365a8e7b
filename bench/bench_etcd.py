"""Writes per second through the etcd client (apeinxfs/cluster/etcd.py) on a real 3-member etcd.

Starts tests/etcdcluster.py's cluster (3 members on 127.0.0.1, data in a temporary
directory, all on this machine's disk and CPUs) and measures, through the JSON gateway:
`put` (a 256-byte value to the worker's own key), `txn` (a guarded write: compare the
worker's key's mod_revision with the one its last write left, then put; what placement
and failover will do) and, as the baseline in the same run, `range` (a linearizable read
of one key: a quorum round trip without a disk write). Each with 1 worker (one request at
a time: latency-bound) and 16 concurrent workers on one client, BENCH_ROUNDS rounds of
BENCH_SECONDS each, the measures interleaved so load from elsewhere falls on all alike;
medians are printed, raw and as a ratio to `range` at the same concurrency. A figure to
watch, with no target (not in bench/run).
"""
import os
import shutil
import sys
import time

import trio

from common import ROUNDS, SECONDS, concurrent_rate, cpu_seconds, median
from etcdcluster import EtcdCluster

from apeinxfs.cluster.etcd import Etcd
from apeinxfs.cluster.etcd_records import Txn

VALUE = bytes(range(256))
WORKERS = (1, 16)


async def read_one(etcd: Etcd, worker: int, revisions: dict) -> None:
    await etcd.get(b"bench/read")


async def put_own(etcd: Etcd, worker: int, revisions: dict) -> None:
    await etcd.put(b"bench/put/%d" % worker, VALUE)


async def guarded_write(etcd: Etcd, worker: int, revisions: dict) -> None:
    """Put the worker's key only if nobody wrote it since its own last write (a compare-and-swap)."""
    key = b"bench/txn/%d" % worker
    guarded = Txn().when(key, "mod_revision", "==", revisions.get(key, 0)).put(key, VALUE)
    result = await etcd.txn(guarded.get(key, on_failure=True))
    if result.succeeded:
        revisions[key] = result.revision
        return
    # The end of a round cut off the answer to a write etcd had applied: guard on that one instead.
    [[current]] = result.responses
    revisions[key] = current.mod_revision
    await guarded_write(etcd, worker, revisions)


OPS = {"range": read_one, "put": put_own, "txn": guarded_write}


async def ops_per_second(etcd: Etcd, op, workers: int, revisions: dict) -> float:
    """Completed `op`s per second with `workers` concurrent loops over SECONDS."""
    return await concurrent_rate(lambda worker: op(etcd, worker, revisions), workers)


async def measure(endpoints: list[str]) -> dict:
    """{(op, workers): [rate per round]}, rounds interleaved across every measure."""
    rates = {(name, workers): [] for name in OPS for workers in WORKERS}
    async with Etcd(endpoints) as etcd:
        await etcd.put(b"bench/read", VALUE)
        revisions: dict = {}
        for _ in range(ROUNDS):
            for (name, workers), found in rates.items():
                found.append(await ops_per_second(etcd, OPS[name], workers, revisions))
    return rates


def report(rates: dict) -> None:
    print(f"{'op':6} {'workers':>7} {'ops/s':>9} {'vs range':>8}   rounds")
    for (name, workers), found in rates.items():
        baseline = median(rates[("range", workers)])
        print(f"{name:6} {workers:7} {median(found):9,.0f} {median(found) / baseline:8.2f}   "
              + " ".join(f"{rate:,.0f}" for rate in found))



def main() -> int:
    if not shutil.which("etcd"):
        print("etcd is not installed (scripts/setup installs etcd-server)", file=sys.stderr)
        return 1
    with EtcdCluster() as cluster:
        pids = [member.process.pid for member in cluster.members]
        before, client_before, wall = [cpu_seconds(pid) for pid in pids], time.process_time(), time.monotonic()
        rates = trio.run(measure, cluster.endpoints)
        members = sum(cpu_seconds(pid) for pid in pids) - sum(before)
        client, wall = time.process_time() - client_before, time.monotonic() - wall
    print(f"3-member etcd on 127.0.0.1, {ROUNDS} rounds of {SECONDS:g} s per measure, medians:")
    report(rates)
    requests = sum(sum(found) for found in rates.values()) * SECONDS
    print(f"CPU over {wall:.0f} s: this client {client:.1f} s ({client / requests * 1e3:.2f} ms a request), "
          f"the three etcd members {members:.1f} s ({members / requests * 1e3:.2f} ms), {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
