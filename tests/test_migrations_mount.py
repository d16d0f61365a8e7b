"""Tier 3-4: a real daemon starts from a snapshot of the previous release, its journal compacted behind it.

The state directory is built as the previous release (7958f78) leaves it: a daemon with
queued tasks of two models stops (its last snapshot is written at unmount), the journal is
compacted behind that snapshot (journal.compact, as the daemon does), and the snapshot is
written again as that release wrote it: its run queue without `_models` (and its moves without
`backfill_after_us`), its header with the
release's layout (tests/data/layout-7958f78.json). The daemon starts from it, migrated, with
its invariants checked: the tasks are there (`cat` of their status), the trace says what was
migrated, a new task runs to its end, and `apeinxfs replay --verify` passes.
"""
import os
import pathlib
import sqlite3
import subprocess

import pytest

from apeinxfs import snapshots
from apeinxfs.journal import compact
from apeinxfs.kernel.state import decode
from daemon import Daemon, poll_until
from test_migrations import PREVIOUS
from test_migrations import as_previous_release as encoded_as_previous_release
from test_verify_mount import replay_verify

pytestmark = pytest.mark.mount

MODELS_AB = """
[gpus]
simulated = 1
slots = 1
[[models]]
name = "a"
[models.options]
decode_step_ms = 20
[[models]]
name = "b"
[models.options]
decode_step_ms = 20
[retention]
snapshot_rows = 100000
snapshot_s = 3600
"""


def shell(command: str) -> str:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True, timeout=30).stdout


def as_previous_release(state: str) -> int:
    """Compact the journal behind the newest snapshot and write that snapshot again as 7958f78 wrote it;
    its row."""
    snapshot = snapshots.Snapshot.read(snapshots.paths(os.path.join(state, "snapshots"))[0])
    compact(os.path.join(state, "journal.db"), snapshot.seq)
    snapshots.write(os.path.dirname(snapshot.path), snapshot.seq, snapshot.time_us, snapshot.trace_seq,
                    snapshot.config, PREVIOUS, encoded_as_previous_release(decode(snapshot.state())))
    return snapshot.seq


def first_row(state: str) -> int:
    with sqlite3.connect(os.path.join(state, "journal.db")) as db:
        return db.execute("SELECT min(seq) FROM journal").fetchone()[0]


def test_a_daemon_starts_from_a_previous_release_snapshot(tmp_path):
    """Rows compacted behind a snapshot of the previous release's layout: the daemon starts from it migrated,
    its queued tasks are there, the trace names the migration, a new task runs, replay --verify passes."""
    state = str(tmp_path / "state")
    daemon = Daemon(tmp_path / "ai", state, MODELS_AB).start()
    try:
        pids = [daemon.submit(f"name=long{n} model={model} max_tokens=5000") for n, model in enumerate("abba")]
    finally:
        daemon.stop()
    row = as_previous_release(state)
    assert first_row(state) == row > 1
    daemon.start()
    try:
        for pid, model in zip(pids, "abba"):
            status = shell(f"cat {daemon.path('tasks', str(pid), 'status')}")
            assert f"Model:\t{model}\n" in status and "State:\tZ" not in status
        start = f"snapshot-{row:012d}.snap (row {row})"
        classes = ("config.KernelConfig, counters.Counters, events.Adopt, events.Rejected, events.Submit, "
                   "ledger.TokenLedger, memory.KVManager, moves.Moves, runqueue.RunQueue, sched.FairQueue, "
                   "submits.SubmitChecks, task.Task, tasktable.TaskTable, trace.TraceLog")
        assert f"{start} was written by an older apeinxfs; migrated: {classes}" in \
            shell(f"grep -h ',migrate,' {daemon.path('trace', 'events')}")
        assert f"{start} was written by an older apeinxfs: migrated {classes}" in \
            pathlib.Path(state, "daemon.log").read_text()
        shell(" ".join(f"echo {pid} > {daemon.path('ctl', 'kill')};" for pid in pids))
        pid = int(shell(f"echo 'name=after model=b max_tokens=3' | tee {daemon.path('ctl', 'submit')} >/dev/null; "
                        f"ls {daemon.path('tasks')} | sort -n | tail -1"))
        assert pid > max(pids)
        poll_until(lambda: daemon.status(pid)["State"].startswith("Z"), 30, "the new task ends")
    finally:
        daemon.stop()
    verified = replay_verify(state)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"replayed from snapshot-{row:012d}.snap (row {row})" in verified.stdout
