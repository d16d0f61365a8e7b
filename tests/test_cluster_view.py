"""Tiers 1-2: the cluster's pure parts and /nodes, /cluster without etcd or FUSE.

`[cluster]` settings and their refusals, the etcd key layout, a node's record round trip,
the view that etcd's events build (up, down, leader), the renderers of /nodes/NAME/status
and tasks, and /nodes and /cluster of a single node through the tree. The same against
a real etcd and three daemons is test_cluster_nodes.py.
"""
import errno
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apeinxfs import config as config_mod
from apeinxfs.cluster.etcd_records import Event, KeyValue
from apeinxfs.cluster.history import Compaction
from apeinxfs.cluster.records import MAX_RANGES, Keys, NodeRecord, NodeView, pid_ranges, pids_of
from apeinxfs.cluster.settings import ClusterSettings
from apeinxfs.cluster.view import ClusterView
from apeinxfs.kernel.errors import ApeinxError
from apeinxfs.kernel.events import Fence
from apeinxfs.nodes import members
from apeinxfs.nodes.tree import Tree
from test_journal_runtime import open_runtime, submit
from test_nodes import resolve, text
from test_shared_settings import node

KEYS = Keys("apx/")
ENDPOINTS = ["http://127.0.0.1:2379"]


def load(tmp_path, cluster: str, node: str = "a"):
    path = tmp_path / "config.toml"
    path.write_text(f'[daemon]\nnode = "{node}"\n[cluster]\n{cluster}\n')
    return config_mod.load(str(path), str(tmp_path / "state"), use_nvml=False)


def refusal(call) -> ApeinxError:
    with pytest.raises(ApeinxError) as caught:
        call()
    return caught.value


# -- settings ----------------------------------------------------------------------------------------


def test_without_etcd_there_is_no_cluster(tmp_path):
    """The defaults (lease_s, pid_block, prefix) alone make a single node, pids from 1."""
    config = load(tmp_path, "lease_s = 9")
    assert config.cluster is None and not config.kernel.pid_blocks


def token(tmp_path, mode: int = 0o600) -> str:
    path = tmp_path / "token"
    path.write_text("s3cret\n")
    path.chmod(mode)
    return str(path)


def test_cluster_settings_and_their_defaults(tmp_path):
    """etcd, advertise and token_file are read (URLs without a trailing slash); lease_s 15, blocks of
    100,000, output replicated every 2 s and a stalled peer dropped after 10 s by default."""
    config = load(tmp_path, f'etcd = ["http://10.0.0.1:2379/", "http://e2:2379"]\nadvertise = "10.0.0.1:7070"\n'
                            f'token_file = "{token(tmp_path)}"')
    assert config.cluster == ClusterSettings(etcd=("http://10.0.0.1:2379", "http://e2:2379"),
                                             advertise="10.0.0.1:7070", token_file=token(tmp_path))
    assert (config.cluster.lease_s, config.cluster.pid_block, config.cluster.prefix) == (15, 100_000, "apeinxfs/")
    assert config.cluster.replicate_s == 2 and config.kernel.pid_blocks and config.cluster.peer_stall_s == 10


@pytest.mark.parametrize("cluster, words", [
    ('etcd = []', "cluster.etcd must be a list"),
    ('etcd = ["10.0.0.1:2379"]', "is not an http://HOST:PORT or https://HOST:PORT URL"),
    ('etcd = ["http://e1"]', "is not an http://HOST:PORT or https://HOST:PORT URL"),
    ('etcd = ["http://e1:1"]\nlease_s = 1', "cluster.lease_s must be an integer >= 2"),
    ('etcd = ["http://e1:1"]\npid_block = 0', "cluster.pid_block must be an integer >= 1"),
    ('etcd = ["http://e1:1"]\nadvertise = "http://host:1"\ntoken_file = "/t"', "cluster.advertise must be HOST:PORT"),
    ('etcd = ["http://e1:1"]\nadvertise = "host:1"\ntoken_file = "/nonexistent/token"', "No such file"),
    ('etcd = ["http://e1:1"]\nprefix = "x"', "cluster.prefix must be a key prefix"),
    ('etcd = ["http://e1:1"]\nport = 1', "unknown key cluster.port"),
    ('etcd = ["http://e1:1"]\nreplicate_s = -1', "cluster.replicate_s must be an integer >= 0"),
    ('etcd = ["http://e1:1"]\npeer_stall_s = 0', "cluster.peer_stall_s must be an integer >= 1"),
])
def test_bad_cluster_settings_are_refused_naming_the_key(tmp_path, cluster, words):
    """Each bad [cluster] value is refused with EINVAL and a reason naming the key."""
    refused = refusal(lambda: load(tmp_path, cluster))
    assert refused.errno == errno.EINVAL and words in refused.reason


def test_a_token_others_can_read_a_lone_advertise_and_a_node_name_with_a_slash_are_refused(tmp_path):
    """The shared secret must not be world-readable; advertise needs its token file; a node's name must do
    as a directory and a key."""
    shared = token(tmp_path, 0o644)
    assert "chmod o-r" in refusal(lambda: load(tmp_path, f'etcd = ["http://e1:1"]\nadvertise = "h:1"\n'
                                                         f'token_file = "{shared}"')).reason
    assert "go together" in refusal(lambda: load(tmp_path, 'etcd = ["http://e1:1"]\nadvertise = "h:1"')).reason
    assert "daemon.node" in refusal(lambda: load(tmp_path, 'etcd = ["http://e1:1"]', node="a/b")).reason


# -- records, keys and the view ----------------------------------------------------------------------


def record(name: str, epoch: int = 1, **fields) -> NodeRecord:
    return NodeRecord(name=name, epoch=epoch, seen_us=1_764_000_000_000_000, **fields)


def kv(key: bytes, value: bytes, revision: int) -> KeyValue:
    return KeyValue(key=key, value=value, create_revision=revision, mod_revision=revision, version=1)


def test_a_record_round_trips_through_json_and_keys_say_their_kind():
    """A record comes back equal from its JSON; each key names its kind and node."""
    sent = record("a", 3, gpus=2, slots_free=16, kv_pages_free=380, live=2, tasks="4,9", models=("sim",),
                  advertise="http://h:1")
    assert NodeRecord.from_json(sent.to_json()) == sent
    assert [KEYS.kind_of(key) for key in (KEYS.node("a"), KEYS.up("b"), KEYS.epoch("c"), KEYS.pids)] == [
        ("nodes", "a"), ("up", "b"), ("epoch", "c"), ("pids", "next")]


def test_the_view_follows_ups_downs_and_the_oldest_candidate_leads():
    """Loaded records with up keys are up; the oldest election key leads; a deleted up key leaves the node
    listed as down with its last record; a newer candidate leads once the older one's key goes."""
    view = ClusterView(KEYS)
    view.load([kv(KEYS.node("a"), record("a").to_json(), 2), kv(KEYS.up("a"), b"1", 2),
               kv(KEYS.node("b"), record("b").to_json(), 3), kv(KEYS.up("b"), b"1", 3),
               kv(KEYS.election + b"/1f", b"b", 4), kv(KEYS.election + b"/2e", b"a", 5)], revision=5)
    assert {name: (node.up, node.leader) for name, node in view.nodes().items()} == {"a": (True, False),
                                                                                      "b": (True, True)}
    view.apply(Event("DELETE", kv(KEYS.up("b"), b"", 6), None))
    view.apply(Event("DELETE", kv(KEYS.election + b"/1f", b"", 7), None))
    view.apply(Event("PUT", kv(KEYS.node("a"), record("a", 2).to_json(), 8), None))
    nodes = view.nodes()
    assert (nodes["b"].up, nodes["b"].leader, nodes["a"].leader, nodes["a"].record.epoch) == (False, False, True, 2)
    assert view.revision == 8


def test_a_down_nodes_lingering_candidacy_leads_no_one():
    """A down node whose old election key outlives its up key (a lease not revoked) is not the leader;
    the oldest up candidate is."""
    view = ClusterView(KEYS)
    view.load([kv(KEYS.node("a"), record("a").to_json(), 2), kv(KEYS.up("a"), b"1", 2),
               kv(KEYS.node("c"), record("c").to_json(), 3), kv(KEYS.election + b"/0c", b"c", 3),
               kv(KEYS.election + b"/2e", b"a", 5)], revision=5)
    assert {name: (node.up, node.leader) for name, node in view.nodes().items()} == {"a": (True, True),
                                                                                      "c": (False, False)}


def test_status_and_tasks_render_a_node_as_the_man_page_says():
    """status: Key:<TAB>value lines in order; tasks: one pid a line."""
    node = NodeView(record("b", 4, gpus=2, slots_free=15, kv_pages_free=300, queued=1, running=1, live=5,
                           tasks="7,12-14,20", models=("sim", "tiny"), prefix_blocks=9), up=False, leader=False)
    assert members.status(node) == ("Name:\tb\nState:\tdown\nEpoch:\t4\nLeader:\tno\nGpus:\t2\nSlotsFree:\t15\n"
                                    "KVPagesFree:\t300\nQueued:\t1\nTasksRunning:\t1\nTasksLive:\t5\n"
                                    "Models:\tsim,tiny\nPrefixBlocks:\t9\nAdvertise:\t-\n"
                                    "LastSeen:\t2025-11-24T16:00:00Z\nRecord:\tok\n")
    assert members.tasks(node.record.tasks) == "7\n12\n13\n14\n20\n"


@given(st.sets(st.integers(1, 300)))
def test_pids_round_trip_through_their_ranges(pids):
    """pid_ranges of pids in order gives them back, in order, through pids_of."""
    assert list(pids_of(pid_ranges(sorted(pids)))) == sorted(pids)


def test_ranges_stop_at_max_ranges():
    """A record holds at most MAX_RANGES ranges: the first ones, in pid order."""
    text = pid_ranges(list(range(1, 2 * MAX_RANGES + 10, 2)))
    assert text.count(",") == MAX_RANGES - 1 and list(pids_of(text))[-1] == 2 * MAX_RANGES - 1


# -- a single node's tree ----------------------------------------------------------------------------


def test_a_single_node_lists_itself_up_and_leading(tmp_path):
    """/nodes of a single node holds just it (epoch 0, leader) with its live tasks, no other name's; /cluster says
    single."""
    with open_runtime(tmp_path) as rt:
        tree = Tree(rt)
        pid = submit(rt, tokens=50)
        assert [name for name, _ in resolve(tree, "/nodes").entries()] == ["local"]
        status = dict(line.split(":\t") for line in text(tree, "/nodes/local/status").splitlines())
        assert (status["State"], status["Epoch"], status["Leader"], status["Gpus"]) == ("up", "0", "yes", "1")
        assert text(tree, "/nodes/local/tasks") == f"{pid}\n"
        assert text(tree, "/cluster") == "Node:\tlocal\nMode:\tsingle\nPidsLeft:\t-\n"
        assert refusal(lambda: resolve(tree, "/nodes/other")).errno == errno.ENOENT
        assert refusal(members.NodeDir(inode=0, rt=rt, name="other").seen_tasks).errno == errno.ENOENT


def test_a_cluster_nodes_tasks_file_lists_its_live_keys_pids_else_its_older_record_s(tmp_path):
    """On a cluster node, /nodes/b/tasks lists b's live keys' pids, its tenants' merged in order, while it has
    some; its record's (an older version's) once they are gone; ENOENT for a node never seen or its record gone."""
    rt = node(tmp_path)
    view, tree = rt.cluster.view, Tree(rt)
    view.apply(Event("PUT", kv(view.keys.node("b"), record("b", tasks="3", tenants={"t": "3"}).to_json(), 2), None))
    for tenant, pids in [("u", b"8-9"), ("v", b"7,10")]:
        view.apply(Event("PUT", kv(view.keys.live("b", tenant), pids, 3), None))
    assert text(tree, "/nodes/b/tasks") == "7\n8\n9\n10\n"
    for tenant in "uv":
        view.apply(Event("DELETE", kv(view.keys.live("b", tenant), b"", 4), None))
    assert text(tree, "/nodes/b/tasks") == "3\n"
    assert refusal(lambda: text(tree, "/nodes/c/tasks")).errno == errno.ENOENT
    directory = members.NodeDir(inode=0, rt=rt, name="b")
    view.apply(Event("DELETE", kv(view.keys.node("b"), b"", 5), None))
    assert refusal(directory.seen_tasks).errno == errno.ENOENT


def test_the_compaction_row_is_the_leaders_and_the_tls_renewal_and_peer_token_rows_last(tmp_path):
    """/cluster's Compaction row (members.link) is the leader's Compaction state; a node that no longer leads
    shows - (its state from when it led is not the cluster's any more); the last rows are TlsRenewal,
    PeerToken (- without a token file) and Engines (held while the node is fenced)."""
    with open_runtime(tmp_path) as rt:
        member = SimpleNamespace(problem=None, epoch=2, leading=True)
        compaction = Compaction(member)
        compaction.compacted = 881
        rt.cluster = SimpleNamespace(member=member, compaction=compaction,
                                     etcd=SimpleNamespace(tls=SimpleNamespace(state="ok")),
                                     settings=SimpleNamespace(tokens=None))
        assert members.link(rt).splitlines()[-5:] == ["PidsLeft:\t-", "Compaction:\trevision 881", "TlsRenewal:\tok",
                                                      "PeerToken:\t-", "Engines:\trunning"]
        member.leading = False
        assert members.link(rt).splitlines()[-4] == "Compaction:\t-"
        rt.kernel.apply(rt.kernel.admit(Fence(held=True, reason="the lease may have expired"), 0, {}), 0)
        assert members.link(rt).splitlines()[-1] == "Engines:\theld"


def test_a_task_key_named_by_unicode_digits_or_thousands_of_them_is_dropped_at_its_put_and_its_delete():
    """Task keys tasks/² and tasks/ of 5,000 digits put and deleted (written by hand): the view goes on and
    holds task 3's key throughout."""
    view, value = ClusterView(KEYS), b'{"owner": "a", "epoch": 1, "uid": 0, "spec": {"name": "j"}}'
    view.apply(Event("PUT", kv(KEYS.all + b"tasks/3", value, 1), None))
    for name in ["\u00b2".encode(), b"1" * 5000]:
        view.apply(Event("PUT", kv(KEYS.all + b"tasks/" + name, value, 2), None))
        view.apply(Event("DELETE", kv(KEYS.all + b"tasks/" + name, b"", 3), None))
    assert list(view.tasks) == [3]
