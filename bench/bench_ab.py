"""Paired A/B of two checkouts' daemons: CPU per task of bench_tokens.py's "4 at once" turns.

    git worktree add /tmp/ref COMMIT && .venv/bin/python bench/bench_ab.py /tmp/ref [THIS]

Both daemons (REF's apeinxfs package and THIS one's, default this checkout) are mounted at
once on one real llama-server (the tiny model, 4 slots) and served turns of 4 tasks
submitted at once (as bench_tokens.py's first-byte figure), the two alternating turn by
turn, so load on a shared machine falls on both alike. A round's figure is each daemon's
CPU per task: its threads' on-CPU time (/proc/PID/task/*/schedstat, nanoseconds, not
/proc/PID/stat's 10 ms ticks) over the turns, less its idle rate measured after them.
Each round also prints both daemons' median first byte (the figure bench_tokens.py judges).
Prints each round and the median of THIS over REF: the way to tell whether a CPU cut buys
the 5% that keeps it (one daemon measured twice differs by less than 2% here; separate runs
differed by 10-30%). Env: BENCH_AB_TURNS (60 a round), BENCH_AB_TOKENS (max_tokens, 1),
BENCH_ROUNDS (4). Not part of bench/run: it needs a second checkout.
"""
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import ROUNDS, checkouts_argued, checkouts_mounted, cpu_seconds

import bench_tokens
import tinymodel
from engines import LlamaServer, build_llama_server

TURNS = int(os.environ.get("BENCH_AB_TURNS", "60"))
TOKENS = int(os.environ.get("BENCH_AB_TOKENS", "1"))
IDLE_S = 2.0



def turn(daemon) -> list[float]:
    """The seconds to the first byte of each of 4 tasks started at once on `daemon`."""
    return bench_tokens.together(lambda: bench_tokens.through(daemon, TOKENS)[0], 4)


def cpu_per_task(daemons: dict) -> tuple[dict, dict]:
    """({name: ms of CPU per task}, {name: median ms to a first byte}) over TURNS alternating turns of
    each daemon, the CPU less its idle rate."""
    pids = {name: daemon.proc.pid for name, daemon in daemons.items()}
    firsts: dict[str, list[float]] = {name: [] for name in daemons}
    before, start = {name: cpu_seconds(pid) for name, pid in pids.items()}, time.perf_counter()
    for index in range(TURNS):
        for name in sorted(daemons, reverse=bool(index % 2)):
            firsts[name] += turn(daemons[name])
    after, seconds = {name: cpu_seconds(pid) for name, pid in pids.items()}, time.perf_counter() - start
    time.sleep(IDLE_S)
    idle = {name: (cpu_seconds(pid) - after[name]) / IDLE_S for name, pid in pids.items()}
    return ({name: (after[name] - before[name] - idle[name] * seconds) * 1000 / (4 * TURNS) for name in pids},
            {name: statistics.median(seconds) * 1000 for name, seconds in firsts.items()})


def main() -> int:
    if (checkouts := checkouts_argued(__doc__)) is None:
        return 1
    binary, engine_cpus = build_llama_server(), bench_tokens.engine_cpu()
    ratios, first_ratios = [], []
    with tempfile.TemporaryDirectory(prefix="apeinx-bench-ab-") as tmp:
        model = tinymodel.write(Path(tmp) / "model.gguf", seed=0)
        with LlamaServer(binary, model, Path(tmp) / "llama-server.log", slots=4, slot_context=2048,
                         cpus=engine_cpus) as server:
            for round_ in range(ROUNDS):
                with contextlib.ExitStack() as stack:
                    daemons = checkouts_mounted(stack, bench_tokens.config(server.url, 4), checkouts, ("ref", "this")[::1 if round_ % 2 else -1])
                    for daemon in daemons.values():
                        turn(daemon)  # warm: the first turn opens spare connections and caches
                    ms, first = cpu_per_task(daemons)
                ratios.append(ms["this"] / ms["ref"])
                first_ratios.append(first["this"] / first["ref"])
                print(f"round {round_}: CPU per task ref {ms['ref']:.2f} ms, this {ms['this']:.2f} ms: "
                      f"{ratios[-1]:.3f}; median first byte ref {first['ref']:.2f} ms, this {first['this']:.2f} ms: "
                      f"{first_ratios[-1]:.3f}", flush=True)
    print(f"this / ref, daemon CPU per task ({TOKENS} token(s) a task): median {statistics.median(ratios):.3f} "
          f"(rounds {min(ratios):.3f}-{max(ratios):.3f}); median first byte: median "
          f"{statistics.median(first_ratios):.3f} (rounds {min(first_ratios):.3f}-{max(first_ratios):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
