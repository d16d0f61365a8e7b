"""Tier 2: a bug that a task's Failed meets again (stepbugs.py `_fail`): the task is stuck, its chunks dropped;
the journal so left verifies (`replay --verify`, the bug still in the code), and the tasks the rollback ended
are woken. No FUSE."""
import pytest

from apeinxfs import verify
from apeinxfs.journal import Journal
from apeinxfs.kernel.events import Chunk, Step
from test_atomic_step import faulty, replayed_difference, started
from test_journal_runtime import open_runtime


def verified(tmp_path) -> str:
    """What `replay --verify` says of the runtime's journal, closed, in the code as it is (bugs and all)."""
    return str(verify.verify(Journal(str(tmp_path / "state" / "journal.db"), readonly=True)))


def test_a_stuck_tasks_journal_verifies_with_the_bug_still_there(tmp_path, monkeypatch):
    """Task 2's Failed meets its bug again: the journal, with a step after, verifies (its Failed row quarantined
    in the replay as in memory), the bug still in the code."""
    with open_runtime(tmp_path) as rt:
        pids = started(rt, 3)
        faulty(monkeypatch, "charge", pids[1])
        faulty(monkeypatch, "gone", pids[1])
        with pytest.raises(RuntimeError, match="a bug in gone"):
            rt.deliver(Step(gpu=0, chunks=[Chunk(pid, "u", 1) for pid in pids]))
        rt.deliver(Step(gpu=0, chunks=[Chunk(pid, "v", 1) for pid in pids]))
        rt.journal.flush_all()
    assert "DIVERGED" not in verified(tmp_path)


def test_one_failed_that_raises_leaves_the_steps_other_tasks_failed_live_and_verified(tmp_path, monkeypatch):
    """A bug no one task's fails the step's 3 tasks; the first's Failed meets a bug: only it is stuck, the others
    end live as in the replay, and the journal verifies."""
    with open_runtime(tmp_path) as rt:
        pids = started(rt, 3)
        faulty(monkeypatch, "rekey", pids[0])
        faulty(monkeypatch, "gone", pids[0])
        with pytest.raises(RuntimeError):
            rt.deliver(Step(gpu=0, chunks=[Chunk(pid, "u", 1) for pid in pids]))
        assert [rt.kernel.tasks[pid].exit is None for pid in pids] == [True, False, False]
        assert rt.step_bugs.stuck == {pids[0]}
        assert replayed_difference(rt) == ""
        rt.journal.flush_all()
    assert "DIVERGED" not in verified(tmp_path)


def test_the_tasks_the_rollback_fails_are_woken(tmp_path, monkeypatch):
    """Tasks 2 and 3 end in the rollback after task 1's Failed met its bug: whoever waits on them is woken, and
    the GPU's driver (its key) and /ai/health."""
    with open_runtime(tmp_path) as rt:
        pids = started(rt, 3)
        woken: set = set()
        wake = rt.notifier.wake
        monkeypatch.setattr(rt.notifier, "wake", lambda keys: (woken.update(keys), wake(keys)))
        faulty(monkeypatch, "rekey", pids[0])
        faulty(monkeypatch, "gone", pids[0])
        with pytest.raises(RuntimeError):
            rt.deliver(Step(gpu=0, chunks=[Chunk(pid, "u", 1) for pid in pids]))
        ended = {pid for pid in pids if rt.kernel.tasks[pid].exit}
        assert ended == set(pids[1:]) and ended | {("gpu", 0), "health"} <= woken


def test_a_step_of_only_a_stuck_tasks_chunks_is_not_applied_or_journaled(tmp_path, monkeypatch):
    """After task 1's Failed met its bug, a step with only its chunk is dropped whole: no step counted, none
    waiting to be journaled."""
    with open_runtime(tmp_path) as rt:
        pids = started(rt, 2)
        faulty(monkeypatch, "charge", pids[0])
        faulty(monkeypatch, "gone", pids[0])
        with pytest.raises(RuntimeError, match="a bug in gone"):
            rt.deliver(Step(gpu=0, chunks=[Chunk(pid, "u", 1) for pid in pids]))
        rt.journal.flush()
        steps = rt.kernel.counters.steps
        rt.deliver(Step(gpu=0, chunks=[Chunk(pids[0], "v", 1)]))
        assert rt.kernel.counters.steps == steps and rt.journal.deferred_since_us is None
