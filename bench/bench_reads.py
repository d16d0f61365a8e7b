"""Reads per second of /tasks/1/status and /memory/meminfo, as a ratio to a minimal pyfuse3 fs.

One process loops open + read to EOF + close on each file for BENCH_SECONDS (default 2)
per round, in 0.25 s slices that alternate between the baseline (bench/minimal_fs.py's
64-byte file) and the subjects, so load from elsewhere hits all alike. Each subject's
ratio is taken to the baseline of its own round, and the median over BENCH_ROUNDS
(default 3) rounds is judged against the target (>= 0.7). The daemon runs the
embedded defaults with one long task running, so /tasks/1 exists and the engine steps.
"""
import sys

from common import (ROUNDS, SECONDS, apeinxfs_mount, count_runs, median, minimal_mount, rate, read_all,
                    submit_lines, verdict)

TARGET_RATIO = 0.7
SLICE_S = 0.25
SUBJECTS = ("tasks/1/status", "memory/meminfo")


def one_round(paths: dict[str, str]) -> dict[str, float]:
    """Reads per second of each path over SECONDS, measured in short alternating slices."""
    counts, spent = dict.fromkeys(paths, 0), dict.fromkeys(paths, 0.0)
    for _ in range(round(SECONDS / SLICE_S)):
        for name, path in paths.items():
            reads, seconds = count_runs(lambda: read_all(path), SLICE_S)
            counts[name] += reads
            spent[name] += seconds
    return {name: counts[name] / spent[name] for name in paths}


def report(rounds: list[dict[str, float]]) -> None:
    """Print every round, then one verdict per subject on its median ratio."""
    for number, rates in enumerate(rounds, 1):
        print(f"round {number}: " + ", ".join(f"{name} {value:,.0f}/s" for name, value in rates.items()))
    for subject in SUBJECTS:
        ratio = median([r[subject] / r["minimal"] for r in rounds])
        reads = median([r[subject] for r in rounds])
        verdict(f"reads/s of /{subject} ({reads:,.0f}/s) as a ratio to the minimal fs", ratio, TARGET_RATIO)


def main() -> int:
    with minimal_mount() as baseline, apeinxfs_mount(name="reads") as daemon:
        submit_lines(daemon, ["bench 50000 5"])
        paths = {"minimal": baseline} | {name: daemon.path(name) for name in SUBJECTS}
        sizes = {name: read_all(path) for name, path in paths.items()}
        print("bytes per read: " + ", ".join(f"{name} {size}" for name, size in sizes.items()))
        for path in paths.values():
            rate(lambda: read_all(path), 0.2)  # warm-up: dentries, snapshots, caches
        rounds = [one_round(paths) for _ in range(ROUNDS)]
    report(rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
