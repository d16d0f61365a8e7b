"""Tier 3: the cluster's etcd parts against a real 3-member etcd, in process (no FUSE, no daemon).

Pid blocks granted concurrently never overlap and respect a node's floor; a member joins
with epoch 1, puts its `up` key on its lease and its record, and when the lease is gone
joins again with epoch 2, and a leader whose member loop fails steps down and is fenced as it ends (a failed join's lease is revoked after the next); the leader compacts etcd's history; a hundred exits, and outputs
larger as JSON than as text, go in txns etcd takes (cluster/guarded.py). The whole daemon, three of them, is test_cluster_nodes.py.
"""
from types import SimpleNamespace

import pytest
import trio

from apeinxfs.cluster.etcd import Etcd
from apeinxfs.cluster.etcd_records import Compacted, LeaseGone
from apeinxfs.cluster.failover import Failover
from apeinxfs.cluster.fencing import Fencing
from apeinxfs.cluster.history import Compaction
from apeinxfs.cluster.member import Member
from apeinxfs.cluster.pids import grant_block
from apeinxfs.cluster.records import Keys, NodeRecord
from apeinxfs.cluster.replicas import Replica, Replicas
from apeinxfs.cluster.taskkeys import TaskKey
from etcdcluster import EtcdCluster
from test_etcd_client import wait_for

KEYS = Keys("t/")


@pytest.fixture(scope="module")
def etcd_cluster(tmp_path_factory):
    with EtcdCluster(tmp_path_factory.mktemp("etcd")) as running:
        yield running


async def test_concurrent_pid_grants_never_overlap_and_respect_the_floor(etcd_cluster):
    """Three nodes asking for blocks of 10 at once get disjoint blocks; a floor of 500 is kept."""
    blocks = []
    async with Etcd(etcd_cluster.endpoints) as etcd:
        async def node(floor: int) -> None:
            for _ in range(4):
                blocks.append(range(first := await grant_block(etcd, KEYS.pids, floor, 10), first + 10))
        async with trio.open_nursery() as nursery:
            for floor in (1, 1, 1):
                nursery.start_soon(node, floor)
        await node(500)
    pids = [pid for block in blocks for pid in block]
    assert len(pids) == len(set(pids)) == 160 and all(block.start >= 500 for block in blocks[-4:])


async def test_a_member_joins_with_epoch_one_and_again_with_two_once_its_lease_is_gone(etcd_cluster):
    """Join puts epoch, up (on the lease) and record; a revoked lease makes the member join with epoch 2."""
    async with Etcd(etcd_cluster.endpoints) as etcd:
        member = Member(etcd, KEYS, "m", 3, lambda epoch: NodeRecord(name="m", epoch=epoch, seen_us=1))

        async def epoch_is(epoch: int) -> bool:
            up = await etcd.get(KEYS.up("m"))
            return member.epoch == epoch and up is not None and up.value == str(epoch).encode()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(member.run)
            await wait_for(lambda: epoch_is(1), "joined with epoch 1")
            first = (await etcd.get(KEYS.up("m"))).lease
            await etcd.revoke(first)
            await wait_for(lambda: epoch_is(2), "joined again with epoch 2")
            assert (await etcd.get(KEYS.up("m"))).lease != first
            assert NodeRecord.from_json((await etcd.get(KEYS.node("m"))).value).epoch == 2
            assert (await etcd.get(KEYS.epoch("m"))).value == b"2"
            nursery.cancel_scope.cancel()
        assert await etcd.get(KEYS.up("m")) is None  # left: its lease revoked on the way out


async def test_a_leader_whose_member_loop_fails_stops_leading_and_is_fenced_as_the_loop_ends(etcd_cluster):
    """A bug in what runs on leader m's lease ends m's member loop: as it ends m no longer leads and counts its
    lease as expired (Fencing holds its engines), its up key is gone, and the other member o leads."""
    keys = Keys("failing/")
    bug, ended = trio.Event(), trio.Event()

    async def leased(lease) -> None:
        await bug.wait()
        raise ValueError("a bug in what runs on the lease")

    def member(name: str, **parts) -> Member:
        return Member(etcd, keys, name, 5, lambda epoch: NodeRecord(name=name, epoch=epoch, seen_us=1), **parts)

    async def m_fails() -> None:
        with pytest.RaisesGroup(ValueError, flatten_subgroups=True):
            await m.run()
        ended.set()
    async with Etcd(etcd_cluster.endpoints) as etcd:
        m, o = member("m", leased=leased), member("o")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(m_fails)
            await wait_for(lambda: leading(m), "m leads")
            nursery.start_soon(o.run)
            await wait_for(lambda: joined(o), "o joined")
            bug.set()
            await ended.wait()
            assert not m.leading and Fencing(None, m).expired()
            assert await etcd.get(keys.up("m")) is None
            await wait_for(lambda: leading(o), "o leads")
            nursery.cancel_scope.cancel()


async def test_a_lease_granted_to_a_join_that_fails_is_revoked_after_the_next_join(etcd_cluster):
    """A bug in what a join puts on its new lease (before_up) ends the join: that lease and the key put on it
    do not wait for their TTL, they are revoked once the member has joined again."""
    keys, leases = Keys("leaking/"), []

    async def before_up(lease) -> None:
        leases.append(lease)
        await etcd.put(b"leaking/usage", b"1", lease.id)
        if len(leases) == 1:
            raise ValueError("a bug in before_up")
    async with Etcd(etcd_cluster.endpoints) as etcd:
        member = Member(etcd, keys, "m", 30, lambda epoch: NodeRecord(name="m", epoch=epoch, seen_us=1),
                        before_up=before_up)
        with pytest.raises(ValueError):
            await member.join()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(member.run)
            await wait_for(lambda: joined(member), "m joined")
            await wait_for(lambda: member_revoked(etcd, leases[0]), "the failed join's lease revoked")
            assert (await etcd.get(b"leaking/usage")).lease == leases[1].id
            nursery.cancel_scope.cancel()


async def member_revoked(etcd: Etcd, lease) -> bool:
    try:
        await etcd.time_to_live(lease.id)
    except LeaseGone:
        return True
    return False


async def joined(member: Member) -> bool:
    return member.epoch > 0


async def test_the_leader_compacts_the_history_it_saw_one_period_before(etcd_cluster):
    """A leading member's Compaction.run compacts etcd to the revision seen a period earlier: a watch
    from before it gets Compacted, and its state says the revision, also once etcd has it compacted
    already (the next passes); a member that does not lead compacts nothing."""
    keys = Keys("compact/")
    async with Etcd(etcd_cluster.endpoints) as etcd:
        member = Member(etcd, keys, "m", 3, lambda epoch: NodeRecord(name="m", epoch=epoch, seen_us=1))
        first = await etcd.put(b"compact/x", b"1")
        seen = await etcd.put(b"compact/x", b"2")
        looks = []  # one a pass of the loop, at its end

        def seen_now() -> int:
            looks.append(seen)
            return seen

        async def passed(count: int) -> bool:
            return len(looks) >= count

        async def passed_with_a_revision_to_compact() -> bool:
            return len(looks) >= 2  # the second pass had `seen` from the first, and compacted only if leading
        compaction = Compaction(member)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(compaction.run, etcd, seen_now, 0.2)
            await wait_for(passed_with_a_revision_to_compact, "a pass of the loop with a revision to compact")
            async with etcd.watch(b"compact/x", start_revision=first, nursery=nursery) as events:
                assert (await events.__anext__()).kv.value == b"1"  # not leading: nothing compacted
            nursery.start_soon(member.run)
            await wait_for(lambda: leading(member), "the member leads")

            async def compacted() -> bool:
                try:
                    async with etcd.watch(b"compact/x", start_revision=first, nursery=nursery) as events:
                        await events.__anext__()
                except Compacted as error:
                    return error.revision == seen
                return False
            await wait_for(compacted, "history compacted up to the revision seen")
            again = len(looks) + 2
            await wait_for(lambda: passed(again), "two passes more, compacting what etcd compacted already")
            assert compaction.state == f"revision {seen}"
            nursery.cancel_scope.cancel()
        assert compaction.state == "-"  # the member left: it no longer leads


async def leading(member: Member) -> bool:
    return member.leading


def node_parts(etcd: Etcd, keys: Keys, tasks: dict | None = None, failover=None) -> SimpleNamespace:
    """What Failover and Replicas take of a cluster node (daemon.Cluster), without a daemon."""
    kernel = SimpleNamespace(tasks=tasks or {})
    return SimpleNamespace(rt=SimpleNamespace(kernel=kernel), name="a", etcd=etcd, keys=keys, member=None,
                           failover=failover, settings=SimpleNamespace(replicate_s=1.0))


async def test_a_hundred_exits_at_once_end_every_task_key(etcd_cluster):
    """Failover ends 100 task keys in one report (an exit is a guard and two operations): etcd takes each
    txn, every key and output goes, and nothing stays in `written`."""
    keys = Keys("exits/")
    async with Etcd(etcd_cluster.endpoints) as etcd:
        failover = Failover(node_parts(etcd, keys))
        pids = list(range(1, 101))
        await failover.report_all([(pid, TaskKey(owner="a", epoch=1, uid=0, spec={})) for pid in pids], [])
        assert sorted(failover.written) == pids
        await failover.report_all([], pids)
        assert failover.written == {}
        assert (await etcd.range(keys.tasks, prefix=True)).kvs == []


async def test_outputs_that_grow_in_json_replicate_in_txns_etcd_takes(etcd_cluster):
    """Four tasks' outputs of 240 KB of 3-byte characters (480 KB each as JSON, 1.9 MB together) are
    replicated in txns under etcd's request limit, and read back whole."""
    keys = Keys("grown/")
    text = "\u5b57" * 80_000
    async with Etcd(etcd_cluster.endpoints) as etcd:
        task = SimpleNamespace(done=False, tokens_out=5, spec=SimpleNamespace(max_tokens=10), output=text.encode())
        failover = Failover(node_parts(etcd, keys))
        await failover.report_all([(pid, TaskKey(owner="a", epoch=1, uid=0, spec={})) for pid in range(1, 5)], [])
        replicas = Replicas(node_parts(etcd, keys, {pid: task for pid in range(1, 5)}, failover))
        await replicas.replicate()
        assert replicas.sent == {pid: 5 for pid in range(1, 5)}
        for pid in range(1, 5):
            assert Replica.from_json((await etcd.get(keys.output(pid))).value) == Replica(5, text)
