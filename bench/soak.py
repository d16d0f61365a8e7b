"""Soak: many tiny tasks through one daemon on the fast sim config; is what it keeps flat?

    .venv/bin/python bench/soak.py      # SOAK_TASKS=200000 SOAK_EVERY=20000 SOAK_RESTART_EVERY=100000

Tasks of 2 tokens go in through /ctl/submit, WRITE_LINES to a write(2), each write once
fewer than WRITE_LINES tasks are live (the daemon's steady state, not a backlog). Every
SOAK_EVERY tasks, once all are done, it prints the daemon's RSS and open fds, the journal's
bytes (journal.db*), the trace archive's (STATE_DIR/trace/), the time of `ls /tasks` and
its entries, and the tasks per second since the last line; every SOAK_RESTART_EVERY tasks
it unmounts and mounts again on the same state directory, RESTARTS times, and prints the
median time that took.
At the end: PASS/MISS for RSS, journal bytes and restart time each within 20% from the first
half of the run to the second (issue 15: from 100,000 to 200,000 tasks; `judge` says how). The daemon runs as
deployed (common.py: no invariant checks) with the default [retention]. Not in bench/run:
the full run takes an hour or more here.
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import make_daemon, sim_config, verdict

TASKS = int(os.environ.get("SOAK_TASKS", "200000"))
EVERY = int(os.environ.get("SOAK_EVERY", "20000"))
RESTART_EVERY = int(os.environ.get("SOAK_RESTART_EVERY", "100000"))
WRITE_LINES = 1000
RESTARTS = 3  # per restart point, the median judged
FLAT = 1.2  # the last figure over the halfway one
MIB = 1 << 20


def live_tasks(daemon) -> int:
    """Tasks running or waiting (memory/meminfo)."""
    with open(daemon.path("memory", "meminfo")) as meminfo:
        counts = dict(line.split()[:2] for line in meminfo)
    return int(counts["TasksRunning:"]) + int(counts["TasksWaiting:"])


def wait_live_below(daemon, count: int) -> None:
    while live_tasks(daemon) >= count:
        time.sleep(0.02)


def submit(daemon, first: int, count: int) -> None:
    """Tasks `first`..`first + count - 1`, WRITE_LINES to a write(2), each write once the daemon has room."""
    with open(daemon.path("ctl", "submit"), "wb", buffering=0) as ctl:
        for start in range(first, first + count, WRITE_LINES):
            wait_live_below(daemon, WRITE_LINES)
            lines = "".join(f"name=s{n} max_tokens=2\n" for n in range(start, min(first + count, start + WRITE_LINES)))
            ctl.write(lines.encode())


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def bytes_of(paths) -> int:
    return sum(os.path.getsize(path) for path in paths if os.path.isfile(path))


def journal_bytes(state: str) -> int:
    return bytes_of(os.path.join(state, name) for name in os.listdir(state) if name.startswith("journal.db"))


def archive_bytes(state: str) -> int:
    directory = os.path.join(state, "trace")
    return bytes_of(os.path.join(directory, name) for name in os.listdir(directory)) if os.path.isdir(directory) else 0


def time_ls(daemon) -> tuple[float, int]:
    """(seconds `ls` of /tasks took, its entries)."""
    start = time.perf_counter()
    listed = subprocess.run(["ls", daemon.path("tasks")], capture_output=True, check=True).stdout
    return time.perf_counter() - start, listed.count(b"\n")


def restart(daemon) -> float:
    """Unmount, then mount on the same state directory, RESTARTS times: the median seconds both took
    (one restart's time moves by 2x with the machine's load)."""
    took = []
    for _ in range(RESTARTS):
        start = time.perf_counter()
        daemon.stop()
        daemon.start(timeout=600)
        took.append(time.perf_counter() - start)
    return statistics.median(took)


def report(daemon, done: int, seconds: float, rate: float) -> dict:
    pid, state = daemon.proc.pid, daemon.state_dir
    ls_s, entries = time_ls(daemon)
    figures = {"rss": rss(pid), "journal": journal_bytes(state)}
    print(f"{done:>8,} tasks  rss {figures['rss'] / MIB:7.1f} MiB  fds {len(os.listdir(f'/proc/{pid}/fd')):4}  "
          f"journal {figures['journal'] / MIB:7.1f} MiB  archive {archive_bytes(state) / MIB:7.1f} MiB  "
          f"ls {ls_s * 1000:6.1f} ms ({entries} entries)  {rate:7.0f} tasks/s  ({seconds:.0f} s in all)", flush=True)
    return figures


def soak(daemon) -> dict[int, dict]:
    """Run TASKS tasks; {tasks done: figures} at every line (restart time included at each restart)."""
    samples, done, start = {}, 0, time.perf_counter()
    while done < TASKS:
        count, since = min(EVERY, TASKS - done), time.perf_counter()
        submit(daemon, done + 1, count)
        wait_live_below(daemon, 1)
        done += count
        samples[done] = report(daemon, done, time.perf_counter() - start, count / (time.perf_counter() - since))
        if done % RESTART_EVERY == 0:
            samples[done]["restart"] = restart(daemon)
            print(f"{'':>8}   restart (unmount + mount, median of {RESTARTS}) {samples[done]['restart']:.2f} s",
                  flush=True)
    return samples


def judge(samples: dict[int, dict]) -> None:
    """PASS/MISS: the largest RSS and journal of the second half over those of the first (the journal
    is a sawtooth between compactions, so one line's figure says little), and the last restart over
    the halfway one."""
    half = max(k for k in samples if k <= TASKS // 2 and "restart" in samples[k])
    first = [figures for done, figures in samples.items() if done <= half]
    second = [figures for done, figures in samples.items() if done > half]
    for what in ("rss", "journal"):
        verdict(f"soak largest {what} of {half + EVERY:,}..{TASKS:,} tasks over that of 1..{half:,}",
                max(f[what] for f in second) / max(f[what] for f in first), FLAT, higher_is_better=False)
    last = max(k for k in samples if "restart" in samples[k])
    verdict(f"soak restart at {last:,} tasks over at {half:,}", samples[last]["restart"] / samples[half]["restart"],
            FLAT, higher_is_better=False)


def main() -> int:
    print(f"soak: {TASKS:,} tasks of 2 tokens, a line every {EVERY:,}, a restart every {RESTART_EVERY:,}")
    with tempfile.TemporaryDirectory(prefix="apeinx-soak-") as tmp:
        daemon = make_daemon(tmp, sim_config(2), "soak").start()
        try:
            samples = soak(daemon)
        finally:
            daemon.stop()
    if sum("restart" in figures for figures in samples.values()) < 2:
        print("fewer than two restarts: nothing to compare (SOAK_TASKS >= 2 x SOAK_RESTART_EVERY)")
        return 1
    judge(samples)
    return 0

if __name__ == "__main__":
    sys.exit(main())
