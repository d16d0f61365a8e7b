"""Tier 3-4: tenants, roles, quotas, budgets, policy and audit on a live mount, as real Unix users.

One daemon, run as root (so mounted with allow_other), serves tenants a (alice by uid; vera
views), b (bob, by his group), q (quinn; one live task at most) and c (cora; a budget of 1000 tokens per 3 s
window, 10% overdraw); adam is an admin by uid, uma is in no tenant. Every command a user
runs goes through setpriv with that user's uid and gid; errnos are read from the shell
tools' messages or from a probe (unixusers.PROBE) that prints the errno name and reply.
"""
import csv
import os
import subprocess
import tempfile
import time

import pytest

from daemon import poll_until, sim_config
from unixusers import SYSTEM_PYTHON, as_user, probe, run_as, shared_mount, users_of_test

pytestmark = pytest.mark.mount

USERS = {"alice": 23001, "bob": 23002, "vera": 23003, "quinn": 23004, "adam": 23005, "cora": 23006, "uma": 23007}
BUDGET_WINDOW_S = 3
US = 1_000_000
LONG_TASK = 'name=long max_tokens=20000 prompt="the secret plan"'


HOLD_OPEN = r"""
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
print(os.fstat(fd).st_size, flush=True)
sys.stdin.readline()
try:
    print(os.fstat(fd).st_size, len(os.pread(fd, 1 << 16, 0)), flush=True)
except OSError as exc:
    print(exc, flush=True)
"""  # opens a file, prints its fstat size; at a line on stdin, its fstat size again and its length


def tenants_config(users) -> str:
    """The fast sim and a `premium` model, the admin, and tenants a, b, q and c."""
    uid = {name: user.uid for name, user in users.items()}
    return sim_config(2) + f"""
[[models]]
name = "premium"
[models.options]
decode_step_ms = 2

[access]
admin_uids = [{uid["adam"]}]

[[tenants]]
name = "a"
[tenants.members]
uids = [{uid["alice"]}]
viewer_uids = [{uid["vera"]}]

[[tenants]]
name = "b"
[tenants.members]
gids = [{users["bob"].gid}]

[[tenants]]
name = "q"
[tenants.members]
uids = [{uid["quinn"]}]
[tenants.quota]
tasks = 1

[[tenants]]
name = "c"
[tenants.members]
uids = [{uid["cora"]}]
[tenants.budget]
tokens = 1000
window = "{BUDGET_WINDOW_S}s"
overdraw = 10
"""


@pytest.fixture(scope="module")
def users():
    """The test's Unix users, deleted afterwards whatever happened."""
    yield from users_of_test("apxt_", USERS, "TENANT MOUNT TESTS ARE")


@pytest.fixture(scope="module")
def mounted(users, tmp_path_factory):
    """The daemon, mounted in a directory every user may traverse, removed afterwards."""
    with shared_mount("apeinx-tenants-", tmp_path_factory.mktemp("state"), tenants_config(users)) as daemon:
        yield daemon


def submit_as(daemon, user, line: str) -> dict:
    return probe(user, "send", daemon.path("ctl", "submit"), line + "\n")


def submitted(daemon, user, line: str) -> int:
    """Submit as `user`; the pid, or fail saying why."""
    result = submit_as(daemon, user, line)
    assert result["errno"] is None, result
    return int(result["data"])


def parked_task(daemon, user) -> int:
    """A live task of `user` that holds no GPU: submitted, then stopped by its owner."""
    pid = submitted(daemon, user, LONG_TASK)
    stop = probe(user, "write", daemon.path("tasks", str(pid), "ctl"), "stop\n")
    assert stop["errno"] is None, stop
    return pid


def kill_as(daemon, user, pid: int) -> None:
    result = probe(user, "write", daemon.path("tasks", str(pid), "ctl"), "kill\n")
    assert result["errno"] is None, result
    assert daemon.status(pid)["Exit"] == "killed"


def wait_exited(daemon, pid: int, timeout: float = 10.0) -> dict:
    return poll_until(lambda: (s := daemon.status(pid))["Exit"] != "-" and s, timeout, f"task {pid} exits")


def listed_tasks(daemon, user) -> set:
    done = run_as(user, ["ls", daemon.path("tasks")])
    assert done.returncode == 0, done.stderr
    return {int(name) for name in done.stdout.split()}


def shell_error(user, argv: list[str]) -> str:
    """Run a shell tool as `user`, expecting it to fail; its message."""
    done = run_as(user, argv)
    assert done.returncode != 0, f"{argv} as {user.name} succeeded: {done.stdout[:200]}"
    return done.stderr


def audit_rows(daemon) -> set:
    """/trace/audit as a set of (uid, tenant, action, result, detail); every row names a caller's pid."""
    with open(daemon.path("trace", "audit")) as file:
        rows = list(csv.DictReader(file))
    assert all(int(row["pid"]) > 0 for row in rows), rows
    return {(int(r["uid"]), r["tenant"], r["action"], r["result"], r["detail"]) for r in rows}


def denial(result: dict) -> str:
    """The reason of a refused write, as the audit trail has it: the reply without `error: `."""
    return result["data"].removeprefix("error: ").rstrip("\n")


def usage(daemon, tenant: str) -> dict:
    with open(daemon.path("tenants", tenant, "usage")) as file:
        return {key: value for key, value in (line.split() for line in file)}


def test_a_user_sees_only_its_own_tenants_tasks(mounted, users):
    """Alice and Bob each list only their own tenant's tasks in /tasks; root lists both."""
    alice, bob = users["alice"], users["bob"]
    mine, theirs = submitted(mounted, alice, "name=mine max_tokens=3"), submitted(mounted, bob, "name=theirs max_tokens=3")
    assert mine in listed_tasks(mounted, alice) and theirs not in listed_tasks(mounted, alice)
    assert theirs in listed_tasks(mounted, bob) and mine not in listed_tasks(mounted, bob)
    assert {mine, theirs} <= {int(name) for name in os.listdir(mounted.path("tasks"))}
    assert mounted.status(mine)["Tenant"] == "a" and mounted.status(mine)["Uid"] == str(alice.uid)
    # the submitter and the tenant's first gid (a lists none: the daemon's)
    assert probe(alice, "stat", mounted.path("tasks", str(mine), "prompt"))["data"] == ["0o440", alice.uid, 0]
    assert probe(bob, "stat", mounted.path("tasks", str(theirs), "prompt"))["data"] == ["0o440", bob.uid, bob.gid]


def test_another_tenants_task_cannot_be_seen_read_or_killed(mounted, users):
    """Bob gets ENOENT for Alice's task, its prompt, output, replay and tenant, and for killing it."""
    alice, bob = users["alice"], users["bob"]
    pid = parked_task(mounted, alice)
    assert pid not in listed_tasks(mounted, bob)
    for path in (("tasks", str(pid)), ("tasks", str(pid), "prompt"), ("tasks", str(pid), "output"),
                 ("replay", str(pid)), ("tenants", "a", "usage")):
        assert "No such file or directory" in shell_error(bob, ["cat", mounted.path(*path)])
    for path, line in ((("ctl", "kill"), f"{pid}\n"), (("tasks", str(pid), "ctl"), "kill\n")):
        assert probe(bob, "write", mounted.path(*path), line)["errno"] == "ENOENT"
    assert probe(bob, "list", mounted.path("tenants"))["data"] == ["b"]
    assert mounted.status(pid)["Exit"] == "-"
    kill_as(mounted, alice, pid)


def test_a_viewer_cannot_submit_or_kill_but_can_read(mounted, users):
    """Vera views tenant a: she lists its task and reads its 0440 prompt, and submitting or killing is EACCES."""
    alice, vera = users["alice"], users["vera"]
    pid = parked_task(mounted, alice)
    assert submit_as(mounted, vera, "name=peek max_tokens=3")["errno"] == "EACCES"
    assert probe(vera, "write", mounted.path("ctl", "kill"), f"{pid}\n")["errno"] == "EACCES"
    assert probe(vera, "write", mounted.path("tasks", str(pid), "ctl"), "kill\n")["errno"] == "EACCES"
    assert pid in listed_tasks(mounted, vera)
    assert "Tenant:\ta\n" in probe(vera, "read", mounted.path("tasks", str(pid), "status"))["data"]
    assert run_as(vera, ["cat", mounted.path("tasks", str(pid), "prompt")]).stdout == "the secret plan"  # not by mode
    kill_as(mounted, alice, pid)


def test_a_user_over_its_task_quota_gets_edquot_with_the_reason(mounted, users):
    """Quinn's tenant allows one live task: a second is EDQUOT saying so, and passes once the first is gone."""
    quinn = users["quinn"]
    first = parked_task(mounted, quinn)
    refused = submit_as(mounted, quinn, "name=second max_tokens=3")
    assert refused["errno"] == "EDQUOT"
    assert refused["data"] == "error: tenant q has 1 live tasks; its quota allows 1\n"
    assert (quinn.uid, "q", "/ctl/submit", "denied", denial(refused)) in audit_rows(mounted)
    kill_as(mounted, quinn, first)
    wait_exited(mounted, submitted(mounted, quinn, "name=third max_tokens=3"))


def fresh_window_start(window_s: int, slack_s: float = 0.3) -> int:
    """Wait, if need be, for a budget window to begin; the index of a window with nearly all of it left."""
    now_us = time.time_ns() // 1000
    if now_us % (window_s * US) > slack_s * US:
        time.sleep((window_s * US - now_us % (window_s * US)) / US + 0.02)
    return time.time_ns() // 1000 // (window_s * US)


def window_index() -> int:
    return time.time_ns() // 1000 // (BUDGET_WINDOW_S * US)


def budget_numbers(numbers: dict) -> tuple[int, int, int]:
    return int(numbers["budget_used"]), int(numbers["budget_debt"]), int(numbers["budget_remaining"])


def test_budget_overdraw_stops_at_ten_percent_and_is_paid_back(mounted, users):
    """Cora may spend 1100 of a 1000-token budget in one window, not more; the next window owes 100."""
    cora = users["cora"]
    window = fresh_window_start(BUDGET_WINDOW_S)
    big = submitted(mounted, cora, f'name=big max_tokens=100 prompt="{"x " * 599}"')  # 600 in + 100 out
    small = submitted(mounted, cora, f'name=small max_tokens=100 prompt="{"x " * 299}"')  # 300 + 100: 1100
    over = submit_as(mounted, cora, "name=over max_tokens=1")  # 1 + 1 more
    assert over["errno"] == "EDQUOT"
    assert "2 more would pass 1100 (1000 + 10% overdraw)" in over["data"], over
    assert (cora.uid, "c", "/ctl/submit", "denied", denial(over)) in audit_rows(mounted)
    for pid in (big, small):
        assert wait_exited(mounted, pid)["Exit"] == "done"
    spent = usage(mounted, "c")
    assert window_index() == window, "the window ended before its tasks were served: machine too slow"
    assert budget_numbers(spent) == (1100, 0, 0) and spent["overdraws"] == "1"

    owing = poll_until(lambda: (u := usage(mounted, "c"))["budget_debt"] != "0" and u,
                       2 * BUDGET_WINDOW_S, "the next window begins")
    assert budget_numbers(owing) == (0, 100, 900)
    refused = submit_as(mounted, cora, "name=again max_tokens=1000")  # 1001: over 900 + 100 overdraw
    assert refused["errno"] == "EDQUOT"
    assert "1001 more would pass 1000 (1000 + 10% overdraw, 100 of it paying back" in refused["data"], refused
    assert window_index() == window + 1

    poll_until(lambda: usage(mounted, "c")["budget_debt"] == "0", 2 * BUDGET_WINDOW_S, "the window after begins")
    paid = probe(cora, "read", mounted.path("tenants", "c", "usage"))["data"]  # her own tenant's file
    assert "budget_used 0\nbudget_debt 0\nbudget_remaining 1000\n" in paid


def policy_acts(daemon) -> set:
    return {row for row in audit_rows(daemon) if row[2] == "policy"}


def test_a_deny_rule_blocks_a_model_and_names_the_rule(mounted, users):
    """With `deny model=premium tenant=b`, Bob's submit to premium is EACCES naming rule 1; others pass."""
    adam, bob, alice = users["adam"], users["bob"], users["alice"]
    policy, before = mounted.path("ctl", "policy"), policy_acts(mounted)
    assert run_as(adam, ["sh", "-c", f"echo 'deny model=premium tenant=b' > {policy}"]).returncode == 0
    try:  # one replace, never an empty list between (the shell flushes before it writes)
        assert policy_acts(mounted) - before == {
            (adam.uid, "", "policy", "ok", "replace with 1 rule(s): deny model=premium tenant=b")}
        assert probe(bob, "read", policy)["data"] == "deny model=premium tenant=b\n"
        refused = submit_as(mounted, bob, "name=s model=premium max_tokens=3")
        assert refused["errno"] == "EACCES"
        assert refused["data"] == "error: denied by policy rule 1: deny model=premium tenant=b\n"
        assert (bob.uid, "b", "/ctl/submit", "denied", denial(refused)) in audit_rows(mounted)
        for user, line in ((bob, "name=f model=sim max_tokens=3"), (alice, "name=s model=premium max_tokens=3")):
            wait_exited(mounted, submitted(mounted, user, line))
        assert probe(bob, "write", policy, "allow model=premium\n")["errno"] == "EACCES"
    finally:
        clear_policy(mounted, adam)


def clear_policy(daemon, admin) -> None:
    """`: > /ctl/policy` as `admin`; the list empties at release, just after close returns."""
    policy = daemon.path("ctl", "policy")
    assert run_as(admin, ["sh", "-c", f": > {policy}"]).returncode == 0
    poll_until(lambda: os.path.getsize(policy) == 0, 5, "the policy is emptied")


def test_audit_records_admin_acts_and_denials_with_their_uid(mounted, users):
    """Adam's tenant and policy changes and his kill of Alice's task, and Bob's and Vera's denials, are audited."""
    adam, alice, bob, vera = users["adam"], users["alice"], users["bob"], users["vera"]
    pid, tenants, policy = parked_task(mounted, alice), mounted.path("ctl", "tenants"), mounted.path("ctl", "policy")
    assert probe(bob, "write", mounted.path("ctl", "kill"), f"{pid}\n")["errno"] == "ENOENT"
    assert submit_as(mounted, vera, "name=peek max_tokens=3")["errno"] == "EACCES"
    assert probe(vera, "write", mounted.path("tasks", str(pid), "ctl"), "stop\n")["errno"] == "EACCES"
    assert probe(bob, "write", tenants, "add sneaky\n")["errno"] == "EACCES"
    for path, line in ((tenants, "add audited weight=300\n"), (tenants, "remove audited\n"),
                       (policy, "allow tenant=a\n"), (mounted.path("tasks", str(pid), "ctl"), "kill\n")):
        assert probe(adam, "write", path, line)["errno"] is None, (path, line)
    clear_policy(mounted, adam)
    rows = audit_rows(mounted)
    assert {(adam.uid, "", "tenant", "ok", "audited: add audited weight=300"),
            (adam.uid, "", "tenant", "ok", "remove audited"),
            (adam.uid, "", "policy", "ok", "append 1 rule(s): allow tenant=a"),
            (adam.uid, "", "kill", "ok", f"task {pid} of uid {alice.uid}, tenant a"),
            (bob.uid, "b", "/ctl/kill", "denied", f"no task {pid}"),
            (bob.uid, "b", "/ctl/tenants", "denied", f"uid {bob.uid} is user of tenant b: writing this file needs admin"),
            (vera.uid, "a", "/ctl/submit", "denied", f"uid {vera.uid} is viewer of tenant a: writing this file needs user"),
            (vera.uid, "a", f"/tasks/{pid}/ctl", "denied", f"uid {vera.uid} is viewer of tenant a: writing this file needs user"),
            } <= rows


def test_a_tenant_added_at_runtime_takes_its_members_at_once(mounted, users):
    """Adam adds tenant e for Uma through /ctl/tenants: she submits into it, reads its weight, then it is removed."""
    adam, uma = users["adam"], users["uma"]
    tenants = mounted.path("ctl", "tenants")
    assert probe(adam, "write", tenants, f"add e weight=300 uids={uma.uid}\n")["errno"] is None
    pid = submitted(mounted, uma, "name=newcomer max_tokens=3")
    assert mounted.status(pid)["Tenant"] == "e"
    assert probe(uma, "read", mounted.path("tenants", "e", "weight"))["data"] == "300\n"
    assert probe(uma, "write", mounted.path("tenants", "e", "weight"), "400\n")["errno"] == "EACCES"
    assert (uma.uid, "e", "/tenants/e/weight", "denied",
            f"uid {uma.uid} is user of tenant e: writing this file needs admin") in audit_rows(mounted)
    wait_exited(mounted, pid)
    assert probe(adam, "write", tenants, "remove e\n")["errno"] is None
    assert "e" not in os.listdir(mounted.path("tenants"))
    assert submit_as(mounted, uma, "name=homeless max_tokens=3")["errno"] == "EACCES"


def test_admin_only_files_are_eacces_for_users(mounted, users):
    """The trace, the audit trail and /billing are EACCES for a user, who reads its own tenant's bill."""
    alice = users["alice"]
    for path in (("trace", "events"), ("trace", "audit"), ("billing",)):
        assert "Permission denied" in shell_error(alice, ["cat", mounted.path(*path)])
    bill = run_as(alice, ["cat", mounted.path("tenants", "a", "bill")])
    assert bill.returncode == 0 and bill.stdout.startswith("period_start,tenant,model,")
    assert all(line.split(",")[1] == "a" for line in bill.stdout.splitlines()[1:])


def test_allow_other_lets_any_user_read_the_tree(mounted, users):
    """Uma, in no tenant, reaches the root-mounted tree: README and meminfo read with cat."""
    uma = users["uma"]
    with open("/proc/mounts") as mounts:
        options = next(line.split()[3] for line in mounts if line.split()[1] == mounted.mountpoint)
    assert "allow_other" in options.split(",")
    readme = run_as(uma, ["cat", mounted.path("README")])
    assert readme.returncode == 0 and readme.stdout.startswith("apeinxfs - an AI kernel")
    meminfo = run_as(uma, ["cat", mounted.path("memory", "meminfo")])
    assert meminfo.returncode == 0 and meminfo.stdout.startswith("KVTotal:")


def test_the_journal_is_private_to_the_daemons_owner(mounted):
    """The journal holds every tenant's prompts and outputs, so its files have no group or other bits."""
    journal = [name for name in os.listdir(mounted.state_dir) if name.startswith("journal.db")]
    assert "journal.db" in journal
    for name in journal:
        assert os.stat(os.path.join(mounted.state_dir, name)).st_mode & 0o077 == 0, name


def test_the_runqueue_shows_a_user_only_its_own_tenants_rows(mounted, users):
    """Alice's read of sched/runqueue names no other tenant and no agent of another tenant's task."""
    alice, bob = users["alice"], users["bob"]
    pid = parked_task(mounted, bob)
    try:
        rows = probe(alice, "read", mounted.path("sched", "runqueue"))["data"].splitlines()[1:]
        assert {row.split()[0] for row in rows} == {"tenant/a"}
    finally:
        kill_as(mounted, bob, pid)


def test_the_runqueue_shows_a_user_its_own_agents(mounted, users):
    """Alice's read of sched/runqueue lists the agent of her own running task."""
    alice = users["alice"]
    pid = submitted(mounted, alice, LONG_TASK)
    try:
        rows = probe(alice, "read", mounted.path("sched", "runqueue"))["data"].splitlines()[1:]
        assert f"agent/{pid}" in {row.split()[0] for row in rows}
    finally:
        kill_as(mounted, alice, pid)


def test_the_runqueue_of_a_viewer_is_its_tenants_and_of_no_role_empty(mounted, users):
    """Vera, a's viewer, reads tenant a's row of sched/runqueue; uma, of no tenant, reads the header alone."""
    vera, uma = users["vera"], users["uma"]
    rows = probe(vera, "read", mounted.path("sched", "runqueue"))["data"].splitlines()
    assert [row.split()[0] for row in rows[1:]] == ["tenant/a"]
    assert probe(uma, "read", mounted.path("sched", "runqueue"))["data"] == rows[0] + "\n"


def sendfile_all(source, sink) -> int:
    """Copy `source` to `sink` by sendfile(2) from offset 0 until it returns 0; the bytes copied."""
    copied, sent = 0, 1
    while sent:
        sent = os.sendfile(sink.fileno(), source.fileno(), copied, 1 << 16)
        copied += sent
    return copied


def test_sendfile_copies_the_whole_runqueue_while_a_user_stats_it(mounted, users):
    """Root's sendfile of an open sched/runqueue copies every byte of its view after alice stats hers (the
    kernel keeps one size per inode, and splice stops at it)."""
    path = mounted.path("sched", "runqueue")
    with open(path, "rb") as source, tempfile.TemporaryFile() as sink:
        size = os.fstat(source.fileno()).st_size
        assert run_as(users["alice"], ["stat", path]).returncode == 0
        copied = sendfile_all(source, sink)
        whole = os.pread(source.fileno(), 1 << 16, 0)  # the snapshot this descriptor reads
        assert copied == size == len(whole) and os.pread(sink.fileno(), 1 << 16, 0) == whole


def test_a_users_cached_stat_of_the_runqueue_is_its_own_size(mounted, users):
    """After root reads sched/runqueue, alice's `stat --cached=always` gives the size of her own view, not
    root's (which would tell her the other tenants' row count)."""
    alice, path = users["alice"], mounted.path("sched", "runqueue")
    with open(path, "rb") as file:
        assert file.read() and os.stat(path).st_size > 0
        cached = run_as(alice, ["stat", "--cached=always", "-c", "%s", path])
    assert cached.returncode == 0, cached.stderr
    assert int(cached.stdout) == len(probe(alice, "read", path)["data"])


def test_sendfile_of_an_open_runqueue_copies_it_whole_after_a_shorter_open(mounted, users):
    """Root opens sched/runqueue, a tenant is removed, root opens it again (a row shorter): sendfile from the
    first descriptor copies all of its snapshot, and fstat of it gives at least that size."""
    tenants, path = mounted.path("ctl", "tenants"), mounted.path("sched", "runqueue")
    assert probe(users["adam"], "write", tenants, "add brief weight=100\n")["errno"] is None
    with open(path, "rb") as first, tempfile.TemporaryFile() as sink:
        assert probe(users["adam"], "write", tenants, "remove brief\n")["errno"] is None
        with open(path, "rb") as second:
            whole = os.pread(first.fileno(), 1 << 16, 0)
            assert len(os.pread(second.fileno(), 1 << 16, 0)) < len(whole)
            assert os.fstat(first.fileno()).st_size == len(whole)
            assert sendfile_all(first, sink) == len(whole) and os.pread(sink.fileno(), 1 << 16, 0) == whole


def test_an_open_runqueue_stats_after_its_tenant_is_removed(mounted, users):
    """Uma, in a tenant added for her, holds sched/runqueue open while adam removes the tenant: fstat of her
    descriptor still works and gives its snapshot's size."""
    adam, uma, tenants = users["adam"], users["uma"], mounted.path("ctl", "tenants")
    assert probe(adam, "write", tenants, f"add leaving weight=100 uids={uma.uid}\n")["errno"] is None
    holder = subprocess.Popen(as_user(uma, [SYSTEM_PYTHON, "-c", HOLD_OPEN, mounted.path("sched", "runqueue")]),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/")
    try:
        size = int(holder.stdout.readline())
        assert probe(adam, "write", tenants, "remove leaving\n")["errno"] is None
        out, _ = holder.communicate("\n", timeout=20)
        assert out.split() == [str(size), str(size)]
    finally:
        holder.kill()
        holder.wait()


def counts(user, path: str) -> dict:
    """`path`'s `key value` lines as `user` reads them."""
    return dict(line.split() for line in probe(user, "read", path)["data"].splitlines())


def pools(user, daemon) -> list[int]:
    """The `tasks` of each GPU's memory/gpuN/pool as `user` reads them."""
    return [int(counts(user, daemon.path("memory", f"gpu{g}", "pool"))["tasks"]) for g in (0, 1)]


def test_the_scheduler_pool_and_node_counts_of_a_user_are_its_own_tenants(mounted, users):
    """While bob's task runs, adam's (an admin's) sched/stat and pools count it, alice's count none of it (her
    decisions stay as they were) and uma's (no role) are zeros, bob's his own; of the node's tasks file, adam's and
    bob's list his pid, alice's and uma's do not."""
    adam, alice, bob, uma = (users[name] for name in ("adam", "alice", "bob", "uma"))
    stat = mounted.path("sched", "stat")
    before = counts(alice, stat)
    pid = submitted(mounted, bob, LONG_TASK)
    try:
        poll_until(lambda: mounted.status(pid)["State"].startswith("R"), 10, f"task {pid} runs")
        every, own, none = counts(adam, stat), counts(alice, stat), counts(uma, stat)
        assert int(every["running"]) >= 1 and sum(pools(adam, mounted)) >= 1
        assert own == before and (own["running"], own["queued"]) == ("0", "0") and pools(alice, mounted) == [0, 0]
        assert {value for key, value in none.items() if key != "policy"} == {"0"} and pools(uma, mounted) == [0, 0]
        assert counts(bob, stat)["running"] == "1" and sum(pools(bob, mounted)) == 1
        tasks = mounted.path("nodes", os.listdir(mounted.path("nodes"))[0], "tasks")
        assert [str(pid) in run_as(user, ["cat", tasks]).stdout.split() for user in (adam, bob, alice, uma)] == \
            [True, True, False, False]
    finally:
        kill_as(mounted, bob, pid)
