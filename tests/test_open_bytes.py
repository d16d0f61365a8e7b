"""What open descriptors make the daemon hold: shared snapshots, the per-uid `limits.open_bytes`, and directory
listings by offset (nodes/openfiles.py, Dir.entries_from, fs.py opendir/readdir).

Tier 1-2 on a Runtime's node tree (no FUSE), tier 4 on a real mount with shell tools for the refusal.
"""
import csv
import errno
import os
import subprocess

import pytest

from apeinxfs.kernel.access import Identity
from apeinxfs.kernel.errors import ApeinxError
from apeinxfs.kernel.events import Kill
from apeinxfs.nodes.tree import Tree
from daemon import Daemon, sim_config
from test_journal_runtime import ONE_GPU, open_runtime, submit
from test_nodes import resolve

ADMIN = Identity(uid=0, role="admin", tenant=None)
PROMPT = "p" * 100
LIMITS = "[limits]\nopen_bytes = 250\n[retention]\ntasks = 0\n"  # two distinct prompts fit, a third does not


@pytest.fixture
def tree(tmp_path):
    with open_runtime(tmp_path, ONE_GPU + LIMITS) as runtime:
        yield Tree(runtime)


def prompt_of(tree, pid: int):
    return resolve(tree, f"/tasks/{pid}/prompt")


def test_opens_of_one_text_share_one_object_across_events_and_files(tree):
    """Two opens of a prompt with an event between, and an open of another task's equal prompt, read one object."""
    first, second = submit(tree.rt, prompt=PROMPT), submit(tree.rt, prompt=PROMPT)
    held = tree.open_snapshot(prompt_of(tree, first), 1000)
    submit(tree.rt, prompt="other")
    again = tree.open_snapshot(prompt_of(tree, first), 1000)
    twin = tree.open_snapshot(prompt_of(tree, second), 1001)
    assert again is held and twin is held and PROMPT.encode() in held
    tree.snapshots.check_invariants()


def test_a_uid_past_open_bytes_is_refused_enomem_until_it_closes_one(tree):
    """Uid 1000 holds two distinct snapshots of about 100 bytes (more opens of them cost nothing); a third is ENOMEM naming
    the key, another uid's is not, and once one closes the third opens."""
    pids = [submit(tree.rt, prompt=PROMPT + str(n)) for n in range(3)]
    held = [tree.open_snapshot(prompt_of(tree, pid), 1000) for pid in pids[:2] * 3]
    with pytest.raises(ApeinxError) as refused:
        tree.open_snapshot(prompt_of(tree, pids[2]), 1000)
    assert refused.value.errno == errno.ENOMEM and "limits.open_bytes (250)" in refused.value.reason
    tree.open_snapshot(prompt_of(tree, pids[2]), 1001)
    for snapshot in held[::2]:
        tree.close_snapshot(prompt_of(tree, pids[0]).inode, 1000, snapshot)
    tree.open_snapshot(prompt_of(tree, pids[2]), 1000)
    tree.snapshots.check_invariants()
    assert tree.snapshots.charged == {1000: 2 * len(held[1]), 1001: len(held[1])}


def test_closing_every_snapshot_forgets_the_texts_and_the_uids(tree):
    """Once every descriptor closed, nothing is held: no text, no inode's size, no uid's charge."""
    node = prompt_of(tree, submit(tree.rt, prompt=PROMPT))
    held = [tree.open_snapshot(node, uid) for uid in (1000, 1000, 1001)]
    for uid, snapshot in zip((1000, 1000, 1001), held):
        tree.close_snapshot(node.inode, uid, snapshot)
    assert (tree.snapshots.texts, tree.snapshots.pinned, tree.snapshots.held, tree.snapshots.charged) == ({}, {}, {}, {})


def listed(tree, path: str, cookie: int, count: int) -> tuple[list[str], int]:
    """(The names of up to `count` entries of `path` from readdir offset `cookie`, the offset after them)."""
    names = []
    for cookie, name, _ in tree.entries_from(resolve(tree, path), ADMIN, cookie):
        names.append(name)
        if len(names) == count:
            break
    return names, cookie


@pytest.mark.parametrize("path", ["/tasks", "/replay"])
def test_a_listing_while_tasks_come_and_go_names_each_task_that_stayed_once(tree, path):
    """Listed 3 entries at a time while tasks are submitted and reaped between the reads: no name twice, every
    task that existed throughout listed, none reaped before its turn."""
    pids = [submit(tree.rt) for _ in range(8)]
    seen, cookie = listed(tree, path, 0, 3)
    tree.rt.commit([Kill(pid=pids[1]), Kill(pid=pids[5])])  # retention.tasks = 0: reaped at once
    submit(tree.rt)
    more, cookie = listed(tree, path, cookie, 3)
    submit(tree.rt)
    rest, _ = listed(tree, path, cookie, 100)
    names = seen + more + rest
    assert len(names) == len(set(names)) and str(pids[5]) not in names
    assert {str(pid) for pid in pids} - {str(pids[1]), str(pids[5])} <= set(names)


def test_a_fixed_directory_lists_from_its_offset(tree):
    """Read two entries at a time, /ctl lists each of its files once, in order."""
    names, cookie, part = [], 0, [None]
    while part:
        part, cookie = listed(tree, "/ctl", cookie, 2)
        names += part
    assert names == list(resolve(tree, "/ctl").children)


@pytest.mark.mount
def test_cat_past_open_bytes_fails_enomem_while_a_shell_holds_another_prompt_open(tmp_path):
    """A shell holding two prompts open (`exec 3<`) cannot `cat` a third distinct one (Cannot allocate memory),
    can `cat` an equal one, and after closing one can `cat` the third; the refusal leaves one `reject` line."""
    with Daemon(tmp_path / "ai", tmp_path / "state", sim_config(100) + LIMITS) as daemon:
        pids = [daemon.submit(f"name=p{n} max_tokens=1000 prompt={PROMPT}{n}") for n in range(3)]
        first, second, third = (daemon.path("tasks", str(pid), "prompt") for pid in pids)
        script = (f'exec 3< {first} 4< {second}; cat {third} >/dev/null; echo "refused $?"; cat {first} >/dev/null '
                  f'&& echo shared; exec 3<&-; cat {third} | head -c 6; echo')
        shell = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)
        assert shell.stdout.splitlines() == ["refused 1", "shared", PROMPT[:6]], shell
        assert "Cannot allocate memory" in shell.stderr, shell.stderr
        with open(daemon.path("trace", "events")) as trace:
            refusals = [row for row in csv.DictReader(trace) if row["type"] == "reject" and "open_bytes" in row["detail"]]
        assert len(refusals) == 1, daemon.log_tail()


@pytest.mark.mount
def test_a_directory_read_through_the_mount_while_tasks_come_and_go_names_each_that_stayed_once(tmp_path):
    """os.scandir of tasks/ (several getdents calls) paused after 100 entries while tasks are submitted and reaped:
    every pid once, every task that stayed listed, in pid order; `ls` then lists exactly the tasks left."""
    with Daemon(tmp_path / "ai", tmp_path / "state", sim_config(100) + LIMITS) as daemon:
        with open(daemon.path("ctl", "submit"), "wb") as ctl:
            ctl.write(b"name=d max_tokens=1000\n" * 600)
        listing = os.scandir(daemon.path("tasks"))
        names = [entry.name for _, entry in zip(range(100), listing)]
        with open(daemon.path("ctl", "kill"), "w") as kill:
            kill.write("50\n450\n")  # retention.tasks = 0: reaped at once
        daemon.submit("name=late max_tokens=1000")
        names += [entry.name for entry in listing]
        listing.close()
        pids = [int(name) for name in names]
        assert pids == sorted(set(pids)) and set(range(1, 601)) - {50, 450} <= set(pids) and 450 not in pids
        shell = subprocess.run(["ls", daemon.path("tasks")], capture_output=True, text=True, check=True)
        assert sorted(map(int, shell.stdout.split())) == sorted(set(range(1, 602)) - {50, 450})
