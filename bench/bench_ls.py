"""`ls` of /tasks holding 100,000 tasks (target < 2 s), and the daemon's RSS then (< 500 MB).

The tasks go in through five 20,000-line writes to /ctl/submit; the daemon uses slow
engine steps so they stay queued. `ls MNT/tasks | wc -l` runs BENCH_ROUNDS times in a
shell; the first run (the kernel meets every entry for the first time) and the median
are printed, and the median is judged. RSS is VmRSS from /proc/PID/status of the daemon.
There is no same-run baseline here: the targets are absolute.
"""
import shlex
import subprocess
import sys
import time

from common import QUEUE_CONFIG, ROUNDS, apeinxfs_mount, median, submit_lines, verdict

TASKS = 100_000
BATCH = 20_000
LS_TARGET_S = 2.0
RSS_TARGET_MB = 500


def fill(daemon) -> float:
    """Submit TASKS tasks in BATCH-line writes; tasks per second."""
    seconds = sum(submit_lines(daemon, [f"ls{n} 1000 5" for n in range(start, start + BATCH)])
                  for start in range(0, TASKS, BATCH))
    return TASKS / seconds


def timed_ls(directory: str) -> float:
    """Seconds of `ls DIR | wc -l`; fails unless it counts every task."""
    start = time.perf_counter()
    out = subprocess.run(f"ls {shlex.quote(directory)} | wc -l", shell=True, check=True, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if int(out.stdout) != TASKS:
        raise RuntimeError(f"ls listed {out.stdout.strip()} entries, not {TASKS}")
    return elapsed


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kib / 1024


def main() -> int:
    with apeinxfs_mount(QUEUE_CONFIG, name="ls") as daemon:
        print(f"submitted {TASKS:,} tasks at {fill(daemon):,.0f} tasks/s; daemon RSS {rss_mb(daemon.proc.pid):,.0f} MB")
        runs = [timed_ls(daemon.path("tasks")) for _ in range(ROUNDS)]
        rss = rss_mb(daemon.proc.pid)
    print("ls runs: " + ", ".join(f"{seconds:.2f} s" for seconds in runs))
    verdict(f"`ls tasks | wc -l` with {TASKS:,} tasks (first run {runs[0]:.2f} s), median", median(runs), LS_TARGET_S,
            " s", higher_is_better=False)
    verdict(f"daemon RSS with {TASKS:,} tasks, after ls", rss, RSS_TARGET_MB, " MB", higher_is_better=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
