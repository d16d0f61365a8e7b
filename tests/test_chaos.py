"""Acknowledged writes survive kill -9 and SIGTERM at random moments (docs/apeinxfs.5.md, Durability).

A short run of tests/chaosrun.py through a real mount: writer processes submit, kill and
re-prioritise while the daemon is ended at seeded random moments (a snapshot being written
among them) and started again; each round every acknowledged write is checked against the
trace archive, with /health and the daemon's invariants, and at the end `replay --verify`. bench/chaos.py
runs the same for many rounds. The checker itself is tested first on made-up records.
"""
import logging
import os

import pytest

from apeinxfs import archive, mount
from apeinxfs.kernel.events import Chunk, Step, Submit
from apeinxfs.kernel.task import TaskSpec
from chaosrun import UNACKNOWLEDGED, Acknowledged, Kept, acknowledged, behind, kept, logged_problems, losses, run
from test_snapshots import archived_runtime, daemon_like

ROUNDS = 4


def archive_of(*rows: bytes) -> Kept:
    held = Kept()
    for row in rows:
        held.add(row)
    return held


HELD = archive_of(b'1,5,submit,1,default,sim,,local,"name=w0-0 max_tokens=2 prio=5 uid=0"\n',
                  b'2,6,submit,2,default,sim,,local,"name=w0-1 max_tokens=2 prio=5 uid=0"\n',
                  b'3,7,prio,2,default,sim,,local,"prio=7 weight=1600"\n',
                  b'4,8,exit,2,default,sim,,local,"killed; by uid 0"\n')


def acked(*lines: str) -> Acknowledged:
    found = Acknowledged()
    for line in lines:
        found.add(line)
    return found


def test_the_checker_passes_what_the_archive_holds():
    """Submits with their pids (or a reply lost), a kill that ended its task, a prio line: no loss."""
    assert losses(acked("submit w0-0 1", f"submit w0-1 {UNACKNOWLEDGED}", "kill 2", "prio 2 7"), HELD) == []


@pytest.mark.parametrize("record", ["submit w0-2 3", "submit w0-1 1", "kill 1", "prio 2 3"])
def test_the_checker_names_each_acknowledged_write_the_archive_lacks(record):
    """A submit missing or with another pid, a kill whose task did not end killed, a prio with no line."""
    assert len(losses(acked(record), HELD)) == 1


def test_the_checker_names_a_pid_given_twice_and_a_gap_in_seq():
    """Two submits of one pid, and a seq skipped, are each a problem."""
    held = archive_of(b'1,5,submit,1,default,sim,,local,"name=a max_tokens=2"\n',
                      b'3,6,submit,1,default,sim,,local,"name=b max_tokens=2"\n')
    assert len(losses(acked(), held)) == 2


@pytest.mark.mount
@pytest.mark.parametrize("seed", [1, 2])
def test_acknowledged_writes_survive_random_kills(tmp_path, seed):
    """ROUNDS daemon ends at random moments under 3 writers: nothing acknowledged lost, health clean each round,
    `replay --verify` clean at the end (each round it would take most of the test's time)."""
    with open(tmp_path / "rounds.txt", "w") as out:
        tally = run(str(tmp_path / "run"), seed, ROUNDS, writers=3, verify_every=ROUNDS + 1, out=out)
    assert tally.problems == []
    assert tally.rounds == ROUNDS and tally.checked > 100


# -- findings of the soak, each checked where it happens ------------------------------------------------------------

def test_an_engine_steps_lines_reach_the_archive_only_once_journaled(tmp_path):
    """A step that emits a trace line (a first token) is applied at once and journaled a scheduling round later:
    its lines go to the archive only with its row, so a kill -9 between cannot leave the archive ahead of the
    journal (bench/chaos.py seed 7: "archive ... ahead of the journal (seq 18115 > 18112)" after a kill -9)."""
    rt = archived_runtime(tmp_path)
    rt.commit([Submit(spec=TaskSpec(name="job", max_tokens=3, prompt="hi"), uid=0)])
    journaled = rt.archive.seq
    [task] = rt.kernel.batch(0)
    rt.progress(Step(gpu=0, chunks=[Chunk(pid=task.pid, text=" w", tokens=1, prefill=5)]))
    assert rt.kernel.trace.seq > journaled and rt.journal_due  # its first_token line, its row due
    assert rt.archive.seq == journaled
    rt._flush_progress(rt.clock.now_us())  # what _progress_timer does a round later
    assert rt.archive.seq == rt.kernel.trace.seq
    rt.close()


def runtime_with_a_line_waiting(tmp_path):
    """An archived runtime whose engine step emitted a trace line (a first token) that is not journaled yet."""
    rt = archived_runtime(tmp_path)
    rt.commit([Submit(spec=TaskSpec(name="job", max_tokens=3, prompt="hi"), uid=0)])
    [task] = rt.kernel.batch(0)
    rt.progress(Step(gpu=0, chunks=[Chunk(pid=task.pid, text=" w", tokens=1, prefill=5)]))
    assert rt.archive.seq < rt.kernel.trace.seq
    return rt


def test_a_snapshots_header_archives_the_lines_it_journals(tmp_path):
    """The snapshot's header journals the steps waiting and archives their lines: the progress timer, finding
    nothing waiting after it, would leave them out of the archive on an idle daemon (review of the soak)."""
    rt = runtime_with_a_line_waiting(tmp_path)
    rt.snapshotter.header()
    assert rt.journal.deferred_since_us is None and rt.archive.seq == rt.kernel.trace.seq
    rt.close()


def test_the_journals_close_at_unmount_archives_the_lines_it_journals(tmp_path):
    """At unmount the journal's close journals the steps waiting and their lines reach the archive before it
    closes: "all of them are in the trace archive" after a clean unmount (review of the soak)."""
    rt = runtime_with_a_line_waiting(tmp_path)
    mount.close_journal(rt)
    assert rt.archive.seq == rt.kernel.trace.seq
    assert archive.last_seq_in(b"".join(rt.archive.lines()), 0, rt.archive.directory) == rt.kernel.trace.seq
    rt.close()


def test_a_file_compressed_while_the_archive_is_read_is_read_from_its_gz(tmp_path):
    """archive.lines lists the files, then opens each: one gzipped between (the daemon compresses full files in a
    thread) is read from its .gz, not skipped (bench/chaos.py seed 7: a file's acknowledged submits missing from
    a read beside the daemon, there again at the next)."""
    for first, text in ((1, b"1,a\n2,b\n"), (3, b"3,c\n4,d\n")):
        (tmp_path / archive.file_name(first)).write_bytes(archive.HEADER + text)
    reading = archive.lines(str(tmp_path))
    assert next(reading) == b"1,a\n"
    archive.compress(str(tmp_path / archive.file_name(3)))
    assert list(reading) == [b"2,b\n", b"3,c\n", b"4,d\n"]


def submitted(rt, name: str) -> int:
    [pid] = rt.commit([Submit(spec=TaskSpec(name=name, max_tokens=3, prompt="hi"), uid=0)])
    return pid


def test_the_checker_names_a_restart_that_lost_rows_kept_in_compressed_files(tmp_path, caplog):
    """A restart whose journal lacks acknowledged rows, their lines in .gz files (a start cannot cut them), shows
    seqs 1..N and every acknowledged submit: the daemon's trace seq behind the archive's last, and the start's
    "ahead of the journal" warning once new lines took those seqs, are each a problem (review of the soak)."""
    trace, log = str(tmp_path / "state" / "trace"), tmp_path / "w0"
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    before = daemon_like(tmp_path / "a")
    before.archive = archive.Archive(trace, 1)  # every commit fills a file: all but the newest get compressed
    with open(log, "w") as file:
        for i in range(6):
            file.write(f"submit w0-{i} {submitted(before, f'w0-{i}')}\n")
            before.archive.compress_full()
    before.close()
    after = daemon_like(tmp_path / "b")  # the restart: its journal holds the first 3 of the 6 acknowledged rows
    after.archive = archive.Archive(trace, 1)
    for i in range(3):
        submitted(after, f"w0-{i}")
    after.archive.seq = archive.Archive(trace, 1).seq
    with caplog.at_level(logging.WARNING):
        after.archive.catch_up(after.kernel.trace)
    held = kept(str(tmp_path / "state"))
    assert losses(acknowledged({str(log): os.path.getsize(log)}), held) == []  # the loss the checker missed
    assert len(behind(held, after.kernel.trace.seq)) == 1
    for i in range(3):
        submitted(after, f"w1-{i}")  # pids 4..6 again, at seqs the archive already has: skipped
    assert behind(kept(str(tmp_path / "state")), after.kernel.trace.seq) == []
    assert len(logged_problems(caplog.text)) == 1
    after.close()


def test_the_checker_names_the_logs_bugs_and_nothing_else():
    """A broken invariant, a traceback and the archive ahead of the journal are problems; other lines are not."""
    text = ("INFO mounted\nERROR InvariantError: slots\nTraceback (most recent call last):\n"
            "WARNING archive /s/trace ahead of the journal (seq 9 > 6): cutting the lines after it\nINFO done\n")
    assert len(logged_problems(text)) == 3
