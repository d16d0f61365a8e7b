"""A stand-in for what cluster/routing.Router reads of daemon.Cluster, in process (no etcd, no peers): node a's
Runtime (no FUSE) and a view of the nodes' records, for tier-2 tests of the routing of writes. Peers are set
in the router's `peers` by the test (fakes that behave as a node's peer server does)."""
import attrs

from apeinxfs import config as config_mod
from apeinxfs.cluster.records import NodeRecord, NodeView
from apeinxfs.cluster.routing import Router
from apeinxfs.journal import Journal
from apeinxfs.runtime import Runtime

CONFIG = '[gpus]\nsimulated = 1\nslots = 8\n[[models]]\nname = "sim"\n'


def runtime(root, config: str = CONFIG) -> Runtime:
    """A Runtime in directory `root` (made here), its journal there."""
    root.mkdir()
    (root / "config.toml").write_text(config)
    return Runtime(config_mod.load(str(root / "config.toml"), str(root), use_nvml=False),
                   Journal(str(root / "journal.db")))


@attrs.define
class View:
    """The cluster's view: the nodes' records, every one up, and `live`: each node's live pids by tenant, as
    ranges (its live keys); no task keys, no pid blocks."""

    records: dict[str, NodeRecord]
    live: dict[str, dict[str, str]] = attrs.Factory(dict)
    tasks: dict = attrs.Factory(dict)

    def nodes(self) -> dict[str, NodeView]:
        return {name: NodeView(record, up=True, leader=False) for name, record in sorted(self.records.items())}

    def holder(self, pid):
        return None

    def tasks_of(self, name):
        return ""

    def tenants_of(self, name):
        return self.live.get(name, {})


@attrs.define
class StandInCluster:
    """What Router reads of daemon.Cluster: the Runtime, the node's name, its peer token, the view."""

    rt: Runtime
    view: View
    name: str = "a"
    settings: object = attrs.field(factory=lambda: type("Settings", (), {"tokens": "token"})())


def router(rt: Runtime, records: list[NodeRecord], live: dict[str, dict[str, str]] | None = None) -> Router:
    """Node a's Router over a view of `records` and the nodes' `live` pids by tenant."""
    return Router(StandInCluster(rt, View({record.name: record for record in records}, live or {})))
