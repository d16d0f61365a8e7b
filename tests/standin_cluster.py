"""A stand-in for what cluster/routing.Router reads of daemon.Cluster, in process (no etcd, no peers): node a's
Runtime (no FUSE) and the cluster's view (view.py's own) of the nodes' records and live keys, for tier-2 tests
of the routing of writes. Peers are set in the router's `peers` by the test (fakes that behave as a node's peer
server does)."""
import attrs

from apeinxfs import config as config_mod
from apeinxfs.cluster.etcd_records import KeyValue
from apeinxfs.cluster.records import Keys, NodeRecord
from apeinxfs.cluster.routing import Router
from apeinxfs.cluster.view import ClusterView
from apeinxfs.journal import Journal
from apeinxfs.runtime import Runtime

CONFIG = '[gpus]\nsimulated = 1\nslots = 8\n[[models]]\nname = "sim"\n'


def runtime(root, config: str = CONFIG) -> Runtime:
    """A Runtime in directory `root` (made here), its journal there."""
    root.mkdir()
    (root / "config.toml").write_text(config)
    return Runtime(config_mod.load(str(root / "config.toml"), str(root), use_nvml=False),
                   Journal(str(root / "journal.db")))


def view(records: list[NodeRecord], live: dict[str, dict[str, str]]) -> ClusterView:
    """The cluster's view (view.py's own) as a read of etcd finds the nodes' `records`, every node up, and
    `live`: each node's live pids by tenant, as ranges (its live keys); no task keys, no pid blocks."""
    keys, kvs = Keys("standin/"), []
    for record in records:
        kvs += [kv(keys.node(record.name), record.to_json()), kv(keys.up(record.name), str(record.epoch).encode())]
    kvs += [kv(keys.live(node, tenant), ranges.encode()) for node, tenants in live.items()
            for tenant, ranges in tenants.items()]
    made = ClusterView(keys)
    made.load(kvs, revision=1)
    return made


def kv(key: bytes, value: bytes) -> KeyValue:
    return KeyValue(key, value, create_revision=1, mod_revision=1, version=1)


@attrs.define
class StandInCluster:
    """What Router reads of daemon.Cluster: the Runtime, the node's name, its peer token, the view."""

    rt: Runtime
    view: ClusterView
    name: str = "a"
    settings: object = attrs.field(factory=lambda: type("Settings", (), {"tokens": "token"})())


def router(rt: Runtime, records: list[NodeRecord], live: dict[str, dict[str, str]] | None = None) -> Router:
    """Node a's Router over a view of `records` and the nodes' `live` pids by tenant."""
    return Router(StandInCluster(rt, view(records, live or {})))
