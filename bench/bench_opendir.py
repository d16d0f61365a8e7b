"""Paired A/B of two checkouts' daemons: a listing of /tasks holding 10,000 tasks, and what held directory
descriptors cost.

    git archive ac3fbff | tar -x -C /tmp/ref && .venv/bin/python bench/bench_opendir.py /tmp/ref [THIS]

(ac3fbff: main before this listing merged; main itself has it now.)

Both daemons (REF's apeinxfs package and THIS one's, default this checkout) are mounted at once, each with
TASKS tasks (queued: the sim's steps are slow unless BENCH_STEP_MS says otherwise). A round lists /tasks (opendir, readdir to the end, releasedir: os.listdir)
LISTINGS times on each, the two alternating listing by listing, so load on a shared machine falls on both
alike; then each daemon's RSS growth while HELD descriptors of /tasks stay open, each read to its end.
Prints each round's figures and the medians of THIS over REF. Env: BENCH_ROUNDS (3), BENCH_STEP_MS (the sim's
decode step, 1000: 2 makes 16 tasks run while the listings go, the kernel changing at every step). Not part of
bench/run: it needs a second checkout.
"""
import contextlib
import os
import statistics
import sys
import time

from bench_ls import rss_mb
from common import ROUNDS, checkouts_argued, checkouts_mounted, sim_config, submit_lines

STEP_MS = float(os.environ.get("BENCH_STEP_MS", "1000"))
CONFIG = sim_config(STEP_MS) + "\n[limits]\nwrite_lines = 20000\n"
TASKS = 10_000
LISTINGS = 10
HELD = 20


def mounted(stack, checkouts: dict) -> dict:
    """{name: daemon with TASKS tasks} of each checkout's apeinxfs (common.checkouts_mounted)."""
    daemons = checkouts_mounted(stack, CONFIG, checkouts, tuple(checkouts))
    for daemon in daemons.values():
        submit_lines(daemon, [f"name=d{n} max_tokens=1000" for n in range(TASKS)])
    return daemons


def listing_seconds(daemons: dict) -> dict:
    """{name: median seconds of one os.listdir of its /tasks}, the daemons alternating."""
    seconds: dict[str, list[float]] = {name: [] for name in daemons}
    for index in range(LISTINGS):
        for name in sorted(daemons, reverse=bool(index % 2)):
            start = time.perf_counter()
            count = len(os.listdir(daemons[name].path("tasks")))
            seconds[name].append(time.perf_counter() - start)
            if count != TASKS:
                raise RuntimeError(f"{name} listed {count} tasks, not {TASKS}")
    return {name: statistics.median(values) for name, values in seconds.items()}


def held_growth_mb(daemon) -> float:
    """The daemon's RSS growth (MiB) while HELD descriptors of /tasks are open, each read to its end."""
    before, fds = rss_mb(daemon.proc.pid), []
    try:
        for _ in range(HELD):
            fds.append(fd := os.open(daemon.path("tasks"), os.O_RDONLY | os.O_DIRECTORY))
            for _ in os.scandir(fd):
                pass
        return rss_mb(daemon.proc.pid) - before
    finally:
        for fd in fds:
            os.close(fd)


def main() -> int:
    if (checkouts := checkouts_argued(__doc__)) is None:
        return 1
    ratios = []
    with contextlib.ExitStack() as stack:
        daemons = mounted(stack, checkouts)
        for round_ in range(ROUNDS):
            seconds = listing_seconds(daemons)
            grown = {name: held_growth_mb(daemon) for name, daemon in daemons.items()}
            ratios.append(seconds["this"] / seconds["ref"])
            print(f"round {round_}: listing ref {seconds['ref'] * 1000:.1f} ms, this {seconds['this'] * 1000:.1f} ms: "
                  f"{ratios[-1]:.3f}; RSS growth with {HELD} held: ref {grown['ref']:.1f} MiB, "
                  f"this {grown['this']:.1f} MiB")
    print(f"this / ref, seconds per listing of {TASKS:,} tasks: median {statistics.median(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
