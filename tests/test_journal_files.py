"""Tiers 1-2: the journal's files deleted or replaced under the runtime, and a start whose journal lost rows.

A commit looks whether journal.db and its -wal are still the files the journal opened
(journal.py): deleted ones are written back from the open connection, so every row is in
a file at the path again (read here through a connection of its own, as a start after
kill -9 would); another file in the journal's place makes the runtime degraded (EIO) until
it is moved away. At start, a snapshot of a row past the journal's last is used and rows
go on after it (compaction.py), the trace archive kept whole. No FUSE here
but the last test, which deletes a mounted daemon's journal with rm (tier 3-4; test_redteam4.py's D1
test too).
"""
import contextlib
import errno
import glob
import logging
import os
import sqlite3
import subprocess
import sys

import pytest

from apeinxfs import health, snapshots
from apeinxfs.archive import Archive
from apeinxfs.compaction import CannotStart
from apeinxfs.journal import Journal, Unreadable, compact
from apeinxfs.journalfiles import SetAside
from apeinxfs.kernel.errors import Degraded
from apeinxfs.kernel.events import Chunk, Restart, Step, Submit
from apeinxfs.kernel.task import State, TaskSpec
from apeinxfs.kernel.state import decode, encode
from daemon import Daemon, sim_config
from kernel_state import state_difference
from test_journal_runtime import open_runtime, submit
from test_snapshots import archived_runtime, daemon_like, restarted, verified, work


def on_disk(path) -> list:
    """The events of the journal at `path`, read through a connection of its own."""
    journal = Journal(str(path), readonly=True)
    try:
        return [event for _, _, event in journal.replay()]
    finally:
        journal.db.close()


def names(events: list) -> list:
    return [event.spec.name if type(event) is Submit else type(event).__name__ for event in events]


def remove(pattern: str) -> None:
    for path in glob.glob(pattern):
        os.unlink(path)


def health_of(rt) -> dict:
    return dict(line.split(":\t") for line in health.show(rt.health).splitlines())


@pytest.mark.parametrize("deleted", ["journal.db*", "journal.db", "journal.db-wal"])
def test_a_journal_deleted_under_the_runtime_is_written_back_with_every_row(tmp_path, caplog, deleted):
    """Its files (all, or the -wal alone) unlinked: the next commit writes the journal back at its path, with
    the rows committed before, and goes there; health stays ok."""
    with open_runtime(tmp_path) as rt:
        path = rt.journal.path
        submit(rt, name="before")
        remove(os.path.join(os.path.dirname(path), deleted))
        with caplog.at_level(logging.WARNING, logger="apeinxfs.journal"):
            submit(rt, name="after")
        assert names(on_disk(path)) == ["before", "after"]
        assert health_of(rt)["State"] == "ok" and "was deleted or moved away under the daemon" in caplog.text
        submit(rt, name="later")
        assert names(on_disk(path)) == ["before", "after", "later"]
        assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_journal_replaced_under_the_runtime_refuses_writes_until_it_is_moved_away(tmp_path):
    """Another file at the journal's path: commits are refused with EIO naming the journal, /health says why;
    once it is moved away the probe's retry writes the journal back and journals the episode."""
    with open_runtime(tmp_path) as rt:
        path = rt.journal.path
        submit(rt, name="before")
        sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE other (x)")
        os.replace(tmp_path / "other.db", path)
        for _ in range(2):  # the commit that found it, then one refused while degraded
            with pytest.raises(Degraded) as caught:
                submit(rt, name="refused")
            assert caught.value.errno == errno.EIO
        status = health_of(rt)
        assert status["State"] == "degraded" and status["Errno"] == "EIO"
        assert f"the journal {path} was replaced under the daemon by another file" in status["Reason"]
        assert not rt.health.recover(rt.kernel, rt.journal, rt.clock.now_us())  # still there: still refused
        os.rename(path, tmp_path / "moved.db")
        assert rt.health.recover(rt.kernel, rt.journal, rt.clock.now_us())
        submit(rt, name="after")
        assert names(on_disk(path)) == ["before", "JournalFailed", "JournalRecovered", "after"]
        moved = sqlite3.connect(tmp_path / "moved.db")
        assert moved.execute("SELECT name FROM sqlite_master").fetchall() == [("other",)]  # not written to


def running_task(rt) -> int:
    """The pid of a task just submitted and given its first step: running on gpu 0 (work()'s have ended)."""
    pid = submit(rt, name="long", tokens=100)
    task = rt.kernel.tasks[pid]
    rt.commit([Step(gpu=0, chunks=[Chunk(pid=pid, text=" w", tokens=1, prefill=5)])])
    assert task.state is State.RUNNING
    return pid


def test_a_start_uses_a_snapshot_past_an_emptied_journal_and_numbers_rows_after_it(tmp_path, caplog):
    """Journal files deleted while the daemon was stopped: the start uses the snapshot of row S written at
    unmount (it holds every acknowledged write), says which rows were lost, keeps the trace archive whole,
    requeues what ran (the restart), and journals the next rows from S + 1, which `replay --verify` then checks from that snapshot."""
    rt = archived_runtime(tmp_path)
    work(rt, 2)
    running = running_task(rt)
    tasks, trace_seq = sorted(rt.kernel.tasks), rt.kernel.trace.seq
    rt.snapshotter.close()
    seq = rt.snapshotter.seq
    rt.close()
    remove(str(tmp_path / "state" / "journal.db*"))
    again = daemon_like(tmp_path)
    again.archive = Archive(str(tmp_path / "state" / "trace"), 1 << 20)
    with caplog.at_level(logging.WARNING):
        again.recover()
    assert sorted(again.kernel.tasks) == tasks and again.journal.first_seq() == seq + 1
    assert f"ended at row 0, before snapshot-" in caplog.text and f"rows 1..{seq} were lost" in caplog.text
    warning = f"Warning:\tthe journal {again.journal.path} ended at row 0, before snapshot-"
    assert warning in health.show(again.health, snapshotter=again.snapshotter)  # not only in the log
    assert "ahead of the journal" not in caplog.text and again.archive.seq > trace_seq
    assert f",requeue,{running}," in again.kernel.trace.lines_after(trace_seq).decode()  # the restart requeued it
    pid = submit(again, name="next")
    assert [boot.after_row for boot in again.journal.boots()] == [seq]
    last = restarted(tmp_path, again)
    assert sorted(last.kernel.tasks) == tasks + [pid]
    last.close()
    again.archive.close()
    report = verified(tmp_path)
    assert report.divergence is None and report.checked == report.events > 0, str(report)


def test_a_start_uses_a_snapshot_past_an_older_copy_of_the_journal(tmp_path):
    """journal.db put back from an older copy while the daemon was stopped: the start uses the newer snapshot
    rather than the older copy's rows, which go (no gap is left), holds the state the daemon had, and
    `replay --verify` passes."""
    rt = daemon_like(tmp_path)
    work(rt, 1)
    older = sqlite3.connect(tmp_path / "older.db")
    rt.journal.db.backup(older)
    older.close()
    work(rt, 1)
    expected = decode(encode(rt.kernel))
    rt.snapshotter.close()
    rt.close()
    remove(str(tmp_path / "state" / "journal.db*"))
    os.replace(tmp_path / "older.db", tmp_path / "state" / "journal.db")
    again = restarted(tmp_path, rt)
    expected.apply(Restart(), again.clock_us)
    expected.take_changed()
    assert state_difference(expected, again.kernel) == ""
    seq = snapshots.Snapshot.read(snapshots.paths(again.snapshotter.directory)[0]).seq
    assert (again.journal.first_seq(), again.journal.last_seq) == (seq + 1, seq + 1)  # the older rows went
    again.close()
    report = verified(tmp_path)
    assert report.divergence is None and report.checked == report.events > 0, str(report)


def test_a_runtime_closed_while_its_journal_was_replaced_sets_its_rows_aside(tmp_path, caplog):
    """Stopped while another file holds the journal's path: the close fails as the commits did, and the
    journal's committed rows are in journal.db.displaced, said in the log; the other file is left as it is."""
    with pytest.raises(Degraded, match="replaced under the daemon"):
        with open_runtime(tmp_path) as rt:
            path = rt.journal.path
            submit(rt, name="kept")
            sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE other (x)")
            os.replace(tmp_path / "other.db", path)
    assert names(on_disk(path + ".displaced")) == ["kept"] and f"are in {path}.displaced" in caplog.text
    assert sqlite3.connect(path).execute("SELECT name FROM sqlite_master").fetchall() == [("other",)]


@pytest.mark.mount
def test_writes_after_rm_of_a_mounted_daemons_journal_survive_kill_9(tmp_path):
    """`rm journal.db*` under a mounted daemon, a submit, kill -9, a restart: both tasks are there, and /health
    said ok meanwhile (the journal was written back, as the log says)."""
    with Daemon(tmp_path / "ai", tmp_path / "state", sim_config(100)) as daemon:
        first = daemon.submit("name=before max_tokens=1000")
        subprocess.run(["sh", "-c", 'rm "$1"/journal.db*', "sh", daemon.state_dir], check=True)
        second = daemon.submit("name=after max_tokens=1000")
        with open(daemon.path("health")) as file:
            health_then, log_then = file.read(), daemon.log_tail()
        daemon.kill9()
        daemon.start()
        assert {str(first), str(second)} <= set(os.listdir(daemon.path("tasks"))), daemon.log_tail()
        assert health_then == "State:\tok\n" and "was deleted or moved away under the daemon: written back" in log_then



def test_compaction_and_readers_work_in_a_state_directory_whose_path_has_uri_characters(tmp_path):
    """A state directory named with `#`, `?` and `%`: compaction deletes the rows behind `upto` in its journal
    (its URI quotes the path) and a read-only reader reads it, leaving no stray file beside the directory."""
    base = tmp_path / "st#a?t%41e"
    base.mkdir()
    with open_runtime(base) as rt:
        path = rt.journal.path
        for number in range(3):
            submit(rt, name=f"job{number}")
    compact(path, 2)
    assert names(on_disk(path)) == ["job2"]
    assert sorted(os.listdir(tmp_path)) == ["st#a?t%41e"]


def test_compaction_of_a_deleted_journal_creates_no_file(tmp_path):
    """Compaction running after journal.db was deleted fails, and leaves no empty journal at the path (where
    the daemon's write-back would then find another file in its journal's place)."""
    with open_runtime(tmp_path) as rt:
        path = rt.journal.path
        submit(rt, name="job")
        remove(path + "*")
        with pytest.raises(sqlite3.OperationalError):
            compact(path, 1)
        assert not os.path.exists(path)


def test_a_journal_deleted_between_the_look_and_the_commit_is_written_back_with_that_row(tmp_path):
    """`rm journal.db*` while a commit's INSERT is being prepared (after a look made before it would have seen
    the files in place): the row acknowledged is in the journal at the path, written back after the commit."""
    with open_runtime(tmp_path) as rt:
        path = rt.journal.path
        submit(rt, name="before")

        def rm_while_inserting(action, table, *_):
            if action == sqlite3.SQLITE_INSERT and table == "journal":
                remove(path + "*")
            return sqlite3.SQLITE_OK
        rt.journal.db.set_authorizer(rm_while_inserting)
        submit(rt, name="during")
        assert names(on_disk(path)) == ["before", "during"]


def replaced_then_killed(tmp_path) -> list[int]:
    """In a child: a runtime works, journal.db is replaced (mv) by an older copy, a submit is refused, and the
    child dies as kill -9 would (no close); the pids acknowledged before."""
    child = os.fork()
    if child == 0:
        try:
            rt = daemon_like(tmp_path)
            work(rt, 1)
            older = sqlite3.connect(tmp_path / "older.db")
            rt.journal.db.backup(older)
            older.close()
            acked = [submit(rt, name=f"acked{number}") for number in range(3)]
            (tmp_path / "acked").write_text(" ".join(map(str, acked)))
            os.replace(tmp_path / "older.db", rt.journal.path)
            with contextlib.suppress(Degraded):
                submit(rt, name="refused")
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    return [int(pid) for pid in (tmp_path / "acked").read_text().split()]


def test_a_journal_replaced_then_killed_is_set_aside_and_the_start_says_so(tmp_path):
    """journal.db replaced (mv) under the runtime, which then dies: its rows were set aside when the other file
    was first seen and its -wal taken from beside it (which reads whole); the start refuses naming
    journal.db.displaced and what to do, and done so, holds every acknowledged task."""
    acked = replaced_then_killed(tmp_path)
    path = str(tmp_path / "state" / "journal.db")
    assert names(on_disk(path)) == ["job", "job", "Step", "Step", "Step", "Tick"]  # the older copy, no -wal on top
    with pytest.raises(SetAside, match=f"{path}.displaced: the rows of a daemon .* move {path}.displaced to {path}"):
        daemon_like(tmp_path)
    remove(path)
    remove(path + "-*")
    os.rename(path + ".displaced", path)
    again = daemon_like(tmp_path)
    again.recover()
    assert set(acked) <= set(again.kernel.tasks)
    again.close()


def test_a_second_set_aside_never_overwrites_the_first(tmp_path):
    """A journal.db.displaced already beside the journal: a replacement sets the rows aside in
    journal.db.displaced.2, leaving the first as it was."""
    with open_runtime(tmp_path) as rt:
        path = rt.journal.path
        submit(rt, name="kept")
        with open(path + ".displaced", "wb") as first:
            first.write(b"an earlier episode's rows")
        sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE other (x)")
        os.replace(tmp_path / "other.db", path)
        with pytest.raises(Degraded, match=f"the daemon's rows are in {path}.displaced.2"):
            submit(rt, name="refused")
        assert names(on_disk(path + ".displaced.2")) == ["kept"]
        assert open(path + ".displaced", "rb").read() == b"an earlier episode's rows"
        os.replace(path, tmp_path / "moved.db")


def test_a_damaged_journal_at_start_is_unreadable_naming_it(tmp_path):
    """A journal whose pages were overwritten (malformed, found reading the rows): the start raises Unreadable
    naming the file and SQLite's words, not a bare DatabaseError."""
    with open_runtime(tmp_path) as rt:
        path = rt.journal.path
        for number in range(200):
            submit(rt, name=f"job{number}", prompt="x" * 200)
    with open(path, "r+b") as file:
        file.seek(4096 * 3)
        file.write(b"\xff" * 4096 * 4)
    with pytest.raises(Unreadable, match=f"cannot read the journal {path}: .*malformed"):
        daemon_like(tmp_path).recover()  # found at its first write (boot) or reading the rows


def write_back_killed(tmp_path, whole: bool) -> str:
    """A state directory as a kill -9 during a write-back leaves it: journal.db gone, its copy in
    journal.db.restore (whole, or half written); the journal's path."""
    with open_runtime(tmp_path) as rt:
        path = rt.journal.path
        submit(rt, name="kept")
        copy = sqlite3.connect(path + ".restore")
        rt.journal.db.backup(copy)
        copy.close()
    if not whole:
        os.truncate(path + ".restore", 1024)
    remove(path)
    remove(path + "-*")
    return path


def test_a_whole_copy_a_killed_write_back_left_is_used_at_start(tmp_path, caplog):
    """journal.db.restore whole and no journal.db: the start uses it, saying so in the log."""
    path = write_back_killed(tmp_path, whole=True)
    with caplog.at_level(logging.WARNING, logger="apeinxfs.journal"):
        journal = Journal(path)
    assert names([event for _, _, event in journal.replay()]) == ["kept"] and not os.path.exists(path + ".restore")
    assert "did not finish" in caplog.text
    journal.close()


@pytest.mark.parametrize("beside", [False, True])
def test_a_start_refuses_a_copy_a_killed_write_back_left_half_or_beside_a_journal(tmp_path, beside):
    """journal.db.restore half written, or beside a journal.db: the start refuses, naming it and what to do."""
    path = write_back_killed(tmp_path, whole=beside)
    if beside:
        sqlite3.connect(path).close()
    with pytest.raises(SetAside, match=f"{path}.restore: .*move it to {path} to start from it, or delete it"):
        Journal(path)


def test_a_start_refuses_a_snapshot_of_another_history_than_the_journal(tmp_path):
    """A journal started afresh beside the snapshots (as a start that ignored them once did), grown past the
    snapshot's row: the start refuses, naming both files, rather than replay that journal's rows onto it."""
    rt = daemon_like(tmp_path)
    work(rt, 2)
    rt.snapshotter.close()
    seq = rt.snapshotter.seq
    rt.close()
    remove(str(tmp_path / "state" / "journal.db*"))
    with open_runtime(tmp_path) as fresh:
        for number in range(seq + 1):
            submit(fresh, name=f"new{number}")
    again = daemon_like(tmp_path)
    with pytest.raises(CannotStart, match=f"snapshot-{seq:012d}.snap was written after another journal row {seq} "
                                          f"than {again.journal.path} holds .* different histories"):
        again.recover()
    again.close()


@pytest.mark.mount
def test_a_mount_beside_rows_set_aside_refuses_naming_them(tmp_path):
    """The mount command refuses a state directory holding journal.db.displaced, naming it and what to do."""
    acked = replaced_then_killed(tmp_path)
    assert acked
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    done = subprocess.run([sys.executable, "-m", "apeinxfs.cli", str(mountpoint), "--state-dir",
                           str(tmp_path / "state")], capture_output=True, text=True, timeout=60)
    displaced = os.path.join("state", "journal.db.displaced")
    assert done.returncode == 1 and f"{displaced}: the rows of a daemon" in done.stderr, done.stderr
    assert "to start from them, move" in done.stderr


def test_a_write_back_that_fails_is_tried_again_at_the_next_commit(tmp_path):
    """journal.db* deleted and the write-back's copy refused (a directory where it goes): the submit is refused
    (Degraded) and not journaled; once the way is clear the next submit writes the journal back, every row in it."""
    with open_runtime(tmp_path) as rt:
        path = rt.journal.path
        submit(rt, name="before")
        remove(path + "*")
        os.mkdir(path + ".restore")
        with pytest.raises(Degraded, match="the journal cannot be written"):
            submit(rt, name="refused")
        os.rmdir(path + ".restore")
        assert rt.health.recover(rt.kernel, rt.journal, rt.clock.now_us())
        submit(rt, name="after")
        assert names(on_disk(path)) == ["before", "JournalFailed", "JournalRecovered", "after"]


def test_a_journal_deleted_after_its_last_commit_is_written_back_at_close(tmp_path):
    """journal.db* deleted when no commit follows (nothing pending, as with no trace rows kept): the close writes
    the journal back, every row in it."""
    path = str(tmp_path / "journal.db")
    journal = Journal(path)
    journal.append([(1, Submit(spec=TaskSpec(name="last", max_tokens=5), uid=1))])
    remove(path + "*")
    journal.close()
    assert names(on_disk(path)) == ["last"]
