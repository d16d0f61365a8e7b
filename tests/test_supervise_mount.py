"""Tier 3: a real daemon whose trace archive compressor or driver meets a bug stays up, and says so in
/ai/health: the loop is restarted, or, for one task's job, that task fails.

No input is known today that makes one of the daemon's loops raise (the etcd pids that did are mended),
so the fault is injected at the one place it would come from: the daemon is started through a launcher
(`python -c`, then apeinxfs.cli's main, as `python -m apeinxfs.cli` does) that makes one method raise
ValueError in its first two calls, as a bug in it would: `Archive.compress_full`, which the compressor
runs at start (so the loop fails at once, is restarted after 1 s and 2 s, then works), or the sim
driver's `plan`, which its serve loop calls for each step. A job's bug is injected where one would be: an
engine (test_openai_driver's FakeEngine, in a thread) answers in a shape the parser does not foresee
(completion_tokens as a string), and the launcher (UNFORESEEING) makes sse.check_shape, which refuses it as
the engine's fault, raise TypeError on it instead, as a check that had not foreseen it would.
"""
import contextlib
import queue
import subprocess
import sys
import threading

import pytest
import trio

from daemon import FUSE_READY, Daemon, poll_until
from test_openai_driver import FakeEngine, engine_config

pytestmark = [pytest.mark.mount, pytest.mark.skipif(not FUSE_READY, reason="needs /dev/fuse and fusermount3")]

LAUNCH = """
import importlib, sys
from apeinxfs.cli import main
owner = getattr(importlib.import_module("{module}"), "{cls}")
real, calls = getattr(owner, "{method}"), []
def failing(*args):
    calls.append(1)
    if len(calls) <= 2:
        raise ValueError("a bug in {method}")
    return real(*args)
setattr(owner, "{method}", failing)
sys.exit(main())
"""
UNFORESEEING = """
import sys
from apeinxfs.cli import main
from apeinxfs.drivers import sse
def unforeseeing(event):
    (event.get("usage") or {}).get("completion_tokens", 0) + 1
sse.check_shape = unforeseeing
sys.exit(main())
"""


class FaultyDaemon(Daemon):
    """A real daemon started through `launch` (python -c), e.g. failing(...)'s."""

    def __init__(self, tmp_path, launch: str, **options):
        super().__init__(tmp_path / "ai", tmp_path / "state", **options)
        self.launch = launch

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.launch, *super().command()[3:]]


def failing(module: str, cls: str, method: str) -> str:
    """LAUNCH for `module.cls.method`: it fails in its first two calls, then works."""
    return LAUNCH.format(module=module, cls=cls, method=method)


def health_rows(daemon: Daemon) -> list[str]:
    with open(daemon.path("health")) as file:
        return file.read().splitlines()


def test_a_loop_that_fails_is_restarted_and_the_daemon_and_its_files_go_on(tmp_path):
    """The compressor fails twice: the daemon keeps its mount, /ai/health has its Bug row (2 times),
    the log has the traceback, and a task submitted afterwards runs to its end and reads whole."""
    with FaultyDaemon(tmp_path, failing("apeinxfs.archive", "Archive", "compress_full")) as daemon:
        poll_until(lambda: "(2 times" in "".join(health_rows(daemon)), 20, "the Bug row counting 2 failures")
        rows = health_rows(daemon)
        assert rows[0] == "State:\tok"
        assert rows[1].startswith("Bug:\tarchive.compress: ValueError at <string>:")
        assert rows[1].endswith("; restarted)")
        assert daemon.proc.poll() is None
        pid = daemon.submit("max_tokens=5 prompt=still-here")
        stream = subprocess.run(["cat", daemon.path("tasks", str(pid), "stream")], capture_output=True,
                                timeout=20, check=True)
        assert stream.stdout and daemon.status(pid)["State"] == "Z (exited)"
        log = daemon.log_tail()
        assert "bug in archive.compress: ValueError at <string>:" in log and "Traceback" in log


def test_a_bug_in_a_drivers_serve_restarts_it_and_its_task_goes_on(tmp_path):
    """The sim driver's step planning fails twice: its serve is restarted (a Bug row counting 2 failures in
    /ai/health), the daemon stays up, and the task it was stepping runs to its end and reads whole."""
    with FaultyDaemon(tmp_path, failing("apeinxfs.drivers.sim", "SimDriver", "plan")) as daemon:
        pid = daemon.submit("max_tokens=5 prompt=bug")
        stream = subprocess.run(["cat", daemon.path("tasks", str(pid), "stream")], capture_output=True,
                                timeout=20, check=True)
        assert len(stream.stdout.split()) == 5 and daemon.status(pid)["State"] == "Z (exited)"
        rows = health_rows(daemon)
        assert rows[1].startswith("Bug:\tdriver.sim.serve: ValueError at <string>:")
        assert "(2 times, last at " in rows[1] and rows[1].endswith("; restarted)")
        assert daemon.proc.poll() is None
        assert "bug in driver.sim.serve: ValueError at <string>:" in daemon.log_tail()


@contextlib.contextmanager
def serving(engine: FakeEngine):
    """`engine` listening on 127.0.0.1 from a thread of its own (its own trio run) until the block ends."""
    ready: queue.Queue = queue.Queue()

    async def main():
        async with trio.open_nursery() as nursery:
            await engine.start(nursery)
            ready.put((nursery.cancel_scope, trio.lowlevel.current_trio_token()))
    thread = threading.Thread(target=trio.run, args=(main,))
    thread.start()
    scope, token = ready.get(timeout=10)
    try:
        yield engine
    finally:
        trio.from_thread.run_sync(scope.cancel, trio_token=token)
        thread.join()


def test_a_bug_in_one_tasks_job_fails_that_task_and_the_daemon_and_the_others_go_on(tmp_path):
    """The engine garbles one task's answer (completion_tokens as a string) and the check of its shape raises
    on it (UNFORESEEING): that task fails naming the bug, a task beside it on the GPU streams to its end, the daemon
    stays up, and /ai/health has the job's Bug row."""
    with serving(FakeEngine(delay=0.01, garbled="bad")) as engine, \
            FaultyDaemon(tmp_path, UNFORESEEING, config_text=engine_config(engine.port)) as daemon:
        good = daemon.submit("max_tokens=40 prompt=good")
        bad = daemon.submit("max_tokens=5 prompt=bad")
        stream = subprocess.run(["cat", daemon.path("tasks", str(good), "stream")], capture_output=True,
                                timeout=20, check=True)
        assert len(stream.stdout.split()) == 40 and daemon.status(good)["Exit"] == "done"
        assert daemon.status(bad)["Exit"].startswith("failed: driver bug: TypeError at <string>:")
        row = health_rows(daemon)[1]
        assert row.startswith("Bug:\tdriver.openai.job: TypeError at <string>:")
        assert "(once, last at " in row and row.endswith("; its task failed)")
        assert daemon.proc.poll() is None
