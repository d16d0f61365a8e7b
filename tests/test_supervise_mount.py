"""Tier 3: a real daemon whose trace archive compressor meets a bug stays up, and says so in /ai/health.

No input is known today that makes one of the daemon's loops raise (the etcd pids that did are mended),
so the fault is injected at the one place it would come from: the daemon is started through a launcher
(`python -c LAUNCH`, then apeinxfs.cli's main, as `python -m apeinxfs.cli` does) that makes the
archive's `Archive.compress_full` raise ValueError in its first two calls, as a bug in it would. The
compressor runs at start, so the loop fails at once, is restarted after 1 s and 2 s, then works.
"""
import subprocess
import sys

import pytest

from daemon import FUSE_READY, Daemon, poll_until

pytestmark = [pytest.mark.mount, pytest.mark.skipif(not FUSE_READY, reason="needs /dev/fuse and fusermount3")]

LAUNCH = """
import sys
from apeinxfs import archive
from apeinxfs.cli import main
real, calls = archive.Archive.compress_full, []
def compress_full(self):
    calls.append(self.directory)
    if len(calls) <= 2:
        raise ValueError("a bug in the compressor")
    real(self)
archive.Archive.compress_full = compress_full
sys.exit(main())
"""


class FaultyArchiveDaemon(Daemon):
    """A real daemon started through LAUNCH: its archive compressor fails twice, then works."""

    def command(self) -> list[str]:
        return [sys.executable, "-c", LAUNCH, *super().command()[3:]]


def health_rows(daemon: Daemon) -> list[str]:
    with open(daemon.path("health")) as file:
        return file.read().splitlines()


def test_a_loop_that_fails_is_restarted_and_the_daemon_and_its_files_go_on(tmp_path):
    """The compressor fails twice: the daemon keeps its mount, /ai/health has its Bug row (2 times),
    the log has the traceback, and a task submitted afterwards runs to its end and reads whole."""
    with FaultyArchiveDaemon(tmp_path / "ai", tmp_path / "state") as daemon:
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
