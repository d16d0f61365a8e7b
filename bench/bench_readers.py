"""900 readers blocked in `wait` and `stream`: what they cost everyone else.

A daemon with TASKS long tasks (engine steps of 10 minutes: none ends, and none writes
output after its first token, during the run) and READERS real `cat` processes, half on
`wait` and half on `stream`, spread over the tasks, all blocked in read(2) (the /metrics
gauge says so). Measured first with no reader, then with them all, in the same run:
- `ls MNT/tasks` and `cat MNT/memory/meminfo`, each a process, in turn with a control
  (`cat /proc/meminfo`, no FUSE): p50 and worst of LATENCY_RUNS each, and the ratio to
  the same without readers;
- the daemon's CPU (utime + stime of /proc/PID/stat) over CPU_SECONDS with nothing else
  going on, as a share of one core.
Targets: the worst `ls` and `cat` under 50 ms, and the daemon under 20% of a core, with the
readers. Every `cat` is killed by its pid; the mount goes when the daemon stops.
"""
import os
import statistics
import subprocess
import sys
import time

from common import apeinxfs_mount, cpu_seconds, verdict
from daemon import poll_until, sim_config

TASKS = 30
READERS = 900
LATENCY_RUNS = int(os.environ.get("BENCH_READERS_RUNS", "100"))
CPU_SECONDS = float(os.environ.get("BENCH_READERS_CPU_S", "10"))
WORST_TARGET_MS = 50
CPU_TARGET = 0.20
CONTROL = "cat /proc/meminfo"  # no FUSE: how slow a process start alone gets on this machine now, not judged
CONFIG = sim_config(600_000) + f"""
[daemon]
max_waiters = {READERS + 100}
max_waiters_per_uid = {READERS + 100}
"""


def start_readers(daemon, pids: list[int]) -> list[subprocess.Popen]:
    """READERS `cat`s, alternately on a task's wait and stream, round robin over `pids`."""
    files = [daemon.path("tasks", str(pids[n // 2 % len(pids)]), ("wait", "stream")[n % 2]) for n in range(READERS)]
    return [subprocess.Popen(["cat", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for path in files]


def stop_readers(readers: list[subprocess.Popen]) -> None:
    for reader in readers:
        reader.kill()
    for reader in readers:
        reader.wait()


def latencies(daemon) -> dict[str, list[float]]:
    """Milliseconds of each `ls tasks`, `cat memory/meminfo` and CONTROL run, in turn."""
    commands = {"ls tasks": ["ls", daemon.path("tasks")], "cat memory/meminfo": ["cat", daemon.path("memory", "meminfo")],
                CONTROL: ["cat", "/proc/meminfo"]}
    times = {name: [] for name in commands}
    for _ in range(LATENCY_RUNS):
        for name, argv in commands.items():
            start = time.perf_counter()
            subprocess.run(argv, stdout=subprocess.DEVNULL, check=True)
            times[name].append((time.perf_counter() - start) * 1000)
    return times



def cpu_share(pid: int) -> float:
    """The share of one core `pid` uses over CPU_SECONDS."""
    used, start = cpu_seconds(pid), time.perf_counter()
    time.sleep(CPU_SECONDS)
    return (cpu_seconds(pid) - used) / (time.perf_counter() - start)


def measure(daemon) -> tuple[dict, float]:
    return latencies(daemon), cpu_share(daemon.proc.pid)


def report(idle: tuple[dict, float], loaded: tuple[dict, float]) -> None:
    """Raw figures, ratios, and the verdict lines."""
    for name, times in loaded[0].items():
        base = idle[0][name]
        p50, worst = statistics.median(times), max(times)
        print(f"{name}: p50 {p50:.1f} ms, worst {worst:.1f} ms with {READERS} readers; "
              f"p50 {statistics.median(base):.1f} ms, worst {max(base):.1f} ms with none "
              f"(p50 ratio {p50 / statistics.median(base):.2f}, worst ratio {worst / max(base):.2f}); "
              f"slowest five with readers {sorted(times)[-5:]}")
    print(f"daemon CPU: {loaded[1]:.1%} of a core with {READERS} readers, {idle[1]:.1%} with none "
          f"({(loaded[1] - idle[1]) * 1e6 / READERS:.0f} us of CPU per reader per second)")
    for name in [name for name in loaded[0] if name != CONTROL]:
        verdict(f"worst `{name}` with {READERS} blocked readers", max(loaded[0][name]), WORST_TARGET_MS, " ms",
                higher_is_better=False)
    verdict(f"daemon CPU with {READERS} blocked readers", loaded[1] * 100, CPU_TARGET * 100, "% of a core",
            higher_is_better=False)


def main() -> int:
    with apeinxfs_mount(CONFIG, name="readers") as daemon:
        pids = [daemon.submit(f"long{n} 5000 5") for n in range(TASKS)]
        idle = measure(daemon)
        readers = start_readers(daemon, pids)
        try:
            poll_until(lambda: daemon.blocked_readers() == READERS, 120, f"{READERS} readers blocked")
            loaded = measure(daemon)
            still = daemon.blocked_readers()
        finally:
            stop_readers(readers)
    print(f"{TASKS} tasks; {READERS} `cat`s (half wait, half stream), {still} still blocked after the measures")
    report(idle, loaded)
    return 0


if __name__ == "__main__":
    sys.exit(main())
