"""Tier 2: a model whose driver cannot be built (enginehost.CannotRun) never hangs a task, without FUSE.

Model ext is kept in the journal with options its driver now refuses (retries = "200", a text); the runtime is
started again from that journal under trio's autojump clock, and a task of ext must end, failed with
the reason, whatever the journal held of ext's engine before: a full KV report, every endpoint down.
The journal is made to fail at the one delivery of the task's failure (test_storage_faults' FailingDb)."""
import attrs
import pytest
import trio

from apeinxfs.kernel.config import ModelConfig
from apeinxfs.kernel.events import EngineHealth, EngineKV, Failed, RemoveModel, SetModel, Submit
from apeinxfs.kernel.spec import TaskSpec
from apeinxfs.runtime import PROBE_S
from test_journal_runtime import open_runtime, submit
from test_storage_faults import FailingDb, full_error

REFUSED = {"retries": "200"}  # a text where a count belongs: the openai driver cannot be built (a number out of bounds is clamped)
TWO_GPUS = '[gpus]\nsimulated = 2\n[kv]\npage_mib = 1\n[[models]]\nname = "b"\n'
ONE_SLOT_EACH = TWO_GPUS.replace("simulated = 2\n", "simulated = 2\nslots = 1\n")
EXT = ModelConfig(name="ext", driver="openai", options={"url": "http://127.0.0.1:9", **REFUSED})
EXT_AT_ENDPOINTS = ModelConfig(name="ext", driver="openai", options=REFUSED, endpoints=[
    {"url": "http://127.0.0.1:9", "gpus": [0]}, {"url": "http://127.0.0.1:10", "gpus": [1]}])


def journal_then_restart(tmp_path, model: ModelConfig, events: list, conf: str = TWO_GPUS):
    """A runtime (configured by `conf`) recovered from a journal holding `model` and then `events`."""
    with open_runtime(tmp_path, conf) as rt:
        rt.commit([SetModel(model=model, what="add ext", uid=0)])
        rt.commit(events)
    return open_runtime(tmp_path, conf)


async def ended(rt, pids: list[int]) -> list[str]:
    """The exit lines of `pids`, once each has ended (at most 60 s of trio's clock)."""
    with trio.fail_after(60):
        for pid in pids:
            while not rt.kernel.tasks[pid].done:
                await rt.wait_for(pid, 1.0)
    return [rt.kernel.tasks[pid].exit for pid in pids]


def cannot_run(exit_line: str) -> bool:
    return exit_line.startswith("failed: model ext cannot run: the driver cannot be built: ")


def fault_at_the_first(rt, kind: type) -> list:
    """Make the journal fail (disk full) at the first delivery of a `kind` event, and from then on until told;
    the events delivered of that kind, from then on."""
    rt.journal.db = FailingDb(rt.journal.db)
    delivered, deliver = [], rt.deliver

    def faulting(*events):
        if any(isinstance(event, kind) for event in events) and not delivered:
            rt.journal.db.fault = full_error
        delivered.extend(event for event in events if isinstance(event, kind))
        deliver(*events)
    rt.deliver = faulting
    return delivered


async def test_a_failure_whose_delivery_the_journal_refused_is_delivered_again_after_recovery(tmp_path, autojump_clock):
    """The journal fails at the one delivery of the task's failure (degraded); once it can be written again the
    failure reaches the kernel: the task ends failed saying why, and nothing is delivered while degraded."""
    with journal_then_restart(tmp_path, EXT, []) as rt:
        rt.recover()
        delivered = fault_at_the_first(rt, Failed)
        async with trio.open_nursery() as nursery:
            await nursery.start(rt.run)
            pid = submit(rt, model="ext")
            await trio.sleep(10 * PROBE_S)
            assert rt.health.fault is not None and len(delivered) == 1 and not rt.kernel.tasks[pid].done
            rt.journal.db.fault = None
            [exit_line] = await ended(rt, [pid])
            nursery.cancel_scope.cancel()
    assert cannot_run(exit_line) and len(delivered) == 2


async def test_tasks_queued_beyond_the_free_slots_each_fail(tmp_path, autojump_clock):
    """Five tasks of ext on two GPUs of one slot each: each failure seats the next queued task (its GPU woken while
    CannotRun was still failing), and that one fails too, none left running for ever."""
    with journal_then_restart(tmp_path, EXT, [], ONE_SLOT_EACH) as rt:
        rt.recover()
        async with trio.open_nursery() as nursery:
            await nursery.start(rt.run)
            exit_lines = await ended(rt, [submit(rt, model="ext") for _ in range(5)])
            nursery.cancel_scope.cancel()
    assert all(cannot_run(line) for line in exit_lines)


async def test_a_backlog_journaled_before_the_restart_each_fails_and_the_model_is_removed(tmp_path, autojump_clock):
    """20 tasks of ext queued in the journal, then a restart on 2 GPUs of 8 slots: each ends failed saying why,
    and `remove ext` is not refused busy."""
    backlog = [Submit(spec=TaskSpec(name="q", max_tokens=5, model="ext"), uid=1000) for _ in range(20)]
    with journal_then_restart(tmp_path, EXT, backlog) as rt:
        rt.recover()
        async with trio.open_nursery() as nursery:
            await nursery.start(rt.run)
            exit_lines = await ended(rt, sorted(rt.kernel.tasks))
            rt.commit([RemoveModel(name="ext", uid=0)])
            nursery.cancel_scope.cancel()
    assert len(exit_lines) == 20 and all(cannot_run(line) for line in exit_lines) and "ext" not in rt.kernel.models


async def test_a_stale_full_kv_report_of_a_model_that_cannot_run_is_cleared(tmp_path, autojump_clock):
    """ext's engine had reported more KV than the GPUs hold (journaled): once ext cannot run, its report counts
    nothing, so its task reaches a GPU and fails, and a task of b, on the same GPUs, runs to its end."""
    with journal_then_restart(tmp_path, EXT, [EngineKV(model="ext", gpus=(), tokens=10**7)]) as rt:
        rt.recover()
        assert rt.kernel.kv.unbooked  # the stale report counts the GPUs full
        async with trio.open_nursery() as nursery:
            await nursery.start(rt.run)
            pids = [submit(rt, model="ext"), submit(rt, model="b")]
            exit_lines = await ended(rt, pids)
            nursery.cancel_scope.cancel()
        assert not rt.kernel.kv.unbooked
    assert cannot_run(exit_lines[0]) and exit_lines[1] == "done"


async def test_a_stale_kv_report_whose_clearing_the_journal_refused_is_cleared_after_recovery(tmp_path,
                                                                                                autojump_clock):
    """The journal fails at the clearing of ext's stale full KV report (degraded); once it can be written again
    the report is cleared: a task of b, on the same GPUs, runs to its end."""
    with journal_then_restart(tmp_path, EXT, [EngineKV(model="ext", gpus=(), tokens=10**7)]) as rt:
        rt.recover()
        delivered = fault_at_the_first(rt, EngineKV)
        async with trio.open_nursery() as nursery:
            await nursery.start(rt.run)
            await trio.sleep(10 * PROBE_S)
            assert rt.health.fault is not None and len(delivered) == 1 and rt.kernel.kv.unbooked
            rt.journal.db.fault = None
            await trio.sleep(2 * PROBE_S)  # recovered at the next probe
            [exit_line] = await ended(rt, [submit(rt, model="b")])
            nursery.cancel_scope.cancel()
    assert exit_line == "done" and [event.tokens for event in delivered] == [0, 0]


@pytest.mark.parametrize("down", [[(0,), (1,)], [(1,)]], ids=["every endpoint", "one endpoint"])
async def test_a_model_that_cannot_run_with_endpoints_down_before_the_restart_fails_its_tasks(tmp_path, autojump_clock,
                                                                                               down):
    """ext's endpoints were journaled down when the daemon stopped: once ext cannot run, its endpoints are
    no outage to wait out, its tasks reach a GPU and fail saying why (not left waiting for ever)."""
    events = [EngineHealth(model="ext", up=False, reason="unreachable: refused", gpus=gpus) for gpus in down]
    with journal_then_restart(tmp_path, EXT_AT_ENDPOINTS, events) as rt:
        rt.recover()
        async with trio.open_nursery() as nursery:
            await nursery.start(rt.run)
            pids = [submit(rt, model="ext") for _ in range(3)]
            exit_lines = await ended(rt, pids)
            nursery.cancel_scope.cancel()
        assert not rt.kernel.engines.book.parts.get("ext") and rt.engine_states["ext"].state == "failed"
    assert all(cannot_run(line) for line in exit_lines)


async def test_a_model_that_cannot_run_is_forgotten_as_such_once_removed_or_replaced(tmp_path, autojump_clock):
    """The models whose submits are refused (runtime.cannot_run) are those a CannotRun serves now: ext while its
    options are refused, not once removed, nor once added again with options its driver takes."""
    with journal_then_restart(tmp_path, EXT, []) as rt:
        rt.recover()
        async with trio.open_nursery() as nursery:
            await nursery.start(rt.run)
            refused = set(rt.cannot_run)
            rt.commit([RemoveModel(name="ext", uid=0)])
            await trio.sleep(1)
            removed = set(rt.cannot_run)
            rt.commit([SetModel(model=attrs.evolve(EXT, options={"url": "http://127.0.0.1:9"}), what="add", uid=0)])
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
    assert (refused, removed, set(rt.cannot_run)) == ({"ext"}, set(), set())
