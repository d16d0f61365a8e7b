"""Tier 1: fencing at once (events.Fence, cluster/fencing.py) with a fake clock.

A held kernel hands its engines no batch, dispatches nothing and drops engine steps (made
before the hold, delivered after), so a task makes no token and cannot end by its engine;
released, it goes on, and a replay of the journal rows gives the same trace. `Fencing`
holds once the clock passes the lease's possible expiry (a jump after SIGSTOP shows at
once), and releases only while the lease is known alive.
"""
import errno

import attrs

from apeinxfs.cluster.fencing import Fencing
from apeinxfs.cluster.member import Member
from apeinxfs.kernel import events as ev
from apeinxfs.kernel.errors import ApeinxError
from apeinxfs.kernel.events import Chunk, Fence, PidBlock, Step, Submit
from apeinxfs.kernel.spec import TaskSpec
from test_pid_blocks import make_kernel, replayed


def run(kernel, events, now_us=0):
    for event in events:
        kernel.apply(kernel.admit(event, now_us, {}), now_us)


def test_a_held_kernel_gives_no_batch_drops_steps_and_resumes_when_released():
    """Held: batch empty, a step changes no token, a new task is not dispatched; released: both run,
    and the rows replay to the same trace."""
    kernel = make_kernel()
    first = Submit(spec=TaskSpec(name="j", max_tokens=2), uid=1000)
    events = [PidBlock(first=1, count=9), first, Fence(held=True, reason="lease may have expired"),
              Step(gpu=0, chunks=[Chunk(pid=1, text="x", tokens=1, final=True)]), attrs.evolve(first)]
    run(kernel, events)
    assert kernel.batch(0) == [] and kernel.tasks[1].tokens_out == 0 and not kernel.tasks[1].done
    assert kernel.tasks[2].gpu is None  # nothing dispatched while held
    release = Fence(held=False, reason="checked with etcd")
    run(kernel, [release])
    events.append(release)
    assert [task.pid for task in kernel.batch(0)] == [1, 2]
    lines = kernel.trace.buffer.decode()
    assert ",fence,," in lines and "held: lease may have expired" in lines and "released: checked" in lines
    kernel.check_invariants()
    assert replayed(events).trace.buffer == kernel.trace.buffer


def test_a_held_kernel_refuses_kills_and_ends_nothing_by_time_until_released():
    """Held: a kill or a control is EAGAIN (the task may run elsewhere now), no deadline is due and a
    passed one ends nothing; released: the deadline ends the task (`expired`), and a kill works again."""
    kernel = make_kernel()
    run(kernel, [PidBlock(first=1, count=9), Submit(spec=TaskSpec(name="d", max_tokens=50, deadline_us=1_000_000)),
                 Submit(spec=TaskSpec(name="k", max_tokens=50)), Fence(held=True, reason="lease may have expired")])
    for refused in (ev.Kill(pid=2), ev.Control(pid=2, command=ev.TaskCommand(verb="stop"))):
        try:
            kernel.check(refused)
        except ApeinxError as error:
            assert error.errno == errno.EAGAIN and "may have been moved" in error.reason
        else:
            raise AssertionError(f"{refused} accepted while held")
    assert kernel.next_deadline_us() is None
    run(kernel, [ev.Tick()], now_us=2_000_000)
    assert not kernel.tasks[1].done
    run(kernel, [Fence(held=False, reason="checked with etcd")], now_us=2_000_000)
    assert kernel.tasks[1].exit == "expired"
    run(kernel, [ev.Kill(pid=2)], now_us=2_000_000)
    assert kernel.tasks[2].exit == "killed"
    kernel.check_invariants()


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@attrs.define
class FakeMember:
    expires: float
    name: str = "n1"
    epoch: int = 2


class FakeRuntime:
    """The runtime's commit over a real kernel: what Fencing needs of it."""

    def __init__(self):
        self.kernel = make_kernel()

    def commit(self, events):
        for event in events:
            self.kernel.apply(self.kernel.admit(event, 0, {}), 0)


def test_fencing_holds_once_the_lease_may_have_expired_and_releases_only_with_a_live_lease():
    """Before the expiry nothing; the first check after a clock jump holds (once); release waits for a
    refresh that moved the expiry past now."""
    clock, member, rt = FakeClock(), FakeMember(expires=105.0), FakeRuntime()
    fencing = Fencing(rt, member, clock)
    fencing.check()
    fencing.release()
    assert not fencing.held and ",fence," not in rt.kernel.trace.buffer.decode()
    clock.now = 120.0  # SIGSTOP for 15 s, then SIGCONT: the monotonic clock jumped
    fencing.check()
    fencing.check()
    assert fencing.held and rt.kernel.trace.buffer.decode().count(",fence,") == 1
    assert "epoch 2) may have expired 15.0s ago" in rt.kernel.trace.buffer.decode()
    fencing.release()
    assert fencing.held  # no refresh yet: still held
    member.expires, member.epoch = 125.0, 3  # joined again
    fencing.release()
    assert not fencing.held and "released: checked with etcd in epoch 3" in rt.kernel.trace.buffer.decode()


def test_a_node_started_again_holds_its_engines_until_its_first_join():
    """A member that has not joined since its start (epoch 0, as Member begins: its lease as if expired) holds
    at the first check, saying so: stopped or killed, its tasks may have been moved meanwhile; its first join
    releases them."""
    clock, rt = FakeClock(), FakeRuntime()
    member = Member(None, None, "n1", 15, lambda epoch: None)
    fencing = Fencing(rt, member, clock)
    fencing.check()
    assert fencing.held and "node n1 has not joined the cluster since it started" in rt.kernel.trace.buffer.decode()
    member.expires, member.epoch = clock.now + 15, 1  # its first join
    fencing.release()
    assert not fencing.held
