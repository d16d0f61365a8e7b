"""Tier 2: a bug that a task's Failed meets again (stepbugs.py `_end`): the task is stuck, its chunks dropped;
memory and journal agree, the journal so left verifies (`replay --verify`, the bug still in the code), and the
tasks the step's bug fails are ended and woken. No FUSE."""
import pytest

from apeinxfs import verify
from apeinxfs.journal import Journal
from apeinxfs.kernel.events import Chunk, Step
from test_atomic_step import faulty, replayed_difference, started
from test_journal_runtime import open_runtime


def stuck(rt, monkeypatch, seam: str, count: int) -> list[int]:
    """Start `count` tasks, make `seam` raise for the first and its Failed meet a bug (ending it: `gone`), and
    deliver a step of a chunk "u" for each: the bug raises out of it. The tasks' pids."""
    pids = started(rt, count)
    faulty(monkeypatch, seam, pids[0])
    faulty(monkeypatch, "gone", pids[0])
    with pytest.raises(RuntimeError, match="a bug in gone"):
        rt.deliver(Step(gpu=0, chunks=[Chunk(pid, "u", 1) for pid in pids]))
    return pids


def verified(tmp_path) -> str:
    """What `replay --verify` says of the runtime's journal as written, in the code as it is (bugs and all)."""
    return str(verify.verify(Journal(str(tmp_path / "state" / "journal.db"), readonly=True)))


def test_a_bug_that_the_tasks_failure_meets_again_leaves_memory_and_journal_agreeing(tmp_path, monkeypatch):
    """A bug serving task 1's chunk that its Failed meets again (ending it): the others' chunks are served once,
    the bug raises out of the step (the deliverer's loop is restarted, supervise.py), task 1 runs on, and the
    Failed row, journaled, is quarantined in memory as in a replay: the two agree, and the journal verifies with
    the bug still there. The Bug row says so once known, and task 1's later chunks are dropped, so the next step
    serves the others with no bug."""
    with open_runtime(tmp_path) as rt:
        pids = stuck(rt, monkeypatch, "charge", 3)
        assert [rt.kernel.tasks[pid].output for pid in pids] == [b"", b"u", b"u"]
        assert rt.kernel.tasks[pids[0]].exit is None and len(rt.quarantined) == 1
        bug = rt.supervisor.bugs["kernel.step"]
        assert bug.outcome == "its tasks' Failed met it again: their chunks are dropped"
        rt.deliver(Step(gpu=0, chunks=[Chunk(pid, "v", 1) for pid in pids]))
        assert [rt.kernel.tasks[pid].output for pid in pids] == [b"", b"uv", b"uv"]
        assert rt.supervisor.bugs["kernel.step"] == bug
        rt.journal.flush_all()
        assert "DIVERGED" not in verified(tmp_path)
        monkeypatch.undo()
        assert replayed_difference(rt) == ""


def test_one_failed_that_raises_leaves_the_steps_other_tasks_failed_live_and_verified(tmp_path, monkeypatch):
    """A bug no one task's fails the step's 3 tasks; the first's Failed meets a bug: only it is stuck, the others
    end live as in the replay, and the journal verifies."""
    with open_runtime(tmp_path) as rt:
        pids = stuck(rt, monkeypatch, "rekey", 3)
        assert [rt.kernel.tasks[pid].exit is None for pid in pids] == [True, False, False]
        assert rt.step_bugs.stuck == {pids[0]}
        assert replayed_difference(rt) == ""
        rt.journal.flush_all()
    assert "DIVERGED" not in verified(tmp_path)


def test_the_tasks_the_rollback_fails_are_woken(tmp_path, monkeypatch):
    """Tasks 2 and 3 end after task 1's Failed met its bug: whoever waits on them is woken, and the GPU's driver
    (its key) and /ai/health."""
    with open_runtime(tmp_path) as rt:
        woken: set = set()
        wake = rt.notifier.wake
        monkeypatch.setattr(rt.notifier, "wake", lambda keys: (woken.update(keys), wake(keys)))
        pids = stuck(rt, monkeypatch, "rekey", 3)
        ended = {pid for pid in pids if rt.kernel.tasks[pid].exit}
        assert ended == set(pids[1:]) and ended | {("gpu", 0), "health"} <= woken


def test_a_step_of_only_a_stuck_tasks_chunks_is_not_applied_or_journaled(tmp_path, monkeypatch):
    """After task 1's Failed met its bug, a step with only its chunk is dropped whole: no step counted, none
    waiting to be journaled."""
    with open_runtime(tmp_path) as rt:
        pids = stuck(rt, monkeypatch, "charge", 2)
        rt.journal.flush()
        steps = rt.kernel.counters.steps
        rt.deliver(Step(gpu=0, chunks=[Chunk(pids[0], "v", 1)]))
        assert rt.kernel.counters.steps == steps and rt.journal.deferred_since_us is None
