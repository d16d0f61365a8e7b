"""Tier 3: a real daemon whose trace archive compressor meets a bug stays up, and says so in /ai/health;
one whose driver meets a bug (a task not supervised) ends, and its log says why.

No input is known today that makes one of the daemon's loops raise (the etcd pids that did are mended),
so the fault is injected at the one place it would come from: the daemon is started through a launcher
(`python -c`, then apeinxfs.cli's main, as `python -m apeinxfs.cli` does) that makes one method raise
ValueError in its first two calls, as a bug in it would: `Archive.compress_full`, which the compressor
runs at start (so the loop fails at once, is restarted after 1 s and 2 s, then works), or the sim
driver's `plan`, which its serve loop calls for each step.
"""
import errno
import subprocess
import sys

import pytest

from daemon import FUSE_READY, Daemon, poll_until

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


class FaultyDaemon(Daemon):
    """A real daemon started through LAUNCH: `module.cls.method` fails in its first two calls, then works."""

    def __init__(self, tmp_path, module: str, cls: str, method: str):
        super().__init__(tmp_path / "ai", tmp_path / "state")
        self.launch = LAUNCH.format(module=module, cls=cls, method=method)

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.launch, *super().command()[3:]]


def health_rows(daemon: Daemon) -> list[str]:
    with open(daemon.path("health")) as file:
        return file.read().splitlines()


def test_a_loop_that_fails_is_restarted_and_the_daemon_and_its_files_go_on(tmp_path):
    """The compressor fails twice: the daemon keeps its mount, /ai/health has its Bug row (2 times),
    the log has the traceback, and a task submitted afterwards runs to its end and reads whole."""
    with FaultyDaemon(tmp_path, "apeinxfs.archive", "Archive", "compress_full") as daemon:
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


def test_a_bug_in_a_task_not_supervised_ends_the_daemon_and_its_log_says_why(tmp_path):
    """The sim driver's step planning fails: the daemon exits (a driver's tasks are not restarted), and the
    log has a critical line with the traceback, where it would otherwise be lost with stderr."""
    with FaultyDaemon(tmp_path, "apeinxfs.drivers.sim", "SimDriver", "plan") as daemon:
        try:
            daemon.submit("max_tokens=5 prompt=bug")
        except OSError as exc:  # the bug may end the daemon before the reply is read: the mount is gone
            assert exc.errno == errno.ENOTCONN, exc
        poll_until(lambda: daemon.proc.poll() is not None, 20, "the daemon to end")
        log = (tmp_path / "state" / "daemon.log").read_text()
        assert "CRITICAL a bug ended the daemon" in log and "ValueError: a bug in plan" in log
