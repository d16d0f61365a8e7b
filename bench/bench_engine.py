"""Time to first token and tokens per second on a real llama-server: straight, and through apeinxfs.

One llama-server (tests/engines.py: built once per machine, the suite's tiny model, 4
slots, one thread) serves both paths, one request at a time, alternating:

- straight: an httpx streaming client POSTs /v1/completions with the body the openai
  driver sends (same prompt, max_tokens, `stream_options`) and reads the server-sent
  events, on a new connection each time (llama-server closes one after each stream);
- apeinxfs: a daemon whose one model is that engine (`openai` driver, engine metrics
  scraped every second as usual); the client submits on /ctl/submit (an O_RDWR fd:
  write(2) the line, read(2) the pid back; no fstat, which Python's open() adds) and reads
  /tasks/PID/stream to EOF the way `cat` does (64 KiB reads).

Placement: the engine gets a CPU of its own (the last; taskset) and the client and daemon
the others, as on a GPU machine, where the engine computes on the GPU and not on the cores
the daemon and its readers run on. That is the judged measure. Then the same with all
three sharing every CPU, printed and not judged (BENCH_ENGINE_SHARED=0 leaves it out): on
this 2-core VM the Linux scheduler then moves llama-server's busy threads, the reader and
the daemon between the two cores, and the reader's FUSE round trips take 2-3x as long.

Time to first token runs from just before the request (straight: the POST; apeinxfs: the
open of /ctl/submit for the submit's write) to the first text received; tokens per second
is tokens / (time of the last text - start), what a reader gets. 5 x BENCH_ROUNDS
requests per path (after one warm-up each), alternating so machine load falls on both
alike. Targets (issue 4): apeinxfs adds < 2 ms to the p50
time to first token and keeps >= 95% of the tokens per second (median over requests).
BENCH_ENGINE_TOKENS (default 1000): max_tokens of every request. BENCH_TIMELINE=1: the daemon
runs with stamps (timeline.py) and a timeline of the apeinxfs path's steps is printed.
"""
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import timeline
from common import ROUNDS, apeinxfs_mount, median, verdict

import tinymodel
from engines import LlamaServer, build_llama_server, openai_daemon_config

PROMPT = "the kernel reads a file"
TOKENS = int(os.environ.get("BENCH_ENGINE_TOKENS", "1000"))
REQUESTS = 5 * ROUNDS
TTFT_TARGET_MS = 2.0
FRESH_CONNECTIONS = httpx.Limits(max_keepalive_connections=0)  # llama-server closes one after each stream
RATE_TARGET = 0.95


def straight(client: httpx.Client, url: str) -> tuple[float, float, int]:
    """(seconds to the first text, seconds to the last, tokens) of one streaming request to the engine."""
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": TOKENS, "stream": True,
            "stream_options": {"include_usage": True}}
    start, first, last, tokens = time.perf_counter(), None, None, 0
    with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if any(choice.get("text") for choice in event.get("choices") or []):
                last = time.perf_counter()
                first = first or last
            tokens = (event.get("usage") or {}).get("completion_tokens", tokens)
    return first - start, last - start, tokens


def through(daemon, stamps: dict) -> tuple[float, float, int]:
    """The same through the mount: submit, then read the task's stream to EOF like `cat`. Fills
    `stamps` (perf_counter_ns of each step, for timeline.py)."""
    start = time.perf_counter()
    stamps["start"] = time.perf_counter_ns()
    ctl = os.open(daemon.path("ctl", "submit"), os.O_RDWR)  # system calls only, as a C client or a shell would
    try:
        os.write(ctl, f'name=bench model=tiny max_tokens={TOKENS} prompt="{PROMPT}"\n'.encode())
        stamps["client.written"] = time.perf_counter_ns()
        pid = int(os.read(ctl, 64))
        stamps["client.pid_read"] = time.perf_counter_ns()
    finally:
        os.close(ctl)
    first = last = None
    fd = os.open(daemon.path("tasks", str(pid), "stream"), os.O_RDONLY)
    stamps["client.stream_open"] = time.perf_counter_ns()
    try:
        while os.read(fd, 65536):
            last = time.perf_counter()
            if first is None:
                first = last
                stamps["client.first_read"] = stamps["end"] = time.perf_counter_ns()
    finally:
        os.close(fd)
    tokens = int(daemon.status(pid)["TokensOut"])
    return first - start, last - start, tokens


def measure(client, url: str, daemon, stamps: list) -> dict:
    """Alternating requests, one warm-up each; {path: [(ttft_s, end_s, tokens), ...]}; the apeinxfs
    path's client stamps appended to `stamps`."""
    results = {"straight": [], "apeinxfs": []}
    runs = {"straight": lambda: straight(client, url), "apeinxfs": lambda: through(daemon, stamps[-1])}
    for number in range(REQUESTS + 1):
        stamps.append({})
        for path in (("straight", "apeinxfs") if number % 2 else ("apeinxfs", "straight")):
            result = runs[path]()
            if result[2] != TOKENS:
                raise RuntimeError(f"{path}: {result[2]} tokens, not {TOKENS}")
            if number:
                results[path].append(result)
    del stamps[0]  # the warm-up's
    return results


def figures(results: dict) -> tuple[float, float]:
    """(ms apeinxfs adds to the p50 time to first token, its median tokens/s over straight's), printing both paths."""
    ttft = {path: statistics.median(r[0] for r in rows) * 1000 for path, rows in results.items()}
    rate = {path: median([r[2] / r[1] for r in rows]) for path, rows in results.items()}
    for path in results:
        print(f"{path:>9}: p50 time to first token {ttft[path]:.2f} ms, {rate[path]:,.0f} tokens/s "
              f"({len(results[path])} requests of {TOKENS} tokens)")
    return ttft["apeinxfs"] - ttft["straight"], rate["apeinxfs"] / rate["straight"]


def placements() -> list[tuple[str, set[int] | None, set[int]]]:
    """(name, the engine's CPUs, the client's and daemon's) to measure, the judged one first: the engine on a
    CPU of its own (the last), as a GPU engine computes off the host's cores; then all sharing every CPU, not
    judged (BENCH_ENGINE_SHARED=0 leaves it out). On one CPU, only the shared one, judged."""
    cpus = set(os.sched_getaffinity(0))
    shared = ("engine, client and daemon sharing CPUs", None, cpus)
    if len(cpus) < 2:
        return [shared]
    own = (f"engine on CPU {max(cpus)} of its own, client and daemon on the others", {max(cpus)}, cpus - {max(cpus)})
    return [own] + ([shared] if os.environ.get("BENCH_ENGINE_SHARED", "1") != "0" else [])


def run(binary: Path, engine_cpus: set[int] | None, tmp: Path) -> dict:
    """Both paths' results with the engine on `engine_cpus` and this process (and so its daemon) where it is."""
    model, stamps = tinymodel.write(tmp / "tiny.gguf", seed=0), []
    timeline_out = str(tmp / "timeline.json") if os.environ.get("BENCH_TIMELINE") else None
    with LlamaServer(binary, model, tmp / "llama-server.log", cpus=engine_cpus) as server, \
            apeinxfs_mount(openai_daemon_config(server.url), name="engine", timeline=timeline_out) as daemon, \
            httpx.Client(timeout=60, limits=FRESH_CONNECTIONS) as client:
        results = measure(client, server.url, daemon, stamps)
    if timeline_out:
        timeline.report(timeline_out, stamps)
    return results


def main() -> int:
    binary = build_llama_server()
    for number, (name, engine_cpus, own_cpus) in enumerate(placements()):
        os.sched_setaffinity(0, own_cpus)  # the daemon, started in run(), inherits it
        with tempfile.TemporaryDirectory(prefix="apeinx-bench-engine-") as tmp:
            print(f"--- {name}")
            added, ratio = figures(run(binary, engine_cpus, Path(tmp)))
        if number:
            print(f"     not judged: apeinxfs adds {added:.2f} ms to the p50 time to first token, "
                  f"tokens per second ratio {ratio:.2f}")
            continue
        verdict("apeinxfs adds to the p50 time to first token", added, TTFT_TARGET_MS, " ms", higher_is_better=False)
        verdict("tokens per second through apeinxfs / straight", ratio, RATE_TARGET)
    return 0


if __name__ == "__main__":
    sys.exit(main())
