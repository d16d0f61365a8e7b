"""Tier 2: the settings log (cluster/shared.py, kernel/sharedlog.py) without etcd or FUSE: a cluster node's
runtime on a real journal, its etcd a fake that hands every put back as the watch would.

Entries apply in revision order whatever order they are read in, each once; the later of two
conflicting ones is refused on every node alike; a write through a ctl file returns once its entry
is applied here, with this node's refusal; a replay of the journal gives the same settings.
"""
import errno

import attrs

import pytest

from apeinxfs import config as config_mod
from apeinxfs.cluster.daemon import Cluster
from apeinxfs.cluster.etcd_records import KeyValue, Unavailable
from apeinxfs.cluster.records import NodeRecord
from apeinxfs.cluster.shared import MAX_ENTRY, decode, encode
from apeinxfs.journal import Journal
from apeinxfs.kernel.errors import ApeinxError, Busy, Exists, Invalid
from apeinxfs.kernel.events import RemoveTenant, SetPolicy, SetRules, SetTenant, Shared, Submit
from apeinxfs.kernel.spec import TaskSpec
from apeinxfs.kernel.tenant_config import TenantConfig
from apeinxfs.nodes.base import Caller
from apeinxfs.nodes.tree import Tree
from apeinxfs.runtime import Runtime
from test_nodes import resolve

CONFIG = '[daemon]\nnode = "n1"\n[cluster]\netcd = ["http://127.0.0.1:1"]\nprefix = "t/"\n[gpus]\nsimulated = 1\n'


class EchoEtcd:
    """An etcd whose puts come straight back through `shared.apply`, at rising revisions, as the watch
    brings them; `refuse` makes a put fail instead (no quorum); `first` (node, events) is another node's entry
    that lands in etcd's order just before the next put."""

    def __init__(self, shared, refuse: ApeinxError | None = None):
        self.shared, self.refuse, self.revision = shared, refuse, 100
        self.first: tuple | None = None

    async def put(self, key: bytes, value: bytes) -> int:
        if self.refuse is not None:
            raise self.refuse
        if self.first is not None:
            self.revision += 1
            self.shared.apply(entry(self.revision, self.first[0], *self.first[1]))
            self.first = None
        self.revision += 1
        self.shared.apply(KeyValue(key, value, self.revision, self.revision, 1))
        return self.revision


def node(tmp_path, more_config: str = "", clock=None) -> Runtime:
    """A cluster node's runtime (its Cluster built, never run) on a journal under `tmp_path`; `more_config`
    goes after CONFIG, `clock` (default: the wall's) is the runtime's."""
    path = tmp_path / "config.toml"
    path.write_text(CONFIG + more_config)
    config = config_mod.load(str(path), str(tmp_path / "state"), use_nvml=False)
    runtime = Runtime(config, Journal(str(tmp_path / "state" / "journal.db")), clock=clock)
    runtime.cluster = Cluster(config.cluster, runtime)
    return runtime


def ctl_tenants(rt, caller: Caller = Caller()):
    """A descriptor of /ctl/tenants in a Tree over `rt`, open for writing and for reading its replies."""
    return attrs.evolve(resolve(Tree(rt), "/ctl/tenants"), mode=0o100600).open(caller, writing=True, reading=True)


def entry(revision: int, node_name: str, *events) -> KeyValue:
    key = f"t/settings/{node_name}-{revision}".encode()
    return KeyValue(key, encode(node_name, list(events)), revision, revision, 1)


def settings_lines(rt: Runtime) -> list[str]:
    return [line for line in rt.kernel.trace.view()[0].decode().splitlines() if ",settings," in line]


def add(name: str, weight: int) -> SetTenant:
    return SetTenant(tenant=TenantConfig(name=name, weight=weight), what=f"add {name} weight={weight}")


def test_an_entry_holds_its_events_and_a_huge_or_unreadable_one_is_invalid():
    """encode/decode round trip; an entry over MAX_ENTRY is refused before etcd, junk is Invalid."""
    events = [add("t1", 300), SetRules(rules=("deny tenant=t1",), replace=True, uid=5)]
    assert decode(encode("a", events)) == ("a", events)
    with pytest.raises(Invalid):
        encode("a", [SetRules(rules=("deny tenant=x",) * (MAX_ENTRY // 10))])
    with pytest.raises(Invalid):
        decode(b'{"node": "a", "events": [["nosuchkind", "{}"]]}')


def test_entries_apply_in_revision_order_once_and_the_later_conflict_is_refused(tmp_path):
    """Read out of order, entries apply by create revision; the later `add t1` is refused (a `settings`
    line says why) and read again nothing applies twice."""
    rt = node(tmp_path)
    kvs = [entry(9, "b", add("t1", 222)), entry(7, "a", add("t1", 111)), entry(8, "c", SetPolicy(policy="vtc"))]
    rt.cluster.shared.load(kvs)
    kernel = rt.kernel
    assert kernel.tenancy.tenants["t1"].weight == 111 and kernel.runq.name == "vtc"
    assert (kernel.shared.revision, kernel.shared.refused) == (9, 1)
    lines = settings_lines(rt)
    assert len(lines) == 3 and "revision 9 from node b: refused here: tenant t1 exists" in lines[-1], lines
    rt.cluster.shared.load(kvs)
    assert kernel.shared.revision == 9 and len(settings_lines(rt)) == 3
    rt.journal.close()


def test_a_replay_of_the_journal_gives_the_same_settings_and_place_in_the_log(tmp_path):
    """Applied entries are journaled with their Shared events: a restarted node has the tenants and
    revision, and refuses the same entry again (Exists) rather than applying it twice."""
    rt = node(tmp_path)
    rt.cluster.shared.load([entry(5, "a", add("t1", 300)), entry(6, "b", SetRules(rules=("deny tenant=t1",)))])
    rt.journal.close()
    again = node(tmp_path)
    again.recover()
    assert again.kernel.tenancy.tenants["t1"].weight == 300 and [r.text for r in again.kernel.tenancy.rules] == \
        ["deny tenant=t1"] and again.kernel.shared.revision == 6
    with pytest.raises(Exists):
        again.kernel.check(Shared(revision=6, node="a"))
    again.journal.close()


async def test_a_write_to_ctl_tenants_returns_once_its_entry_is_applied_here(tmp_path):
    """A write through a ctl file goes to etcd and is applied from there (the fake echoes it back), with
    a Shared line; without etcd the put's EAGAIN is the write's, and nothing changed."""
    rt = node(tmp_path)
    rt.cluster.shared.etcd = EchoEtcd(rt.cluster.shared)
    handle = ctl_tenants(rt)
    assert await handle.write_async(b"add t1 weight=300\n") == 18
    assert rt.kernel.tenancy.tenants["t1"].weight == 300 and rt.kernel.shared.revision == 101
    rt.cluster.shared.etcd = EchoEtcd(rt.cluster.shared, refuse=Unavailable("etcd: no quorum within 8s"))
    with pytest.raises(Unavailable) as refused:
        await handle.write_async(b"add t2\n")
    assert refused.value.errno == errno.EAGAIN and "t2" not in rt.kernel.tenancy.tenants
    assert (await handle.read(0, 200, None)).startswith(b"error: etcd: no quorum")
    rt.journal.close()


async def test_an_entry_this_node_refuses_when_it_comes_fails_the_write_with_that_refusal(tmp_path):
    """Another node's `add t1` lands first in etcd's order: this node's own `add t1`, checked before it
    came, is refused when applied, and the write fails with EEXIST."""
    rt = node(tmp_path)
    echo = rt.cluster.shared.etcd = EchoEtcd(rt.cluster.shared)
    handle = ctl_tenants(rt)
    echo.first = ("b", [add("t1", 222)])
    with pytest.raises(Exists) as refused:
        await handle.write_async(b"add t1 weight=300\n")
    assert refused.value.errno == errno.EEXIST and rt.kernel.tenancy.tenants["t1"].weight == 222
    rt.journal.close()


def test_only_settings_changes_are_shared(tmp_path):
    """A submit commits here; a settings change outside a write through the mount waits for the
    background writer; an applied entry (with its Shared event) is not shared again."""
    rt = node(tmp_path)
    shared = rt.cluster.shared
    assert not shared.takes([Submit(spec=TaskSpec(name="j"))])
    assert shared.takes([SetPolicy(policy="vtc")]) and not shared.takes([SetPolicy(policy="vtc"), Shared(1, "a")])
    assert rt.commit([SetPolicy(policy="vtc")]) == [None] and rt.kernel.runq.name != "vtc"
    assert shared.receive.receive_nowait()[0] == encode("n1", [SetPolicy(policy="vtc")])
    rt.journal.close()


def test_removing_a_tenant_that_another_up_node_runs_tasks_of_is_busy_here(tmp_path):
    """Node b (up) publishes live pids of t1: `remove t1` is EBUSY naming b before it reaches etcd; b down,
    or another tenant's pids, do not refuse it."""
    rt = node(tmp_path)
    record = NodeRecord(name="b", epoch=1, seen_us=0, tenants={"t1": "5-6"}).to_json()
    kvs = [KeyValue(b"t/nodes/b", record, 3, 3, 1), KeyValue(b"t/up/b", b"1", 4, 4, 1)]
    rt.cluster.view.load(kvs, 4)
    with pytest.raises(Busy) as refused:
        rt.cluster.shared.take([RemoveTenant(name="t1")])
    assert refused.value.errno == errno.EBUSY and "live tasks on node b" in refused.value.reason
    assert rt.cluster.shared.take([RemoveTenant(name="t2")]) == [None]
    rt.cluster.view.load(kvs[:1], 5)  # b down
    assert rt.cluster.shared.take([RemoveTenant(name="t1")]) == [None]
    rt.journal.close()

