"""Tier 3-4: no cross-tenant glimpses on a live mount, as two tenants' Unix users.

Alice (tenant a) and Bob (tenant b) share one GPU of two slots under the fair policy. Bob's
`stat` of Alice's task is ENOENT even right after Alice looked it up (the kernel caches no
per-caller answer), and when one of Alice's tasks is preempted to make room for Bob's, her
task's and tenant's events say "another tenant", never Bob's tenant or pid; the whole
trace, an admin's, names both.
"""
import subprocess

import pytest

from daemon import poll_until
from unixusers import run_as, shared_mount, users_of_test
from test_tenants_mount import submitted

pytestmark = pytest.mark.mount

USERS = {"alice": 23101, "bob": 23102}  # not test_tenants_mount's: the two may run at once
CONFIG = """
[gpus]
simulated = 1
slots = 2
[[models]]
name = "sim"
[models.options]
decode_step_ms = 2
batch_step_ms = 0.1
prefill_tokens_per_s = 100000
[scheduler]
policy = "fair"
min_run_tokens = 2
"""
LONG = "name=long max_tokens=30000"


@pytest.fixture(scope="module")
def users():
    """Alice and Bob, deleted afterwards whatever happened."""
    yield from users_of_test("apxi_", USERS, "ISOLATION MOUNT TESTS ARE")


@pytest.fixture(scope="module")
def mounted(users, tmp_path_factory):
    """The daemon with tenants a (alice) and b (bob), in a directory every user may traverse."""
    tenants = "".join(f'[[tenants]]\nname = "{tenant}"\n[tenants.members]\nuids = [{users[name].uid}]\n'
                      for tenant, name in (("a", "alice"), ("b", "bob")))
    with shared_mount("apeinx-isolation-", tmp_path_factory.mktemp("state"), CONFIG + tenants) as daemon:
        yield daemon


def as_user(user, command: str) -> str:
    """`command` in sh as `user`, within one shell of root's: no pause between users' commands."""
    return f"setpriv --reuid={user.uid} --regid={user.gid} --clear-groups sh -c '{command}'"


def test_another_tenants_task_is_enoent_right_after_its_owner_looked_it_up(mounted, users):
    """Alice stats her task and its status; Bob's stat of each, at once after, is ENOENT, every time."""
    alice, bob = users["alice"], users["bob"]
    pid, tasks = submitted(mounted, alice, LONG), mounted.path("tasks")
    try:
        for path in (mounted.path("tasks", str(pid)), mounted.path("tasks", str(pid), "status")):
            for _ in range(3):
                both = f"{as_user(alice, f'ls -l {tasks} >/dev/null && stat {path}')} && {as_user(bob, f'stat {path}')}"
                done = subprocess.run(["sh", "-c", both], capture_output=True, text=True, timeout=30, cwd="/")
                assert done.returncode != 0 and "No such file or directory" in done.stderr, done
                assert f"File: {path}" in done.stdout  # Alice's stat succeeded just before
    finally:
        kill(mounted, pid)


def test_a_tenants_events_name_no_other_tenant_or_its_pids(mounted, users):
    """Bob's task preempts one of Alice's: her events say "another tenant"; the whole trace names b and the pid."""
    alice, bob = users["alice"], users["bob"]
    mine = [submitted(mounted, alice, LONG) for _ in range(2)]
    theirs = submitted(mounted, bob, LONG)
    try:
        whole = poll_until(lambda: next((line for line in read(mounted.path("trace", "events")).splitlines()
                                         if "is ahead of b " in line), None), 20, "a fair preemption for b")
        assert f"waiting with pid {theirs}" in whole
        views = [run_as(alice, ["cat", mounted.path("tasks", str(pid), "events")]).stdout for pid in mine]
        views.append(run_as(alice, ["cat", mounted.path("tenants", "a", "events")]).stdout)
        preempted = [line for view in views for line in view.splitlines() if "is ahead of" in line]
        assert preempted and all("ahead of another tenant (" in line and "waiting with another tenant's task" in line
                                 for line in preempted)
        assert not any(f"pid {theirs}" in view or ",b," in view or " b " in view for view in views)
    finally:
        for pid in (*mine, theirs):
            kill(mounted, pid)


def read(path: str) -> str:
    with open(path) as file:
        return file.read()


def kill(daemon, pid: int) -> None:
    with open(daemon.path("ctl", "kill"), "w") as file:
        file.write(f"{pid}\n")
