"""What a least-privilege etcd user may do, call by call, and a daemon running as one (real etcd, auth on).

One TLS member (tests/etcd_pki.py) with authentication enabled holds, beside root, user
`apx` with one role granting readwrite on exactly the daemon's two key prefixes
(`test-cluster/` and `test-cluster.out/`: records.Keys, the election's keys included),
and user `bare` with no role at all. Checked on etcd 3.4: every call the daemon makes
(keys, txn, leases, the election, the watch and its check, compaction) goes through as
`apx`; a key beside the prefixes is refused; compaction, lease grants and keepalives are
not permission-checked (`bare` may do them; it reads no key). A compaction etcd refuses
is shown in the leader's Compaction state and logged once (cluster/history.py). A
daemon configured as `apx` joins, leads and runs a task. This is what docs/cluster.md's
"A least-privilege user" states.
"""
import logging
from types import SimpleNamespace

import pytest
import trio

from apeinxfs.cluster.etcd import Etcd
from apeinxfs.cluster.etcd_records import Compacted, Txn, b64, prefix_end
from apeinxfs.cluster.history import REMEDY, Compaction
from apeinxfs.cluster.records import Keys
from daemon import Daemon, poll_until
from etcd_pki import enable_auth, gateway, pki, tls_etcd  # noqa: F401 - pki: a fixture
from test_cluster_nodes import SETTLE_S, cluster_config, joins_and_leads, link, submit_or_none
from test_etcd_auth import auth_keys, client as auth_client
from test_etcd_client import reason_of, wait_for

PREFIX = "test-cluster/"  # cluster_config's
KEYS = Keys(PREFIX)
PASSWORD = "apx pass"
DENIED = "etcdserver: permission denied"


@pytest.fixture(scope="module")
def member(pki, tmp_path_factory):
    """A TLS member with auth enabled: users root, `apx` (role apeinxfs: readwrite on the two prefixes) and
    `bare` (no role)."""
    with tls_etcd(tmp_path_factory.mktemp("etcd-role"), pki) as running:
        gateway(running, "auth/role/add", {"name": "apeinxfs"})
        for prefix in (KEYS.all, KEYS.output(0)[:-1]):  # PREFIX and PREFIX.out/
            gateway(running, "auth/role/grant", {"name": "apeinxfs", "perm": {
                "permType": "READWRITE", "key": b64(prefix), "range_end": b64(prefix_end(prefix))}})
        for user in ("apx", "bare"):
            gateway(running, "auth/user/add", {"name": user, "password": PASSWORD})
        gateway(running, "auth/user/grant", {"user": "apx", "role": "apeinxfs"})
        enable_auth(running, "root pass")
        yield running


def client(pki, member, user: str = "apx") -> Etcd:
    return auth_client(pki, member, PASSWORD, user=user)


async def test_keys_and_txns_under_both_prefixes_work(pki, member):
    """As apx: put, range, txn and delete on `PREFIX...` and `PREFIX.out/...`."""
    async with client(pki, member) as etcd:
        for key in (KEYS.node("n1"), KEYS.output(7)):
            await etcd.put(key, b"1")
            assert (await etcd.txn(Txn().when(key, "value", "==", b"1").put(key, b"2"))).succeeded
            assert (await etcd.get(key)).value == b"2"
            assert await etcd.delete(key) == 1
        assert (await etcd.range(KEYS.all, prefix=True)).revision > 0


async def test_keys_beside_the_prefixes_are_refused(pki, member):
    """As apx: a key beside the granted prefixes (`test-cluster-b/`, `test-cluster`) is refused, read or write."""
    async with client(pki, member) as etcd:
        assert DENIED in await reason_of(etcd.put(b"test-cluster-b/x", b"1"))
        assert DENIED in await reason_of(etcd.range(b"test-cluster", prefix=True))


async def test_leases_work(pki, member):
    """As apx: grant, a key on the lease, keepalive, time to live, revoke (which deletes the key)."""
    async with client(pki, member) as etcd:
        lease = await etcd.grant(10)
        await etcd.put(KEYS.up("n1"), b"1", lease.id)
        assert await etcd.keepalive_once(lease.id) > 0 and await etcd.time_to_live(lease.id) > 0
        await etcd.revoke(lease.id)
        assert await etcd.get(KEYS.up("n1")) is None


async def test_the_election_works_its_keys_under_the_prefix(pki, member):
    """As apx: campaign, leader, proclaim, resign on `PREFIX + "leader"`; the candidate's key is under it."""
    async with client(pki, member) as etcd:
        lease = await etcd.grant(10)
        leader = await etcd.campaign(KEYS.election, lease.id, b"n1")
        assert leader.key.startswith(KEYS.election + b"/")
        await etcd.proclaim(leader, b"n2")
        assert (await etcd.leader(KEYS.election)).value == b"n2"
        await etcd.resign(leader)
        assert await etcd.leader(KEYS.election) is None
        await etcd.revoke(lease.id)


async def test_a_watch_and_its_check_work(pki, member, nursery):
    """As apx: a watch of the prefix gets its event; the watch's check (a count-only range) is answered."""
    async with client(pki, member) as etcd:
        revision = await etcd.put(KEYS.node("w"), b"1")
        async with etcd.watch(KEYS.all, prefix=True, start_revision=revision, nursery=nursery) as events:
            with trio.fail_after(10):  # a hang guard
                assert (await events.__anext__()).kv.key == KEYS.node("w")
        check = {"key": b64(KEYS.all), "count_only": True}
        assert "header" in await etcd.post(member.client_url, "/kv/range", check)


async def test_compaction_works_as_apx(pki, member, nursery):
    """As apx: compaction goes through, and a watch from before the compacted revision gets Compacted."""
    async with client(pki, member) as etcd:
        first = await etcd.put(KEYS.node("c"), b"1")
        await etcd.compact(await etcd.put(KEYS.node("c"), b"2"))
        with pytest.raises(Compacted):
            async with etcd.watch(KEYS.all, prefix=True, start_revision=first, nursery=nursery) as events:
                with trio.fail_after(10):  # a hang guard
                    await events.__anext__()


async def test_a_user_without_a_role_may_compact_and_hold_leases_but_reads_no_key(pki, member):
    """As bare (no role): compaction, lease grant and keepalive go through (etcd 3.4 checks no permission
    for them); a read of the prefix is refused."""
    async with client(pki, member) as apx:
        revision = await apx.put(KEYS.node("c"), b"3")
    async with client(pki, member, "bare") as etcd:
        await etcd.compact(revision)
        lease = await etcd.grant(10)
        assert await etcd.keepalive_once(lease.id) > 0
        assert DENIED in await reason_of(etcd.range(KEYS.all, prefix=True))


async def test_a_refused_compaction_is_shown_and_logged_once_until_it_works_again(pki, member, caplog):
    """Compaction.run as a leader whose compactions etcd refuses (here: a future revision; a permission refusal
    on an etcd that wants root goes the same way, with the remedy): its state says refused, with etcd's words,
    one warning for many refusals; once etcd compacts again the state says the revision, and it is logged."""
    caplog.set_level(logging.INFO, logger="apeinxfs.cluster.history")
    compaction, passes = Compaction(SimpleNamespace(leading=True)), []
    async with client(pki, member) as etcd, trio.open_nursery() as nursery:
        revision = await etcd.put(KEYS.node("r"), b"1")
        target = [revision + 10**6]

        def seen() -> int:
            passes.append(target[0])
            return target[0]

        async def passed(count: int) -> bool:
            return len(passes) >= count
        nursery.start_soon(compaction.run, etcd, seen, 0.05)
        await wait_for(lambda: passed(6), "six passes")
        assert compaction.state.startswith("refused: ") and "future revision" in compaction.state
        assert REMEDY not in compaction.state  # not a permission: giving the user root would not help
        target[0] = revision
        first_good = len(passes)
        await wait_for(lambda: passed(first_good + 2), "a pass compacting to a revision etcd has")
        nursery.cancel_scope.cancel()
    assert compaction.state == f"revision {revision}"
    lines = [record.getMessage() for record in caplog.records if record.name == "apeinxfs.cluster.history"]
    assert len(lines) == 2 and "refused to compact" in lines[0] and "compacted again" in lines[1], lines


def test_a_compaction_refused_for_a_permission_says_what_to_do():
    """A refusal in etcd's words for a permission gets the remedy in the state; another refusal does not."""
    compaction = Compaction(SimpleNamespace(leading=True))
    compaction.refused(7, "etcd: etcdserver: permission denied (HTTP 403, gRPC code 7)")
    assert compaction.state == f"refused: etcd: etcdserver: permission denied (HTTP 403, gRPC code 7); {REMEDY}"
    compaction.refused(7, "etcd: etcdserver: too many requests (HTTP 429, gRPC code 8)")
    assert compaction.state == "refused: etcd: etcdserver: too many requests (HTTP 429, gRPC code 8)"


def test_a_daemon_running_as_apx_joins_leads_and_runs_a_task(tmp_path, pki, member):
    """A node with etcd_user apx (the two prefixes only) is up and leading, /ai/cluster says Etcd ok, and a
    task submitted there exits."""
    config = cluster_config("r1", [member.client_url]) + auth_keys(tmp_path, pki, "apx", PASSWORD)
    with Daemon(tmp_path / "ai", tmp_path / "state", config) as node:
        joins_and_leads(node, "r1")
        pid = poll_until(lambda: submit_or_none(node), SETTLE_S, "a submit")
        exit_line = poll_until(lambda: node.status(pid)["Exit"] != "-" and node.status(pid)["Exit"], SETTLE_S,
                               f"task {pid} exited")
        assert exit_line == "done", exit_line
        assert link(node)["Reason"] == "-"
        assert link(node)["Compaction"] == "-"  # nothing compacted in its first COMPACT_S
