"""Tier 2: what a caller gets when a deadline lands: a submit whose keys were recorded as its settle
deadline cancelled the wait is answered (cluster/failover.py `settle`); a repeatable etcd change whose
attempt went unanswered says its outcome is unknown, a read, the watch or a lease's keepalive does not
(cluster/etcd.py `on_members`). Trio's MockClock jumps to the deadlines; no etcd runs."""
import pytest
import trio
import trio.testing

from apeinxfs.cluster.etcd import Etcd
from apeinxfs.cluster.etcd_records import MemberFailed, Unavailable
from apeinxfs.cluster.failover import SETTLE_S
from apeinxfs.kernel.errors import TryAgain
from apeinxfs.kernel.events import PidBlock, Submit
from apeinxfs.kernel.spec import TaskSpec
from test_shared_settings import node

MEMBERS = ["http://127.0.0.1:1", "http://127.0.0.1:2"]


def run_mocked(async_fn, *args):
    """`async_fn(*args)` under a clock that jumps to the next deadline whenever every task waits."""
    return trio.run(async_fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))


def settled(tmp_path, recorded: bool, write_lines: int = 0):
    """A cluster node's submit and its `settle` (for a write of `write_lines` placed on several nodes), whose
    wakes never come before the deadline; `recorded`: the recorder has put its key (as the deadline lands)
    meanwhile. Settle's outcome and the task."""
    rt = node(tmp_path)
    rt.commit([PidBlock(first=1, count=10)])
    failover, upto = rt.cluster.failover, rt.kernel.trace.seq
    [pid] = rt.commit([Submit(spec=TaskSpec(name="j"))])

    async def wake_lost(key, timeout):  # the recorder's wake comes in the same pass as the deadline
        if recorded:
            failover.seq = rt.kernel.trace.seq
        await trio.sleep_forever()

    rt.wait_for = wake_lost
    failover.seq = upto
    try:
        run_mocked(failover.settle, [pid], write_lines)
        outcome = "answered"
    except TryAgain as refused:
        outcome = refused.reason
    return outcome, rt.kernel.tasks[pid]


def test_a_submit_whose_keys_were_recorded_as_its_deadline_landed_is_answered_and_runs(tmp_path):
    """The recorder put the task's key; the wake cancelled by settle's deadline does not make it a refusal."""
    outcome, task = settled(tmp_path, recorded=True)
    assert outcome == "answered"
    assert not task.done


def test_a_submit_whose_keys_were_not_recorded_by_the_deadline_is_refused_and_ended(tmp_path):
    """Without its key in etcd by SETTLE_S the submit gets EAGAIN and its task ends."""
    outcome, task = settled(tmp_path, recorded=False)
    assert f"within {SETTLE_S:.0f}s" in outcome and "they were not run" in outcome
    assert task.done


def test_a_submit_placed_with_many_lines_elsewhere_waits_for_the_whole_writes_allowance(tmp_path):
    """One line of a 20,000-line write placed on several nodes waits SETTLE_S and 1 ms a line of the whole write
    (its nodes' keys go into etcd at once), not only its own line's."""
    outcome, task = settled(tmp_path, recorded=False, write_lines=20_000)
    assert f"within {SETTLE_S + 20:.0f}s" in outcome and task.done


async def given_up(what: str, first_fails: MemberFailed | None) -> str:
    """The Unavailable of a repeatable call `what` on two members: the first fails as `first_fails` says
    (None: it never answers), the second never answers; the client's timeout runs out."""
    async with Etcd(MEMBERS, timeout=8.0, attempt_timeout=2.0) as etcd:
        async def attempt(url):
            if url == MEMBERS[0] and first_fails is not None:
                raise first_fails
            await trio.sleep_forever()

        with pytest.raises(Unavailable) as unavailable:
            await etcd.on_members(attempt, what, retry_sent=True)
        return unavailable.value.reason


@pytest.mark.parametrize("first_fails", [None, MemberFailed("etcdserver: request timed out", sent=True)])
def test_a_change_whose_attempts_went_unanswered_says_its_outcome_is_unknown(first_fails):
    """A put that reached a member and got no answer may have taken effect: the message says so, not only
    that there was no quorum."""
    reason = run_mocked(given_up, "/kv/put", first_fails)
    assert "/kv/put: outcome unknown (it may have taken effect), no quorum within 8s" in reason


@pytest.mark.parametrize("what, unknown", [
    ("/kv/put", True), ("/kv/deleterange", True), ("/kv/txn", True), ("/kv/compaction", True),
    ("/lease/grant", True), ("/election/campaign", True), ("/election/resign", True),
    ("/kv/range", False), ("/lease/timetolive", False), ("/election/leader", False), ("watch", False),
    ("/lease/keepalive", False), ("/lease/revoke", False)])
def test_only_a_change_whose_effect_matters_says_its_outcome_is_unknown(what, unknown):
    """Unanswered to the end, a change of keys, leases or the election may have taken effect and says so;
    a read, the watch and a lease's keepalive or revoke (which the caller counts as failed either way) say
    no quorum only, so the reason a refused submit quotes does not call their outcome unknown."""
    reason = run_mocked(given_up, what, None)
    assert reason.startswith(f"etcd: {what}: " + ("outcome unknown (it may have taken effect), " if unknown else "")
                             + "no quorum within 8s")


def test_a_change_refused_before_it_was_proposed_says_no_quorum_only():
    """Members that said 'no leader' (nothing proposed) leave no doubt: the put had no effect."""
    no_leader = MemberFailed("etcdserver: no leader", sent=False)

    async def refused(what):
        async with Etcd(MEMBERS[:1], timeout=8.0) as etcd:
            async def attempt(url):
                raise no_leader
            with pytest.raises(Unavailable) as unavailable:
                await etcd.on_members(attempt, what, retry_sent=True)
            return unavailable.value.reason

    assert run_mocked(refused, "/kv/put").startswith("etcd: /kv/put: no quorum within 8s")
