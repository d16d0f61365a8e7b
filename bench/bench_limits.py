"""`[limits]`: how long one write at `limits.write_lines` freezes the daemon, and ctl/policy's cost per rule.

Freeze: with a mount's queue (QUEUE_CONFIG, write_lines at its default: tasks wait), a reader thread times `open + read + close` of
/memory/meminfo back to back; each round takes its worst latency idle (1 s) and while another thread writes
one write(2) of `write_lines` submit lines, then while it writes a 1 MiB write of 170,000 lines (refused
E2BIG), alternating. Prints each worst latency over the idle median (the ratio judged: how many idle
reads one write costs every other caller).
Policy: SetRules of N rules, one per line as ctl/policy makes them, checked and applied in a fresh kernel
in process; per-rule cost at 40,000 over that at 10,000 (1.0: linear, ~4: quadratic), for this checkout
and, given a path (`git archive main | tar -x -C DIR`), that one's in alternating subprocesses.

    .venv/bin/python bench/bench_limits.py [BASELINE_CHECKOUT]
"""
import os
import subprocess
import sys
import threading
import time

from common import QUEUE_CONFIG, ROOT, ROUNDS, apeinxfs_mount, median, read_all

WRITE_LINES = 10000  # limits.write_lines' default
CONFIG = QUEUE_CONFIG.replace("write_lines = 20000", f"write_lines = {WRITE_LINES}")
POLICY = """
import sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {root!r} + "/tests")
from apeinxfs.kernel import Kernel
from apeinxfs.kernel.events import SetRules
from test_kernel import kernel_config
def per_rule(n):
    kernel, start = Kernel(kernel_config()), time.perf_counter()
    for i in range(n):
        event = SetRules(rules=(f"deny model=m{{i}}",), replace=False)
        kernel.check(event); kernel.apply(event, 0)
    return (time.perf_counter() - start) / n
print(per_rule(40000) / per_rule(10000), per_rule(40000) * 40000)
"""


def worst_latency(path: str, during) -> tuple[float, float]:
    """(worst, median) seconds of meminfo reads made while `during()` runs in another thread."""
    latencies, done = [], threading.Event()
    worker = threading.Thread(target=lambda: (during(), done.set()))
    worker.start()
    while not done.is_set():
        start = time.perf_counter()
        read_all(path)
        latencies.append(time.perf_counter() - start)
    worker.join()
    return max(latencies), median(latencies)


def write_once(daemon, data: bytes) -> None:
    fd = os.open(daemon.path("ctl", "submit"), os.O_WRONLY)
    try:
        os.write(fd, data)
    except OSError as exc:
        print(f"    (the write failed: {exc.strerror})")
    finally:
        os.close(fd)


def freeze() -> None:
    at_limit = b"name=x max_tokens=10\n" * WRITE_LINES
    over = b"job 1\n" * 170000
    with apeinxfs_mount(CONFIG) as daemon:
        meminfo = daemon.path("memory", "meminfo")
        for round_ in range(ROUNDS):
            worst_idle, idle = worst_latency(meminfo, lambda: time.sleep(1))
            worst_at, _ = worst_latency(meminfo, lambda: write_once(daemon, at_limit))
            worst_over, _ = worst_latency(meminfo, lambda: write_once(daemon, over))
            print(f"round {round_ + 1}: meminfo idle median {idle * 1e3:.2f} ms, worst {worst_idle / idle:.1f}x; "
                  f"during a {WRITE_LINES}-line write worst {worst_at / idle:.1f}x ({worst_at * 1e3:.0f} ms); "
                  f"during a refused 170,000-line write worst {worst_over / idle:.1f}x ({worst_over * 1e3:.1f} ms)")


def policy(baseline: str | None) -> None:
    trees = [("this", ROOT)] + ([("baseline", baseline)] if baseline else [])
    for round_ in range(ROUNDS):
        for name, root in trees:
            out = subprocess.run([sys.executable, "-c", POLICY.format(root=root)], capture_output=True, text=True,
                                 check=True).stdout.split()
            print(f"round {round_ + 1} {name}: per-rule cost at 40k / at 10k = {float(out[0]):.2f}; "
                  f"40k rules {float(out[1]):.2f} s")


if __name__ == "__main__":
    freeze()
    policy(sys.argv[1] if len(sys.argv) > 1 else None)
