"""What a submit write costs the node it is written to on a cluster, in process (no FUSE, no etcd, no peers).

    .venv/bin/python bench/bench_precheck.py [REF]

A Runtime with its own journal (2 simulated GPUs, model sim) stands for node a of three idle
nodes a, b, c alike (their records as a's view holds them); b's and c's peers are fakes that
answer pids at once. Each write goes the way ForwardingHandle.write_async sends it: the
cluster's route (`Router.route_submit`, called on a stand-in router: the placement, and on a
checkout that has it the whole write's dry run, `Spreading.check_whole`), then the lines
placed here run through ctl/submit's command on the Runtime (journaled):
- one: a one-line write (it is placed here: a's tie-break), CPU ms, 10th percentile of 500;
- split: a 1,000-line write (spread over a, b and c; a's third journaled), CPU ms, least of 5.
With REF (another checkout, e.g. `git worktree add /tmp/ref main`) each round runs REF's and
this checkout's apeinxfs in two worker processes (bench/workers.py), alternating, and prints
each side's median over the rounds and the median of the rounds' this / REF (with their
range). Figures only: nothing is judged.
"""
import itertools
import os
import statistics
import sys
import tempfile
import time

import trio

from workers import alternated, serve, started, this_over_ref

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "15"))
HERE = os.path.abspath(__file__)
CONFIG = '[gpus]\nsimulated = 2\nslots = 8\n[[models]]\nname = "sim"\n[models.options]\ndecode_step_ms = 1000\n'
COUNTS = {"one": (1, 500), "split": (1_000, 5)}  # lines a write, writes a round


class FakePeer:
    """Node b's or c's peer: its lines' pids at once, none of them run."""

    def __init__(self, pids):
        self.pids = pids

    async def submit(self, lines, caller, write_lines):
        return [str(next(self.pids)) for _ in lines]


class StandInRouter:
    """What Router.route_submit and Spreading read of a router: a's Runtime, the view of a, b, c, their peers."""

    def __init__(self, rt):
        from apeinxfs.cluster.records import NodeRecord, NodeView
        self.rt, self.here, self.token, self.cluster = rt, "a", "token", self
        self.views = {name: NodeView(NodeRecord(name=name, epoch=1, seen_us=0, slots_free=16, kv_pages_free=768,
                                                models=("sim",), advertise="127.0.0.1:1"), up=True, leader=False)
                      for name in "abc"}
        self.view, self.fake = self, FakePeer(itertools.count(10_000_000))

    def nodes(self):
        return self.views

    def pending(self):
        return {}

    def count(self, node, pids):
        pass

    def owner(self, pid):
        return None

    def peer(self, name):
        return self.fake


class Node:
    """Node a: a Runtime in a temporary directory, the stand-in router and ctl/submit's command."""

    def __init__(self):
        from apeinxfs import config as config_mod
        from apeinxfs.journal import Journal
        from apeinxfs.nodes import ctl
        from apeinxfs.nodes.base import Caller
        from apeinxfs.runtime import Runtime
        self.dir = tempfile.TemporaryDirectory(prefix="apeinx-bench-precheck-")
        path = os.path.join(self.dir.name, "config.toml")
        with open(path, "w") as file:
            file.write(CONFIG)
        self.rt = Runtime(config_mod.load(path, self.dir.name, use_nvml=False),
                          Journal(os.path.join(self.dir.name, "journal.db")))
        self.router, self.run, self.caller = StandInRouter(self.rt), ctl.submit(self.rt), Caller()
        self.names = itertools.count()

    async def here(self, lines, write_lines=0):
        return self.run([line.encode() for line in lines], self.caller)

    async def write(self, lines) -> None:
        """One write's way: its route, then the lines placed here (all of them if the route answers None)."""
        from apeinxfs.cluster.routing import Router
        route = await Router.route_submit(self.router, lines, self.caller)
        if await route.remote(self.here) is None:
            await self.here(lines)

    def median_ms(self, kind: str) -> float:
        return trio.run(self.timed, kind)

    async def timed(self, kind: str) -> float:
        """The CPU ms (this thread's: the journal's waits for the disk left out) of a round's writes of this kind,
        in one trio run: their 10th percentile (the least: of fewer than 10), as the machine's noise only adds."""
        count, writes = COUNTS[kind]
        times = []
        for _ in range(writes):
            lines = [f"name=j{next(self.names)} max_tokens=1000 prio=5" for _ in range(count)]
            start = time.thread_time()
            await self.write(lines)
            times.append(time.thread_time() - start)
        return (statistics.quantiles(times, n=10)[0] if len(times) >= 10 else min(times)) * 1e3


NODE: list = []


def one_round(kind: str) -> tuple[float]:
    if not NODE:
        NODE.append(Node())
    return (NODE[0].median_ms(kind),)


def main() -> None:
    with started(HERE) as workers:
        print("write  " + " ".join(f"{name}_ms" for name in workers) + ("  this/ref" if len(workers) == 2 else ""))
        for kind in COUNTS:
            rounds = [alternated(workers, index, kind) for index in range(ROUNDS)]
            cells = " ".join(f"{statistics.median(r[name] for r in rounds):8.3f}" for name in workers)
            ratio = this_over_ref(rounds)
            tail = f"  {ratio[0]:8.3f} (rounds {ratio[1]:.3f}-{ratio[2]:.3f})" if ratio else ""
            print(f"{kind:6s} {cells}{tail}", flush=True)

if __name__ == "__main__":
    serve(sys.argv[2], one_round) if sys.argv[1:2] == ["--worker"] else main()
