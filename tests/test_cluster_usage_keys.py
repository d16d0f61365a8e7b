"""Tier 3: tenants' use in keys of their own (cluster/usagekeys.py, usage.Elsewheres) on a real etcd member, in
process: cluster nodes' runtimes (no FUSE, no engines) running their member, record publisher and follower.

A task quota holds across two nodes through the usage keys, the record carrying none; a change of one
tenant's use puts that tenant's key alone and a vanished use deletes it; a dead node's keys go with its
lease and its use stops counting; a new lease takes the keys over and drops stale ones; an older version's
record's use counts until the node has usage keys; a usage key that cannot be read is logged and not counted;
a joining node's usage keys are on its lease before its up key; a follower started after the keys were put
counts them from its first read.
"""
import contextlib
import json
import logging

import pytest
import trio

from apeinxfs import config as config_mod
from apeinxfs.cluster.daemon import Cluster
from apeinxfs.cluster.etcd import Etcd
from apeinxfs.cluster.etcd_records import Lease
from apeinxfs.cluster.records import Keys, NodeRecord
from apeinxfs.journal import Journal
from apeinxfs.kernel.errors import OverQuota
from apeinxfs.kernel.events import Kill, PidBlock, SetTenant, Submit
from apeinxfs.kernel.spec import TaskSpec
from apeinxfs.kernel.tenant_config import TenantConfig
from apeinxfs.runtime import Runtime
from etcdcluster import EtcdCluster
from test_etcd_client import wait_for

TENANTS = ('[[tenants]]\nname = "default"\n[[tenants]]\nname = "t"\n[tenants.quota]\ntasks = 2\n'
           '[[tenants]]\nname = "u"\n[tenants.quota]\ntasks = 5\n')


@pytest.fixture(scope="module")
def etcd_member(tmp_path_factory):
    with EtcdCluster(tmp_path_factory.mktemp("etcd"), size=1) as running:
        yield running


def cluster_node(tmp_path, etcd_member, name: str, prefix: str) -> Runtime:
    """Cluster node `name`'s runtime on the etcd member, under `prefix`, with pids from `first` on; tenants t
    (`quota tasks 2`) and u (`quota tasks 5`)."""
    path = tmp_path / f"{name}.toml"
    path.write_text(f'[daemon]\nnode = "{name}"\n[cluster]\netcd = {json.dumps(etcd_member.endpoints)}\n'
                    f'prefix = "{prefix}"\nlease_s = 5\n[gpus]\nsimulated = 1\n' + TENANTS)
    config = config_mod.load(str(path), str(tmp_path / name), use_nvml=False)
    runtime = Runtime(config, Journal(str(tmp_path / name / "journal.db")))
    runtime.cluster = Cluster(config.cluster, runtime)
    runtime.commit([PidBlock(first=1 if name.endswith("1") else 1001, count=100)])
    return runtime


@contextlib.asynccontextmanager
async def running(*nodes: Runtime, member: bool = True):
    """Each node's member, record publisher and writer of settings (unless not `member`) and follower, until the
    block is left."""
    async with contextlib.AsyncExitStack() as stack:
        for rt in nodes:
            await stack.enter_async_context(rt.cluster.etcd)
        async with trio.open_nursery() as nursery:
            for rt in nodes:
                if member:
                    nursery.start_soon(rt.cluster.member.run)
                    nursery.start_soon(rt.cluster.member.publish)
                    nursery.start_soon(rt.cluster.shared.drain)  # settings changes go through etcd
                nursery.start_soon(rt.cluster.follow, nursery)
            yield nursery
            nursery.cancel_scope.cancel()


def submit(rt: Runtime, tenant: str) -> int:
    return rt.commit([Submit(spec=TaskSpec(name="j", tenant=tenant))])[0]


def live_elsewhere(rt: Runtime, tenant: str) -> int:
    use = rt.elsewhere.get(tenant)
    return use.live if use is not None else 0


async def counts(rt: Runtime, tenant: str, live: int) -> bool:
    return live_elsewhere(rt, tenant) == live


async def test_a_task_quota_holds_across_two_nodes_through_usage_keys(etcd_member, tmp_path):
    """t (`quota tasks 2`) with 2 live tasks on n1: n2 refuses t's next submit (EDQUOT) but takes u's; n1's
    record carries no use; once one of n1's tasks is killed, n2 takes one."""
    n1, n2 = (cluster_node(tmp_path, etcd_member, name, "quota/") for name in ("n1", "n2"))
    async with running(n1, n2):
        first = submit(n1, "t")
        submit(n1, "t")
        await wait_for(lambda: counts(n2, "t", 2), "n2 counts n1's 2 tasks of t")
        with pytest.raises(OverQuota):
            submit(n2, "t")
        submit(n2, "u")
        record = await n2.cluster.etcd.get(n1.cluster.keys.node("n1"))
        assert json.loads(record.value)["usage"] == {} and NodeRecord.from_json(record.value).usage == {}
        n1.commit([Kill(pid=first)])
        await wait_for(lambda: counts(n2, "t", 1), "n2 counts n1's 1 task of t left")
        submit(n2, "t")
        await wait_for(lambda: counts(n1, "t", 1), "n1 counts n2's task of t")
        with pytest.raises(OverQuota):
            submit(n1, "t")


async def test_a_change_puts_only_its_tenants_key_and_a_vanished_use_deletes_it(etcd_member, tmp_path):
    """With t and u in use on n1, a submit of u puts usage/n1/u alone (t's key keeps its revision), a row of
    under 100 bytes, and so does the kill of u's tasks; once u has no limit its key is deleted, alone."""
    n1 = cluster_node(tmp_path, etcd_member, "n1", "change/")
    keys = n1.cluster.keys
    async with running(n1) as nursery:
        submit(n1, "t")
        u_pids = [submit(n1, "u")]

        async def both_put() -> bool:
            return len((await n1.cluster.etcd.range(keys.usage("n1"), prefix=True)).kvs) == 2
        await wait_for(both_put, "both tenants' usage keys")
        t_before = await n1.cluster.etcd.get(keys.usage("n1", "t"))
        async with n1.cluster.etcd.watch(keys.usage("n1"), prefix=True, start_revision=t_before.mod_revision + 1,
                                         nursery=nursery) as events:
            with trio.fail_after(15):  # a hang guard, not a timed assertion
                u_pids.append(submit(n1, "u"))
                seen = [await events.__anext__()]  # u's first row too, if it was put after t's
                while json.loads(seen[-1].kv.value)[0] != 2:
                    seen.append(await events.__anext__())
                assert {(event.kind, event.kv.key) for event in seen} == {("PUT", keys.usage("n1", "u"))}
                assert len(seen[-1].kv.key) + len(seen[-1].kv.value) < 100
                n1.commit([Kill(pid=pid) for pid in u_pids])
                killed = await events.__anext__()  # no task left, the tokens of their prompts used in the window
                assert (killed.kind, killed.kv.key, json.loads(killed.kv.value)[0]) == ("PUT", keys.usage("n1", "u"), 0)
                n1.commit([SetTenant(tenant=TenantConfig("u"), what="u without a quota")])
                gone = await events.__anext__()
                assert (gone.kind, gone.kv.key) == ("DELETE", keys.usage("n1", "u"))
        assert (await n1.cluster.etcd.get(keys.usage("n1", "t"))).mod_revision == t_before.mod_revision


async def test_a_dead_nodes_keys_go_with_its_lease_and_its_use_stops_counting(etcd_member, tmp_path):
    """n1's usage keys on a 2 s lease that nobody refreshes (n1 died): n2 counts its use, then etcd expires the
    lease, deleting n1's up key and usage keys, and n2 counts nothing of n1's."""
    n1, n2 = (cluster_node(tmp_path, etcd_member, name, "dead/") for name in ("n1", "n2"))
    etcd, keys = n1.cluster.etcd, n1.cluster.keys
    submit(n1, "t")
    async with running(n2), etcd:
        lease = await up_on_a_short_lease(n1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(n1.cluster.usage.keep, lease)
            await wait_for(lambda: counts(n2, "t", 1), "n2 counts n1's task")
            nursery.cancel_scope.cancel()  # n1 stops: its lease is neither refreshed nor revoked
        await wait_for(lambda: counts(n2, "t", 0), "n1's use no longer counted once its lease expired")
        assert (await etcd.range(keys.usage("n1"), prefix=True)).kvs == []


async def up_on_a_short_lease(rt: Runtime) -> Lease:
    """A 2 s lease that nobody refreshes (the node's member does not run), with the node's up key on it and its
    record put."""
    etcd, keys, name = rt.cluster.etcd, rt.cluster.keys, rt.cluster.name
    lease = await etcd.grant(2)
    await etcd.put(keys.up(name), b"1", lease.id)
    await etcd.put(keys.node(name), rt.cluster.record(1).to_json())
    return lease


async def test_a_new_lease_takes_the_keys_over_and_drops_a_stale_one(etcd_member, tmp_path):
    """Keys put on lease 1 (t, u) and a stale one of a tenant without use (left by an earlier run); keep() on
    lease 2 (a rejoin) moves t's and u's keys onto lease 2 and deletes the stale one; revoking lease 1 then
    deletes nothing of them."""
    n1 = cluster_node(tmp_path, etcd_member, "n1", "rejoin/")
    etcd, keys = n1.cluster.etcd, n1.cluster.keys
    submit(n1, "t")
    submit(n1, "u")
    t_key, u_key = keys.usage("n1", "t"), keys.usage("n1", "u")

    async def held() -> dict[bytes, int]:
        return {kv.key: kv.lease for kv in (await etcd.range(keys.usage("n1"), prefix=True)).kvs}
    async with etcd:
        first, second = await etcd.grant(30), await etcd.grant(30)
        await etcd.put(keys.usage("n1", "gone"), b"[1,0,3,0,3,0]", first.id)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(n1.cluster.usage.keep, first)
            await wait_for(lambda: held_is(held, {t_key: first.id, u_key: first.id}), "t's and u's keys on lease 1")
            await etcd.put(keys.usage("n1", "gone"), b"[1,0,3,0,3,0]", first.id)  # written meanwhile, elsewhere
            nursery.cancel_scope.cancel()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(n1.cluster.usage.keep, second)
            await wait_for(lambda: held_is(held, {t_key: second.id, u_key: second.id}), "t's and u's on lease 2")
            await etcd.revoke(first.id)
            assert await held() == {t_key: second.id, u_key: second.id}
            nursery.cancel_scope.cancel()
        await etcd.revoke(second.id)


async def held_is(held, expected: dict) -> bool:
    return await held() == expected


async def test_an_older_versions_record_use_counts_until_its_node_has_usage_keys(etcd_member, tmp_path, caplog):
    """Node `old` (up) puts its use in its record, as before: n2 counts it; once a usage key of `old` comes,
    its keys count instead, and the record again when the key goes. Unreadable keys of `old` (bad JSON, a
    bad row, a huge value) are each logged and not counted, its good key still is."""
    n2 = cluster_node(tmp_path, etcd_member, "n2", "old/")
    etcd, keys = n2.cluster.etcd, n2.cluster.keys
    old_record = {"name": "old", "epoch": 1, "seen_us": 1, "usage": {"t": [2, 0, 3, 0, 3, 0]}}
    async with running(n2, member=False):
        lease = await etcd.grant(30)
        await etcd.put(keys.up("old"), b"1", lease.id)
        await etcd.put(keys.node("old"), json.dumps(old_record).encode())
        await wait_for(lambda: counts(n2, "t", 2), "the old record's use")
        await etcd.put(keys.usage("old", "u"), b"[1,0,3,0,3,0]", lease.id)
        await wait_for(lambda: counts(n2, "u", 1), "the usage key's use")
        assert live_elsewhere(n2, "t") == 0  # the record's rows no longer count
        with caplog.at_level(logging.WARNING, logger="apeinxfs.cluster.usage"):
            for tenant, value in [("v", b"{]"), ("w", b"[1,2,3]"), ("x", b"[" + b"7," * 50_000 + b"7]")]:
                await etcd.put(keys.usage("old", tenant), value, lease.id)
            await etcd.put(keys.usage("old", "u"), b"[3,0,3,0,3,0]", lease.id)
            await wait_for(lambda: counts(n2, "u", 3), "the good key's next row")
        assert sorted(line.split("'")[1] for line in caplog.messages if "not counted" in line) == \
            ["old/v", "old/w", "old/x"]
        await etcd.delete(keys.usage("old"), prefix=True)
        await wait_for(lambda: counts(n2, "t", 2), "the old record's use again")
        await etcd.revoke(lease.id)


async def test_a_joining_nodes_use_and_live_pids_are_in_etcd_before_its_up_key(etcd_member, tmp_path):
    """n1 joins with a live task of t: its usage and live keys are put on its lease before its up key, so no
    node sees it up without its use or its tasks."""
    n1 = cluster_node(tmp_path, etcd_member, "n1", "join/")
    etcd, keys = n1.cluster.etcd, n1.cluster.keys
    submit(n1, "t")
    async with running(n1):
        async def up() -> bool:
            return await etcd.get(keys.up("n1")) is not None
        await wait_for(up, "n1 up")
        up_kv, use = await etcd.get(keys.up("n1")), await etcd.get(keys.usage("n1", "t"))
        live = await etcd.get(keys.live("n1", "t"))
    assert use is not None and json.loads(use.value)[0] == 1 and live is not None and live.value == b"1"
    assert use.create_revision < up_kv.create_revision and use.lease == up_kv.lease
    assert live.create_revision < up_kv.create_revision and live.lease == up_kv.lease


async def test_a_follower_started_after_the_keys_were_put_counts_them_from_its_first_read(etcd_member, tmp_path):
    """n1's usage key put before n2's follower starts (so no watch event brings it): n2 counts n1's use from
    its first read of the prefix."""
    n1, n2 = (cluster_node(tmp_path, etcd_member, name, "late/") for name in ("n1", "n2"))
    submit(n1, "t")
    async with running(n1):
        async def put() -> bool:
            return await n1.cluster.etcd.get(n1.cluster.keys.usage("n1", "t")) is not None
        await wait_for(put, "n1's usage key of t")
        async with running(n2, member=False):
            await wait_for(lambda: counts(n2, "t", 1), "n2 counts n1's task of t")
