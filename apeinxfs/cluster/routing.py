"""Which node a task lives on, and where a write's commands run: the I/O around placement.py.

`Router(cluster)` (held as `Cluster.router`) answers, from the cluster's view:
- `owner(pid)`: the other node that holds task `pid`, live or exited: the one its task key
  names once it was moved (failover.py), else one this node placed
  there (the last PLACED_MAX), else the node granted its pid block (view.holder) if its
  record says it gave the pid already, else one that lists it live (its live keys, or an older version's record); None if it is
  here or nowhere known.
- `remote_tasks()`: the live tasks the up nodes other than this one publish, with their
  tenants (for `ls /tasks`, which shows a caller its tenant's).
- `task_dir(pid)`: /tasks/PID of a task on another node, served through its peer, of its
  tenant where its node publishes it live.
- `route_submit`, `route_kill`, `route_ctl`: a nodes.forwarding.Route for a write to
  ctl/submit, ctl/kill or /tasks/PID/ctl of a remote task; a refusal names lines as a single node
  names them, though blank lines are not sent (spreading.as_written). A kill of pids on several
  nodes is refused, ENOENT first for a pid that is no task the caller sees (`check_seen`).
A submit write's lines are placed one by one and each node's sent at once (spreading.py):
to its parent's node, else where placement.spread puts it; a node that cannot be connected
to (nothing was sent) is passed over, down to this node. Each node's share is traced
(events.Placed: the `place` line). Peers are this module's httpx clients, one per address,
closed with the router.
Not here: the policy (placement.py), the wire (peer_client.py), the tree (nodes/).
"""
import bisect
import contextlib
import functools
import logging
from collections import OrderedDict
from collections.abc import Awaitable

from ..kernel.errors import ApeinxError, Hidden, Invalid
from ..kernel.grammar import parse_pid, parse_submit
from ..nodes.ctl import visible_task
from ..nodes.forwarding import Route
from ..nodes.remote import RemoteTaskDir
from .peer_client import Peer
from .peer_wire import PeerUnreachable
from .records import bounds_of, pids_of
from .spreading import Spreading, as_written

log = logging.getLogger(__name__)
PLACED_MAX = 100_000  # pids this node placed elsewhere that it remembers (so their files resolve at once)


async def as_written_by(replies: Awaitable[list[str]], indexes: list[int], count: int) -> list[str]:
    """The replies of a peer to the non-blank lines at `indexes` of a write of `count` lines, sent there without
    its blank lines; its refusal naming lines as a single node would (spreading.as_written)."""
    try:
        return await replies
    except ApeinxError as exc:
        raise as_written(exc, indexes, count)


@functools.lru_cache(maxsize=256)
def spans(ranges: str) -> tuple[list[int], list[int]]:
    """A record's "A-B,C" pid ranges as (firsts, lasts), for bisect."""
    bounds = list(bounds_of(ranges))
    return [first for first, _ in bounds], [last for _, last in bounds]


def holds(ranges: str, pid: int) -> bool:
    """Whether `pid` is in a record's "A-B,C" ranges."""
    firsts, lasts = spans(ranges)
    index = bisect.bisect_right(firsts, pid) - 1
    return index >= 0 and pid <= lasts[index]


class Router:
    """Where tasks live and where writes go, for `cluster` (daemon.Cluster); an async context manager."""

    def __init__(self, cluster):
        self.cluster, self.rt = cluster, cluster.rt
        self.here = cluster.name
        self.token = cluster.settings.tokens  # the token file (settings.py), read again once edited; or None
        self.peers: dict[str, Peer] = {}
        self.placed: OrderedDict[int, str] = OrderedDict()
        self.tally: dict[str, tuple[int, int]] = {}  # node -> (its record's seen_us, tasks placed there since)

    async def __aenter__(self) -> "Router":
        return self

    async def __aexit__(self, *exc) -> None:
        """Close every peer's client, the others too when closing one raises (that raised after)."""
        async with contextlib.AsyncExitStack() as closing:
            for peer in self.peers.values():
                closing.push_async_callback(peer.http.aclose)

    # -- where tasks live ---------------------------------------------------------------------

    def owner(self, pid: int) -> str | None:
        """The other node that holds task `pid` (see the module's docstring); None: here or nowhere."""
        view = self.cluster.view
        key = view.tasks.get(pid)
        if key is not None and key[0].origin:  # moved: where its key says, wherever it ran before
            return None if key[0].owner == self.here else key[0].owner
        if pid in self.rt.kernel.tasks:
            return None
        if (name := self.placed.get(pid)) is not None:
            return name
        name = view.holder(pid)
        if name is not None and pid >= getattr(view.records.get(name), "pid_next", 0):
            name = None  # not given yet, as far as its last record says
        if name is None:  # a pid given before its node joined the cluster: listed while live
            name = next((name for name in view.records if holds(view.tasks_of(name), pid)), None)
        return None if name == self.here else name

    def remote_tasks(self) -> list[tuple[int, str, str]]:
        """(pid, node, tenant) of the live tasks of the up nodes but this one, in pid order."""
        view = self.cluster.view
        found = []
        for name in view.records:
            if name != self.here and name in view.up:
                for tenant, ranges in view.tenants_of(name).items():
                    found += [(pid, name, tenant) for pid in pids_of(ranges)]
        return sorted(found)

    def task_dir(self, pid: int, node: str | None = None, tenant: str | None = None) -> RemoteTaskDir | None:
        """/tasks/PID of task `pid` on another node (`node`, else its owner), of `tenant` (else the one its
        node publishes for it live; None for an exited one: the peer checks its caller all the same)."""
        node = node or self.owner(pid)
        if node is None:
            return None
        return RemoteTaskDir(pid=pid, node=node, router=self, tenant=tenant or self.live_tenant(pid, node))

    def live_tenant(self, pid: int, node: str) -> str | None:
        """The tenant node `node`'s live keys (or an older version's record) name for its live task `pid`; None
        if it lists no such task."""
        return next((name for name, ranges in self.cluster.view.tenants_of(node).items() if holds(ranges, pid)),
                    None)

    def peer(self, name: str) -> Peer:
        """The client of node `name`'s peer server; PeerUnreachable (nothing sent) if it has none or this node
        has no token."""
        record = self.cluster.view.records.get(name)
        if record is None or not record.advertise or self.token is None:
            raise PeerUnreachable(f"node {name} cannot be reached: " + ("this node has no [cluster] token_file"
                           if self.token is None else "it has no [cluster] advertise address"))
        url = "http://" + record.advertise
        if (peer := self.peers.get(url)) is None:
            peer = self.peers[url] = Peer(url, self.token)
        return peer

    # -- where writes go ----------------------------------------------------------------------

    async def route_submit(self, lines: list[str], caller) -> Route | None:
        """A submit write's route: its lines placed one by one, each node's sent at once (spreading.py); None
        (run here, as any write) on a node that cannot forward, or with a line this node will refuse."""
        if self.token is None:
            return None
        try:
            specs = {index: parse_submit(line, caller.tenant) for index, line in enumerate(lines) if line}
        except ApeinxError:
            return None
        return Spreading(self, lines, specs, caller).route()

    async def route_kill(self, lines: list[str], caller) -> Route | None:
        """ctl/kill of pids on one other node goes there; of pids on several nodes, ENOENT for the first that is
        no task the caller sees (`check_seen`), else EINVAL naming the nodes."""
        indexes = [index for index, line in enumerate(lines) if line]
        try:
            owners = {pid: self.owner(pid) for pid in (parse_pid(lines[index]) for index in indexes)}
        except ApeinxError:
            return None
        nodes = set(owners.values())
        if nodes == {None}:
            return None
        if len(nodes) > 1:
            self.check_seen(owners, caller)
            raise Invalid(f"these pids live on several nodes ({', '.join(sorted(o or self.here for o in nodes))}):"
                          f" write each node's to ctl/kill separately")
        peer = self.peer(nodes.pop())
        pids = [parse_pid(lines[index]) for index in indexes]
        return Route(remote=lambda here: as_written_by(peer.kill(pids, caller), indexes, len(lines)))

    def check_seen(self, owners: dict[int, str | None], caller) -> None:
        """Hidden (ENOENT) for the first pid (of `owners`: pid -> its other node, None: here) that is no task the
        caller sees: not a task here, or not one another node publishes live, or another tenant's. So a refusal
        of pids on several nodes tells another tenant's task from no task no more than one node does (where the
        kill path's `check_visible` refuses it); a caller who may kill nothing is refused that first."""
        identity = caller.identity
        identity.require("user", "killing a task")
        for pid, node in owners.items():
            if node is None:
                if visible_task(self.rt, pid, caller) is None:
                    raise Hidden(f"no task {pid}")
            elif not holds(self.cluster.view.live_of(node, None if identity.admin else identity.tenant or ""), pid):
                raise Hidden(f"no task {pid}")  # one lookup a pid (a walk of each tenant's held the thread 91 s)

    def route_ctl(self, pid: int, node: str):
        """The route of /tasks/PID/ctl of task `pid` on `node`."""
        async def route(lines: list[str], caller) -> Route:
            peer, indexes = self.peer(node), [index for index, line in enumerate(lines) if line]
            sent = [lines[index] for index in indexes]
            return Route(remote=lambda here: as_written_by(peer.ctl(pid, sent, caller), indexes, len(lines)))
        return route

    # -- the tasks placed on each node since its record -------------------------------------------

    def pending(self) -> dict[str, int]:
        """Tasks placed on each node since the record of it the view holds (which does not count them)."""
        records = self.cluster.view.records
        return {name: count for name, (seen_us, count) in self.tally.items()
                if name in records and records[name].seen_us == seen_us}

    def count(self, node: str, pids: list[int]) -> None:
        """Count the tasks `pids` of a submit's reply from `node` as placed there, but those its record the view
        holds already counts: a node gives its pids in ascending order (its blocks are granted past every pid
        given, kernel/tasktable.py), so those below the record's pid_next were given before its record."""
        record = self.cluster.view.records.get(node)
        if record is not None:
            since = sum(pid >= record.pid_next for pid in pids)
            self.tally[node] = (record.seen_us, self.pending().get(node, 0) + since)
        if node != self.here:
            for pid in pids:
                self.placed[pid] = node
            while len(self.placed) > PLACED_MAX:
                self.placed.popitem(last=False)
