"""Tier 1 and 3-4: trees of any depth (parent= chains) are walked without recursion.

A user can chain tasks as deep as they like. Killing the root of such a chain, its `wait`
(which covers the whole tree) and the ancestors' wake-ups must neither recurse past
Python's limit nor cost O(depth) per task: a 100,000-deep chain in the kernel, a 3,000-deep
one on a live mount that is then remounted on the same state dir and verified.
"""
import subprocess
import sys

import pytest

from apeinxfs.kernel import Kernel
from apeinxfs.kernel.config import GpuConfig, KernelConfig, MemoryRetention, ModelConfig
from apeinxfs.kernel.events import Failed, Kill, Submit
from apeinxfs.kernel.spec import TaskSpec
from apeinxfs.nodes.tasks import wait_line
from daemon import APEINXFS, Daemon, is_live, sim_config

KERNEL_DEPTH = 100_000
MOUNT_DEPTH = 3_000


def chain(kernel: Kernel, depth: int) -> list[int]:
    """Submit a chain of `depth` tasks, each the child of the one before; their pids."""
    pids = [None]
    for _ in range(depth):
        event = Submit(spec=TaskSpec(name="link", max_tokens=4, parent=pids[-1]), uid=1000)
        kernel.check(event)
        pids.append(kernel.apply(event, 0))
    return pids[1:]


def one_gpu_kernel() -> Kernel:
    return Kernel(KernelConfig(models=[ModelConfig(name="sim")], page_mib=1, gpus=[GpuConfig(index=0, kv_mib=64)],
                               retention=MemoryRetention(tasks=KERNEL_DEPTH)))  # every killed task stays, to be checked


@pytest.mark.invariants_every(0)  # O(state) after each of 100,000 submits would be quadratic: checked at the ends
def test_killing_the_root_of_a_100000_deep_chain_kills_all_of_it():
    """The kill walks the whole chain with its own stack: every task exits `killed` and the root's wait says so."""
    assert KERNEL_DEPTH > 50 * sys.getrecursionlimit()
    kernel = one_gpu_kernel()
    pids = chain(kernel, KERNEL_DEPTH)
    assert wait_line(kernel, kernel.tasks[pids[0]]) is None
    kernel.check_invariants()
    kernel.apply(Kill(pid=pids[0], uid=1000), 1)
    assert {kernel.tasks[pid].exit for pid in pids} == {"killed"}
    assert wait_line(kernel, kernel.tasks[pids[0]]) == b"killed\n"
    assert pids[0] in kernel.take_changed() and kernel.tasks[pids[-1]].exit == "killed"
    kernel.check_invariants()


def test_a_leafs_exit_wakes_every_ancestors_wait():
    """The deepest task of a chain failing changes every ancestor (their `wait` covers it), and only after
    the changes are taken does the next exit wake them again."""
    kernel = one_gpu_kernel()
    pids = chain(kernel, 500)
    kernel.take_changed()
    kernel.apply(Failed(pid=pids[-1], reason="engine gone"), 1)
    assert set(pids) <= kernel.take_changed()
    kernel.apply(Failed(pid=pids[-2], reason="engine gone"), 2)
    assert set(pids[:-1]) <= kernel.take_changed()
    assert wait_line(kernel, kernel.tasks[pids[-2]]) == b"failed: engine gone\n"


@pytest.mark.mount
@pytest.mark.slow
def test_a_3000_deep_chain_on_a_mount_is_killed_remounted_and_verified(tmp_path):
    """echo ROOT > ctl/kill kills a 3,000-deep chain, `cat wait` says killed, the daemon stays up, a
    remount on the same state dir keeps it all, and `apeinxfs replay --verify` passes."""
    daemon = Daemon(tmp_path / "ai", tmp_path / "state", sim_config(1000))  # 1 s steps: nothing finishes first
    with daemon:
        pids = submit_chain(daemon, MOUNT_DEPTH)
        root, leaf = pids[0], pids[-1]
        subprocess.run(f"echo {root} > {daemon.path('ctl', 'kill')}", shell=True, check=True)
        assert cat(daemon, "tasks", str(root), "wait") == "killed\n"
        assert daemon.proc.poll() is None and is_live(daemon.mountpoint)
        assert daemon.status(leaf)["Exit"] == "killed"
    with daemon:
        assert cat(daemon, "tasks", str(root), "wait") == "killed\n"
        assert daemon.status(leaf)["Exit"] == "killed" and daemon.status(leaf)["PPid"] == str(pids[-2])
    done = subprocess.run(APEINXFS + ["replay", "--verify", daemon.state_dir], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("OK: "), done.stdout + done.stderr


def submit_chain(daemon: Daemon, depth: int) -> list[int]:
    """Submit a chain through one read-write fd of ctl/submit: each line names the pid the last reply gave."""
    pids = []
    with open(daemon.path("ctl", "submit"), "r+b", buffering=0) as ctl:
        for _ in range(depth):
            parent = f" parent={pids[-1]}" if pids else ""
            ctl.write(f"name=link max_tokens=1000{parent}\n".encode())
            pids.append(int(ctl.read(64)))
    return pids


def cat(daemon: Daemon, *path: str) -> str:
    return subprocess.run(["cat", daemon.path(*path)], capture_output=True, text=True, check=True, timeout=60).stdout


@pytest.mark.invariants_every(0)
def test_trees_done_of_a_whole_killed_chain_walks_it_once():
    """Which of a killed 100,000-deep chain's pids have ended trees (what the daemon wakes `wait` readers
    with) is all of them, found in one walk rather than one per pid (quadratic); a live chain's, none."""
    kernel = one_gpu_kernel()
    pids, live = chain(kernel, KERNEL_DEPTH), chain(kernel, 3)
    assert kernel.tasks.trees_done(pids + live) == set()
    kernel.apply(Kill(pid=pids[0], uid=1000), 1)
    assert kernel.tasks.trees_done(pids + live) == set(pids)
