"""The tree, defined in one place, and how inodes find their nodes.

`build_root` lists every path of the mount and the function that renders or runs it:
to find where a file comes from, look here. `Tree` maps inodes to nodes (static ones are
numbered at boot; a task's are computed from its pid; each view of a tenanted file has its
own, views.py) and keeps getattr consistent with reads: while a file is open, its size is
that of the largest snapshot its open descriptors read, so `cp` and sendfile copy every byte
(each caller's view has its own inode, so its own size in the kernel); otherwise every getattr renders afresh (files
have no attr cache, see fs.py), so nothing read is ever stale.
"""
import stat
from collections.abc import Iterator
from functools import lru_cache, partial

from .. import health
from ..kernel.errors import ApeinxError, NoSpace, NotFound
from . import billing, ctl, gpus, memory, metrics, policy, readme, replay, sched
from .base import Caller, Command, Dir, NamedDirs, Setting, Show, viewed
from .forwarding import Forwarding, recording, routing
from . import tasks
from .members import NodesDir, link
from .models import ModelsDir, models_ctl
from .ringlog import RingLog
from .openfiles import OpenSnapshots, RenderCache
from .tasks import PID_BASE, REPLAY_SLOT, SLOTS, PidOrder, TasksDir, inode_of, owner_of
from .tenants import TenantsDir, tenants_ctl
from .views import Views

BUILT_MAX = 4096  # task directories and files kept built at most
ADMIN_READS = stat.S_IFREG | 0o400  # the whole trace, the audit trail, every tenant's bill: admins only


class ReplayDir(Dir):
    """/replay: one timeline file per task; one the kernel no longer holds is read from the trace archive."""

    def __init__(self, rt):
        super().__init__()
        self.rt = rt
        self._read_archived = lru_cache(maxsize=256)(self._archived_task)  # a gone task's lines are final
        self.order = PidOrder(rt, lambda: rt.kernel.tasks)

    def timeline(self, task) -> Show:
        return Show(show=lambda: replay.show(self.rt.kernel, task), inode=inode_of(task.pid, REPLAY_SLOT), tenant=task.tenant,
                    owner=owner_of(self.rt, task))

    def child(self, name):
        if not (name.isascii() and name.isdigit() and len(name) < 16):
            return None
        task = self.rt.kernel.tasks.get(int(name))
        return self.timeline(task) if task else self.archived(int(name))

    def archived(self, pid: int) -> Show | None:
        """The timeline of task `pid`, gone from the kernel, from its archived lines; None if it has none."""
        task = self._read_archived(pid) if 0 < pid < self.rt.kernel.tasks.next_pid else None
        if task is None:
            return None
        return Show(show=lambda: replay.show_archived(self.rt.kernel, task), inode=inode_of(pid, REPLAY_SLOT),
                    tenant=task.tenant, owner=owner_of(self.rt, task))

    def _archived_task(self, pid: int):
        archive = self.rt.archive
        return None if archive is None else replay.archived(pid, archive.of_task(pid))

    def entries(self):
        return [(name, node) for _, name, node in self.entries_from(0)]

    def entries_from(self, cookie):
        """Offsets are pids (PidOrder)."""
        for pid in self.order.from_pid(cookie):
            if (task := self.rt.kernel.tasks.get(pid)) is not None:
                yield pid + 1, str(pid), self.timeline(task)


def build_root(rt, views: Views) -> Dir:
    """Every path of the mount, and where its content comes from (`views`: the tenanted files', views.py)."""
    kernel = rt.kernel
    return Dir(children={
        "README": Show(show=readme.show),
        "ctl": Dir(children={
            "submit": Forwarding(mode=stat.S_IFREG | 0o666, run=ctl.submit(rt), route=routing(rt, "submit"),
                                 settle=recording(rt), writes=rt.writes),
            "kill": Forwarding(run=ctl.kill(rt), route=routing(rt, "kill"), writes=rt.writes),
            "tenants": Command(mode=stat.S_IFREG | 0o200, run=tenants_ctl(rt), write_role="admin", writes=rt.writes),
            "models": Command(mode=stat.S_IFREG | 0o200, run=models_ctl(rt), write_role="admin", writes=rt.writes),
            "policy": policy.RulesFile(rt=rt, show=partial(policy.show, kernel), write_role="admin",
                                      writes=rt.writes),
        }),
        "tasks": TasksDir(rt=rt),
        "models": ModelsDir(rt=rt),
        "memory": Dir(children={
            "meminfo": Show(show=lambda: memory.meminfo(kernel, rt.engine_metrics.values())),
            "pressure": Show(show=lambda: memory.pressure(kernel, rt.clock.now_us()), volatile=True),
            "prefix": Show(show=partial(memory.prefix, kernel.kv.caches)),
            **{f"gpu{g}": Dir(children={
                "pool": Show(show=partial(memory.pool, kernel, g), tenanted=True),
                "prefix": Show(show=partial(memory.prefix, kernel.kv.caches[g:g + 1])),
            }) for g in range(len(kernel.gpus))},
        }),
        "gpus": Dir(children={str(g): Dir(children={
            name: Show(show=render, volatile=True) for name, render in gpus.files(rt, g).items()
        }) for g in range(len(kernel.gpus))}),
        "trace": Dir(children={
            "events": RingLog.of(kernel.trace, mode=ADMIN_READS, read_role="admin"),
            "audit": RingLog.of(kernel.audit, mode=ADMIN_READS, read_role="admin"),
        }),
        "replay": ReplayDir(rt),
        "sched": Dir(children={
            "policy": Setting(show=partial(sched.policy, kernel), run=sched.set_policy(rt), write_role="admin",
                              writes=rt.writes),
            "runqueue": Show(show=partial(sched.runqueue, kernel), tenanted=True),
            "stat": Show(show=partial(sched.stat, kernel), tenanted=True),
        }),
        "tenants": TenantsDir(rt=rt),
        "billing": Show(mode=ADMIN_READS, show=partial(billing.show, kernel), read_role="admin"),
        "metrics": Show(show=partial(metrics.show, rt, views), volatile=True),
        "health": Show(show=lambda: health.show(rt.health, rt.supervisor, rt.snapshotter, rt.clock, views),
                       volatile=True),
        "nodes": NodesDir(rt=rt),
        "cluster": Show(show=partial(link, rt), volatile=True),
    })


class Tree:
    """Inode -> node, and the snapshot cache of rendered files."""

    def __init__(self, rt):
        self.rt = rt
        self.static: dict[int, object] = {}
        self.paths: dict[int, str] = {}
        rt.writes.send_rejects_to(self.reject_at)  # every ctl and settings file's reject lines, at this tree's paths
        self.views = Views(self.node, lambda tenant: tenant in rt.kernel.tenancy.tenants, lambda: rt.version,
                           self.opened)
        self.root = build_root(rt, self.views)
        self.named = [self.root.children[name] for name in ("models", "tenants", "nodes")]
        self._number(self.root)
        self.snapshots = OpenSnapshots(rt.config.limits.open_bytes)
        self._rendered = RenderCache()
        self._task_nodes: dict[int, tuple] = {}  # inode -> (task, node) of task files built so far

    def _number(self, node, path: str = "/") -> None:
        node.inode = len(self.static) + 1
        self.static[node.inode], self.paths[node.inode] = node, path
        if isinstance(node, Dir) and not isinstance(node, (TasksDir, ReplayDir, NamedDirs)):
            for name, child in node.entries():
                self._number(child, f"{path.rstrip('/')}/{name}")

    def path_of(self, node) -> str:
        """Where a file or directory is, for the audit trail: static ones by name, a task's, tenant's or model's from
        its inode, a view by its file's."""
        return self._path(node.inode)

    def _path(self, inode: int) -> str:
        if inode in self.paths:
            return self.paths[inode]
        if self.views.owns(inode):
            return self._path(self.views.file_of(inode))
        if (named := self._named(inode)) is not None:
            return f"{self.paths[named.inode]}/{named.name_of(inode)}"
        pid, slot = divmod(inode - PID_BASE, SLOTS)
        if slot == REPLAY_SLOT:
            return f"/replay/{pid}"
        return f"/tasks/{pid}/{tasks.FILES[slot - 1]}" if slot else f"/tasks/{pid}"

    def reject_at(self, node, refusal: ApeinxError, caller: Caller) -> None:
        """The `reject` line of a write to (or an open of) `node` refused (Runtime.reject), at its path."""
        self.rt.reject(self.path_of(node), refusal, caller.uid, caller.pid, caller.tenant)

    def node(self, inode: int):
        """The node of `inode`, or NotFound (a task that no longer exists)."""
        if (node := self.static.get(inode)) is not None:
            return node
        if inode >= PID_BASE:
            return self._task_node(inode)
        if self.views.owns(inode):
            return self.views.by_inode(inode)
        if (named := self._named(inode)) is not None:
            return named.by_inode(inode)
        raise NotFound(f"no inode {inode}")

    def _task_node(self, inode: int):
        """A task's directory or file, built once per task (and again if its owner changes)."""
        pid, slot = divmod(inode - PID_BASE, SLOTS)
        task = self.rt.kernel.tasks.get(pid)
        if task is None:
            if slot == REPLAY_SLOT and (archived := self.root.children["replay"].archived(pid)) is not None:
                return archived
            return self._remote_node(pid, slot)
        built, node = self._task_nodes.get(inode, (None, None))
        if built is not task or node.owner != owner_of(self.rt, task):  # a new task, or its tenant's gids changed
            if len(self._task_nodes) >= BUILT_MAX:
                self._task_nodes.clear()
            node = self._build_task_node(inode, task, pid, slot)
            self._task_nodes[inode] = (task, node)
        return node

    def _remote_node(self, pid: int, slot: int):
        """A directory or file of task `pid` on another node of the cluster, or NotFound."""
        remote = self.root.children["tasks"].remote_dir(pid) if slot != REPLAY_SLOT else None
        node = remote if remote is None or slot == 0 else remote.by_slot(slot)
        if node is None:
            raise NotFound(f"no task {pid}")
        return node

    def _build_task_node(self, inode: int, task, pid: int, slot: int):
        if slot == REPLAY_SLOT:
            return self.root.children["replay"].timeline(task)
        task_dir = self.root.children["tasks"].task_dir(task)
        node = task_dir if slot == 0 else task_dir.by_slot(slot)
        if node is None:
            raise NotFound(f"no inode {inode}")
        return node

    def _named(self, inode: int) -> NamedDirs | None:
        """The /models, /tenants or /nodes directory whose computed inodes hold `inode`, if any."""
        return next((named for named in self.named if named.owns(inode)), None)

    def lookup(self, parent_inode: int, name: str):
        parent = self.node(parent_inode)
        child = parent.child(name) if isinstance(parent, Dir) else None
        if child is None:
            raise NotFound(f"no such entry {name!r}")
        return child

    def reached(self, node, identity):
        """The node `identity` reaches by `node`'s name: of a tenanted file, its own view's."""
        if viewed(node):
            return self.views.node(node, node.view_of(identity))
        return node

    def entries_from(self, directory: Dir, identity, cookie: int) -> Iterator[tuple[int, str, object]]:
        """`directory`'s entries from readdir offset `cookie` on (Dir.entries_from) as `identity` reaches them; a
        tenanted file whose view has no inode left (NoSpace, views.py), or is gone (NotFound: the tenant of an
        identity taken at opendir was removed since), is left out, so that only a lookup of its name fails, never
        the listing."""
        for after, name, child in directory.entries_from(cookie):
            try:
                yield after, name, self.reached(child, identity)
            except (NoSpace, NotFound):
                continue

    def open_snapshot(self, node: Show, uid: int) -> bytes:
        """Render `node` for a new open file of `uid`, which reads that snapshot until it closes (close_snapshot);
        NoMemory past the uid's limits.open_bytes (openfiles.py)."""
        return self.snapshots.open(node, uid, self.render(node))

    def opened(self, inode: int) -> Show | None:
        """The node of `inode` while a descriptor has it open (its snapshot read), else None."""
        return self.snapshots.opened(inode)

    def close_snapshot(self, inode: int, uid: int, snapshot: bytes) -> None:
        """Forget the open `snapshot` of `inode`, held by a descriptor of `uid`."""
        self.snapshots.close(inode, uid, snapshot)

    def hold_descriptor(self, uid: int) -> None:
        """Charge `uid` for a new descriptor that reads no snapshot (a directory's, a ctl file's); NoMemory past
        the uid's limits.open_bytes (openfiles.py)."""
        self.snapshots.hold(uid)

    def drop_descriptor(self, uid: int) -> None:
        """Forget a closed descriptor of `uid` that hold_descriptor charged."""
        self.snapshots.drop(uid)

    def render(self, node: Show) -> bytes:
        """The node's text now, as a new open reads it: rendered again only once an event (or an engine scrape)
        changed something."""
        if node.volatile:
            return node.render()
        cached = self._rendered.get(node.inode, self.rt.version)
        if cached is None:
            cached = node.render()
            self._rendered.put(node.inode, self.rt.version, cached)
        return cached

    def size(self, node) -> int:
        """A file's size; of a rendered one while open, the largest of its open snapshots (a sendfile or `cp`
        of each then stops at its own end, never before)."""
        if not isinstance(node, Show):
            return node.size()
        largest = self.snapshots.largest(node.inode)
        return len(self.render(node)) if largest is None else largest
