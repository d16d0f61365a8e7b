"""Where a request's time to first token goes: stamps in the daemon and the client, one timeline.

Run as a script, it is the daemon (`apeinxfs.cli`) with stamps added from outside (no stamp
code in apeinxfs itself): every FUSE request's start and end, and the openai driver's steps
(task seen, request built, its connection (a spare or a connect), the bare exchange's send,
head and each read (drivers/bare.py), response headers, each
event decoded and counted, first token put), the journal's appends, the kernel's applies
and the runtime's commits. Stamps are `time.perf_counter_ns()` (CLOCK_MONOTONIC, shared
by all processes) and written to $BENCH_TIMELINE_OUT when the daemon exits.
`TimelineDaemon` starts it; `report` lines them up with the client's own stamps per
request and prints each step's p50 in ms after the request's start (before the open of
/ctl/submit). Benchmarks only: bench_engine.py uses it when BENCH_TIMELINE is set.
"""
import atexit
import functools
import json
import os
import statistics
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(BENCH_DIR), os.path.join(os.path.dirname(BENCH_DIR), "tests")]

from daemon import Daemon  # noqa: E402 - tests/ is put on the path just above

STAMPS: list = []
FUSE_OPS = ("lookup", "getattr", "open", "read", "write", "release", "access", "setattr")


def stamp(label: str) -> None:
    STAMPS.append((label, time.perf_counter_ns()))


def wrap_async(owner, name: str, label: str, end: bool = True) -> None:
    """Stamp `label>` when owner.name starts and `label<` when it returns (if `end`)."""
    original = getattr(owner, name)

    @functools.wraps(original)
    async def stamped(*args, **kwargs):
        stamp(label + ">")
        try:
            return await original(*args, **kwargs)
        finally:
            if end:
                stamp(label + "<")
    setattr(owner, name, stamped)


def wrap_sync(owner, name: str, label: str, when=lambda *a, **k: True) -> None:
    """Stamp `label` when owner.name returns (and `when(*args)` holds)."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def stamped(*args, **kwargs):
        result = original(*args, **kwargs)
        if when(*args, **kwargs):
            stamp(label)
        return result
    setattr(owner, name, stamped)


def instrument() -> None:
    """Add the stamps to the daemon's classes (before anything runs)."""
    from apeinxfs import fs, journal, runtime
    from apeinxfs.drivers import bare, flow, openai, spares, sse
    from apeinxfs.kernel import kernel
    for op in FUSE_OPS:
        wrap_async(fs.Operations, op, "fuse." + op)
    wrap_sync(openai.OpenAIDriver, "_start", "driver.task_seen")
    wrap_sync(openai.Endpoint, "request", "driver.request_built")
    wrap_sync(openai.Endpoint, "events", "driver.headers")
    wrap_async(spares.SpareBackend, "socket", "net.connect")  # a spare connection, or one connect(2)
    wrap_async(bare.Response, "send", "net.write")
    wrap_async(bare.Response, "read_head", "net.head")
    wrap_async(bare.Response, "_fill", "net.read")
    wrap_sync(flow.Outbox, "put", "outbox.first_token", when=lambda box, chunk: chunk.tokens)
    wrap_sync(runtime.Runtime, "commit_checked", "runtime.committed")
    wrap_sync(sse, "decode", "sse.decoded")
    wrap_sync(sse.Tally, "chunk", "tally.chunk")
    wrap_sync(journal.Journal, "append", "journal.appended")
    wrap_sync(kernel.Kernel, "apply", "kernel.applied")


def dump(path: str) -> None:
    with open(path, "w") as file:
        json.dump(STAMPS, file)


class TimelineDaemon(Daemon):
    """A Daemon with stamps, written to `out` at exit."""

    def __init__(self, mountpoint, state_dir, config_text, out: str):
        super().__init__(mountpoint, state_dir, config_text)
        self.out = out
        os.environ["BENCH_TIMELINE_OUT"] = out

    def command(self) -> list[str]:
        cmd = super().command()
        return cmd[:1] + [os.path.abspath(__file__)] + cmd[3:]


def report(out: str, requests: list[dict]) -> None:
    """Per step, the p50 (over requests) of its Nth stamp after each request's start, in ms (steps seen in
    fewer than half the requests left out); BENCH_TIMELINE=raw also prints each request's own line."""
    with open(out) as file:
        stamps = json.load(file)
    steps: dict[str, list] = {}
    for request in requests:
        seen = steps_of(stamps, request)
        if os.environ.get("BENCH_TIMELINE") == "raw":
            print(" ".join(f"{label}={ms:.2f}" for label, ms in sorted(seen.items(), key=lambda item: item[1])))
        for label, ms in seen.items():
            steps.setdefault(label, []).append(ms)
    print(f"--- timeline, p50 ms after the request's start, before the open of /ctl/submit "
          f"({len(requests)} requests; label#N: the Nth)")
    common = {label: times for label, times in steps.items() if len(times) * 2 > len(requests)}
    for label, times in sorted(common.items(), key=lambda item: statistics.median(item[1])):
        print(f"  {statistics.median(times):7.2f}  {label} ({len(times)})")


def steps_of(stamps: list, request: dict) -> dict:
    """{label or label#N: ms after the request's start} of the daemon's stamps during it, and the client's."""
    start, end = request["start"], request["end"]
    seen, counts = {}, {}
    for label, ns in stamps:
        if start <= ns <= end:
            counts[label] = counts.get(label, 0) + 1
            seen[label if counts[label] == 1 else f"{label}#{counts[label]}"] = ns
    seen.update({label: ns for label, ns in request.items() if label not in ("start", "end")})
    return {label: (ns - start) / 1e6 for label, ns in seen.items()}


if __name__ == "__main__":
    instrument()
    atexit.register(dump, os.environ["BENCH_TIMELINE_OUT"])
    from apeinxfs import cli
    sys.exit(cli.main())
