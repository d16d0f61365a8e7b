"""Files of a task that runs on another node, read through that node's peer server.

`RemoteFile(peer=..., pid=..., name=...)` is a node like those of nodes/tasks.py, for one of
`status`, `output`, `stream`, `wait`; `peer` is a cluster.peer_client.Peer (or anything with
its methods). Reads go to the peer for the caller who opened the file, and the peer checks
that caller as its own mount would; its refusals come back as the same errors.
- `status`: fetched at the first read and kept (a snapshot, as a local open renders it).
- `output`: each read asks for its byte range.
- `stream`, `wait`: blocking reads, admitted and ended like local ones (readers.py: caps,
  Ctrl-C within a slice); each read opens the file at its offset on the peer and returns
  the first bytes that come, or b'' at the end. One request (and connection) a read: simple
  and stateless, since a handle cannot close a kept-open stream (`release` is synchronous).
`RemoteTaskDir` is /tasks/PID of such a task: those four files and `ctl`, whose writes
through the mount are forwarded (nodes/forwarding.py); a line run at close, which cannot
wait for a peer, is refused.
Not here: which tasks are remote and where (cluster/routing.py), the file sizes (0: the
files are direct_io).
"""
import stat

import attrs

from ..kernel.errors import Denied, Invalid
from .base import BlockingHandle, BuiltDir, Caller, Handle, Node
from .forwarding import Forwarding
from .tasks import FILES, PRIVATE, inode_of

REMOTE_FILES = ("status", "ctl", "output", "stream", "wait")

@attrs.define(eq=False)
class RemoteFile(Node):
    """One file of task `pid` on the node `peer` reaches."""

    peer: object = None
    pid: int = 0
    name: str = "status"

    def open(self, caller, writing, reading, truncating=False):
        if writing:
            raise Denied("read-only file")
        handle = {"status": RemoteStatus, "output": RemoteOutput}.get(self.name, RemoteBlocking)
        return handle(self, caller)


@attrs.define(eq=False)
class RemoteTaskDir(BuiltDir):
    """/tasks/PID of task `pid` on node `node`, reached through `router` (cluster/routing.Router);
    its files sit at the slots of the local ones (tasks.FILES), so inodes find them the same way."""

    names: tuple = FILES
    pid: int = 0
    node: str = ""
    router: object = None

    def __attrs_post_init__(self):
        self.inode = inode_of(self.pid, 0)

    def child(self, name):
        return super().child(name) if name in REMOTE_FILES else None

    def entries(self):
        return [(name, self.child(name)) for name in REMOTE_FILES]

    def build(self, name):
        if name == "ctl":
            return Forwarding(mode=stat.S_IFREG | 0o220, run=self.unforwarded,
                              route=self.router.route_ctl(self.pid, self.node), writes=self.router.rt.writes)
        return remote_file(self.router.peer(self.node), self.pid, name)

    def unforwarded(self, lines, caller):
        raise Invalid(f"task {self.pid} runs on node {self.node}: a command to its ctl must end with a newline "
                      f"(it is forwarded as it is written, not at close)")


def remote_file(peer, pid: int, name: str) -> RemoteFile:
    """The node of file `name` of task `pid` on `peer`, with the modes of the local files."""
    return RemoteFile(mode=PRIVATE if name in ("output", "stream") else stat.S_IFREG | 0o444, peer=peer, pid=pid, name=name)


@attrs.define(eq=False)
class RemoteStatus(Handle):
    node: RemoteFile
    caller: Caller
    text: bytes | None = None

    async def read(self, offset, size, waiter):
        if self.text is None:
            self.text = (await self.node.peer.status(self.node.pid, self.caller)).encode()
        return self.text[offset:offset + size]


@attrs.define(eq=False)
class RemoteOutput(Handle):
    node: RemoteFile
    caller: Caller

    async def read(self, offset, size, waiter):
        return await self.node.peer.output(self.node.pid, self.caller, offset, size)


@attrs.define(eq=False)
class RemoteBlocking(BlockingHandle):
    """A BlockingHandle, so the adapter gives it a waiter; its wait is the peer's answer."""

    node: RemoteFile
    caller: Caller

    async def read(self, offset, size, waiter):
        return await waiter.blocking(self.caller, lambda: self.first_bytes(offset, size))

    async def first_bytes(self, offset: int, size: int) -> bytes:
        node = self.node
        async with node.peer.follow(f"tasks/{node.pid}/{node.name}", self.caller, offset) as chunks:
            async for data in chunks:
                return data[:size]
        return b""
