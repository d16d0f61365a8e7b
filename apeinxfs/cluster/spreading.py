"""One write to ctl/submit on a cluster node on its way: its lines placed one by one, sent a node at once.

`Spreading(router, lines, specs, caller).route()` is the write's nodes.forwarding.Route. Each
line goes to its parent's node (`parent=`), else where placement.spread puts it; the lines
of each node go as one peer request (or run here, as a write of their own), the nodes' at
once. Before any line leaves while they go to several nodes, this node checks the whole write
as it would admit it, but for what only the node running a line can know
(nodes/ctl.check_anywhere: a dry run); its refusal refuses the write whole, with this node's
errno and reasons, and nothing runs anywhere. A node that cannot be connected to
(PeerUnreachable: nothing was sent) is passed over: its lines are placed again on the
others, down to this node. A node's refusal stands for its lines (each node's lines are all
or nothing there: what only it checks, or what changed since the dry run); a lost answer (PeerDown: the
outcome is unknown) is never sent elsewhere, so no line runs twice. If every line went to
this node the write runs here as any write (the route answers None). The reply keeps the
lines' order; a write sent to one node that failed there fails as that node's refusal or
lost answer (as a forwarded write); else when some line did not run it is NotAllRun:
EREMOTEIO if some line ran (partly run: not to be repeated whole), EHOSTDOWN if none ran
and an answer was lost, else the errno of the first line that did not run. A refusal's
`line K` (of the lines its node was sent) is named as the write's line, blank lines counted as
a single node counts them (a lone line sent from a write of more is given its `line K`: as_written,
which routing.py uses for ctl/kill and /tasks/PID/ctl too). Each node's tasks get a `place` line.
Not here: the policy (placement.py), the wire (peer_client.py), the handle (nodes/forwarding.py).
"""
import contextlib
import errno
import re

import attrs
import trio

from ..kernel.errors import ApeinxError, NotAllRun, RejectLine
from ..kernel.events import Placed
from ..kernel.spec import TaskSpec
from ..kernel.submits import Anywhere
from ..nodes.ctl import check_anywhere
from ..nodes.forwarding import Here, Route, pids_in
from .peer_wire import PeerDown, PeerUnreachable
from .placement import Want, eligible, spread
from .prefixes import line_chains
from .records import pid_ranges

NOWHERE = "no node up with the model is known: placed here"
LINE = re.compile(r"\bline (\d{1,9}): ", re.ASCII)  # how a refusal names one of the lines it was sent


@attrs.define
class Group:
    """The lines of a write placed on one node (indexes in line order), why, and how it went there."""

    node: str
    reason: str
    indexes: list[int] = attrs.Factory(list)
    replies: list[str] | None = None  # the node's replies, once it answered
    failure: ApeinxError | None = None  # its refusal, or PeerDown: outcome unknown

    def pids(self) -> list[int]:
        """The pids of the tasks its lines made (none before it answered)."""
        return pids_in(self.replies or [])


class Spreading:
    """One submit write on its way (see the module's docstring)."""

    def __init__(self, router, lines: list[str], specs: dict[int, TaskSpec], caller):
        self.router, self.lines, self.specs, self.caller = router, lines, specs, caller
        kernel = router.rt.kernel
        self.wants = {index: Want(frozenset({kernel.models.name_of(spec)}), chain)
                      for (index, spec), chain in zip(specs.items(), line_chains(kernel, list(specs.values())))}
        self.parents = {index: router.owner(spec.parent) or router.here
                        for index, spec in specs.items() if spec.parent is not None}
        self.passed: dict[str, str] = {}  # the nodes that could not be connected to, and why
        self.groups: list[Group] = []  # every group sent, in the order sent
        self.whole: Group | None = None  # every line's, when the whole write runs here
        self.checked = False  # whether the whole write passed check_anywhere

    def route(self) -> Route:
        return Route(remote=self.run, done=self.done)

    async def run(self, here: Here) -> list[str] | None:
        """Every line's reply, in order; None if every line goes to this node (the write runs here whole)."""
        groups = self.place(list(self.wants))
        if [group.node for group in groups] == [self.router.here]:
            self.whole = groups[0]
            return None
        while groups:
            if len(groups) > 1 and not self.checked:
                self.check_whole()
            async with trio.open_nursery() as nursery:
                for group in groups:
                    nursery.start_soon(self.send, group, here)
            self.groups += groups
            groups = self.place(sorted(index for group in groups if group.node in self.passed
                                       for index in group.indexes))
        self.trace()
        return in_line_order(self.groups, len(self.wants), len(self.lines))

    def check_whole(self) -> None:
        """The write refused whole, before any line leaves, if this node's dry run of it (ctl.check_anywhere)
        refuses a line: all but what only the node running a line can know (its pids, GPUs, KV pages, a model
        only other nodes hold where placement may send it; a child of a task there that its record does not
        list live is left to it; one of a task on a node passed over is placed here, so checked as here)."""
        here, router = self.router.here, self.router
        parents = {spec.parent: router.live_tenant(spec.parent, self.parents[index])
                   for index, spec in self.specs.items() if self.parents.get(index, here) not in (here, *self.passed)}
        known = {pid: tenant for pid, tenant in parents.items() if tenant is not None}
        left = parents.keys() - known.keys()
        specs = {index: spec for index, spec in self.specs.items() if spec.parent not in left}
        check_anywhere(router.rt, specs, len(self.lines), self.caller, Anywhere(self.models_elsewhere(), known))
        self.checked = True

    def models_elsewhere(self) -> frozenset[str]:
        """The models of the other nodes placement may send a line to (placement.eligible: up, with an address
        for peers), but those passed over: a model only another node holds is left to it only where it can go."""
        here = self.router.here
        return frozenset(model for name, view in self.router.cluster.view.nodes().items()
                         if name != here and name not in self.passed and eligible(view, frozenset(), here)
                         for model in view.record.models)

    def place(self, indexes) -> list[Group]:
        """The lines at `indexes` grouped by the node each goes to, in the order first chosen."""
        router, groups = self.router, {}
        free = [index for index in indexes if index not in self.parents]
        placed = spread(router.cluster.view.nodes(), router.here, router.pending(),
                        [self.wants[index] for index in free], self.passed)
        where = dict(zip(free, placed.nodes))
        for index in indexes:
            if index in self.parents:
                node, reason = self.parents[index], "the node of the parent task"
                if node in self.passed:
                    node, reason = router.here, f"the parent task's node {node} could not be reached: placed here"
            else:
                node = where[index] or router.here
                reason = placed.reasons.get(node, NOWHERE)
            groups.setdefault(node, Group(node, reason)).indexes.append(index)
        return list(groups.values())

    async def send(self, group: Group, here: Here) -> None:
        """The group's lines run on its node (here through `here`); its replies or its failure kept."""
        lines = [self.lines[index] for index in group.indexes]
        try:
            if group.node == self.router.here:
                group.replies = await here(lines, len(self.wants))
            else:
                group.replies = await self.router.peer(group.node).submit(lines, self.caller, len(self.wants))
        except PeerUnreachable as exc:
            self.passed[group.node] = exc.reason
        except ApeinxError as exc:
            group.failure = exc
        else:
            self.router.count(group.node, group.pids())  # so lines placed again count them

    def done(self, replies: list[str]) -> None:
        """The write ran, here whole (run answered None: its `place` line) or as `run` traced it."""
        if self.whole is not None:
            self.whole.replies, self.groups = replies, [self.whole]
            self.router.count(self.whole.node, self.whole.pids())
            self.trace()

    def trace(self) -> None:
        """A `place` line for each node's tasks, with the nodes passed over."""
        passed = "".join(f"; {node} unreachable ({why})" for node, why in self.passed.items())
        for group in self.groups:
            if not (pids := group.pids()):
                continue
            with contextlib.suppress(ApeinxError):  # degraded: the tasks stand, the line is lost
                self.router.rt.commit([Placed(node=group.node, pids=pid_ranges(pids), reason=group.reason + passed,
                                              uid=self.caller.uid, caller_pid=self.caller.pid,
                                              caller_tenant=self.caller.tenant)])


def in_line_order(groups: list[Group], count: int, written: int) -> list[str]:
    """The replies to a write's `count` lines (of `written`, blank ones counted), in line order, from its groups.
    A write that went to one node and failed there fails as that node's refusal or lost answer (as_written).
    Else NotAllRun if a node refused its lines or its answer was lost: EREMOTEIO if some line ran (an errno no write that ran
    nothing fails with: repeating this one whole, as EAGAIN invites, would run those lines a second time),
    EHOSTDOWN if none ran but some answer was lost (their outcome is unknown), else the errno of the first
    line, in the write's order; its `reject` line is this node's unless each line not run was refused by a peer
    that journaled it (lines refused here, answers lost, a peer's refusal it did not journal), and audited here
    if one of those refusals is a denial."""
    decided = [group for group in groups if group.replies is not None or group.failure is not None]
    if len(decided) == 1 and (failure := decided[0].failure) is not None:
        raise as_written(failure, decided[0].indexes, written)
    replies: dict[int, str] = {}  # by the index of its line in the write (blank ones have none)
    failed: list[tuple[int, ApeinxError]] = []
    for group in groups:
        if group.replies is not None:
            for index, reply in zip(group.indexes, group.replies):
                replies[index] = reply
        elif group.failure is not None:
            for index, reason in zip(group.indexes, failed_lines(group)):
                replies[index] = f"error: line {index + 1}: {reason}"
                failed.append((index, group.failure))
    if not failed:
        return [replies[index] for index in sorted(replies)]
    first, exc = min(failed, key=lambda entry: entry[0])
    unknown = sum(isinstance(failure, PeerDown) for _, failure in failed)
    code = errno.EREMOTEIO if any(group.pids() for group in groups) else errno.EHOSTDOWN if unknown else exc.errno
    here = [failure for _, failure in failed if failure.reject_line is not RejectLine.PEER]
    raise NotAllRun(code, f"{replies[first].removeprefix('error: ')} ({len(failed) - unknown} of {count} lines "
                    f"refused, {unknown} of unknown outcome, {count - len(failed)} ran)",
                    [replies[index] for index in sorted(replies)], RejectLine.HERE if here else RejectLine.PEER,
                    denial=any(failure.denial for failure in here))


def as_written(exc: ApeinxError, indexes: list[int], count: int) -> ApeinxError:
    """A node's refusal of the lines at `indexes` of a write of `count` lines (blank ones counted), sent there as
    a write of their own, naming lines as a single node would name them: its `line K`s named as the write's
    lines, and a lone line's reason given its `line K` if the write has more lines. Its own exception; a lost
    answer (PeerDown) as it is."""
    if isinstance(exc, PeerDown):
        return exc
    if len(indexes) == 1 and count > 1:
        where = f"line {indexes[0] + 1}: "
        exc.reason, exc.replies = where + exc.reason, [where + reply for reply in exc.replies]
    else:
        exc.reason, exc.replies = in_write(exc.reason, indexes), [in_write(reply, indexes) for reply in exc.replies]
    return exc


def failed_lines(group: Group) -> list[str]:
    """The reason of each of a failed group's lines: its own where its node's refusal names it (`line K: `),
    else why the node did not run it, or that its outcome is unknown."""
    exc, node = group.failure, group.node
    assert exc is not None
    if isinstance(exc, PeerDown):
        return [f"node {node}: {exc.reason}"] * len(group.indexes)
    named = {1: exc.replies[0]} if len(group.indexes) == 1 else dict(_numbered(exc.replies))
    why = in_write(exc.reason, group.indexes)
    return [named.get(number, f"not run: node {node} refused the lines placed there ({why})")
            for number in range(1, len(group.indexes) + 1)]


def in_write(reason: str, indexes: list[int]) -> str:
    """A node's reason naming lines as it was sent them (`line K: `, K of the group's `indexes`) named as the
    write's lines."""
    def renamed(found: re.Match) -> str:
        number = int(found[1])
        return f"line {indexes[number - 1] + 1}: " if 1 <= number <= len(indexes) else found[0]
    return LINE.sub(renamed, reason)


def _numbered(replies: list[str]):
    """(K, REASON) of each `line K: REASON` of a refusal's replies."""
    for reply in replies:
        if found := LINE.match(reply):
            yield int(found[1]), reply[found.end():]
