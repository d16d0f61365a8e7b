"""The etcd client (apeinxfs/cluster/etcd.py) against a real 3-member etcd on 127.0.0.1.

Each test gets a fresh cluster (tests/etcdcluster.py) so that killing members stays local;
the gateway's encoding, the failover between members, leases, watches, elections and the
fail-fast behaviour without a quorum are checked against etcd itself, never a fake.
"""
import errno

import pytest
import trio

from apeinxfs.cluster.etcd import Etcd
from apeinxfs.cluster.etcd_records import (Compacted, EtcdError, Event, LeaseGone, MemberFailed, NotLeader, Txn,
                                           TxnResult, Unavailable, prefix_end, refusal)
from etcdcluster import EtcdCluster, free_ports

TRICKY = [b"", b"\x00", b"\xff\xff\xff", bytes(range(256)), "caf\u00e9 \u2603".encode(), b"\x80not utf-8\xc3"]


@pytest.fixture
def cluster(tmp_path):
    """Three etcd members on free ports, data under tmp_path, killed by pid afterwards."""
    with EtcdCluster(tmp_path / "etcd") as running:
        yield running


async def wait_for(predicate, what: str, timeout: float = 15.0):
    """Await `predicate()` every 0.1 s until it is true; fail after `timeout` s (a hang guard)."""
    with trio.move_on_after(timeout):
        while not await predicate():
            await trio.sleep(0.1)
        return
    raise AssertionError(f"not within {timeout}s: {what}")


async def reason_of(call, kind: type[EtcdError] = EtcdError) -> str:
    """The reason of the `kind` of EtcdError that awaiting `call` must fail with."""
    with pytest.raises(kind) as caught:
        await call
    return caught.value.reason


async def reasons_of_gets(etcd: Etcd, key: bytes, count: int, kind: type[EtcdError] = EtcdError) -> list[str]:
    """The reasons of `count` concurrent gets of `key` through `etcd`, each of which must fail with `kind`."""
    reasons: list[str] = []

    async def get() -> None:
        reasons.append(await reason_of(etcd.get(key), kind))
    async with trio.open_nursery() as gets:
        for _ in range(count):
            gets.start_soon(get)
    return reasons


def test_prefix_end_follows_etcds_rule():
    """The end of a prefix range increments the last byte below 0xff; all 0xff means every key."""
    assert prefix_end(b"tasks/") == b"tasks0"
    assert prefix_end(b"a\xff\xff") == b"b"
    assert prefix_end(b"\xff") == b"\x00"


def test_answers_with_zero_fields_left_out_decode():
    """A failed txn without `succeeded`, a PUT event without `type`, a key without a lease: as etcd 3.4 sent them."""
    failed = TxnResult.from_json({"header": {"revision": "2"}, "responses": [{"response_range": {
        "header": {"revision": "2"}, "kvs": [{"key": "Zm9v", "create_revision": "2", "mod_revision": "2",
                                              "version": "1", "value": "YmFy"}], "count": "1"}}]})
    assert not failed.succeeded and failed.revision == 2 and failed.responses[0][0].value == b"bar"
    put = Event.from_json({"kv": {"key": "dzE=", "create_revision": "10", "mod_revision": "10", "version": "1",
                                  "value": "MQ=="}})
    assert put.kind == "PUT" and put.kv.lease == 0 and put.prev is None
    deleted = Event.from_json({"type": "DELETE", "kv": {"key": "dzE=", "mod_revision": "9"}})
    assert deleted.kind == "DELETE" and deleted.kv.value == b"" and deleted.kv.version == 0


def test_refusals_are_classified_by_what_they_mean():
    """A member without a leader sends the call on; a timed-out proposal has an unknown outcome; the rest are etcd's."""
    no_leader = refusal(503, {"error": "etcdserver: no leader", "message": "etcdserver: no leader", "code": 14})
    assert isinstance(no_leader, MemberFailed) and not no_leader.sent
    timed_out = refusal(503, {"message": "etcdserver: request timed out", "code": 14})
    assert isinstance(timed_out, MemberFailed) and timed_out.sent
    assert isinstance(refusal(404, {"message": "etcdserver: requested lease not found", "code": 5}), LeaseGone)
    assert isinstance(refusal(500, {"message": "election: no leader", "code": 2}), NotLeader)


async def test_keys_round_trip_arbitrary_bytes_and_prefixes(cluster):
    """Keys and values of any bytes come back as stored; prefix ranges and deletes cover exactly their keys."""
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"  # nobody listens: the client moves on
    async with Etcd([dead, *cluster.endpoints]) as etcd:
        for i, value in enumerate(TRICKY):
            await etcd.put(b"p\xff/" + bytes([i]) + value, value)
        await etcd.put(b"p\xff0", b"outside the prefix")
        found = (await etcd.range(b"p\xff/", prefix=True)).kvs
        assert [kv.value for kv in found] == TRICKY
        assert await etcd.get(b"p\xff/\x03" + bytes(range(256))) == found[3]
        assert await etcd.delete(b"p\xff/", prefix=True) == len(TRICKY)
        assert (await etcd.range(b"p\xff/", prefix=True)).kvs == []
        assert (await etcd.get(b"p\xff0")).value == b"outside the prefix"
        assert await etcd.get(b"absent") is None
        assert etcd.endpoint != dead


async def test_txn_applies_one_branch_and_reports_failure(cluster):
    """A txn whose guards hold runs its success ops; a failed one (no `succeeded` field) its failure ops."""
    async with Etcd(cluster.endpoints) as etcd:
        created = await etcd.txn(Txn().when(b"job", "create_revision", "==", 0).put(b"job", b"\x00one"))
        assert created.succeeded and created.responses == [None]
        again = await etcd.txn(Txn().when(b"job", "create_revision", "==", 0).put(b"job", b"two")
                               .get(b"job", on_failure=True))
        assert not again.succeeded
        [[kv]] = again.responses
        assert kv.value == b"\x00one" and kv.version == 1
        moved = await etcd.txn(Txn().when(b"job", "mod_revision", "==", kv.mod_revision)
                               .when(b"job", "value", "==", b"\x00one").put(b"job", b"two").delete(b"other"))
        assert moved.succeeded and moved.responses == [None, 0]
        stale = await etcd.txn(Txn().when(b"job", "mod_revision", "==", kv.mod_revision).put(b"job", b"three"))
        assert not stale.succeeded and stale.responses == []
        assert (await etcd.get(b"job")).value == b"two"


async def test_lease_expiry_deletes_its_keys_and_keepalive_notices(cluster):
    """Unrefreshed, a lease expires with its key; a keepalive then (200 without TTL) raises LeaseGone."""
    async with Etcd(cluster.endpoints) as etcd:
        lease = await etcd.grant(2)
        await etcd.put(b"member/a", b"up", lease=lease.id)
        assert await etcd.keepalive_once(lease.id) == 2
        assert (await etcd.get(b"member/a")).lease == lease.id

        async def gone():
            return await etcd.get(b"member/a") is None
        await wait_for(gone, "the leased key expires")
        with pytest.raises(LeaseGone):
            await etcd.keepalive_once(lease.id)
        with pytest.raises(LeaseGone):
            await etcd.time_to_live(lease.id)


@pytest.mark.slow
async def test_keep_alive_holds_a_lease_and_raises_once_it_is_gone(cluster):
    """The keepalive loop keeps a 2 s lease for three TTLs; revoked under it, the loop raises LeaseGone."""
    async with Etcd(cluster.endpoints) as etcd:
        lease = await etcd.grant(2)
        await etcd.put(b"member/b", b"up", lease=lease.id)
        with pytest.RaisesGroup(LeaseGone, flatten_subgroups=True), trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                await nursery.start(etcd.keep_alive, lease)
                await trio.sleep(3 * lease.ttl)
                assert (await etcd.get(b"member/b")).value == b"up"
                await etcd.revoke(lease.id)  # the loop's next refresh finds the lease gone and raises
        assert await etcd.get(b"member/b") is None
        await etcd.revoke(lease.id)  # already gone: no error


async def test_writes_go_on_when_the_leader_is_killed(cluster):
    """Killing the etcd leader stalls writes only until another member leads: a put and a repeatable txn
    sent through a follower (which forwards to the dead leader first) succeed."""
    leader = cluster.leader_index()
    others = [url for i, url in enumerate(cluster.endpoints) if i != leader]
    async with Etcd(others + [cluster.endpoints[leader]]) as etcd:
        await etcd.put(b"before", b"1")
        cluster.kill(leader)
        revision = await etcd.put(b"after", b"2")
        assert (await etcd.get(b"after")).mod_revision == revision
        guarded = Txn().when(b"after", "mod_revision", "==", revision).put(b"after", b"3")
        assert (await etcd.txn(guarded, repeatable=True)).succeeded
        assert (await etcd.get(b"before")).value == b"1" and (await etcd.get(b"after")).value == b"3"


async def test_a_stopped_member_costs_one_attempt_and_leaves_a_txn_unknown(cluster):
    """With the first member SIGSTOPped a put moves on after the attempt timeout, while a txn sent to it
    fails with EAGAIN saying its outcome is unknown (it may yet apply) instead of hanging."""
    follower = (cluster.leader_index() + 1) % 3
    ordered = [cluster.endpoints[follower]] + [u for i, u in enumerate(cluster.endpoints) if i != follower]
    async with Etcd(ordered, timeout=4.0, attempt_timeout=1.0) as etcd:
        await etcd.put(b"s", b"0")
        cluster.pause(follower)
        try:
            with pytest.raises(Unavailable, match="outcome unknown, no answer from") as unknown:
                await etcd.txn(Txn().put(b"s", b"txn"))
            assert unknown.value.errno == errno.EAGAIN
            etcd.current = 0  # start at the stopped member again
            revision = await etcd.put(b"s", b"put")
            assert etcd.endpoint != ordered[0] and (await etcd.get(b"s")).mod_revision == revision
        finally:
            cluster.resume(follower)


@pytest.mark.slow
async def test_watch_sees_changes_in_order_across_a_member_kill(cluster, nursery):
    """A prefix watch yields puts and deletes in revision order, and goes on from the next revision on
    another member when the one it streams from is killed."""
    async with Etcd(cluster.endpoints) as etcd:
        first = await etcd.put(b"w/before", b"0")
        async with etcd.watch(b"w/", prefix=True, start_revision=first, prev_kv=True, nursery=nursery) as events:
            await etcd.put(b"w/a", b"1")
            await etcd.delete(b"w/a")
            seen = [await events.__anext__() for _ in range(3)]
            assert [(e.kind, e.kv.key, e.kv.value) for e in seen] == [
                ("PUT", b"w/before", b"0"), ("PUT", b"w/a", b"1"), ("DELETE", b"w/a", b"")]
            assert seen[2].prev.value == b"1"
            killed = events.url
            cluster.kill(cluster.endpoints.index(killed))
            revisions = [await etcd.put(b"w/b", str(i).encode()) for i in range(5)]
            after = [await events.__anext__() for _ in range(5)]
            assert [e.kv.mod_revision for e in after] == revisions
            assert [e.kv.value for e in after] == [b"0", b"1", b"2", b"3", b"4"]
            assert events.connections == 2 and events.url != killed


async def test_watch_from_a_compacted_revision_raises_compacted(cluster, nursery):
    """Watching from before the compaction point raises Compacted with the oldest revision kept."""
    async with Etcd(cluster.endpoints) as etcd:
        first = await etcd.put(b"c/x", b"1")
        last = await etcd.put(b"c/x", b"2")
        await etcd.compact(last)
        async with etcd.watch(b"c/", prefix=True, start_revision=first, nursery=nursery) as events:
            with pytest.raises(Compacted) as compacted:
                await events.__anext__()
        assert compacted.value.revision == last


@pytest.mark.slow
async def test_election_hands_over_on_resign_and_on_lease_expiry(cluster):
    """Of two campaigners one leads; the second leads once the first resigns, a third once the second's
    lease expires; a stale leader's proclaim is refused."""
    async with Etcd(cluster.endpoints) as etcd:
        assert await etcd.leader(b"el") is None
        lease_a, lease_b, lease_c = await etcd.grant(30), await etcd.grant(2), await etcd.grant(30)
        leader_a = await etcd.campaign(b"el", lease_a.id, b"a")
        assert (await etcd.leader(b"el")).value == b"a"
        won, wins = {}, {b"b": trio.Event(), b"c": trio.Event()}

        async def campaign(name: bytes, lease_id: int) -> None:
            won[name] = await etcd.campaign(b"el", lease_id, name)
            wins[name].set()
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(campaign, b"b", lease_b.id)
                await trio.sleep(0.5)
                assert won == {} and (await etcd.leader(b"el")).value == b"a"
                await etcd.proclaim(leader_a, b"a2")
                assert (await etcd.leader(b"el")).value == b"a2"
                async with trio.open_nursery() as keeping:  # b holds its lease until it has won
                    keeping.start_soon(etcd.keep_alive, lease_b)
                    await etcd.resign(leader_a)
                    await wins[b"b"].wait()
                    keeping.cancel_scope.cancel()
                assert (await etcd.leader(b"el")).value == b"b"
                nursery.start_soon(campaign, b"c", lease_c.id)  # b's lease, no longer kept, expires
        assert (await etcd.leader(b"el")).value == b"c" and won[b"c"].lease == lease_c.id
        with pytest.raises(NotLeader, match="not leader"):
            await etcd.proclaim(leader_a, b"stale")


@pytest.mark.slow
async def test_quorum_loss_fails_fast_with_eagain_and_loses_nothing(cluster, nursery):
    """With two of three members killed a put, and a watch on the survivor, fail with EAGAIN and a reason
    instead of hanging; once the members are back, puts work again and every acknowledged put is there."""
    async with Etcd(cluster.endpoints) as etcd, Etcd(cluster.endpoints[2:], timeout=3.0) as survivor:
        acknowledged = {f"k{i}".encode(): await etcd.put(f"k{i}".encode(), b"v") for i in range(20)}
        cluster.kill(0)
        await etcd.put(b"one-down", b"still a quorum")
        async with survivor.watch(b"k", prefix=True, nursery=nursery) as events:
            cluster.kill(1)
            with trio.fail_after(60), pytest.raises(Unavailable) as refused:  # a hang guard only
                await etcd.put(b"no-quorum", b"x")
            assert refused.value.errno == errno.EAGAIN  # refused by the client's own bound, not hung:
            assert f"no quorum within {etcd.timeout:g}s" in refused.value.reason
            with trio.fail_after(30), pytest.raises(Unavailable, match="no leader"):
                await events.__anext__()  # the survivor ends the stream (hasleader), no member takes it
        cluster.start(0, wait=False)
        cluster.start(1)
        await etcd.put(b"after", b"quorum is back")
        for key, revision in acknowledged.items():
            assert (await etcd.get(key)).mod_revision == revision
        assert (await etcd.get(b"one-down")).value == b"still a quorum"
