"""Tier 3-4: a real daemon whose state directory is a 3 MB tmpfs that fills up.

Submits through the mount until one gets ENOSPC; reads answer throughout; /health says
why; running tasks pause; once the tmpfs is remounted larger the daemon resumes by itself
(same process), a submit works, every acknowledged pid is there, and after unmounting
`apeinxfs replay --verify` passes. Needs root (mount -t tmpfs); the tmpfs is always unmounted.
"""
import errno
import os
import subprocess
import time

import pytest

from apeinxfs.verify import open_journal, rebuilt
from daemon import APEINXFS, Daemon, poll_until

pytestmark = [pytest.mark.mount, pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")]

PROMPT = "fill " * 800  # 4 kB a submit: the tmpfs fills after a few hundred


@pytest.fixture
def small_state(tmp_path):
    """A 3 MB tmpfs at tmp_path/state, unmounted after the test whatever happens."""
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(state)], check=True)
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], check=True)


def submit(daemon: Daemon, line: str) -> int:
    """One write(2) of `line` to ctl/submit; the pid replied, or OSError."""
    fd = os.open(daemon.path("ctl", "submit"), os.O_RDWR)
    try:
        os.write(fd, line.encode() + b"\n")
        return int(os.read(fd, 64))
    finally:
        os.close(fd)


def reads_answer(daemon: Daemon) -> dict:
    """cat meminfo, ls tasks and cat health with the real tools; the health file as a dict."""
    for argv in (["cat", daemon.path("memory", "meminfo")], ["ls", daemon.path("tasks")]):
        subprocess.run(argv, check=True, capture_output=True, timeout=10)
    shown = subprocess.run(["cat", daemon.path("health")], check=True, capture_output=True, text=True, timeout=10)
    return dict(line.split(":\t", 1) for line in shown.stdout.splitlines())


def fill_up(path) -> None:
    """Take what space the tmpfs has left, so the daemon cannot recover until it grows."""
    try:
        with open(path, "wb") as filler:
            while True:
                filler.write(b"\0" * 4096)
                filler.flush()
    except OSError as exc:
        assert exc.errno == errno.ENOSPC


def tokens_out(daemon: Daemon, pid: int) -> int:
    return int(daemon.status(pid)["TokensOut"])


def submit_until_refused(daemon: Daemon, acked: list, prompt: str = PROMPT) -> OSError:
    """Submit, adding each pid to `acked`, until a submit fails; reads must answer meanwhile."""
    while len(acked) < 5000:
        try:
            acked.append(submit(daemon, f'name=s{len(acked)} max_tokens=3 prompt="{prompt}"'))
        except OSError as exc:
            return exc
        if len(acked) % 50 == 0:
            assert reads_answer(daemon)["State"] in ("ok", "degraded")  # a step may fill it first
    raise AssertionError("the 3 MB tmpfs never filled")


def degraded_and_paused(daemon: Daemon, pid: int) -> int:
    """Task `pid`'s tokens, seen not to move for 1.5 s while /health said degraded (ENOSPC) at both
    ends with the same Since: a retry that fits into space SQLite freed may end an episode early."""
    for _ in range(5):
        health, tokens = reads_answer(daemon), tokens_out(daemon, pid)
        time.sleep(1.5)
        if reads_answer(daemon) == health and health["State"] == "degraded":
            assert health["Errno"] == "ENOSPC" and "database or disk is full" in health["Reason"]
            assert int(health["Since"]) > 0 and tokens_out(daemon, pid) == tokens
            return tokens
    raise AssertionError("never degraded for 1.5 s on end")


def test_a_full_state_dir_degrades_and_recovers_without_restart(small_state, tmp_path):
    """ENOSPC for the submit that fills the disk and those after; reads work; tasks pause; remounted
    larger, it resumes by itself; nothing acknowledged is lost and replay --verify passes."""
    daemon = Daemon(tmp_path / "ai", small_state).start()
    try:
        long_task = submit(daemon, "name=long max_tokens=30000")
        acked = [long_task]
        assert submit_until_refused(daemon, acked).errno == errno.ENOSPC
        fill_up(small_state / "filler")
        assert submit_until_refused(daemon, acked, prompt="small").errno == errno.ENOSPC
        paused = degraded_and_paused(daemon, long_task)
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_state)], check=True)
        poll_until(lambda: reads_answer(daemon)["State"] == "ok", 15, "the daemon recovers by itself")
        acked.append(submit(daemon, "name=after max_tokens=3"))
        poll_until(lambda: tokens_out(daemon, long_task) > paused, 15, "the long task runs again")
        listed = set(map(int, subprocess.run(["ls", daemon.path("tasks")], check=True, capture_output=True,
                                             text=True).stdout.split()))
        assert set(acked) <= listed and daemon.proc.poll() is None
        with open(daemon.path("trace", "events")) as trace:
            types = [line.split(",")[2] for line in trace]
        assert types.count("degraded") == types.count("recovered") >= 1  # more than one if a retry fitted for a while
    finally:
        daemon.stop()
    assert "bug in" not in (small_state / "daemon.log").read_text()  # no request ended in EIO
    verified = subprocess.run(APEINXFS + ["replay", "--verify", str(small_state)], capture_output=True, text=True,
                              timeout=120)
    assert verified.returncode == 0 and verified.stdout.startswith("OK:"), verified.stdout + verified.stderr
    journal = open_journal(str(small_state))
    try:
        assert set(acked) <= rebuilt(journal).tasks.keys()  # what a restart would have
    finally:
        journal.close()


def test_a_daemon_stopped_while_degraded_restarts_with_everything_acknowledged(small_state, tmp_path):
    """Unmounted while the disk is full, the daemon exits cleanly; on a larger disk a new one has every
    acknowledged task, takes submits, and replay --verify passes."""
    daemon = Daemon(tmp_path / "ai", small_state).start()
    acked = []
    try:
        assert submit_until_refused(daemon, acked).errno == errno.ENOSPC
        fill_up(small_state / "filler")
    finally:
        daemon.stop()
    assert daemon.proc.returncode == 0
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_state)], check=True)
    with Daemon(tmp_path / "ai", small_state) as again:
        listed = set(map(int, os.listdir(again.path("tasks"))))
        assert set(acked) <= listed and reads_answer(again)["State"] == "ok"
        acked.append(submit(again, "name=after max_tokens=3"))
    verified = subprocess.run(APEINXFS + ["replay", "--verify", str(small_state)], capture_output=True, text=True,
                              timeout=120)
    assert verified.returncode == 0 and verified.stdout.startswith("OK:"), verified.stdout + verified.stderr
