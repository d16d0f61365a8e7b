"""Simulated seconds per wall second of `apeinxfs sim` on the 600 s overload workload.

Runs examples/workloads/overload-600.csv (two tenants, one sending twice the other's
requests, for 600 s) through `apeinxfs sim` in this process: the same kernel and sim
driver the daemon runs, on a virtual clock, without a journal. For each policy and for 1
and 4 GPUs (4 is the embedded default) it prints the speed the simulator reports, and
fcfs as the baseline of the same run. Target: >= 100x for fair.
"""
import contextlib
import io
import json
import os

from common import verdict
from apeinxfs import simulate

WORKLOAD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples", "workloads", "overload-600.csv")


def speed(policy: str, gpus: int) -> float:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        simulate.main([WORKLOAD, "--policy", policy, "--gpus", str(gpus), "--report", "json"])
    return json.loads(out.getvalue())["speed"]


def main() -> int:
    results = {}
    for gpus in (1, 4):
        for policy in ("fcfs", "fair"):
            results[policy, gpus] = speed(policy, gpus)
            print(f"{policy:6} {gpus} GPU(s): {results[policy, gpus]:6.1f}x simulated seconds per wall second")
        print(f"fair / fcfs on {gpus} GPU(s): {results['fair', gpus] / results['fcfs', gpus]:.2f}")
    for gpus in (1, 4):
        verdict(f"simulated s per wall s, 600 s overload, fair, {gpus} GPU(s)", results["fair", gpus], 100, "x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
