"""Tier 1: the background loops' bug boundary (supervise.py), under trio's autojump clock.

A loop that raises is started again after 1 s, 2 s, 4 s ... up to 30 s, back to 1 s after a run of a
minute; its Bug row counts the failures and names the last one's place; cancellation and
KeyboardInterrupt pass through; a loop that returns is not started again. A driver that cannot be built
fails its own models only (enginehost.py, whose `follow` the supervisor restarts).
"""
import contextlib
import logging
import math

import httpx
import pytest
import trio
import trio.testing

from apeinxfs import health
from apeinxfs.cluster.daemon import Cluster
from apeinxfs.cluster.peer_client import Peer
from apeinxfs.drivers.enginestate import EngineState
from apeinxfs.enginehost import DriverGroups
from apeinxfs.kernel.config import ModelConfig
from apeinxfs.kernel.events import PidBlock, RemoveModel, SetModel, Submit
from apeinxfs.kernel.spec import TaskSpec
from apeinxfs.nodes import models
from apeinxfs.supervise import RESTART_MAX_S, STEADY_S, Supervisor
from test_guarded_retry import AdoptingMeanwhileEtcd
from test_hostile_engines import ENDED, HEAD, NOT_ENDING_S, ONE_TOKEN, serve
from test_journal_runtime import open_runtime
from test_shared_settings import node
from test_verify import run_verify


def flaky(starts: list, fails: int, run_s: float = 0.0):
    """A loop that records when each run starts, runs `run_s`, and raises ValueError in its first `fails` runs."""
    async def loop():
        starts.append(trio.current_time())
        await trio.sleep(run_s)
        if len(starts) <= fails:
            raise ValueError(f"run {len(starts)}")
    return loop


def gaps(starts: list, run_s: float = 0.0) -> list:
    """The pauses between one run's end and the next one's start."""
    return [round(b - a - run_s, 6) for a, b in zip(starts, starts[1:])]


async def test_a_loop_that_fails_twice_is_restarted_after_1_then_2_seconds_and_counted(autojump_clock):
    """Two failures, then a run that returns: pauses of 1 s and 2 s, and a Bug row of 2 times."""
    supervisor, starts = Supervisor(lambda: 1234), []
    await supervisor.supervised("test.loop", flaky(starts, fails=2))
    assert gaps(starts) == [1.0, 2.0]
    assert supervisor.bugs["test.loop"].times == 2
    row = supervisor.show()
    assert row.startswith("Bug:\ttest.loop: ValueError at test_supervise.py:")
    assert row.endswith("(2 times, last at 1234; restarted)\n")


async def test_the_backoff_doubles_up_to_30_seconds(autojump_clock):
    """Eight quick failures in a row: pauses 1, 2, 4, 8, 16, 30, 30, 30 s."""
    supervisor, starts = Supervisor(lambda: 0), []
    await supervisor.supervised("test.loop", flaky(starts, fails=8))
    assert gaps(starts) == [1.0, 2.0, 4.0, 8.0, 16.0, RESTART_MAX_S, RESTART_MAX_S, RESTART_MAX_S]


async def test_the_backoff_starts_over_after_a_run_of_a_minute(autojump_clock):
    """Runs that last STEADY_S before failing are each followed by a 1 s pause, not a growing one."""
    supervisor, starts = Supervisor(lambda: 0), []
    await supervisor.supervised("test.loop", flaky(starts, fails=3, run_s=STEADY_S))
    assert gaps(starts, run_s=STEADY_S) == [1.0, 1.0, 1.0]
    assert supervisor.bugs["test.loop"].times == 3


async def test_cancellation_passes_through_and_is_no_bug(autojump_clock):
    """A loop cancelled from outside ends the supervisor at once, with no Bug row and no restart."""
    supervisor, starts = Supervisor(lambda: 0), []

    async def forever():
        starts.append(trio.current_time())
        await trio.sleep_forever()

    with trio.move_on_after(5):
        await supervisor.supervised("test.loop", forever)
    assert len(starts) == 1 and supervisor.bugs == {} and supervisor.show() == ""


async def test_keyboard_interrupt_passes_through(autojump_clock):
    """A BaseException that is not an Exception is not contained: it leaves the supervisor as it came."""
    supervisor = Supervisor(lambda: 0)

    async def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await supervisor.supervised("test.loop", interrupted)
    assert supervisor.bugs == {}


async def test_an_exception_group_of_exceptions_is_a_bug_placed_where_its_first_was_raised(autojump_clock):
    """A loop whose own nursery's child raises is restarted; its row names the child's error, not the group."""
    supervisor, starts = Supervisor(lambda: 0), []

    async def child():
        raise KeyError("gone")

    async def with_children():
        starts.append(trio.current_time())
        if len(starts) == 1:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(child)

    await supervisor.supervised("test.loop", with_children)
    assert len(starts) == 2
    assert "test.loop: KeyError at test_supervise.py:" in supervisor.show()


async def test_the_traceback_is_logged_once_a_place_then_one_line_a_failure(autojump_clock, caplog):
    """Three failures at one place: one log record with the traceback, two one-liners that count them."""
    supervisor, starts = Supervisor(lambda: 0), []
    with caplog.at_level(logging.ERROR, logger="apeinxfs.supervise"):
        await supervisor.supervised("test.loop", flaky(starts, fails=3))
    records = [r for r in caplog.records if r.name == "apeinxfs.supervise"]
    assert [r.exc_info is not None for r in records] == [True, False, False]
    assert "(3 times)" in records[-1].getMessage()


async def test_health_shows_a_row_for_each_loop_that_failed(autojump_clock):
    """/ai/health is `State: ok` followed by one Bug row a failed loop, sorted by name."""
    supervisor = Supervisor(lambda: 7)
    for name in ("b.loop", "a.loop"):
        await supervisor.supervised(name, flaky([], fails=1))
    lines = health.show(health.Health(), supervisor).splitlines()
    assert lines[0] == "State:\tok"
    assert [line.split(":", 2)[1].strip() for line in lines[1:]] == ["a.loop", "b.loop"]
    assert all(line.endswith("(once, last at 7; restarted)") for line in lines[1:])


async def test_a_restarted_failover_recorder_records_from_where_it_was_not_from_the_trace_end(tmp_path, autojump_clock):
    """Tier 2 (a cluster node's runtime, joined, on a fake etcd): a second start of `Failover.keep`, as the
    supervisor makes after a bug, fences again without counting the submits since as recorded (a submit waiting
    for its key, `settle`, is not answered yet), then records them: their keys are in etcd."""
    rt = node(tmp_path)
    failover, seqs_while_fencing = rt.cluster.failover, []

    async def fencing() -> None:
        seqs_while_fencing.append(failover.seq)
    failover.etcd = AdoptingMeanwhileEtcd(fencing)
    rt.cluster.member.epoch, rt.cluster.member.expires = 1, math.inf  # joined, its lease alive
    with trio.move_on_after(1):
        await failover.keep()
    recorded = failover.seq
    rt.commit([PidBlock(first=1, count=10)])
    [pid] = rt.commit([Submit(spec=TaskSpec(name="j"))])
    with trio.move_on_after(1):
        await failover.keep()
    assert seqs_while_fencing == [recorded, recorded] and recorded < rt.kernel.trace.seq
    assert failover.seq == rt.kernel.trace.seq and failover.written[pid][0].owner == failover.here
    assert failover.etcd.txns == 1


async def test_the_cluster_clients_stay_open_while_cluster_run_waits_for_its_restart(tmp_path, monkeypatch,
                                                                                     mock_clock):
    """Tier 2 (a cluster node's runtime running, its etcd unreachable, the clock held still): a bug that ends
    Cluster.run's nursery leaves its etcd client and a peer's client of the router open while `cluster.run` waits
    for its restart (the mount's settings writes and a remote task's open files use them), where both were
    closed; they close as the runtime's run ends."""
    rt = node(tmp_path)
    real_follow = Cluster.follow

    async def follow_beside_a_bug(cluster, nursery):
        async def bug():
            raise ValueError("a bug in a task of the cluster's nursery")
        nursery.start_soon(bug)
        await real_follow(cluster, nursery)
    monkeypatch.setattr(Cluster, "follow", follow_beside_a_bug)
    peer = rt.cluster.router.peers["http://127.0.0.1:9"] = Peer("http://127.0.0.1:9", b"token")
    async with trio.open_nursery() as nursery:
        await nursery.start(rt.run)
        await trio.testing.wait_all_tasks_blocked()
        assert rt.supervisor.bugs["cluster.run"].times == 1
        assert not rt.cluster.etcd.http.is_closed and not peer.http.is_closed
        nursery.cancel_scope.cancel()
    assert rt.cluster.etcd.http.is_closed and peer.http.is_closed


async def test_the_router_closes_every_peer_client_when_closing_one_fails(tmp_path):
    """As the router closes, one of three peers' clients fails to close (a bug): the other two are closed all the
    same, then that bug is raised."""
    router = node(tmp_path).cluster.router
    peers = [Peer(f"http://127.0.0.1:{port}", b"token") for port in (7, 8, 9)]
    router.peers = {peer.url: peer for peer in peers}

    async def fails() -> None:
        raise ValueError("a bug in closing a client")
    peers[1].http.aclose = fails
    with pytest.raises(ValueError):
        async with router:
            pass
    assert peers[0].http.is_closed and peers[2].http.is_closed
    await httpx.AsyncClient.aclose(peers[1].http)


async def test_a_driver_that_cannot_be_built_fails_its_models_only_and_the_others_start(tmp_path):
    """Model a's openai driver has no url: sync raises nothing, model b's sim driver starts, a's state says
    failed and why, and the state of a model that went is forgotten all the same."""
    toml = '[gpus]\nsimulated = 1\n[[models]]\nname = "a"\ndriver = "openai"\n[[models]]\nname = "b"\n'
    with open_runtime(tmp_path, toml) as rt:
        rt.engine_states["gone"] = EngineState("ready", 0)
        async with trio.open_nursery() as nursery:
            groups = DriverGroups(rt, nursery)
            groups.sync()
            assert list(groups.running) == [("config", "openai"), ("config", "sim")]  # a's a CannotRun
            assert rt.engine_states["a"].state == "failed" and "needs options.url" in rt.engine_states["a"].error
            assert "gone" not in rt.engine_states
            nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def restarted_with(tmp_path, model: ModelConfig):
    """A runtime running after a restart from a journal that holds `model` (added before it), beside sim model b."""
    toml = '[gpus]\nsimulated = 1\n[[models]]\nname = "b"\n'
    with open_runtime(tmp_path, toml) as rt:
        rt.commit([SetModel(model=model, what=f"add {model.name}", uid=0)])
    with open_runtime(tmp_path, toml) as rt:
        rt.recover()
        async with trio.open_nursery() as nursery:
            await nursery.start(rt.run)
            yield rt
            nursery.cancel_scope.cancel()


async def ran(rt, model: str, timeout_s: float) -> int:
    """The pid of a task of `model` submitted and waited for until done, for at most `timeout_s`."""
    pid = rt.commit([Submit(spec=TaskSpec(name="j", max_tokens=1, model=model), uid=1000)])[0]
    with trio.fail_after(timeout_s):
        while not rt.kernel.tasks[pid].done:
            await rt.wait_for(pid, 1.0)
    return pid


async def test_a_journal_model_whose_options_are_now_refused_fails_alone_and_can_be_removed(tmp_path, autojump_clock):
    """A model kept in the journal with retries = "200" (a text, refused since): after a restart the runtime runs,
    the model's status says failed and why, a task submitted to it fails at once saying why (not queued for
    ever), and removing it is then accepted (not EBUSY)."""
    ext = ModelConfig(name="ext", driver="openai", options={"url": "http://127.0.0.1:9", "retries": "200"})
    async with restarted_with(tmp_path, ext) as rt:
        status = models.status(rt.kernel, "ext", rt.engine_states.get("ext"))
        pid = await ran(rt, "ext", 60)
        rt.commit([RemoveModel(name="ext", uid=0)])
    assert "ext" not in rt.kernel.models and "driver.openai" not in " ".join(rt.supervisor.bugs)
    exit_line = rt.kernel.tasks[pid].exit
    assert "State:\tfailed\n" in status and "retries must be an integer from 0 to 100, not '200'" in status
    assert exit_line.startswith("failed: model ext cannot run: the driver cannot be built: ")
    assert "not '200'" in exit_line


async def test_a_journal_model_with_numbers_out_of_bounds_runs_them_clamped(tmp_path, nursery, caplog):
    """A model kept in the journal with retries = 200 and timeout_s = 1e9 (accepted once, out of bounds now): after
    a restart its driver is built with them clamped (100, 86400), its task runs to done, its status says which,
    the log says it once, and the trace does not (no journal row that older code cannot replay)."""
    async def answer(stream):
        await stream.send_all(HEAD + ONE_TOKEN + ENDED)
    port = await serve(nursery, answer)
    ext = ModelConfig(name="ext", driver="openai", options={"url": f"http://127.0.0.1:{port}", "retries": 200,
                                                            "timeout_s": 1e9, "metrics_s": 0})
    with caplog.at_level(logging.WARNING, logger="apeinxfs.enginehost"):
        async with restarted_with(tmp_path, ext) as rt:
            pid = await ran(rt, "ext", NOT_ENDING_S)
            status = models.ModelDir(rt=rt, name="ext").build("status").show()
    exit_line, trace = rt.kernel.tasks[pid].exit, rt.kernel.trace.buffer.decode()
    assert exit_line == "done"
    clamped = "timeout_s 1e+09 clamped to 86400 (the bound); retries 200 clamped to 100 (the bound)"
    assert f"Options:\t{clamped}\n" in status
    assert [r.getMessage() for r in caplog.records] == [f"model ext: options kept in the journal: {clamped}"]
    assert "clamped" not in trace
    assert run_verify(tmp_path).divergence is None


async def test_a_configured_model_re_added_with_refused_options_fails_alone(tmp_path):
    """Configured openai models a and b; b re-added (journaled) with retries = "200" (a text): b fails, a's driver
    starts."""
    toml = ('[gpus]\nsimulated = 1\n[[models]]\nname = "a"\ndriver = "openai"\noptions = {url = "http://127.0.0.1:9"}\n'
            '[[models]]\nname = "b"\ndriver = "openai"\noptions = {url = "http://127.0.0.1:9"}\n')
    refused = ModelConfig(name="b", driver="openai", options={"url": "http://127.0.0.1:9", "retries": "200"})
    with open_runtime(tmp_path, toml) as rt:
        rt.commit([RemoveModel(name="b", uid=0)])
        rt.commit([SetModel(model=refused, what="add b", uid=0)])
        async with trio.open_nursery() as nursery:
            groups = DriverGroups(rt, nursery)
            groups.sync()
            assert rt.engine_states["b"].state == "failed" and "retries must be an integer" in rt.engine_states["b"].error
            assert rt.engine_states["a"].state == "starting"
            nursery.cancel_scope.cancel()
