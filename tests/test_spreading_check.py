"""Tier 2: a split submit write's dry run on the placing node (cluster/spreading.py `Spreading.check_whole`),
in process: node a's Router over a stand-in cluster (tests/standin_cluster.py: its Runtime without FUSE, the
records of a, b, c), whose peers are fakes that answer pids (or cannot be connected to). What it asserts is
the write's outcome: refused whole before any line leaves, or partly run."""
import errno
import itertools

import pytest
import trio

import standin_cluster
from apeinxfs.cluster.peer_wire import PeerUnreachable
from apeinxfs.cluster.records import NodeRecord
from apeinxfs.cluster.spreading import Spreading
from apeinxfs.kernel.errors import ApeinxError
from apeinxfs.kernel.grammar import parse_submit
from apeinxfs.nodes import ctl
from apeinxfs.nodes.base import Caller
from standin_cluster import runtime

LINE = "model=sim max_tokens=100 prompt=x"


class FakePeer:
    """Another node's peer: the lines it was sent kept, their pids answered at once; or, `unreachable`,
    PeerUnreachable (nothing sent)."""

    def __init__(self, name: str, pids, unreachable: bool):
        self.name, self.pids, self.unreachable, self.sent = name, pids, unreachable, []

    async def submit(self, lines, caller, write_lines):
        if self.unreachable:
            raise PeerUnreachable(f"node {self.name} cannot be reached")
        self.sent += lines
        return [str(next(self.pids)) for _ in lines]


def a_router(rt, records: list[NodeRecord], unreachable=(), live=None):
    """a's Router over `records` (and `live`: each node's live pids by tenant), each other node's peer a FakePeer
    at its address (its name)."""
    router, pids = standin_cluster.router(rt, records, live), itertools.count(10_000)
    for record in records:
        router.peers[f"http://{record.advertise}"] = FakePeer(record.name, pids, record.name in unreachable)
    return router


def sent(router, name: str) -> list[str]:
    return router.peers[f"http://{name}"].sent


def record(name: str, slots_free: int = 8, models=("sim",), advertise: str | None = None) -> NodeRecord:
    """Node `name`'s record, its peer address its name unless given."""
    return NodeRecord(name=name, epoch=1, seen_us=0, slots_free=slots_free, kv_pages_free=100, models=models,
                      advertise=name if advertise is None else advertise)


@pytest.fixture
def rt(tmp_path):
    """Node a's Runtime: one simulated GPU, model sim, its journal in tmp_path."""
    return runtime(tmp_path / "a")


def write(rt, router, lines: list[str]) -> list[str]:
    """The write's replies as Spreading routes it, the lines placed here run through ctl/submit's command."""
    caller, command = Caller(), ctl.submit(rt)

    async def here(placed, write_lines=0):
        return command([line.encode() for line in placed], caller)

    async def run():
        specs = {index: parse_submit(line, caller.tenant) for index, line in enumerate(lines) if line}
        replies = await Spreading(router, lines, specs, caller).run(here)
        return await here(lines) if replies is None else replies
    return trio.run(run)


def refusal(rt, router, lines) -> ApeinxError:
    with pytest.raises(ApeinxError) as caught:
        write(rt, router, lines)
    return caught.value


def test_a_model_only_a_node_without_an_address_holds_is_refused_whole(rt):
    """c is up and holds m2 but has no peer address (placement never sends it a line): a write of three sim
    lines (spread over a and b) and one of m2 is refused whole ENOENT at the m2 line, and b is sent nothing."""
    router = a_router(rt, [record("a"), record("b"), record("c", models=("sim", "m2"), advertise="")])
    exc = refusal(rt, router, [LINE] * 3 + [LINE.replace("sim", "m2")])
    assert (exc.errno, exc.reason) == (errno.ENOENT, "line 4: unknown model 'm2': see /models")
    assert sent(router, "b") == [] and list(rt.kernel.tasks) == []


def test_a_model_only_a_node_passed_over_holds_is_refused_whole(rt):
    """c (freest, so first given every line) holds m2 but cannot be connected to: its lines, placed again over a
    and b, are checked without c's models, so the write is refused whole ENOENT and nothing runs."""
    router = a_router(rt, [record("a"), record("b"), record("c", slots_free=100, models=("sim", "m2"))],
                      unreachable={"c"})
    exc = refusal(rt, router, [LINE] * 3 + [LINE.replace("sim", "m2")])
    assert (exc.errno, exc.reason) == (errno.ENOENT, "line 4: unknown model 'm2': see /models")
    assert sent(router, "b") == [] and list(rt.kernel.tasks) == []


def test_a_model_another_reachable_node_holds_is_left_to_it(rt):
    """c holds m2 and has an address: the dry run leaves the m2 line to c, which runs it, as b and a run theirs."""
    router = a_router(rt, [record("a"), record("b"), record("c", models=("sim", "m2"))])
    replies = write(rt, router, [LINE] * 3 + [LINE.replace("sim", "m2")])
    assert all(reply.isdigit() for reply in replies) and LINE.replace("sim", "m2") in sent(router, "c")


def test_a_child_of_a_task_on_a_node_passed_over_is_checked_as_here(rt):
    """Task 3000 of tenant default lives on c, which cannot be connected to: its child, placed here once c is
    passed over, is checked as here (no such task: ENOENT), so the write is refused whole and b runs nothing."""
    router = a_router(rt, [record("a"), record("b"), record("c", slots_free=100)], unreachable={"c"},
                      live={"c": {"default": "3000"}})
    router.placed[3000] = "c"
    exc = refusal(rt, router, [LINE] * 3 + ["parent=3000 max_tokens=10"])
    assert (exc.errno, exc.reason) == (errno.ENOENT, "line 4: no task 3000")
    assert sent(router, "b") == [] and list(rt.kernel.tasks) == []
