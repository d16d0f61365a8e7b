"""Tier 2: a hypothesis state machine over a node tree (no FUSE) that opens ctl and settings files for 3
uids and, in any order, writes partial lines, complete lines, refused lines, writes over `[limits]` and
closes, writing as a peer's request or a single node's read-only use does (`write`) or as the mount does
(`write_async`): after every step the bytes the daemon's Buffers count per uid are the unfinished lines its
open descriptors hold (`pending`), the redundant count checked against its source (nodes/buffers.py), and the
trace holds one `reject` line per refused write or close. Routed writes (a cluster's) are not driven here:
test_forwarding.py and test_rejects_cluster.py hold them."""
import shutil
import tempfile
from pathlib import Path

import trio

from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from apeinxfs.kernel.errors import ApeinxError
from apeinxfs.nodes.base import Caller
from apeinxfs.nodes.tree import Tree
from test_journal_runtime import ONE_GPU, open_runtime
from test_nodes import resolve
from test_rejects import rejects

CALLERS = [Caller(uid=0, pid=10), Caller(uid=1001, gid=1001, pid=11, role="user"),
           Caller(uid=1002, gid=1002, pid=12, role="user")]
PATHS = ["/ctl/submit", "/ctl/kill", "/ctl/policy", "/tenants/default/weight"]
PIECES = [b"job 5", b" 1\n", b"BAD\n", b"deny model=x\n", b"7\n", b"x" * 60, b"\n" * 4, b"name=x max_tokens=-1\npart"]
LIMITS = "[limits]\nwrite_lines = 3\npending_bytes = 100\n"  # 4 lines are E2BIG; two 60-byte tails ENOBUFS


class HeldBytes(RuleBasedStateMachine):
    """Descriptors of CALLERS on PATHS, written PIECES at random, closed at random."""

    def __init__(self):
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="held-")
        self.opened_runtime = open_runtime(Path(self.directory), ONE_GPU + LIMITS)
        self.tree = Tree(self.opened_runtime.__enter__())
        self.handles: list = []
        self.refused = 0  # writes and closes refused so far

    def teardown(self):
        self.opened_runtime.__exit__(None, None, None)
        shutil.rmtree(self.directory)

    @rule(caller=st.sampled_from(CALLERS), path=st.sampled_from(PATHS))
    def open(self, caller, path):
        self.handles.append(resolve(self.tree, path).open(caller, writing=True, reading=False))

    @precondition(lambda self: self.handles)
    @rule(which=st.integers(0, 15), pieces=st.lists(st.sampled_from(PIECES), min_size=1, max_size=3),
          mount=st.booleans())
    def write(self, which, pieces, mount):
        handle, data = self.handles[which % len(self.handles)], b"".join(pieces)
        try:
            trio.run(handle.write_async, data) if mount else handle.write(data)
        except ApeinxError:
            self.refused += 1  # by a line, or by the limits

    @precondition(lambda self: self.handles)
    @rule(which=st.integers(0, 15))
    def close(self, which):
        try:
            self.handles.pop(which % len(self.handles)).release()
        except ApeinxError:
            self.refused += 1  # its unterminated last line

    @invariant()
    def buffers_count_the_open_descriptors_unfinished_bytes(self):
        held: dict[int, int] = {}
        for handle in self.handles:
            held[handle.caller.uid] = held.get(handle.caller.uid, 0) + len(handle.pending)
        assert self.tree.rt.buffers.held == {uid: count for uid, count in held.items() if count}

    @invariant()
    def each_refused_write_left_one_reject_line(self):
        assert len(rejects(self.tree.rt)) == self.refused


def test_held_bytes_are_the_open_descriptors_unfinished_lines_after_any_steps():
    """After any sequence of opens, writes (partial, complete, refused, over the limits; sync or as the mount
    writes) and closes by 3 uids, Buffers counts for each uid exactly the unfinished bytes its open descriptors
    hold, and each refusal left one reject line."""
    run_state_machine_as_test(HeldBytes, settings=settings(
        max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=list(HealthCheck)))
