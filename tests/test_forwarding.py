"""Tier 2: ctl files whose writes may run on another node (nodes/forwarding.py), without FUSE or peers:
what reaches the route, what runs here, and what a write leaves behind."""
import errno

import pytest
import trio
import trio.testing

from apeinxfs.kernel.errors import Invalid, NoBuffers, NotAllRun, RejectLine, TooBig, TryAgain
from apeinxfs.nodes.base import BUG, LINE_MAX, Caller, Writes
from apeinxfs.nodes.buffers import Buffers
from apeinxfs.nodes.forwarding import Forwarding, Route

CALLER = Caller()


class Recorder:
    """A Forwarding node whose local run and route record what they get; the route answers `answer`."""

    def __init__(self, answer=None, remote_replies=None, refusal=None, buffers=None):
        self.here, self.routed, self.done = [], [], []
        self.answer, self.remote_replies, self.refusal = answer, remote_replies, refusal
        self.node = Forwarding(mode=0o100666, run=self.run, route=self.route,
                               writes=Writes(buffers or Buffers()))

    def run(self, raw_lines, caller):
        self.here.append(raw_lines)
        return [f"here {len(raw_lines)}"]

    async def route(self, lines, caller):
        self.routed.append(lines)
        if self.answer is None:
            return None
        return Route(remote=self.remote, done=self.done.append)

    async def remote(self, here):
        if self.refusal is not None:
            raise self.refusal
        return self.remote_replies

    def open(self):
        return self.node.open(CALLER, writing=True, reading=True)


async def test_complete_lines_go_to_the_route_and_a_partial_line_waits_for_the_next_write():
    """Lines elsewhere (a blank one as "", so that each keeps its number): the reply is the remote one, nothing
    runs here, the unterminated piece waits."""
    node = Recorder(answer="remote", remote_replies=["7", "8"])
    handle = node.open()
    assert await handle.write_async(b"a\n\nb\nc") == 6
    assert node.routed == [["a", "", "b"]] and node.here == [] and await handle.read(0, 100, None) == b"7\n8\n"
    assert node.done == [["7", "8"]] and bytes(handle.pending) == b"c"
    await handle.write_async(b"d\n")
    assert node.routed[-1] == ["cd"]


async def test_a_route_to_here_runs_the_write_here_and_reports_its_replies():
    """remote(here) answering None runs the lines here; done() gets this node's replies."""
    node = Recorder(answer="here", remote_replies=None)
    handle = node.open()
    await handle.write_async(b"x\ny\n")
    assert node.here == [[b"x", b"y"]] and node.done == [["here 2"]]


async def test_no_route_runs_here_without_done():
    """A route of None (a single node) is a plain Command write."""
    node = Recorder(answer=None)
    handle = node.open()
    await handle.write_async(b"x\n")
    assert node.here == [[b"x"]] and node.routed == [["x"]] and node.done == []


async def test_a_remote_refusal_is_raised_with_its_replies_and_clears_the_buffer():
    """The remote node's error comes back as it is; the reply says it; nothing is left pending."""
    node = Recorder(answer="remote", refusal=Invalid("bad line", ["line 1: bad line"]))
    handle = node.open()
    with pytest.raises(Invalid) as refused:
        await handle.write_async(b"a\nrest")
    assert refused.value.errno == errno.EINVAL and await handle.read(0, 100, None) == b"error: line 1: bad line\n"
    assert bytes(handle.pending) == b"" and node.done == []


@pytest.mark.parametrize("data", [b"\xff\n", b"ok\x01\n", bytes(LINE_MAX + 2)])
async def test_lines_this_node_refuses_unread_never_reach_the_route(data):
    """Not UTF-8, control characters, over-long: run here (where ctl.run_lines refuses them), never forwarded."""
    node = Recorder(answer="remote", remote_replies=["1"])
    await node.open().write_async(data)
    assert node.routed == [] and len(node.here) == 1


class Settler:
    """A Forwarding node with no route whose `settle` records the replies it gets, refusing with `refusal`."""

    def __init__(self, refusal=None):
        self.settled, self.write_lines, self.refusal = [], [], refusal
        self.node = Forwarding(mode=0o100666, run=lambda raw_lines, caller: [f"{len(raw) + 1}" for raw in raw_lines],
                               settle=self.settle, writes=Writes())

    async def settle(self, replies, write_lines):
        self.settled.append(replies)
        self.write_lines.append(write_lines)
        if self.refusal is not None:
            raise self.refusal


async def test_the_lines_run_here_are_settled_before_the_write_returns_but_not_at_close():
    """A write through the mount and a peer's request (`write_here`) settle their replies; a last line run
    at close does not, and a write that ran no line has nothing to settle."""
    node = Settler()
    handle = node.node.open(CALLER, writing=True, reading=True)
    assert await handle.write_async(b"a\nbb\nc") == 6 and node.settled == [["2", "3"]]
    assert await handle.write_here(b"cc\n") == 3 and node.settled[-1] == ["4"]
    await handle.write_async(b"partial")
    handle.release()
    assert len(node.settled) == 2 and handle.reply == b"8\n"


async def test_a_refused_settle_is_the_writes_refusal_and_its_reply():
    """The settle's refusal fails the write with its errno, its reasons replace the lines' replies, and the
    write's partial line is dropped, as any failed write's."""
    node = Settler(refusal=TryAgain("not recorded", ["not recorded: try again"]))
    handle = node.node.open(CALLER, writing=True, reading=True)
    with pytest.raises(TryAgain) as refused:
        await handle.write_async(b"a\npart")
    assert refused.value.errno == errno.EAGAIN and node.settled == [["2"]]
    assert await handle.read(0, 100, None) == b"error: not recorded: try again\n" and not handle.pending


async def test_a_settle_that_hits_a_bug_fails_the_write_with_the_internal_error_reply():
    """A bug in the wait after a write fails it (fs.py makes it EIO) with the internal-error reply, not the
    lines' replies, and drops its partial line."""
    node = Settler(refusal=RuntimeError("a bug"))
    handle = node.node.open(CALLER, writing=True, reading=True)
    with pytest.raises(RuntimeError):
        await handle.write_async(b"a\npart")
    assert await handle.read(0, 100, None) == f"error: {BUG}\n".encode() and not handle.pending


async def test_lines_a_route_runs_here_run_as_a_write_of_their_own_and_settle():
    """A route that runs some lines through `here` (a write placed on several nodes, this one among them):
    they run here on a handle of their own, are settled allowing for the whole write's lines, and their
    replies come back to the route; the writer's reply is the route's."""
    node = Settler()

    async def route(lines, caller):
        async def remote(here):
            return ["7"] + await here(lines[1:], 3)
        return Route(remote=remote)
    node.node.route = route
    handle = node.node.open(CALLER, writing=True, reading=True)
    assert await handle.write_async(b"a\nbb\nccc\n") == 9
    assert node.settled == [["3", "4"]] and node.write_lines == [3]
    assert await handle.read(0, 100, None) == b"7\n3\n4\n"


async def test_a_write_that_did_not_all_run_fails_with_its_errno_and_keeps_every_lines_reply():
    """NotAllRun from the route: the write fails with its errno and the reply is its own, a line per line (the
    pids that ran are not turned into errors)."""
    outcome = ["7", "error: line 2: node b: no answer; its outcome is unknown"]
    node = Recorder(answer="remote", refusal=NotAllRun(errno.EHOSTDOWN, outcome[1], outcome, RejectLine.HERE))
    handle = node.open()
    with pytest.raises(NotAllRun) as refused:
        await handle.write_async(b"a\nb\n")
    assert refused.value.errno == errno.EHOSTDOWN
    assert await handle.read(0, 100, None) == "".join(f"{line}\n" for line in outcome).encode()


async def test_a_write_over_the_daemons_line_limit_is_e2big_before_any_line_is_routed():
    """A write of 4 lines on a daemon of write_lines = 3: E2BIG before the route sees a line (on a cluster
    node, as on a single one), and a write under it is routed."""
    node = Recorder(answer="remote", remote_replies=["7"], buffers=Buffers(write_lines=3))
    handle = node.open()
    with pytest.raises(TooBig):
        await handle.write_async(b"a\nb\nc\nd\n")
    assert node.routed == [] and node.here == []
    await handle.write_async(b"a\n")
    assert node.routed == [["a"]]


@pytest.mark.parametrize("remote_replies", [None, ["7"]], ids=["route-runs-it-here", "lines-run-elsewhere"])
async def test_a_routed_writes_unfinished_line_counts_while_its_route_awaits(remote_replies):
    """While a route awaits, another descriptor of the uid cannot take the bytes the routed write's unfinished
    line will hold (ENOBUFS), whether the route then runs it here or its lines elsewhere: the uid's held bytes
    never pass pending_bytes."""
    buffers, gate = Buffers(pending_bytes=100), trio.Event()
    node = Recorder(answer="remote", remote_replies=remote_replies, buffers=buffers)

    async def remote(here):
        await gate.wait()
        return remote_replies
    node.remote = remote
    routed, other = node.open(), node.open()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(routed.write_async, b"a\n" + b"x" * 60)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(NoBuffers):
            await other.write_async(b"y" * 50)
        gate.set()
    assert bytes(routed.pending) == b"x" * 60 and buffers.held == {CALLER.uid: 60}


async def test_a_routed_writes_unfinished_line_is_held_until_a_refusal_or_the_close_drops_it():
    """The unfinished piece after a routed write's lines counts for its uid; a refused route drops it, as any
    refused write's; a settle refused drops it; and so does the close of a descriptor mid-line."""
    buffers = Buffers()
    remote = Recorder(answer="remote", remote_replies=["7"], buffers=buffers)
    handle = remote.open()
    await handle.write_async(b"a\nhalf")
    assert buffers.held == {CALLER.uid: 4}
    remote.refusal = TryAgain("no node answered")
    with pytest.raises(TryAgain):
        await handle.write_async(b"\nb\n")
    assert buffers.held == {} and not handle.pending
    settler = Settler(refusal=TryAgain("not recorded"))
    settler.node.writes = Writes(buffers)
    refused = settler.node.open(CALLER, writing=True, reading=True)
    with pytest.raises(TryAgain):
        await refused.write_async(b"a\npart")
    closing = remote.open()
    await closing.write_async(b"rest")
    assert buffers.held == {CALLER.uid: 4}
    closing.release()
    assert buffers.held == {} and remote.here[-1] == [b"rest"]
