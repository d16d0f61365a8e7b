"""Tier 1: the SQLite journal (journal.py) and the Runtime around the kernel (runtime.py).

Events round-trip through a journal in tmp_path; commit + recover rebuild the same state;
refusals journal nothing; and `Runtime.run` drives the sim driver under trio's autojump
clock, so seconds of engine time pass in milliseconds. No FUSE here.
`open_runtime` is shared with test_nodes.py and test_fs_ops.py.
"""
import contextlib
import csv
import errno
import io

import pytest
import trio

from apeinxfs import config as config_mod
from apeinxfs.drivers.sim import WORDS, word
from apeinxfs.journal import Journal
from apeinxfs.kernel.errors import NotFound
from apeinxfs.kernel.events import (Chunk, Control, Failed, GpuMemory, Kill, Rejected, Restart, Step,
                                    Submit, Tick)
from apeinxfs.kernel.spec import TaskCommand, TaskSpec
from apeinxfs.kernel.trace import HEADER
from apeinxfs.runtime import Runtime

VOCABULARY = {w.lower() for w in WORDS}
ONE_GPU = """
[gpus]
simulated = 1
slots = 8
[[models]]
name = "sim"
[models.options]
decode_step_ms = 20
batch_step_ms = 0.5
prefill_tokens_per_s = 8000
"""


@contextlib.contextmanager
def open_runtime(tmp_path, toml: str = ONE_GPU):
    """A Runtime on a fresh journal in tmp_path/state, booted from `toml`; closed after."""
    path = tmp_path / "config.toml"
    path.write_text(toml)
    config = config_mod.load(str(path), str(tmp_path / "state"), use_nvml=False)
    runtime = Runtime(config, Journal(str(tmp_path / "state" / "journal.db")))
    try:
        yield runtime
    finally:
        runtime.journal.close()


@pytest.fixture
def rt(tmp_path):
    with open_runtime(tmp_path) as runtime:
        yield runtime


def submit(rt, name="job", tokens=5, **fields) -> int:
    return rt.commit([Submit(spec=TaskSpec(name=name, max_tokens=tokens, **fields), uid=1000)])[0]


def trace_types(buffer) -> list[str]:
    return [row["type"] for row in csv.DictReader(io.StringIO(bytes(buffer).decode()))]


ALL_KINDS = [
    Submit(spec=TaskSpec(name="j", max_tokens=9, prio=7, model="sim", deadline_us=5, prompt='a "b"\n'), uid=3),
    Kill(pid=1, uid=4),
    Control(pid=1, command=TaskCommand("prio", 2), uid=5),
    Control(pid=1, command=TaskCommand("stop")),
    Step(gpu=0, chunks=[Chunk(pid=1, text=" w", tokens=1, prefill=4), Chunk(pid=2, text="é", tokens=1)]),
    Failed(pid=1, reason="engine down"),
    Rejected(path="/ctl/submit", reason="bad", uid=9),
    Tick(),
    Restart(),
    GpuMemory(gpu=0, free_mib=40960),
]


# -- the journal -----------------------------------------------------------------------------------


def test_every_event_kind_round_trips(tmp_path):
    """Each kind of event comes back from the journal equal, with its time and seq."""
    journal = Journal(str(tmp_path / "j.db"))
    journal.append([(100 + i, e) for i, e in enumerate(ALL_KINDS)])
    rows = list(journal.replay())
    journal.close()
    assert [e for _, _, e in rows] == ALL_KINDS
    assert [(s, t) for s, t, _ in rows] == [(i + 1, 100 + i) for i in range(len(ALL_KINDS))]


def test_journal_survives_reopening(tmp_path):
    """Rows appended in two transactions are all there after close and reopen."""
    path = str(tmp_path / "deep" / "j.db")
    journal = Journal(path)
    journal.append([(1, Tick())])
    journal.append([(2, Restart()), (3, Tick())])
    journal.close()
    reopened = Journal(path)
    assert len(reopened) == 3
    assert [e for _, _, e in reopened.replay()] == [Tick(), Restart(), Tick()]
    reopened.close()


# -- commit and recover ------------------------------------------------------------------------------


def test_commit_returns_pids_and_journals(rt):
    """commit returns a pid per Submit and journals each event."""
    assert rt.commit([Submit(spec=TaskSpec(name="a")), Submit(spec=TaskSpec(name="b"))]) == [1, 2]
    assert len(rt.journal) == 2


def test_refused_commit_journals_nothing(rt):
    """A batch with one refused event raises its errno and changes neither journal nor kernel."""
    with pytest.raises(NotFound) as caught:
        rt.commit([Submit(spec=TaskSpec(name="a")), Kill(pid=99)])
    assert caught.value.errno == errno.ENOENT
    assert len(rt.journal) == 0 and rt.kernel.tasks == {}


def test_reject_is_journaled(rt):
    """reject records the refusal so the trace keeps its reason across restarts."""
    rt.reject("/ctl/kill", NotFound("no task 99"), uid=1000)
    assert [e for _, _, e in rt.journal.replay()] == [Rejected(path="/ctl/kill", reason="no task 99", uid=1000, errno=errno.ENOENT)]
    assert rt.kernel.trace.buffer.endswith(b'"/ctl/kill: no task 99 (uid 1000)"\n')


def test_recover_rebuilds_tasks_and_trace(tmp_path):
    """A fresh Runtime on the same journal has the same tasks and trace, plus one restart line."""
    with open_runtime(tmp_path) as first:
        done, running = submit(first, tokens=1, prompt="hi"), submit(first, tokens=50)
        first.deliver(Step(gpu=0, chunks=[Chunk(pid=done, text="Hi", tokens=1, prefill=2),
                                          Chunk(pid=running, text="Yo", tokens=1, prefill=1)]))
        old_trace, old_tasks = bytes(first.kernel.trace.buffer), first.kernel.tasks
    with open_runtime(tmp_path) as second:
        assert second.recover() == 3
        new_trace, new_tasks = bytes(second.kernel.trace.buffer), second.kernel.tasks
        assert len(second.journal) == 4
    assert new_trace.startswith(old_trace)
    assert trace_types(new_trace).count("restart") == 1
    assert trace_types(HEADER + new_trace[len(old_trace):])[:3] == ["restart", "bill", "requeue"]
    for pid in (done, running):
        assert (new_tasks[pid].output, new_tasks[pid].exit) == (old_tasks[pid].output, old_tasks[pid].exit)


def test_seq_continues_across_restarts(tmp_path):
    """Each restart adds one restart line and seqs keep counting up."""
    for _ in range(3):
        with open_runtime(tmp_path) as runtime:
            runtime.recover()
            submit(runtime)
            seqs = [int(r["seq"]) for r in csv.DictReader(io.StringIO(runtime.kernel.trace.buffer.decode()))]
    assert seqs == list(range(1, len(seqs) + 1))
    assert trace_types(runtime.kernel.trace.buffer).count("restart") == 2


def test_recover_restores_a_tenant_the_config_no_longer_has(tmp_path):
    """A restart whose config dropped a tenant with journaled tasks keeps the tasks and restores the tenant."""
    with open_runtime(tmp_path, ONE_GPU + '[[tenants]]\nname = "default"\n[[tenants]]\nname = "b"\n') as rt:
        pid = submit(rt, tenant="b")
    with open_runtime(tmp_path) as rt:
        rt.recover()
        assert rt.kernel.tasks[pid].tenant == "b" and rt.kernel.tenancy.tenants["b"].weight == 100
        assert b"b: restored with default settings" in rt.kernel.trace.buffer


def test_recover_of_an_empty_journal(rt):
    """An empty journal replays no rows and writes no restart."""
    assert rt.recover() == 0
    assert len(rt.journal) == 0


# -- the driver loop under a virtual clock -------------------------------------------------------------


async def run_until_done(rt, pids) -> None:
    """Run the drivers until every task in `pids` has exited (an hour of virtual time at most)."""
    with trio.fail_after(3600):
        async with trio.open_nursery() as nursery:
            await nursery.start(rt.run)
            for pid in pids:
                while not rt.kernel.tasks[pid].done:
                    await rt.wait_for(pid, 1.0)
            nursery.cancel_scope.cancel()


async def test_lone_task_takes_decode_time_per_token(rt, autojump_clock):
    """One task alone: prefill of its prompt, then decode_step_ms per token, in virtual time."""
    pid = submit(rt, tokens=10, prompt="hello world")
    await run_until_done(rt, [pid])
    task = rt.kernel.tasks[pid]
    expected_us = 10 * 20_000 + task.tokens_in / 8000 * 1e6
    assert task.exit == "done"
    assert task.exited_us - task.submitted_us == pytest.approx(expected_us, abs=5)


async def test_batch_completes_with_real_words(rt, autojump_clock):
    """A batch of four shares each step (20 ms + 0.5 ms per extra task) and writes the sim's words."""
    prompts = [f"prompt number {i}" for i in range(4)]
    pids = [submit(rt, tokens=12, prompt=p) for p in prompts]
    await run_until_done(rt, pids)
    tasks = [rt.kernel.tasks[p] for p in pids]
    prefill_us = sum(t.tokens_in for t in tasks) / 8000 * 1e6
    for task, prompt in zip(tasks, prompts):
        assert (task.exit, task.tokens_out) == ("done", 12)
        assert task.output.decode() == "".join(word(0, prompt, i) for i in range(12))
        assert all(w.strip(".").lower() in VOCABULARY for w in task.output.decode().split())
        assert task.exited_us - task.submitted_us == pytest.approx(12 * 21_500 + prefill_us, abs=5)


async def test_deadline_timer_expires_tasks(rt, autojump_clock):
    """With no other event, the deadline timer ends a long task `expired` on time."""
    pid = submit(rt, tokens=10_000, deadline_us=100_000)
    await run_until_done(rt, [pid])
    task = rt.kernel.tasks[pid]
    assert task.exit == "expired"
    assert task.exited_us - task.submitted_us == pytest.approx(100_000, abs=5)
    assert 0 < task.tokens_out < 10


def test_moot_events_in_one_commit_stay_replayable(tmp_path):
    """`cont` twice then kill in one commit on two GPUs applies once and the journal replays."""
    two_gpus = ONE_GPU.replace("simulated = 1", "simulated = 2")
    cont = Control(pid=1, command=TaskCommand("cont"))
    with open_runtime(tmp_path, two_gpus) as first:
        submit(first)
        first.commit([Control(pid=1, command=TaskCommand("stop"))])
        first.commit([cont, cont])
        assert sum(1 in g.running for g in first.kernel.gpus) == 1
        first.commit([Kill(pid=1), Kill(pid=1)])
    with open_runtime(tmp_path, two_gpus) as second:
        assert second.recover() == 6
        assert second.kernel.tasks[1].exit == "killed" and second.kernel.counters.exits == {"killed": 1}
