"""Tier 2: a journal row whose apply raises is quarantined at recovery, not replayed into a crash.

The row is crafted through the journal codec (a step naming a GPU that does not exist,
which `Kernel.check` now refuses, appended without a check, as a bug or an edited file
would leave it): the daemon starts with the rest of its state, traces `quarantine` with
the reason, starts the same way again, and `apeinxfs replay --verify` reports the row.
"""
import json
import sqlite3

import pytest

from apeinxfs import verify
from apeinxfs.kernel.errors import Invalid
from apeinxfs.kernel.events import Chunk, Kill, Step, Submit, Tick
from apeinxfs.kernel.spec import TaskSpec
from test_journal_runtime import open_runtime, submit


def crash_after_bad_row(tmp_path) -> tuple[list[int], int]:
    """A first boot submits two tasks, then a row that cannot apply is journaled unchecked; (pids, its seq)."""
    with open_runtime(tmp_path) as first:
        pids = [submit(first, "a"), submit(first, "b")]
        (seq,) = first.journal.append([(first.clock.now_us(), Step(gpu=99, chunks=[]))])
    return pids, seq


def quarantine_lines(rt) -> list[str]:
    return [line for line in rt.kernel.trace.buffer.decode().splitlines() if ",quarantine," in line]


def test_recovery_quarantines_the_row_and_keeps_the_rest(tmp_path):
    """The restart quarantines the row (a trace line with the reason), keeps both tasks, takes new
    writes, and the next start does the same."""
    pids, seq = crash_after_bad_row(tmp_path)
    with open_runtime(tmp_path) as second:
        second.recover()
        assert list(second.quarantined) == [seq] and "IndexError" in second.quarantined[seq].reason
        assert set(pids) <= second.kernel.tasks.keys()
        (line,) = quarantine_lines(second)
        assert f"journal row {seq} (steps) skipped: IndexError" in line
        second.commit([Kill(pid=pids[0], uid=1000)])
    with open_runtime(tmp_path) as third:
        third.recover()
        assert list(third.quarantined) == [seq] and len(quarantine_lines(third)) == 1
        assert third.kernel.tasks[pids[0]].exit == "killed" and not third.kernel.tasks[pids[1]].done


def test_verify_reports_the_quarantined_row_and_passes(tmp_path, capsys):
    """replay --verify replays as recovery did, matches every traced row, and names the quarantined one."""
    _, seq = crash_after_bad_row(tmp_path)
    with open_runtime(tmp_path) as second:
        second.recover()
    assert verify.main(["--verify", str(tmp_path / "state")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: ") and f"QUARANTINED journal row {seq} (steps, time_us " in out
    assert verify.main(["--verify", "--json", str(tmp_path / "state")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and len(report["quarantined"]) == 1 and "IndexError" in report["quarantined"][0]


def test_a_traced_row_that_no_longer_applies_diverges(tmp_path):
    """A row the daemon applied and traced, edited afterwards into one that raises, diverges: no quarantine."""
    with open_runtime(tmp_path) as rt:
        submit(rt, "a")
        rt.commit([Tick()])
        seq = rt.journal.last_seq
    with sqlite3.connect(tmp_path / "state" / "journal.db") as db:
        db.execute("UPDATE journal SET body = ? WHERE seq = ?", ('{"when": 1}', seq))
    journal = verify.open_journal(str(tmp_path / "state"))
    report = verify.verify(journal)
    journal.close()
    assert report.divergence.seq == seq and report.divergence.got.startswith("TypeError")
    assert report.quarantined == []


def test_a_caller_id_past_its_system_type_is_refused_by_the_event():
    """No path can make an event for a uid past uid_t or a pid past pid_t: the record refuses it."""
    spec = TaskSpec(name="a", max_tokens=1)
    for fields in ({"uid": 2 ** 64}, {"uid": 2 ** 32 - 1}, {"uid": -1}, {"caller_pid": 2 ** 31}):
        with pytest.raises(Invalid, match="is not an id"):
            Submit(spec=spec, **fields)


def test_a_journaled_uid_past_uid_t_is_quarantined_and_the_tasks_stay(tmp_path):
    """A submit row holding uid 2**64 (journaled before ids were bounded) is quarantined at recovery, its task
    left out, so every task left has an owner the mount can show and the other tasks stay."""
    with open_runtime(tmp_path) as first:
        kept = submit(first, "kept")
        huge = submit(first, "huge")
        seq = first.journal.last_seq
    with sqlite3.connect(tmp_path / "state" / "journal.db") as db:
        (body,) = db.execute("SELECT body FROM journal WHERE seq = ?", (seq,)).fetchone()
        db.execute("UPDATE journal SET body = ? WHERE seq = ?", (json.dumps({**json.loads(body), "uid": 2 ** 64}), seq))
    with open_runtime(tmp_path) as second:
        second.recover()
        assert list(second.quarantined) == [seq] and "Invalid: uid 18446744073709551616" in second.quarantined[seq].reason
        assert kept in second.kernel.tasks and huge not in second.kernel.tasks
        assert all(0 <= task.uid < 2 ** 32 - 1 for task in second.kernel.tasks.values())


def test_a_steps_row_journaled_with_a_whole_float_count_replays_with_both_tasks_text(tmp_path):
    """A steps row whose count reads 2.0 (as journaled before counts were checked to be ints) replays, not
    quarantined: both tasks of the step keep their text, the count an int."""
    with open_runtime(tmp_path) as first:
        pids = [submit(first, "a"), submit(first, "b")]
        first.commit([Step(gpu=0, chunks=[Chunk(pid=pids[0], text=" x", tokens=2), Chunk(pid=pids[1], text=" y", tokens=1)])])
        seq = first.journal.last_seq
    with sqlite3.connect(tmp_path / "state" / "journal.db") as db:
        [[body]] = db.execute("SELECT body FROM journal WHERE seq = ?", (seq,)).fetchall()
        steps = json.loads(body)
        steps[0][2][0][2] = 2.0
        db.execute("UPDATE journal SET body = ? WHERE seq = ?", (json.dumps(steps), seq))
    with open_runtime(tmp_path) as second:
        second.recover()
        tasks = [second.kernel.tasks[pid] for pid in pids]
        assert second.quarantined == {} and [t.output for t in tasks] == [b" x", b" y"]
        assert type(tasks[0].tokens_out) is int and tasks[0].tokens_out == 2
