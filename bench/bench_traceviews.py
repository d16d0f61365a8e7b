"""What a tenant's view of the trace costs with N tenants in it, in process (no FUSE): this checkout's
trace.py against a reference one (BENCH_TRACE_REF, default c2d156c: a pattern of every other tenant's name
per viewer), loaded from git beside it.

For N = 100, 1,000, 5,000 tenants, each with two lines in a fresh trace (details naming other tenants and
pids), two cases:
- views: the first read of VIEWS tenants' `tenants/NAME/events` (`tenant_view`), each built and rendered:
  what `stat` of many tenants' files did in the red-team run (each built its own pattern before);
- new tenant: a line of a tenant new to the trace, then a task's view read again (both build a pattern
  again), NEWCOMERS times: the time of one.
Each figure is the median over BENCH_ROUNDS rounds, the reference and this code alternating, re's own
pattern cache purged before each (else a round reuses the last one's patterns); ratio = reference / this.
Also the bytes the trace holds once the views are read (tracemalloc), and their ratio. Figures only:
nothing is judged.
"""
import os
import re
import statistics
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from apeinxfs.kernel import trace as this_trace  # noqa: E402 - the checkout is put on the path above
from common import module_at  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
REF = os.environ.get("BENCH_TRACE_REF", "c2d156c")
SIZES = (100, 1_000, 5_000)
VIEWS = 100
NEWCOMERS = 10


class Task:
    """What the trace reads of a task."""

    def __init__(self, pid: int, tenant: str):
        self.pid, self.tenant, self.model, self.trace_last = pid, tenant, "sim", 0


def reference_module():
    """trace.py as of REF, a module of the kernel package (its relative imports resolve there)."""
    return module_at(REF, "apeinxfs/kernel/trace.py")


def filled(module, tenants: int):
    """A trace of `module` with two lines of a task of each of `tenants` tenants, naming others."""
    trace = module.TraceLog("n", tasks={}, limit=100_000)
    tasks = [Task(pid, f"team{pid:05d}") for pid in range(1, tenants + 1)]
    trace.tasks.update({task.pid: task for task in tasks})
    for task in tasks:
        other = tasks[(task.pid * 7) % tenants]
        trace.emit(0, "submit", task, f"name=t prio 5 by tenant {task.tenant}")
        trace.emit(1, "preempt", task, f"fair: tenant {other.tenant} is ahead; waiting with pid {other.pid}")
    return trace, tasks


def views_seconds(module, tenants: int) -> tuple[float, float]:
    """(Seconds to read VIEWS tenants' views of a fresh trace, seconds for a new tenant's line and a view)."""
    trace, tasks = filled(module, tenants)
    re.purge()
    start = time.perf_counter()
    for task in tasks[:VIEWS]:
        trace.tenant_view(task.tenant)
    views = time.perf_counter() - start
    start = time.perf_counter()
    for pid in range(tenants + 1, tenants + 1 + NEWCOMERS):
        trace.emit(2, "submit", Task(pid, f"newcomer{pid}"), "name=t")
        trace.of_task(tasks[pid % VIEWS])
    return views, (time.perf_counter() - start) / NEWCOMERS


def held_bytes(module, tenants: int) -> int:
    """Bytes allocated by filling a trace and reading VIEWS views, still held after."""
    re.purge()
    tracemalloc.start()
    trace, tasks = filled(module, tenants)
    for task in tasks[:VIEWS]:
        trace.tenant_view(task.tenant)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del trace
    return held


def main() -> int:
    reference = reference_module()
    print(f"reference {REF}, {ROUNDS} rounds alternating, {VIEWS} views; ratio = reference / this")
    for tenants in SIZES:
        runs: dict[str, list[tuple[float, float]]] = {"reference": [], "this": []}
        for _ in range(ROUNDS):
            for name, module in (("reference", reference), ("this", this_trace)):
                runs[name].append(views_seconds(module, tenants))
        ref, this = (tuple(statistics.median(run[i] for run in runs[name]) for i in (0, 1)) for name in runs)
        memory = held_bytes(reference, tenants), held_bytes(this_trace, tenants)
        print(f"{tenants:>5} tenants: {VIEWS} views {ref[0] * 1e3:8.1f} ms -> {this[0] * 1e3:7.1f} ms "
              f"(x{ref[0] / this[0]:.1f}); new tenant + a view {ref[1] * 1e3:6.1f} ms -> {this[1] * 1e3:6.1f} ms "
              f"(x{ref[1] / this[1]:.2f}); held {memory[0] / 2**20:6.1f} MiB -> {memory[1] / 2**20:5.1f} MiB "
              f"(x{memory[0] / memory[1]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
