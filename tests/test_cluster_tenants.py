"""Tier 4: tenants across a cluster: two nodes (peers, one 3-member etcd) and two Unix users in two
tenants; each lists and reads its own tenant's tasks on either node, wherever they were placed, and
gets ENOENT for the other tenant's, as on one node (tests/test_tenants_mount.py)."""
import contextlib
import os

import pytest

from daemon import poll_until
from engines import free_port
from etcdcluster import EtcdCluster
from test_cluster_nodes import LONG_TASK, SETTLE_S, cluster_config
from test_peer import token_file
from unixusers import probe, run_as, shared_mount, users_of_test

USERS = {"alice": 23511, "bob": 23512}
NODES = ("x", "y")


@pytest.fixture(scope="module")
def users():
    yield from users_of_test("apxc_", USERS, "CLUSTER TENANT TESTS ARE")


def node_config(name: str, endpoints: list[str], token: str, users) -> str:
    return (cluster_config(name, endpoints) + f'advertise = "127.0.0.1:{free_port()}"\ntoken_file = "{token}"\n'
            f'[[tenants]]\nname = "a"\n[tenants.members]\nuids = [{users["alice"].uid}]\n'
            f'[[tenants]]\nname = "b"\n[tenants.members]\nuids = [{users["bob"].uid}]\n')


@pytest.fixture(scope="module")
def nodes(users, tmp_path_factory):
    """Nodes x and y, mounted where every user may reach them; stopped by pid and removed afterwards."""
    root = tmp_path_factory.mktemp("tenants")
    token = token_file(root, os.urandom(8).hex().encode())
    with EtcdCluster(root / "etcd") as etcd, contextlib.ExitStack() as stack:
        daemons = {name: stack.enter_context(shared_mount(f"apeinx-ct-{name}-", root / name,
                                                          node_config(name, etcd.endpoints, token, users)))
                   for name in NODES}
        poll_until(lambda: all(sorted(os.listdir(d.path("nodes"))) == list(NODES) for d in daemons.values()),
                   SETTLE_S, "x and y seen from both")
        yield daemons


def submitted(daemon, user) -> int:
    result = probe(user, "send", daemon.path("ctl", "submit"), LONG_TASK + "\n")
    assert result["errno"] is None, result
    return int(result["data"])


def placed_on(daemons: dict, user, node: str) -> int:
    """A long task of `user` submitted on x until one is placed on `node` (at most 8 tries); its pid."""
    for _ in range(8):
        pid = submitted(daemons["x"], user)
        if daemons["x"].status(pid)["Node"] == node:
            return pid
    raise AssertionError(f"no task of {user} placed on {node} in 8 submits")


def listed(daemon, user) -> set[int]:
    done = run_as(user, ["ls", daemon.path("tasks")])
    assert done.returncode == 0, done.stderr
    return {int(name) for name in done.stdout.split()}


def test_each_tenant_lists_and_reads_only_its_own_tasks_on_every_node(nodes, users):
    """Tasks of alice and bob submitted on x, placed over x and y: on both nodes each user lists and reads
    their own and gets ENOENT for the other's, its own and remote alike; root lists all."""
    alice, bob = users["alice"], users["bob"]
    mine = [submitted(nodes["x"], alice) for _ in range(2)]
    theirs = [submitted(nodes["x"], bob) for _ in range(2)]
    try:
        where = {pid: nodes["x"].status(pid)["Node"] for pid in mine + theirs}
        assert set(where.values()) == set(NODES), where
        for daemon in nodes.values():
            poll_until(lambda: set(mine + theirs) <= {int(n) for n in os.listdir(daemon.path("tasks"))}, SETTLE_S,
                       f"every pid listed on {daemon.mountpoint}")
            assert set(mine) <= listed(daemon, alice) and not set(theirs) & listed(daemon, alice)
            assert set(theirs) <= listed(daemon, bob) and not set(mine) & listed(daemon, bob)
            for pid in mine:
                assert probe(alice, "read", daemon.path("tasks", str(pid), "status"))["errno"] is None
                assert probe(bob, "read", daemon.path("tasks", str(pid), "status"))["errno"] == "ENOENT"
                assert probe(bob, "write", daemon.path("tasks", str(pid), "ctl"), "kill\n")["errno"] == "ENOENT"
    finally:
        for pid in mine + theirs:
            with open(nodes["x"].path("ctl", "kill"), "w") as kill:
                kill.write(f"{pid}\n")


def test_kill_of_pids_on_several_nodes_is_refused_as_one_node_refuses_each(nodes, users):
    """bob's own pids on x and y in one ctl/kill write get EINVAL (write each node's apart); his pid on y with
    one that is no task, or with alice's on x, gets ENOENT: the refusal tells neither apart, as one node does."""
    alice, bob = users["alice"], users["bob"]
    his_x, his_y, hers = placed_on(nodes, bob, "x"), placed_on(nodes, bob, "y"), placed_on(nodes, alice, "x")
    try:
        poll_until(lambda: his_y in listed(nodes["x"], bob), SETTLE_S, "bob's task on y listed on x")
        kill = nodes["x"].path("ctl", "kill")
        assert probe(bob, "write", kill, f"{his_x}\n{his_y}\n")["errno"] == "EINVAL"
        assert probe(bob, "write", kill, f"{his_y}\n99999999\n")["errno"] == "ENOENT"
        assert probe(bob, "write", kill, f"{his_y}\n{hers}\n")["errno"] == "ENOENT"
    finally:
        for pid in (his_x, his_y, hers):
            with open(nodes["x"].path("ctl", "kill"), "w") as killing:
                killing.write(f"{pid}\n")
