"""Settings shared by every node: tenants, policy rules, the scheduler's policy and models.

On a cluster node an admin's write to `ctl/tenants`, `tenants/NAME/*`, `ctl/policy`,
`sched/policy` or `ctl/models` is checked by this node as on a single node (a refusal has
the same errno and reason), but its events do not go into this node's kernel: they go to
etcd as one entry of a log, `settings/NODE-ID` (put once, never changed; the revision that
created it orders the log). Every node, this one too, applies every entry in that order
as the events it holds, journaled with a `Shared` event (kernel/sharedlog.py): so each
entry applies once, replay gives the same state, and a node that was down, restarted or
cut off catches up from the next entry when it reads the prefix again (daemon.py's
follower). An entry that a node's kernel refuses when it comes (another node's write came
first: two `add t1` at once, the later is refused everywhere; `remove t1` where t1 still
has live tasks) is refused there as a whole, with a `settings` line saying why.

The writer waits (nodes/base.after_write) until etcd has the entry and this node applied
it, and gets this node's outcome: a refusal there is the write's. Without a quorum the put
fails with Unavailable (EAGAIN) within the etcd client's 8 s; if the watch has not brought
the entry back WRITE_S after the write began, TryAgain (it is in etcd and applies once it
does: no `reject` line, as for a put whose outcome etcd lost). A write not through the mount
(a last line run at close) goes to etcd in the background; a refusal there is journaled as
that write's (its handle's `reject` line, nodes/base.refused_at_close) and logged.
Not here: the watch (daemon.py), the kernel's checks.
"""
import json
import logging
import uuid
from collections.abc import Callable
from functools import partial

import attrs
import trio

from ..kernel.errors import ApeinxError, Busy, Invalid, RejectLine, TryAgain
from ..kernel.events import (RemoveModel, RemoveTenant, SetModel, SetPolicy, SetRules, SetTenant, Shared, from_row,
                             to_row)
from ..nodes.base import after_write, refused_at_close
from .etcd_records import KeyValue
from .peerdata import loads, shallow
from .records import Keys
from .view import ClusterView

log = logging.getLogger(__name__)
SETTINGS = (SetTenant, RemoveTenant, SetRules, SetPolicy, SetModel, RemoveModel)
WRITE_S = 10.0  # the longest a write waits for etcd to take its entry and this node to apply it
MAX_ENTRY = 1 << 20  # bytes of one entry at most: etcd refuses requests over 1.5 MiB
BACKGROUND = 64  # entries waiting to be put in the background at most


def encode(node: str, events: list) -> bytes:
    """An entry of the log: the writing node and its events as journal rows."""
    entry = json.dumps({"node": node, "events": [to_row(event) for event in events]}, separators=(",", ":")).encode()
    if len(entry) > MAX_ENTRY:
        raise Invalid(f"a settings change of {len(entry)} bytes is over the cluster's {MAX_ENTRY}: write it in parts")
    return entry


def decode(value: bytes) -> tuple[str, list]:
    """(node, events) of an entry; Invalid if this version cannot read it (peerdata.py: an event's body too
    deep, too), or if an event is not a settings change (only those go through the log)."""
    try:
        entry = loads(value)
        events = [from_row(kind, shallow(body)) for kind, body in entry["events"]]
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise unreadable(f"{type(exc).__name__}: {exc}") from None
    if others := sorted({type(event).__name__ for event in events if not isinstance(event, SETTINGS)}):
        raise unreadable(f"it holds {', '.join(others)}: not settings changes")
    return str(entry["node"]), events


def checked(kernel, event) -> None:
    """Check an entry's event with the kernel: a field of the wrong type (the entry of another version,
    or one put by hand) is Invalid too, not a TypeError that would stop the daemon at every start."""
    try:
        kernel.check(event)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise unreadable(f"{type(event).__name__}: {type(exc).__name__}: {exc}") from None


def unreadable(why: str) -> Invalid:
    """The refusal of an entry this version cannot read or check (`why`), logged: each node refuses it alike."""
    reason = f"unreadable settings entry ({why})"
    log.warning("cluster: %s: refused", reason)
    return Invalid(reason)


@attrs.define
class Pending:
    """A write of this node waiting for its entry to be applied here."""

    done: trio.Event = attrs.Factory(trio.Event)
    refused: ApeinxError | None = None


class SharedSettings:
    """This node's side of the settings log: what it writes, and each entry applied in order."""

    def __init__(self, runtime, etcd, keys: Keys, name: str, view: ClusterView):
        self.rt, self.etcd, self.keys, self.name, self.view = runtime, etcd, keys, name, view
        self.pending: dict[bytes, Pending] = {}
        # an entry put in the background, and how its refusal is journaled (the closed handle's)
        self.send, self.receive = trio.open_memory_channel[tuple[bytes, Callable]](BACKGROUND)

    @staticmethod
    def takes(events: list) -> bool:
        """Whether a commit of `events` is a settings change to share (an entry applied has its Shared event)."""
        return any(isinstance(e, SETTINGS) for e in events) and not any(isinstance(e, Shared) for e in events)

    def take(self, events: list) -> list:
        """Hand checked settings events to etcd (awaited by the write running now, or in the background);
        their results, as the kernel's would be."""
        self.check_elsewhere(events)
        entry = encode(self.name, events)
        if not after_write(partial(self.write, entry)):
            try:
                self.send.send_nowait((entry, refused_at_close()))
            except trio.WouldBlock:
                raise TryAgain(f"{BACKGROUND} settings changes wait for etcd already: try again") from None
        return [None] * len(events)

    def check_elsewhere(self, events: list) -> None:
        """Busy for the removal of a tenant that another up node runs live tasks of, as its live keys say: that
        node would refuse it, and keep the tenant (this node's kernel checked only its own tasks)."""
        for event in events:
            if isinstance(event, RemoveTenant):
                busy = [name for name, node in self.view.nodes().items()
                        if node.up and name != self.name and node.tenants.get(event.name)]
                if busy:
                    raise Busy(f"tenant {event.name} has live tasks on node {', '.join(busy)}; kill them first")

    async def write(self, entry: bytes) -> None:
        """Put `entry` in the log and wait until this node applied it; raise its refusal here."""
        key, deadline = self.keys.setting(f"{self.name}-{uuid.uuid4().hex[:16]}"), trio.current_time() + WRITE_S
        pending = self.pending[key] = Pending()
        try:
            revision = await self.etcd.put(key, entry)  # Unavailable within the client's 8 s
            with trio.move_on_at(deadline):
                await pending.done.wait()
        finally:
            del self.pending[key]
        if not pending.done.is_set():
            raise TryAgain(f"etcd has the change (revision {revision}) but this node has not seen it back within "
                           f"{WRITE_S:g}s of the write: it applies once its watch catches up",
                           reject_line=RejectLine.NONE)
        if pending.refused is not None:
            raise pending.refused

    async def drain(self) -> None:
        """Put the entries of writes that nobody waits for, in order; a refusal journaled as its write's."""
        async for entry, journal in self.receive:
            try:
                await self.write(entry)
            except ApeinxError as error:
                log.warning("cluster: a settings change written at close was not applied: %s", error.reason)
                journal(error)

    def load(self, kvs: list[KeyValue]) -> None:
        """Apply the entries of a read of the prefix that this node has not applied, in revision order."""
        entries = [kv for kv in kvs if self.keys.kind_of(kv.key)[0] == "settings"]
        for kv in sorted(entries, key=lambda kv: kv.create_revision):
            self.apply(kv)

    def apply(self, kv: KeyValue) -> None:
        """Apply one entry if it is past this node's place in the log: its events if this node's kernel
        accepts them all, else none; journaled with its Shared event. Degraded propagates (applied later)."""
        kernel = self.rt.kernel
        if kv.create_revision <= kernel.shared.revision:
            return  # applied already (a put retried by the client changes the key again, at a later revision)
        refused, events, node = None, [], "?"
        try:
            node, events = decode(kv.value)
            for event in events:
                checked(kernel, event)
        except ApeinxError as error:
            refused, events = error, []
        self.rt.commit_checked([*events, Shared(revision=kv.create_revision, node=node,
                                                refused=refused.reason if refused else "")])
        waiting = self.pending.get(kv.key)
        if waiting is not None:
            waiting.refused = refused
            waiting.done.set()
