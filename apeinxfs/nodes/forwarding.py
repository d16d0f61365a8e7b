"""ctl files whose writes may run on another node of the cluster (a placed submit, a remote kill).

`Forwarding` is a Command whose `route(lines, caller)` (async) looks at a write's complete
lines first (a blank one as "": each keeps its number) and returns a `Route`, or None to run them here as any Command does; a node without
a route (a single node's) runs every write here, its lines decoded once (by the Command). A Route's
`remote(here)` runs the lines elsewhere and returns the replies (pids, `ok`), or None to
run the write here after all; `here(lines, write_lines)` runs some of them here as a write of
their own (a submit placed on several nodes, this one among them, of `write_lines` in all); `done(replies)` is called once
the write ran whole, here or there (the trace's `place` line). Only the
FUSE adapter's `write_async` routes: a peer's request (peer_server.py) and a last line run at
close (`release` is synchronous) run here. The replies of lines run here by `write_here` (a write
through the mount that runs here, lines a route runs here, a peer's request) are then `settle`d,
an `after_write` wait: a submit's replies wait until the cluster has recorded its tasks
(cluster/failover.py), or become its refusal. A write with a line this node would refuse unread
(over-long, not UTF-8, control characters) runs here, so the refusal is this node's.
Not here: where tasks live or where they should run (cluster/routing.py, placement.py).
"""
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TypeAlias

import attrs

from ..kernel.errors import ApeinxError
from .base import LINE_MAX, Command, CommandHandle, after_write, decode_line, reply_text


PID_DIGITS = 19  # a pid is etcd's int64: 19 digits at most
Here: TypeAlias = Callable[[list[str], int], Awaitable[list[str]]]  # (lines, of a write of N) run here: replies


@attrs.frozen
class Route:
    """Where a write runs: `remote(here)` runs it elsewhere (some lines perhaps through `here`) and returns
    the replies, or returns None to run it here; then `done(replies)`."""

    remote: Callable[[Here], Awaitable[list[str] | None]]
    done: Callable[[list[str]], None] = lambda replies: None


@attrs.define(eq=False)
class Forwarding(Command):
    """A Command whose writes through the mount are routed by `route` first."""

    route: object = None  # async (lines, caller) -> Route | None; or None: every write runs here
    settle: object = None  # async (replies of lines run here, write_lines) -> None, raising the write's refusal; or None

    def open(self, caller, writing, reading, truncating=False):
        super().open(caller, writing, reading, truncating)  # its refusals
        return ForwardingHandle(self, caller, self.writes.limits)


@attrs.define(eq=False)
class ForwardingHandle(CommandHandle):
    """A CommandHandle of a Forwarding node, whose writes through the mount are routed first; its `settle`
    allows for the `write_lines` of a write placed on several nodes (their tasks go into etcd at once)."""

    async def write_async(self, data: bytes) -> int:
        if self.node.route is None:
            return await self.write_here(data)
        with self.holding(data):  # checked once: its unfinished line counts while the route awaits
            return await self._routed(data)

    async def _routed(self, data: bytes) -> int:
        lines, rest = self.routable(data)
        with self.refusals():
            route = await self.node.route(lines, self.caller) if any(lines) else None
            replies = None if route is None else await route.remote(self.run_here)
        if replies is None:
            count = await self.write_here(data, checked=True)
        else:
            self.pending, count = bytearray(rest), len(data)
            self.reply = reply_text(replies)
        if route is not None:
            route.done(self.reply.decode().splitlines())
        return count

    async def run_here(self, lines: list[str], write_lines: int) -> list[str]:
        """`lines` (of a write of `write_lines`, whose limits this handle checked) run here as a write of their
        own on a handle of their own (as a peer's request is): their replies, once settled; their refusal raised,
        for this handle to journal (the write's, whole or NotAllRun)."""
        handle = ForwardingHandle(self.node, self.caller, self.limits, write_lines=write_lines, part=True)
        await handle.write_here("".join(f"{line}\n" for line in lines).encode(), checked=True)
        return handle.reply.decode().splitlines()

    def _command(self, raw_lines: list[bytes]) -> list[str]:
        """The lines' replies, which the write running now settles before it returns (the node's `settle`)."""
        replies = super()._command(raw_lines)
        if self.node.settle is not None and replies:
            after_write(partial(self.node.settle, replies, self.write_lines))
        return replies

    def routable(self, data: bytes) -> tuple[list[str], bytes]:
        """The complete lines the pending bytes and `data` make, as text (a blank one as "", so that the K-th
        is line K as this node numbers a write's lines), and the bytes after them; no lines when there is
        none or one this node refuses unread (it runs here then)."""
        joined = bytes(self.pending) + data
        cut = joined.rfind(b"\n") + 1
        if self.refused_rest is not None or len(joined) - cut > LINE_MAX:
            return [], b""
        try:
            lines = [decode_line(raw) for raw in joined[:cut].split(b"\n")[:-1]]
        except ApeinxError:
            return [], b""
        return [line if line.strip() else "" for line in lines], joined[cut:]


def recording(rt):
    """The `settle` of ctl/submit: its replies wait until the cluster has recorded its tasks
    (cluster/failover.py); None on a single node, where they are answered at once."""
    if rt.cluster is None:
        return None

    async def recorded(replies: list[str], write_lines: int) -> None:
        if pids := pids_in(replies):
            await rt.cluster.failover.settle(pids, write_lines)
    return recorded


def pids_in(replies: list[str]) -> list[int]:
    """The pids a submit's `replies` name (a reply of a pid's ASCII digits, PID_DIGITS at most; the others are
    reasons): replies may be another node's, and int() of unicode digits or of thousands raises ValueError."""
    return [int(reply) for reply in replies if reply.isascii() and reply.isdigit() and len(reply) <= PID_DIGITS]


def routing(rt, what: str):
    """The `route` of ctl/`what` (submit, kill): the cluster's (cluster/routing.py); None on a single node,
    whose writes all run here."""
    return None if rt.cluster is None else getattr(rt.cluster.router, f"route_{what}")
