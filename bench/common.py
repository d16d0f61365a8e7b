"""What the benchmark scripts share: mounts to measure, timing loops and the verdict line.

- `apeinxfs_mount(config)`: a real daemon (tests/daemon.py's Daemon) in a temporary
  directory; with BENCH_PROFILE=DIR set it runs under cProfile and prints its hottest
  functions when it stops (the profile is kept as DIR/NAME.prof).
- `checkouts_argued(doc)`, `checkouts_mounted(stack, config, checkouts, order)`: an A/B's two checkouts, named
  on its command line; one daemon of each of several checkouts at once.
- `minimal_mount()`: bench/minimal_fs.py, the pyfuse3 floor that read rates are compared to.
- `count_runs`, `rate`, `median`, `verdict`: measure, summarise, print a `PASS`/`MISS` line.
- `module_at(ref, path)`: a module of the package as of another commit, to measure beside this one's.
Benchmarks only: nothing here asserts on time, and tests do not import it.
"""
import contextlib
import importlib.util
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import types

import trio

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

from daemon import Daemon, checking_invariants, is_mounted, sim_config  # noqa: E402 - tests/ is put on the path just above

# Tasks that do not finish during a run, so the queue keeps what was submitted; writes of 20,000 lines (the
# bulk figures of bench_submit, bench_ls, bench_isolation, bench_cluster), twice limits.write_lines' default.
QUEUE_CONFIG = sim_config(1000) + "\n[limits]\nwrite_lines = 20000\n"
SECONDS = float(os.environ.get("BENCH_SECONDS", "2"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


class ProfiledDaemon(Daemon):
    """A Daemon run under cProfile, writing its profile to `profile_path` at exit."""

    def __init__(self, mountpoint, state_dir, config_text, profile_path):
        super().__init__(mountpoint, state_dir, config_text)
        self.profile_path = profile_path

    def command(self) -> list[str]:
        cmd = super().command()
        return cmd[:1] + ["-m", "cProfile", "-o", self.profile_path] + cmd[1:]


@contextlib.contextmanager
def apeinxfs_mount(config_text: str | None = None, name: str = "apeinxfs", timeline: str | None = None):
    """A live apeinxfs mount with the embedded defaults or `config_text`; with `timeline` a path, a daemon
    that writes its stamps there (timeline.py)."""
    with tempfile.TemporaryDirectory(prefix="apeinx-bench-") as tmp:
        daemon = make_daemon(tmp, config_text, name, timeline)
        with daemon:
            yield daemon
        if isinstance(daemon, ProfiledDaemon):
            print_profile(daemon.profile_path)


def checkouts_argued(doc: str) -> dict | None:
    """{"ref": REF, "this": THIS (default the cwd)}, absolute, of the command line `REF [THIS]`; None, the usage
    (`doc`'s second paragraph) printed, if it is not one."""
    if len(sys.argv) not in (2, 3):
        print(doc.split("\n\n")[1], file=sys.stderr)
        return None
    return {"ref": os.path.abspath(sys.argv[1]), "this": os.path.abspath(sys.argv[2] if len(sys.argv) == 3 else ".")}


def checkouts_mounted(stack: contextlib.ExitStack, config_text: str, checkouts: dict, order: tuple) -> dict:
    """{name: daemon} of each checkout's apeinxfs ({name: its root}) with `config_text`, started in `order`
    (PYTHONSAFEPATH: the cwd is not put before PYTHONPATH), each stopped when `stack` closes."""
    os.environ["PYTHONSAFEPATH"] = "1"
    daemons = {}
    for name in order:
        os.environ["PYTHONPATH"] = checkouts[name]
        daemons[name] = stack.enter_context(apeinxfs_mount(config_text, name=f"ab-{name}"))
    return daemons


def make_daemon(tmp: str, config_text: str | None, name: str, timeline: str | None = None) -> Daemon:
    """A Daemon under `tmp`, profiled into $BENCH_PROFILE/NAME.prof when that is set, with stamps
    (timeline.py) written to `timeline` if given."""
    mnt, state = os.path.join(tmp, "ai"), os.path.join(tmp, "state")
    config_text = None if config_text is None else as_deployed(config_text)
    if timeline:
        from timeline import TimelineDaemon
        return TimelineDaemon(mnt, state, config_text, timeline)
    profile_dir = os.environ.get("BENCH_PROFILE")
    if not profile_dir:
        return Daemon(mnt, state, config_text)
    os.makedirs(profile_dir, exist_ok=True)
    return ProfiledDaemon(mnt, state, config_text, os.path.join(os.path.abspath(profile_dir), f"{name}.prof"))


def as_deployed(config_text: str) -> str:
    """The config with daemon.check_invariants off unless it says otherwise: tests/daemon.py turns the
    checks on for tests, and a benchmark measures the daemon as deployed."""
    if "check_invariants =" in config_text:
        return config_text
    return checking_invariants(config_text).replace("check_invariants = true", "check_invariants = false", 1)


def print_profile(path: str, limit: int = 25) -> None:
    """The daemon's hottest functions by own time, then by cumulative time."""
    for order in ("tottime", "cumulative"):
        print(f"--- daemon profile {path}, by {order}")
        pstats.Stats(path, stream=sys.stdout).strip_dirs().sort_stats(order).print_stats(limit)


@contextlib.contextmanager
def minimal_mount():
    """bench/minimal_fs.py mounted in a temporary directory; yields its 64-byte file's path."""
    with tempfile.TemporaryDirectory(prefix="minimal-bench-") as mnt:
        proc = subprocess.Popen([sys.executable, os.path.join(BENCH_DIR, "minimal_fs.py"), mnt])
        try:
            wait_mounted(mnt, proc)
            yield os.path.join(mnt, "file")
        finally:
            if is_mounted(mnt):
                subprocess.run(["fusermount3", "-u", "-z", mnt], check=False)
            end_process(proc)


def wait_mounted(mountpoint: str, proc, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not is_mounted(mountpoint):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{mountpoint} did not mount (exit status {proc.poll()})")
        time.sleep(0.05)


def end_process(proc, timeout: float = 10.0) -> None:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """Seconds every live thread of process `pid` has run, from /proc/PID/task/*/schedstat (nanoseconds;
    /proc/PID/stat counts 10 ms ticks, too coarse for the 0.1-0.2 s of CPU a measure may take). A thread
    that has ended is not counted: measure over spans in which the process keeps its threads."""
    total = 0
    for thread in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            with open(f"/proc/{pid}/task/{thread}/schedstat") as file:
                total += int(file.read().split()[0])
    return total / 1e9


def read_all(path: str) -> int:
    """open, read to EOF, close; the number of bytes read."""
    fd = os.open(path, os.O_RDONLY)
    try:
        total = 0
        while chunk := os.read(fd, 65536):
            total += len(chunk)
        return total
    finally:
        os.close(fd)


def count_runs(action, seconds: float) -> tuple[int, float]:
    """(times `action()` ran, seconds it took) in a loop of about `seconds`."""
    count, start = 0, time.perf_counter()
    while (now := time.perf_counter()) - start < seconds:
        action()
        count += 1
    return count, now - start


def rate(action, seconds: float = SECONDS) -> float:
    """How many times per second `action()` runs, over about `seconds`."""
    count, elapsed = count_runs(action, seconds)
    return count / elapsed


def median(values) -> float:
    return statistics.median(values)


def verdict(what: str, measured: float, target: float, unit: str = "", higher_is_better: bool = True) -> None:
    """Print `PASS|MISS what: measured (target >= or < target)`: the line bench/run sums up."""
    passed = measured >= target if higher_is_better else measured < target
    sign = ">=" if higher_is_better else "<"
    print(f"{'PASS' if passed else 'MISS'} {what}: {measured:,.2f}{unit} (target {sign} {target:,}{unit})",
          flush=True)
    return passed


def submit_lines(daemon, lines: list[str]) -> float:
    """Write `lines` to /ctl/submit in one write(2); the seconds it took."""
    data = "".join(line + "\n" for line in lines).encode()
    fd = os.open(daemon.path("ctl", "submit"), os.O_WRONLY)
    try:
        start = time.perf_counter()
        written = os.write(fd, data)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
    if written != len(data):
        raise RuntimeError(f"short write to /ctl/submit: {written} of {len(data)} bytes")
    return elapsed


def single_line_submits(daemon) -> tuple[int, float]:
    """(one-line submits written to /ctl/submit on one fd for SECONDS, the seconds they took)."""
    fd = os.open(daemon.path("ctl", "submit"), os.O_WRONLY)
    try:
        return count_runs(lambda: os.write(fd, b"one 1000 5\n"), SECONDS)
    finally:
        os.close(fd)


async def concurrent_rate(action, workers: int) -> float:
    """Completed `await action(worker)`s per second, with `workers` concurrent loops over SECONDS."""
    done = 0

    async def loop(worker: int) -> None:
        nonlocal done
        while True:
            await action(worker)
            done += 1
    start = trio.current_time()
    with trio.move_on_after(SECONDS):
        async with trio.open_nursery() as nursery:
            for worker in range(workers):
                nursery.start_soon(loop, worker)
    return done / (trio.current_time() - start)


def module_at(ref: str, path: str) -> types.ModuleType:
    """The module at `path` (apeinxfs/....py) as of git `ref`, loaded beside this checkout's as a module of the
    same package (`NAME_at_REF`), so that its relative imports resolve to this checkout's."""
    source = subprocess.run(["git", "-C", ROOT, "show", f"{ref}:{path}"], check=True, capture_output=True,
                            text=True).stdout
    package = os.path.dirname(path).replace("/", ".")
    name = f"{package}.{os.path.basename(path)[:-3]}_at_{ref.replace('-', '_')}"
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader=None))
    module.__package__ = package
    sys.modules[name] = module
    exec(compile(source, f"{ref}:{path}", "exec"), module.__dict__)
    return module
