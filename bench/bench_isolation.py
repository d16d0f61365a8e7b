"""The price of uncached task names: `ls -l` of /tasks with one tenant against two.

With one tenant that every caller sees, the kernel caches a task's name (and a
directory's attributes) for 1 s, so `ls -l` right after its readdir asks the daemon
nothing per task. With two tenants it may not (another tenant's caller would see a
cached name): every `lstat` of a task is a LOOKUP to the daemon. Both mounts hold
TASKS queued tasks; `ls -l MNT/tasks | wc -l` runs BENCH_ROUNDS times on each, and the
ratio of the medians (two tenants over one) is judged.
"""
import subprocess
import sys
import time

from common import QUEUE_CONFIG, ROUNDS, apeinxfs_mount, median, submit_lines, verdict

TASKS = 20_000
TWO_TENANTS = '\n[[tenants]]\nname = "default"\n[[tenants]]\nname = "other"\n'
RATIO_TARGET = 20  # one LOOKUP per task, about 0.2 ms each through pyfuse3 (7 µs of it the daemon's own code)


def ls_l_seconds(config: str, name: str) -> list[float]:
    """Seconds of each `ls -l MNT/tasks | wc -l` on a mount of TASKS queued tasks under `config`."""
    with apeinxfs_mount(config, name=name) as daemon:
        submit_lines(daemon, [f"{name}{n} 1000 5" for n in range(TASKS)])
        runs = []
        for _ in range(ROUNDS):
            start = time.perf_counter()
            out = subprocess.run(["sh", "-c", f"ls -l {daemon.path('tasks')} | wc -l"], check=True,
                                 capture_output=True, text=True)
            runs.append(time.perf_counter() - start)
            if int(out.stdout) != TASKS + 1:  # and the `total` line
                raise RuntimeError(f"ls -l listed {out.stdout.strip()} lines, not {TASKS + 1}")
    return runs


def main() -> int:
    one, two = ls_l_seconds(QUEUE_CONFIG, "one"), ls_l_seconds(QUEUE_CONFIG + TWO_TENANTS, "two")
    print("one tenant:  " + ", ".join(f"{s:.2f} s" for s in one))
    print("two tenants: " + ", ".join(f"{s:.2f} s" for s in two))
    verdict(f"`ls -l tasks` of {TASKS:,} tasks, two tenants over one (medians)", median(two) / median(one),
            RATIO_TARGET, "x", higher_is_better=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
