"""Tier 3-4: batched progress rows and the trace archive on a real daemon, through kill -9.

A daemon with small archive files streams a long task; it is killed with SIGKILL mid-stream
and started again on the same state directory: the text read before the crash is a prefix
of the final output, the task ends `done`, `apeinxfs replay --verify` passes, and `zgrep`
finds pid 1's `submit` line among the compressed files of STATE_DIR/trace/, each line once.
"""
import glob
import os
import subprocess

import pytest

from daemon import FAST_CONFIG, Daemon
from test_verify_mount import replay_verify

pytestmark = pytest.mark.mount

SMALL_FILES = FAST_CONFIG + "[retention]\ntrace_file_bytes = 2048\n"


def read_some(path: str, least: int) -> bytes:
    """Read `path` (a stream) until at least `least` bytes came."""
    text = b""
    with open(path, "rb", buffering=0) as stream:
        while len(text) < least:
            text += stream.read(256)
    return text


def zgrep(pattern: str, state, *options: str) -> list[str]:
    files = sorted(glob.glob(os.path.join(state, "trace", "*")))
    done = subprocess.run(["zgrep", "-h", *options, "-E", pattern, *files], capture_output=True, text=True,
                          timeout=30)
    return done.stdout.splitlines()


def test_kill9_mid_stream_then_restart_finishes_the_text_and_keeps_the_archive(tmp_path):
    """The streamed text survives as a prefix of the final output, the archive holds every line once,
    compressed files included, and the journal verifies."""
    state = tmp_path / "state"
    daemon = Daemon(tmp_path / "ai", state, SMALL_FILES).start()
    try:
        for index in range(20):  # enough lines to fill a few archive files
            daemon.submit(f"name=short{index} max_tokens=4")
        pid = daemon.submit('name=long max_tokens=3000 prompt="a long stream"')
        seen = read_some(daemon.path("tasks", str(pid), "stream"), 4000)
        daemon.kill9()
        daemon.start()
        with open(daemon.path("tasks", str(pid), "wait")) as wait:
            assert wait.read().strip() == "done"
        with open(daemon.path("tasks", str(pid), "output"), "rb") as output:
            final = output.read()
        with open(daemon.path("trace", "events"), "rb") as events:
            trace = events.read().splitlines()[1:]
    finally:
        daemon.stop()
    assert final.startswith(seen) and len(final) > len(seen)
    verified = replay_verify(state)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    [submit] = zgrep(r"^1,[0-9]+,submit,1,", str(state))
    assert zgrep(r"^1,[0-9]+,submit,1,", str(state), "-l") == [str(state / "trace" / "events-000000000001.csv.gz")]
    assert submit.encode() == trace[0]
    archived = [line.encode() for line in zgrep(r"^[0-9]+,", str(state))]
    assert archived == trace


def test_unmount_and_restart_keep_one_archive_without_duplicates(tmp_path):
    """A clean stop, a restart and more tasks: seqs in the archive run 1, 2, 3... with no gap or repeat."""
    state = tmp_path / "state"
    for round_ in range(2):
        with Daemon(tmp_path / "ai", state) as daemon:
            pids = [daemon.submit(f"name=r{round_}t{index} max_tokens=8") for index in range(10)]
            for pid in pids:
                with open(daemon.path("tasks", str(pid), "wait")) as wait:
                    assert wait.read().strip() == "done"
    seqs = [int(line.split(",", 1)[0]) for line in zgrep(r"^[0-9]+,", str(state))]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 40
    verified = replay_verify(state)
    assert verified.returncode == 0 and f"; {len(seqs)} lines of the trace archive identical" in verified.stdout
