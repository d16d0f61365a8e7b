"""Tier 2: engine progress journaled in batches (runtime.py `progress`, journal.py `defer`), no FUSE.

The sim driver runs under trio's autojump clock. Steps are applied at once but journaled
as `steps` rows at most PROGRESS_S late, at once when they emit a trace line, and before
any commit; a crash loses only the steps waiting, and the restarted task carries on from
its last journaled token to the same text; `replay --verify` passes throughout.
"""
import json
import sqlite3

import trio

from apeinxfs.drivers.sim import word
from apeinxfs.kernel.events import Chunk, Control, Step, to_row
from apeinxfs.kernel.spec import TaskCommand
from apeinxfs.runtime import PROGRESS_S
from test_journal_runtime import open_runtime, submit
from test_storage_faults import verified

TOKENS = 200


def sim_text(prompt: str, tokens: int = TOKENS) -> str:
    return "".join(word(0, prompt, index) for index in range(tokens))


def steps_rows(rt) -> list[list]:
    """The body of each steps row: [[µs after the row's time, gpu, chunks], ...]."""
    return [json.loads(body) for _, _, kind, body in rt.journal.rows() if kind == "steps"]


def crash(rt) -> None:
    """End `rt` as kill -9 ends the daemon: its journal is closed with nothing more written."""
    rt.journal.close = rt.journal.db.close


async def run_until(rt, done) -> None:
    """Run the runtime's drivers until `done()` holds, checking whenever a task changes or 10 ms pass."""
    async with trio.open_nursery() as nursery:
        await nursery.start(rt.run)
        while not done():
            await trio.sleep(0.01)
        nursery.cancel_scope.cancel()


async def test_steps_are_journaled_a_few_rows_at_a_time_and_replay_to_the_same_outputs(tmp_path, autojump_clock):
    """Eight tasks of 200 tokens take 200 steps; they are journaled in at most a third as many rows, none
    holding steps more than PROGRESS_S apart, and a replay rebuilds every output and counter."""
    with open_runtime(tmp_path) as rt:
        pids = [submit(rt, name=f"t{index}", tokens=TOKENS, prompt=f"prompt {index}") for index in range(8)]
        await run_until(rt, lambda: all(rt.kernel.tasks[pid].done for pid in pids))
        rows, steps = steps_rows(rt), rt.kernel.counters.steps
        live = {pid: (task.output, task.tokens_out, task.vruntime) for pid, task in rt.kernel.tasks.items()}
    assert steps >= TOKENS and sum(len(row) for row in rows) == steps
    assert len(rows) <= steps / 3
    assert all(row[-1][0] - row[0][0] < PROGRESS_S * 1e6 for row in rows)
    with open_runtime(tmp_path) as replayed:
        replayed.recover()
        assert {pid: (t.output, t.tokens_out, t.vruntime) for pid, t in replayed.kernel.tasks.items()} == live
    assert live[pids[3]][0].decode() == sim_text("prompt 3")
    assert verified(tmp_path).divergence is None


async def test_a_control_write_journals_the_waiting_steps_before_itself(tmp_path, autojump_clock):
    """A stop acknowledged while steps wait makes them durable first, in the same transaction: after a
    crash the stopped task has every token it had when stopped."""
    with open_runtime(tmp_path) as crashed:
        pid = submit(crashed, name="s", tokens=TOKENS, prompt="stopped")
        await run_until(crashed, lambda: crashed.kernel.tasks[pid].tokens_out > 20
                        and crashed.journal.deferred_since_us is not None)
        crashed.commit([Control(pid=pid, command=TaskCommand("stop"))])
        stopped_at = crashed.kernel.tasks[pid].output
        kinds = [kind for _, _, kind, _ in crashed.journal.rows()]
        crash(crashed)
    assert kinds[-2:] == ["steps", "control"]
    with open_runtime(tmp_path) as restarted:
        restarted.recover()
        assert restarted.kernel.tasks[pid].output == stopped_at


async def test_a_crash_loses_only_the_waiting_steps_and_the_task_ends_with_the_same_text(tmp_path, autojump_clock):
    """Killed mid-stream, the journal holds a prefix of each output (at most PROGRESS_S of steps behind);
    restarted, every task carries on from its last durable token and ends done with the sim's text."""
    prompts = [f"crash {index}" for index in range(4)]
    with open_runtime(tmp_path) as crashed:
        pids = [submit(crashed, name=f"c{i}", tokens=TOKENS, prompt=p) for i, p in enumerate(prompts)]
        await run_until(crashed, lambda: crashed.kernel.tasks[pids[0]].tokens_out > 50
                        and crashed.journal.deferred_since_us is not None)
        live = {pid: bytes(crashed.kernel.tasks[pid].output) for pid in pids}
        crash(crashed)
    with open_runtime(tmp_path) as restarted:
        restarted.recover()
        durable = {pid: bytes(restarted.kernel.tasks[pid].output) for pid in pids}
        assert all(live[pid].startswith(durable[pid]) and durable[pid] != live[pid] for pid in pids)
        await run_until(restarted, lambda: all(restarted.kernel.tasks[pid].done for pid in pids))
        for pid, prompt in zip(pids, prompts):
            task = restarted.kernel.tasks[pid]
            assert (task.exit, task.output.decode()) == ("done", sim_text(prompt))
    assert verified(tmp_path).divergence is None


async def test_steps_of_an_idle_engine_are_journaled_by_the_timer(tmp_path, autojump_clock):
    """Steps that emit no line and are followed by no commit still reach the journal within PROGRESS_S."""
    with open_runtime(tmp_path) as rt:
        pid = submit(rt, name="slow", tokens=TOKENS, prompt="timer")
        async with trio.open_nursery() as nursery:
            await nursery.start(rt.run)
            while rt.journal.deferred_since_us is None:
                await trio.sleep(0.001)
            since = rt.journal.deferred_since_us
            while rt.journal.deferred_since_us == since:
                await trio.sleep(0.001)
            flushed_after_us = rt.clock.now_us() - since
            nursery.cancel_scope.cancel()
        assert not rt.kernel.tasks[pid].done
    assert flushed_after_us <= PROGRESS_S * 1e6 + 25_000  # one 20 ms step late at most


def test_a_journal_with_one_row_per_step_still_replays(tmp_path):
    """`step` rows of journals written before steps rows existed are replayed as they were."""
    with open_runtime(tmp_path) as rt:
        pid = submit(rt, name="old", tokens=3, prompt="legacy")
    kind, body = to_row(Step(gpu=0, chunks=[Chunk(pid=pid, text=" w", tokens=1, prefill=6)]))
    with sqlite3.connect(tmp_path / "state" / "journal.db") as db:
        db.execute("INSERT INTO journal (time_us, kind, body) SELECT max(time_us), ?, ? FROM journal", (kind, body))
    with open_runtime(tmp_path) as restarted:
        restarted.recover()
        assert (restarted.kernel.tasks[pid].output, restarted.kernel.tasks[pid].tokens_out) == (b" w", 1)
    assert verified(tmp_path).divergence is None
