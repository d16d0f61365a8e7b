"""/tasks and /tasks/PID/*: one directory per task, its files and what they show.

Inodes of a task's files are computed from its pid (no table grows with the task count):
PID_BASE + pid * SLOTS + slot. `status` follows /proc/PID/status; `output`, `events`
grow like logs; `stream` and `wait` block like pipes until the kernel changes: `stream`
wakes at each change of its task, `wait` only once the task's tree has ended.
"""
import bisect
import itertools
import os
import stat
from collections.abc import Callable, Iterable, Iterator

import attrs

from ..kernel.errors import NotFound
from ..kernel.tenant_config import Sandbox, show_group
from . import ctl
from .base import Blocking, BuiltDir, Command, Dir, Log, Show

PID_BASE = 1 << 20
SLOTS = 16
FILES = ("status", "ctl", "prompt", "output", "stream", "wait", "events", "children")
REPLAY_SLOT = 15
PRIVATE = stat.S_IFREG | 0o440  # prompt, output, stream, events: the owner and the tenant's group


def inode_of(pid: int, slot: int) -> int:
    return PID_BASE + pid * SLOTS + slot


def status(task, sandbox=None, node: str | None = None) -> str:
    """Key:<TAB>value lines in the order of docs/apeinxfs.5.md, then extras (the node it runs on, in a
    cluster; the tenant's sandbox, if it has one)."""
    deadline = "-" if task.deadline_at_us is None else f"{(task.deadline_at_us - task.submitted_us) / 1e6:g}s"
    rows = [("Name", task.spec.name), ("Pid", task.pid), ("PPid", task.parent or 0), ("Tenant", task.tenant),
            ("Uid", task.uid), ("Model", task.model), ("State", task.state), ("Prio", task.spec.prio),
            ("Weight", task.weight), ("Vruntime", task.vruntime), ("TokensIn", task.tokens_in),
            ("TokensOut", task.tokens_out), ("TokensMax", task.spec.max_tokens), ("KVPages", task.kv_pages),
            ("Exit", task.exit or "-"), ("Gpu", "-" if task.gpu is None else task.gpu),
            ("Deadline", deadline), ("SubmittedUs", task.submitted_us),
            ("FirstTokenUs", "-" if task.first_token_us is None else task.first_token_us - task.submitted_us),
            ("Sampling", task.spec.sampling.text if task.spec.sampling else "-")]
    if node is not None:
        rows.append(("Node", node))
    if sandbox is not None:
        rows.append(("Sandbox", " ".join(line.replace(" ", "=") for line in show_group(sandbox).splitlines())))
    return "".join(f"{key}:\t{value}\n" for key, value in rows)


def wait_line(kernel, task) -> bytes | None:
    """The task's exit line once it and all its children (an agent's tree) have exited; NotFound once
    it has been reaped (retention), as `wait` on a reaped process."""
    if kernel.tasks.get(task.pid) is not task:
        raise NotFound(f"task {task.pid} has been reaped")
    return (task.exit + "\n").encode() if kernel.tasks.tree_done(task) else None


def stream_poll(task, offset: int, size: int) -> bytes | None:
    """Up to `size` bytes from `offset` (a copy of those alone); b'' once the task has exited and all is read;
    None to wait."""
    if offset < len(task.output):
        return bytes(task.output[offset:offset + size])
    return b"" if task.done else None


def wait_poll(kernel, task, offset: int, size: int) -> bytes | None:
    line = wait_line(kernel, task)
    return None if line is None else line[offset:offset + size]


def _sandbox(rt, task):
    tenant = rt.kernel.tenancy.config_of(task.tenant)
    return tenant.sandbox if tenant is not None and tenant.sandbox != Sandbox() else None


def owner_of(rt, task) -> tuple[int, int]:
    """(uid, gid) its files show: whoever submitted it, and its tenant's first gid (else the daemon's)."""
    tenant = rt.kernel.tenancy.config_of(task.tenant)
    gids = tenant.members.gids if tenant else ()
    return task.uid, gids[0] if gids else os.getgid()


def _files(rt, task) -> dict:
    """Builders of the nodes of a task's files, by name: only the one asked for is built."""
    pid = task.pid
    return {
        "status": lambda: Show(show=lambda: status(task, _sandbox(rt, task), rt.cluster and rt.kernel.config.node)),
        "ctl": lambda: Command(mode=stat.S_IFREG | 0o220, run=ctl.task_ctl(rt, pid), writes=rt.writes),
        "prompt": lambda: Show(mode=PRIVATE, show=lambda: task.spec.prompt),
        "output": lambda: Log(mode=PRIVATE, source=lambda: task.output),
        "stream": lambda: Blocking(mode=PRIVATE, poll=lambda off, size: stream_poll(task, off, size), key=pid,
                                   length=lambda: len(task.output)),
        "wait": lambda: Blocking(poll=lambda off, size: wait_poll(rt.kernel, task, off, size), key=("done", pid),
                                 length=lambda: len(wait_line(rt.kernel, task) or b"")),
        "events": lambda: Log(mode=PRIVATE, source=lambda: rt.task_views.of_task(rt.kernel.trace, task),
                              head=lambda end: rt.task_views.of_task(rt.kernel.trace, task, end)),
        "children": lambda: Show(show=lambda: "".join(f"{child}\n" for child in task.children)),
    }


@attrs.define(eq=False)
class TaskDir(BuiltDir):
    """/tasks/PID: its files are built when asked for."""

    names: tuple = FILES
    rt: object = None
    task: object = None

    def build(self, name):
        return _files(self.rt, self.task)[name]()


@attrs.define(eq=False)
class PidOrder:
    """The pids of `pids()` in order, sorted again only once the kernel's tasks changed. readdir's offsets in
    /tasks and /replay are pids (an entry's offset is its pid + 1), as procfs lists /proc: a descriptor holds no
    listing, and an `ls` meets each task that exists throughout once, whatever comes and goes meanwhile."""

    rt: object
    pids: Callable[[], Iterable[int]]
    _kernel: object = None
    _key: tuple = ()
    _sorted: list[int] = attrs.Factory(list)

    def from_pid(self, first: int) -> Iterator[int]:
        """The pids from `first` on, in order."""
        kernel = self.rt.kernel
        if kernel is not self._kernel or self.key() != self._key:
            self._kernel, self._key, self._sorted = kernel, self.key(), sorted(self.pids())
        pids = self._sorted
        return itertools.islice(pids, bisect.bisect_left(pids, first), None)

    def key(self) -> tuple:
        """What changes with the kernel's set of pids: a task comes (the count, or next_pid, grows) or goes
        (reaped, retention.py: the only way out of the table); not a task's state, as the runtime's version does.
        On a cluster node also the etcd revision its cluster view has seen: the other nodes' live pids come and go
        there (their live keys, their `up` leases), unseen by the kernel and the runtime's version."""
        kernel, cluster = self.rt.kernel, self.rt.cluster
        return len(kernel.tasks), kernel.tasks.next_pid, kernel.counters.reaped, cluster and cluster.view.revision


@attrs.define(eq=False)
class TasksDir(Dir):
    """/tasks: one directory per task, in pid order."""

    rt: object = None
    order: PidOrder = attrs.field(init=False)

    def __attrs_post_init__(self):
        self.order = PidOrder(self.rt, self.pids)

    def task_dir(self, task) -> TaskDir:
        return TaskDir(inode=inode_of(task.pid, 0), rt=self.rt, task=task, tenant=task.tenant,
                       owner=owner_of(self.rt, task))

    def child(self, name):
        if not (name.isascii() and name.isdigit() and len(name) < 16):
            return None
        task = self.rt.kernel.tasks.get(int(name))
        if task is not None and task.exit == "moved":  # moved to another node by failover: served from there
            return self.remote_dir(task.pid) or self.task_dir(task)
        return self.task_dir(task) if task else self.remote_dir(int(name))

    def remote_dir(self, pid: int):
        """/tasks/PID of a task on another node of the cluster (cluster/routing.py); None if none is known."""
        return None if self.rt.cluster is None else self.rt.cluster.router.task_dir(pid)

    def entries(self):
        found = [(pid, self.task_dir(task)) for pid, task in self.rt.kernel.tasks.items()]
        if self.rt.cluster is not None:  # and the live tasks of the other nodes, in pid order
            router = self.rt.cluster.router
            found = sorted(found + [(pid, router.task_dir(pid, node, tenant)) for pid, node, tenant in
                                    router.remote_tasks()], key=lambda entry: entry[0])
        return [(str(pid), node) for pid, node in found]

    def pids(self) -> set[int]:
        """The pids of the local tasks and of the other nodes' live ones."""
        local = set(self.rt.kernel.tasks)
        return local if self.rt.cluster is None else local | {pid for pid, _, _ in self.rt.cluster.router.remote_tasks()}

    def entries_from(self, cookie):
        """Offsets are pids (PidOrder)."""
        for pid in self.order.from_pid(cookie):
            if (node := self.child(str(pid))) is not None:
                yield pid + 1, str(pid), node
