"""What a read of a long `tasks/PID/events` or `stream` costs, in process (no FUSE): this checkout's renders
against BENCH_BIGREADS_REF's (default main: every read rendered a task's whole events, and copied a stream's
output from the offset to its end), loaded from git beside them.

Events, a task of N = 1,000 / 30,000 / 50,000 lines (`prio N` controls, as five writes of 10,000 by one user
make), read as the file's handle reads (base.LogHandle: `source()`, or `head(end)` where the log has it):
- 4 KiB read: one 4 KiB read at a random offset, once the file was read before (a `dd skip=`, a `tail -f`
  poll, a 1-byte read loop): the median of READS;
- cat: the whole file from a fresh trace in 128 KiB reads, as `cat` reads it.
Stream, an output of 1 and 32 MiB (`nodes/tasks.py` stream_poll and the handle's slice):
- 4 KiB read at a random offset (median of READS); cat: the whole output in 128 KiB reads.
Each figure is the median over BENCH_ROUNDS rounds, the reference and this code alternating; ratio =
reference / this. Also the most bytes allocated at once by one 4 KiB read (tracemalloc). Figures only:
nothing is judged.
"""
import os
import random
import statistics
import sys
import time
import tracemalloc

from common import module_at

from apeinxfs.kernel import trace as this_trace
from apeinxfs.nodes import tasks as this_tasks

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
REF = os.environ.get("BENCH_BIGREADS_REF", "main")
LINES = (1_000, 30_000, 50_000)
OUTPUT_MIB = (1, 32)
READ, CAT_READ, READS = 4096, 128 * 1024, 20


class Task:
    """What the trace and stream_poll read of a task."""

    def __init__(self, output: bytes = b""):
        self.pid, self.tenant, self.model, self.trace_last = 1, "default", "sim", 0
        self.output, self.done = bytearray(output), True


def events_reader(trace_module, lines: int):
    """read(offset, size) of the events of a task of `lines` prio lines in a fresh trace of `trace_module`."""
    trace, task = trace_module.TraceLog("n", tasks={}, limit=100_000), Task()
    for n in range(lines):
        trace.emit(n, "prio", task, f"prio {1 + n % 9} by uid 1000")
    if trace_module is this_trace:
        views = trace_module.TaskViews()
        return lambda offset, size: bytes(views.of_task(trace, task, offset + size)[offset:offset + size])
    return lambda offset, size: bytes(trace.of_task(task)[offset:offset + size])


def stream_reader(tasks_module, mib: int):
    """read(offset, size) of the stream of a task of `mib` MiB of output, as the handle reads it."""
    task = Task(b"w" * (mib << 20))
    if tasks_module is this_tasks:
        return lambda offset, size: tasks_module.stream_poll(task, offset, size)
    return lambda offset, size: tasks_module.stream_poll(task, offset)[:size]


def cat(read) -> tuple[float, int]:
    """(Seconds to read the whole file from 0 in 128 KiB reads, its length)."""
    start, offset = time.perf_counter(), 0
    while data := read(offset, CAT_READ):
        offset += len(data)
    return time.perf_counter() - start, offset


def small_read_seconds(read, length: int) -> float:
    """The median seconds of READS 4 KiB reads at random offsets (the same for both codes: seeded)."""
    rng, times = random.Random(length), []
    for _ in range(READS):
        offset = rng.randrange(max(length - READ, 1))
        start = time.perf_counter()
        read(offset, READ)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_bytes(read, length: int) -> int:
    tracemalloc.start()
    try:
        read(length // 2, READ)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def measure(make) -> tuple[float, float, int]:
    """(Seconds of a 4 KiB read, of a cat, peak bytes of a 4 KiB read) of the reader `make()` builds."""
    read = make()
    cat_seconds, length = cat(read)
    return small_read_seconds(read, length), cat_seconds, peak_bytes(read, length)


def compare(what: str, makers: dict) -> None:
    runs: dict[str, list[tuple[float, float, int]]] = {name: [] for name in makers}
    for _ in range(ROUNDS):
        for name, make in makers.items():
            runs[name].append(measure(make))
    ref, this = ([statistics.median(run[i] for run in runs[name]) for i in range(3)] for name in makers)
    print(f"{what:>22}: 4 KiB read {ref[0] * 1e3:8.3f} ms -> {this[0] * 1e3:7.3f} ms (x{ref[0] / this[0]:,.0f}); "
          f"cat {ref[1] * 1e3:8.1f} ms -> {this[1] * 1e3:6.1f} ms (x{ref[1] / this[1]:,.1f}); "
          f"peak {ref[2] / 2**20:6.2f} MiB -> {this[2] / 2**20:5.2f} MiB")


def main() -> int:
    trace_ref = module_at(REF, "apeinxfs/kernel/trace.py")
    tasks_ref = module_at(REF, "apeinxfs/nodes/tasks.py")
    print(f"reference {REF}, {ROUNDS} rounds alternating; ratio = reference / this")
    for lines in LINES:
        compare(f"events {lines:,} lines", {"reference": lambda: events_reader(trace_ref, lines),
                                            "this": lambda: events_reader(this_trace, lines)})
    for mib in OUTPUT_MIB:
        compare(f"stream {mib} MiB", {"reference": lambda: stream_reader(tasks_ref, mib),
                                     "this": lambda: stream_reader(this_tasks, mib)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
