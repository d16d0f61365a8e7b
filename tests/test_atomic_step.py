"""Tier 2 (and the kernel's part, tier 1): a bug raised in the middle of a kernel step loses nothing and
applies nothing twice (stepbugs.py, rollback.py), no FUSE.

The fault seam is the kernel's own components: a test makes one method the step calls raise for one task,
as a bug in it would (`faulty`), at several points of the step: before and after the task's text is
appended, in its charge, its KV growth, and after every chunk was served (rekey, a bug no one task's). The
runtime rolls the kernel back to its journal and goes on: the task the bug is tied to fails naming it, the
others' chunks are served once; the journal holds exactly that (a Failed row, a step without the chunk),
and the kernel replayed from it is the live one, field for field.
"""
import functools
import json
import tempfile
from pathlib import Path

import hypothesis
import pytest
from hypothesis import strategies as st

from apeinxfs.kernel.events import Chunk, Step, Submit
from apeinxfs.kernel.moves import ServeBug
from apeinxfs.kernel.reclaim import Reclaim
from apeinxfs.kernel.runqueue import RunQueue
from apeinxfs.kernel.task import TaskSpec
from apeinxfs.kernel.tenancy import Tenancy
from apeinxfs.kernel.trace import TraceLog
from kernel_state import state_difference
from test_journal_runtime import open_runtime, submit
from test_snapshots import archived_runtime, daemon_like, snapshot

# (owner, method, index of the task among its arguments after self, which calls): where a bug in a step may raise
SEAMS = {
    "first token line": (TraceLog, "emit", 2, lambda _, kind, *__: kind == "first_token"),  # before its text is added
    "metering": (Tenancy, "meter_serve", 0, None),  # after its text and tokens are counted
    "charge": (RunQueue, "charge", 0, None),
    "kv growth": (Reclaim, "grow_kv", 0, None),
}
PLACES = {**SEAMS,  # and where else a bug in a step may raise:
          "rekey": (RunQueue, "rekey", 0, None),  # after every chunk was served: no one task's
          "gone": (Tenancy, "gone", 0, None)}  # ending a task, which its Failed does too


def faulty(monkeypatch, seam: str, pid: int, times: int = 1_000_000) -> None:
    """Make the seam's method raise RuntimeError when called for task `pid`, its first `times` calls so. Each
    test's first step is the first to serve `pid`: a replay of the rows before it meets no fault, as it would
    meet no bug."""
    owner, method, where, which = PLACES[seam]
    real, raised = getattr(owner, method), []

    @functools.wraps(real)  # its name the method's: a bound method of it pickles so (rollback.py)
    def failing(self, *args, **kwargs):
        task = args[where]
        if getattr(task, "pid", None) == pid and (which is None or which(*args)) and len(raised) < times:
            raised.append(pid)
            raise RuntimeError(f"a bug in {method}")
        return real(self, *args, **kwargs)
    monkeypatch.setattr(owner, method, failing)


def started(rt, count: int) -> list[int]:
    """Submit `count` tasks of 50 tokens (dispatched at once: 8 slots)."""
    return [submit(rt, name=f"t{index}", tokens=50) for index in range(count)]


def last_seq(rt) -> int:
    """The seq of the journal's last row, the steps waiting journaled first."""
    rt.journal.flush()
    return max(row[0] for row in rt.journal.rows())


def journaled_after(rt, seq: int) -> list:
    """The journal's rows after `seq`, as (kind, body): the steps waiting journaled first."""
    rt.journal.flush()
    return [(kind, json.loads(body)) for row_seq, _, kind, body in rt.journal.rows() if row_seq > seq]


def replayed_difference(rt) -> str:
    """How the kernel replayed from the runtime's journal differs from its live one ('': not at all), each having
    told what changed (as the daemon's kernel always has after an event); not their versions, the render cache's
    key, which a rollback moves past both kernels' (stepbugs.py)."""
    rt.journal.flush()
    replayed = rt.rebuilt(rt.journal.rows, dict(rt.quarantined))[0]
    replayed.take_changed()
    replayed.version = rt.kernel.version
    rt.kernel.take_changed()
    return state_difference(rt.kernel, replayed)


def step_chunks(body) -> list[int]:
    """The pids of the chunks of a steps row's one step."""
    [[_, _, chunks]] = body
    return [chunk[0] for chunk in chunks]


@pytest.mark.parametrize("seam", sorted(SEAMS))
def test_the_kernel_names_the_task_whose_chunk_a_bug_was_raised_serving(tmp_path, monkeypatch, seam):
    """Kernel tier: a raise at each point of serving task 2's chunk leaves the step as a ServeBug naming task 2,
    the bug its cause; a raise after the chunks were served leaves it as itself (no one task's)."""
    with open_runtime(tmp_path) as rt:
        pids = started(rt, 3)
        with monkeypatch.context() as patch:
            faulty(patch, seam, pids[1])
            with pytest.raises(ServeBug) as raised:
                rt.kernel.apply(Step(gpu=0, chunks=[Chunk(pid, "z", 1) for pid in pids]), rt.kernel.now_us + 1)
        assert raised.value.pid == pids[1] and isinstance(raised.value.__cause__, RuntimeError)
    (tmp_path / "b").mkdir()
    with open_runtime(tmp_path / "b") as rt:  # a kernel the raise above did not leave half changed
        pids = started(rt, 3)
        faulty(monkeypatch, "rekey", pids[0])
        with pytest.raises(RuntimeError, match="a bug in rekey"):
            rt.kernel.apply(Step(gpu=0, chunks=[Chunk(pid, "z", 1) for pid in pids]), rt.kernel.now_us + 1)


@pytest.mark.parametrize("seam", sorted(SEAMS))
def test_a_bug_serving_one_chunk_fails_its_task_and_serves_the_others_once(tmp_path, monkeypatch, seam):
    """A raise at each point of serving task 2's chunk: the kernel is as if the step had come without it and
    task 2 failed naming the bug; tasks 1 and 3 have their text once; the journal says so and replays to it."""
    with open_runtime(tmp_path) as rt:
        pids = started(rt, 3)
        seq = last_seq(rt)
        faulty(monkeypatch, seam, pids[1])
        rt.deliver(Step(gpu=0, chunks=[Chunk(pid, f"<{pid}>", 1) for pid in pids]))
        tasks = rt.kernel.tasks
        assert [tasks[pid].output.decode() for pid in pids[::2]] == [f"<{pid}>" for pid in pids[::2]]
        assert [tasks[pid].tokens_out for pid in pids[::2]] == [1, 1]
        assert tasks[pids[1]].exit.startswith("failed: kernel bug: RuntimeError at ")
        rows = journaled_after(rt, seq)
        assert [kind for kind, _ in rows] == ["steps", "failed"] and step_chunks(rows[0][1]) == pids[::2]
        assert rt.supervisor.bugs["kernel.step"].outcome == "its task failed"
        monkeypatch.undo()
        assert replayed_difference(rt) == ""


def test_the_rollback_keeps_the_objects_the_tree_and_the_drivers_hold(tmp_path, monkeypatch):
    """After a rollback the kernel, its trace and audit rings, its KV prefix caches and its tasks are the objects
    they were (the tree and the drivers' jobs hold them), holding the state after: the trace ring the tree reads
    has the failed task's exit line, the task the driver holds has its text."""
    with open_runtime(tmp_path) as rt:
        pids = started(rt, 3)
        kernel = rt.kernel
        held = [kernel.trace, kernel.audit, *kernel.kv.caches, *(kernel.tasks[pid] for pid in pids)]
        seq = kernel.trace.seq
        faulty(monkeypatch, "charge", pids[1])
        rt.deliver(Step(gpu=0, chunks=[Chunk(pid, "v", 1) for pid in pids]))
        now = [kernel.trace, kernel.audit, *kernel.kv.caches, *(kernel.tasks[pid] for pid in pids)]
        assert rt.kernel is kernel and all(before is after for before, after in zip(held, now, strict=True))
        assert f",exit,{pids[1]},".encode() in held[0].lines_after(seq) and b"kernel bug" in held[0].lines_after(seq)
        assert held[-1].output == b"v"


def test_a_bug_no_one_tasks_is_tried_again_once_then_fails_the_steps_tasks(tmp_path, monkeypatch):
    """A raise after every chunk was served (re-ordering the served tenants) every time: the step is rolled back,
    tried once more, rolled back again, and each of its tasks fails naming the bug; no chunk was kept. A chunk of
    a task not on the GPU (the ninth, queued: 8 slots), which the step skips, fails nothing."""
    with open_runtime(tmp_path) as rt:
        *pids, queued = started(rt, 9)
        pids = pids[:3]
        faulty(monkeypatch, "rekey", pids[0])
        rt.deliver(Step(gpu=0, chunks=[Chunk(pid, "x", 1) for pid in [*pids, queued]]))
        tasks = [rt.kernel.tasks[pid] for pid in pids]
        assert [(task.output, task.tokens_out) for task in tasks] == [(b"", 0)] * 3
        assert all(task.exit.startswith("failed: kernel bug: RuntimeError at ") for task in tasks)
        assert rt.kernel.tasks[queued].exit is None
        bug = rt.supervisor.bugs["kernel.step"]
        assert (bug.times, bug.outcome) == (2, "its step's tasks failed")
        monkeypatch.undo()
        assert replayed_difference(rt) == ""


def test_a_bug_no_one_tasks_that_does_not_come_again_loses_nothing(tmp_path, monkeypatch):
    """A raise after every chunk was served, once: the step's second try serves every chunk once."""
    with open_runtime(tmp_path) as rt:
        pids = started(rt, 3)
        faulty(monkeypatch, "rekey", pids[0], times=1)
        rt.deliver(Step(gpu=0, chunks=[Chunk(pid, "x", 1) for pid in pids]))
        assert [rt.kernel.tasks[pid].output for pid in pids] == [b"x"] * 3
        assert rt.supervisor.bugs["kernel.step"].outcome == "its step tried again"
        monkeypatch.undo()
        assert replayed_difference(rt) == ""


@hypothesis.settings(max_examples=20, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(count=st.integers(1, 5), data=st.data())
def test_a_raise_at_any_chunk_leaves_the_step_without_it(monkeypatch, count, data):
    """Whatever the chunk and the point its serving raises at, the journal holds the step without that chunk and
    its task's Failed, the tasks end as those leave them, and the journal replays to the live kernel."""
    bad = data.draw(st.integers(0, count - 1))
    seam = data.draw(st.sampled_from(sorted(SEAMS)))
    tokens = data.draw(st.lists(st.integers(1, 49), min_size=count, max_size=count))  # none ends its task
    with tempfile.TemporaryDirectory() as directory, open_runtime(Path(directory)) as rt:
        pids = started(rt, count)
        seq = last_seq(rt)
        with monkeypatch.context() as patch:
            faulty(patch, seam, pids[bad])
            rt.deliver(Step(gpu=0, chunks=[Chunk(pid, "y" * n, n) for pid, n in zip(pids, tokens)]))
        others = pids[:bad] + pids[bad + 1:]
        rows = journaled_after(rt, seq)  # the step without the bad chunk, if it had others, then the Failed
        assert [kind for kind, _ in rows] == ["steps"] * bool(others) + ["failed"]
        assert not others or step_chunks(rows[0][1]) == others
        for index, pid in enumerate(pids):
            task = rt.kernel.tasks[pid]
            if index == bad:
                assert (task.output, task.exit.split(":")[0]) == (b"", "failed")
            else:
                assert (task.output, task.tokens_out) == (b"y" * tokens[index], tokens[index])
        assert replayed_difference(rt) == ""


def test_the_rollback_starts_from_the_newest_snapshot(tmp_path, monkeypatch):
    """With snapshots kept and the rows before the newest compacted away, the rollback rebuilds the kernel from
    it: task 2 fails, the others have their text once, and the journal replays to the live kernel."""
    rt = daemon_like(tmp_path)
    try:
        pids = started(rt, 3)
        snapshot(rt)
        submit(rt, name="between")
        snapshot(rt)  # the second: the rows before the first are compacted away
        assert rt.journal.first_seq() > 1
        faulty(monkeypatch, "charge", pids[1])
        rt.deliver(Step(gpu=0, chunks=[Chunk(pid, "w", 1) for pid in pids]))
        assert [rt.kernel.tasks[pid].output for pid in pids[::2]] == [b"w", b"w"]
        assert rt.kernel.tasks[pids[1]].exit.startswith("failed: kernel bug: RuntimeError at ")
        monkeypatch.undo()
        assert replayed_difference(rt) == ""
    finally:
        rt.close()


def test_a_rollback_leaves_the_lines_of_the_steps_waiting_out_of_the_archive(tmp_path, monkeypatch):
    """A rollback while an applied step (its first-token line) waits to be journaled archives none of its lines:
    they go with its row, as without a bug, or a kill -9 between leaves the archive ahead of the journal."""
    rt = archived_runtime(tmp_path)
    try:
        rt.commit([Submit(spec=TaskSpec(name="job", max_tokens=3, prompt="hi"), uid=0)])
        journaled = rt.archive.seq
        [task] = rt.kernel.batch(0)
        rt.progress(Step(gpu=0, chunks=[Chunk(pid=task.pid, text=" w", tokens=1, prefill=5)]))
        faulty(monkeypatch, "rekey", task.pid, times=1)
        rt.progress(Step(gpu=0, chunks=[Chunk(pid=task.pid, text=" x", tokens=1)]))
        assert rt.supervisor.bugs["kernel.step"].outcome == "its step tried again"
        assert rt.journal.deferred_since_us is not None and rt.archive.seq == journaled
        rt._flush_progress(rt.clock.now_us())
        assert rt.archive.seq == rt.kernel.trace.seq
    finally:
        rt.close()
