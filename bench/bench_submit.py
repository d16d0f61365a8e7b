"""Durable submits per second through /ctl/submit: one line per write(2), and bulk writes.

1. One process, one write-only fd, one `NAME TOKENS PRIO` line per write(2) for
   BENCH_SECONDS: each write returns only once its task is journaled in SQLite (target
   >= 1,000/s).
2. One write(2) of 20,000 lines, BENCH_ROUNDS times: tasks per second (target >= 10,000/s).
As a baseline each is also run in this process straight through the submit command of
nodes/ctl.py on a Runtime with its own journal (no FUSE): the FUSE path's ratio to it
shows what the mount adds. The daemon uses slow engine steps so submitted tasks queue.
"""
import os
import sys
import tempfile
import time

from common import QUEUE_CONFIG, ROUNDS, SECONDS, apeinxfs_mount, median, rate, single_line_submits, submit_lines, verdict

from apeinxfs import config as config_mod
from apeinxfs.journal import Journal
from apeinxfs.nodes import ctl
from apeinxfs.nodes.base import Caller
from apeinxfs.runtime import Runtime

SINGLE_TARGET = 1_000
BULK_TARGET = 10_000
BULK_LINES = 20_000


def lines(count: int, prefix: str = "bulk") -> list[str]:
    return [f"{prefix}{n} 1000 5" for n in range(count)]


def fuse_rates(daemon) -> tuple[float, float]:
    """(single-line submits/s, bulk tasks/s) through the mount; checks every task arrived."""
    writes, seconds = single_line_submits(daemon)
    bulk = median([BULK_LINES / submit_lines(daemon, lines(BULK_LINES)) for _ in range(ROUNDS)])
    expected, found = writes + ROUNDS * BULK_LINES, len(os.listdir(daemon.path("tasks")))
    if found != expected:
        raise RuntimeError(f"{found} tasks in /tasks after {expected} submits")
    return writes / seconds, bulk


def in_process_rates(state_dir: str) -> tuple[float, float]:
    """The same two measures on a Runtime in this process: kernel and journal, no FUSE."""
    config = config_mod.load(os.path.join(state_dir, "queue.toml"), state_dir, use_nvml=False)
    runtime = Runtime(config, Journal(os.path.join(state_dir, "journal.db")))
    run, caller = ctl.submit(runtime), Caller()
    single = rate(lambda: run([b"one 1000 5"], caller), SECONDS)
    bulk = median([BULK_LINES / timed(run, [line.encode() for line in lines(BULK_LINES)], caller)
                   for _ in range(ROUNDS)])
    runtime.journal.close()
    return single, bulk


def timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="apeinx-bench-inproc-") as state_dir:
        with open(os.path.join(state_dir, "queue.toml"), "w") as file:
            file.write(QUEUE_CONFIG)
        base_single, base_bulk = in_process_rates(state_dir)
    with apeinxfs_mount(QUEUE_CONFIG, name="submit") as daemon:
        single, bulk = fuse_rates(daemon)
    print(f"in process (no FUSE): {base_single:,.0f} single-line submits/s, {base_bulk:,.0f} tasks/s in bulk")
    print(f"through the mount: ratio {single / base_single:.2f} single-line, {bulk / base_bulk:.2f} bulk")
    verdict("durable single-line submits/s (one write(2) each)", single, SINGLE_TARGET, "/s")
    verdict(f"tasks/s from one {BULK_LINES:,}-line write(2)", bulk, BULK_TARGET, "/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
