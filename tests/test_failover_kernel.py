"""Tier 1: the kernel's side of failover (events.Adopt, events.MovedAway), replayed the same.

A cluster node's kernel adopts a task of another node's pid block under the same pid (a
`failover` line; its own pids go on from its blocks), refuses a pid of its own blocks or
of a task it has, and a task moved away ends without an `exit` line; a replay of the
journal rows gives the same trace.
"""
import pytest

from apeinxfs.kernel import Kernel
from apeinxfs.kernel import events as ev
from apeinxfs.kernel.errors import ApeinxError
from apeinxfs.kernel.spec import TaskSpec
from test_pid_blocks import grant, make_kernel, replayed, submit


def adopt(kernel: Kernel, pid: int) -> ev.Adopt:
    event = ev.Adopt(pid=pid, spec=TaskSpec(name="moved", max_tokens=3, tenant="default"), origin="n2", epoch=4,
                     uid=1000)
    kernel.check(event)
    kernel.apply(event, kernel.now_us)
    return event


def kinds(kernel: Kernel, pid: int) -> list[str]:
    return [line.split(",")[2] for line in kernel.trace.of_task(kernel.tasks[pid]).decode().splitlines()[1:]]


def test_a_task_of_another_nodes_block_is_adopted_under_its_pid():
    """Adopted pid 50 (another node's block) runs here with a `failover` line; the node's own pids go on 1, 2."""
    kernel = make_kernel()
    grant(kernel, 1, 4)
    assert submit(kernel) == 1
    adopt(kernel, 50)
    assert submit(kernel) == 2
    task = kernel.tasks[50]
    assert task.uid == 1000 and task.tenant == "default" and task.parent is None
    assert kinds(kernel, 50)[:2] == ["submit", "failover"]
    assert "moved here from node n2" in kernel.trace.of_task(task).decode()
    kernel.check_invariants()


@pytest.mark.parametrize("pid", [1, 3, 0])
def test_a_pid_of_this_node_is_not_adopted(pid):
    """A pid of a task here (1), of this node's block still to give (3), or no pid (0): EINVAL."""
    kernel = make_kernel()
    grant(kernel, 1, 4)
    submit(kernel)
    with pytest.raises(ApeinxError) as refused:
        adopt(kernel, pid)
    assert refused.value.errno == 22 and "cannot be adopted" in refused.value.reason


def test_a_single_node_adopts_nothing():
    """Without pid blocks any pid may be the node's own later: EINVAL."""
    with pytest.raises(ApeinxError):
        adopt(make_kernel(pid_blocks=False), 50)


def test_a_task_moved_away_ends_without_an_exit_line_and_replays_the_same():
    """MovedAway ends the task (exit `moved`) with a `failover` line and no `exit` line; the journal rows
    of it all rebuild the same trace."""
    kernel = make_kernel()
    events = [ev.PidBlock(first=1, count=4), ev.Submit(spec=TaskSpec(name="j", max_tokens=2), uid=1000),
              ev.MovedAway(pid=1, node="n3")]
    for event in events:
        kernel.apply(kernel.admit(event, 0, {}), 0)
    adopt(kernel, 9)
    events.append(ev.Adopt(pid=9, spec=TaskSpec(name="moved", max_tokens=3, tenant="default"), origin="n2",
                           epoch=4, uid=1000))
    assert kernel.tasks[1].exit == "moved" and "failover" in kinds(kernel, 1) and "exit" not in kinds(kernel, 1)
    kernel.check_invariants()
    assert replayed(events).trace.buffer == kernel.trace.buffer


def test_an_adopted_task_goes_on_from_its_replicated_output_and_replays_the_same():
    """Adopted with 2 of its 5 tokens replicated, the task holds that output and counts them, its
    `failover` line says it resumes after token 2, runs the 3 left to `done`, and a replay agrees."""
    kernel = make_kernel()
    event = ev.Adopt(pid=50, spec=TaskSpec(name="moved", max_tokens=5, tenant="default"), origin="n2", epoch=4,
                     uid=1000, output=" one two", tokens=2)
    kernel.apply(kernel.admit(event, 0, {}), 0)
    task = kernel.tasks[50]
    assert (bytes(task.output), task.tokens_out) == (b" one two", 2)
    assert "resumes after token 2, where its output was last replicated" in kernel.trace.of_task(task).decode()
    kernel.check_invariants()
    again = replayed([event])
    assert again.trace.buffer == kernel.trace.buffer and bytes(again.tasks[50].output) == b" one two"


def test_a_replica_of_all_its_tokens_or_more_is_refused():
    """An Adopt claiming more tokens than the task's max_tokens is EINVAL, naming both."""
    kernel = make_kernel()
    with pytest.raises(ApeinxError) as refused:
        kernel.check(ev.Adopt(pid=50, spec=TaskSpec(name="moved", max_tokens=3, tenant="default"), origin="n2",
                              epoch=4, output="a b c d", tokens=4))
    assert refused.value.errno == 22 and "4 tokens" in refused.value.reason and "max_tokens is 3" in refused.value.reason
