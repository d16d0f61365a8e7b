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
Not here: which tasks are remote and where (the cluster's membership), ctl writes (a
handle's `write` is synchronous), the file sizes (0: the files are direct_io).
"""
import stat

import attrs

from ..kernel.errors import Denied
from .base import BlockingHandle, Caller, Handle, Node
from .tasks import PRIVATE

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
