"""Tier 3-4: a real daemon writes snapshots and compacts its journal; kill -9 and restart keep its state.

The daemon snapshots every 200 rows or second (`[retention] snapshot_rows`, `snapshot_s`),
so a few hundred tasks through the mount compact its journal. After a kill -9 it restarts
from a snapshot with the same tasks, bills and trace, and `apeinxfs replay --verify`
passes from the snapshots; with every snapshot damaged it refuses to start, saying why.
"""
import os
import sqlite3
import subprocess

import pytest

from daemon import APEINXFS, FAST_CONFIG, Daemon, poll_until
from test_verify_mount import exited, replay_verify, run_mixed

pytestmark = pytest.mark.mount

SNAPSHOTTING = FAST_CONFIG + "\n[retention]\nsnapshot_rows = 200\nsnapshot_s = 1\n"


def first_row(state) -> int:
    with sqlite3.connect(os.path.join(state, "journal.db")) as db:
        return db.execute("SELECT min(seq) FROM journal").fetchone()[0]


def snapshot_files(state) -> list[str]:
    directory = os.path.join(state, "snapshots")
    return sorted(os.listdir(directory)) if os.path.isdir(directory) else []


def read(daemon: Daemon, *path) -> str:
    with open(daemon.path(*path)) as file:
        return file.read()


def seen(daemon: Daemon, pids) -> dict:
    """What a user sees of the run: every task's status, the bills, the trace."""
    return {"status": {pid: daemon.status(pid) for pid in pids}, "billing": read(daemon, "billing"),
            "trace": read(daemon, "trace", "events")}


def compacted_run(daemon: Daemon, state: str, tasks: int) -> int:
    """Two rounds of `tasks` mixed tasks, each until all have exited and a snapshot followed: the journal is
    compacted behind the first snapshot. How many tasks were submitted."""
    submitted = 0
    for snapshots in (1, 2):
        submitted += run_mixed(daemon, submitted, tasks)
        poll_until(lambda: exited(daemon) == submitted, 120, "every task exits")
        poll_until(lambda: len(snapshot_files(state)) == snapshots, 90, f"snapshot {snapshots}")
    poll_until(lambda: first_row(state) > 1, 90, "a compacted journal")
    return submitted


def test_kill9_and_restart_from_a_snapshot_keep_the_state(tmp_path):
    """Snapshots compact the journal; after kill -9 the restart shows the same tasks, bills and trace, a new
    task runs, and replay --verify passes from the snapshots."""
    state = str(tmp_path / "state")
    daemon = Daemon(tmp_path / "ai", state, SNAPSHOTTING).start()
    try:
        submitted = compacted_run(daemon, state, 200)
        before = seen(daemon, range(1, submitted + 1))
        daemon.kill9()
        daemon.start()
        after = seen(daemon, range(1, submitted + 1))
        assert after["status"] == before["status"] and after["billing"] == before["billing"]
        assert after["trace"].startswith(before["trace"])
        pid = daemon.submit("after 3 5")
        poll_until(lambda: daemon.status(pid)["State"].startswith("Z"), 30, "a new task ends")
    finally:
        daemon.stop()
    verified = replay_verify(state)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("OK: ") and "replayed from snapshot-" in verified.stdout
    listing = subprocess.run(APEINXFS + ["replay", state], capture_output=True, text=True, timeout=120)
    assert listing.stdout.startswith(before["trace"])


def test_no_usable_snapshot_after_compaction_refuses_to_start(tmp_path):
    """Every snapshot truncated after compaction: the daemon does not mount, and its log says why."""
    state = str(tmp_path / "state")
    daemon = Daemon(tmp_path / "ai", state, SNAPSHOTTING).start()
    try:
        compacted_run(daemon, state, 100)
    finally:
        daemon.stop()
    for name in snapshot_files(state):
        os.truncate(os.path.join(state, "snapshots", name), 64)
    with pytest.raises(RuntimeError, match=r"journal rows 1\.\.\d+ were compacted into snapshots .* none can be used"):
        daemon.start()
