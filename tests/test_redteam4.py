"""Red team 4: the daemon attacked through its environment and an unprivileged user's resources.

Each defect found is a strict xfail test here, reason "redteam4 Dn: ...", for its mend to turn into a
passing test: D1 a journal deleted under a running daemon (acknowledged writes lost), D2 open show files
and directories that pin a copy each with no bound per uid (daemon memory), D3 a `stream` read and D6 a
task `events` read that copy the whole file whatever the read's size (the daemon's one thread), D4 a wall
clock set back across a restart (kernel time frozen, budgets not enforced), D5 a lazy unmount that leaves
the daemon and its lock behind while any reader is blocked, D7 a daemon clock that never follows the host's.
Real mounts (tests/daemon.py), a real user (tests/unixusers.py), a Runtime on a fake clock.
"""
import errno
import glob
import os
import signal
import subprocess
import time
import tracemalloc

import pytest
import trio

from apeinxfs import config as config_mod
from apeinxfs.journal import Journal
from apeinxfs.kernel.errors import ApeinxError
from apeinxfs.kernel.events import Chunk, Control, Step, Submit, Tick
from apeinxfs.kernel.spec import TaskCommand, TaskSpec
from apeinxfs.nodes.base import Caller
from apeinxfs.nodes.tree import Tree
from apeinxfs.runtime import Runtime, WallClock
from daemon import Daemon, poll_until, sim_config
from test_journal_runtime import open_runtime
from unixusers import SYSTEM_PYTHON, as_user, shared_mount, users_of_test

SLOW_SIM = sim_config(100)  # a task of 1000 tokens runs for 100 s: it is still there when looked at
MIB = 1 << 20
ROOT_CALLER = Caller(uid=0, gid=0, pid=1)


# -- D1: the journal deleted under a running daemon ------------------------------------------------------------

@pytest.mark.mount
def test_writes_acknowledged_after_the_journal_was_deleted_survive_a_clean_restart(tmp_path):
    """After journal.db (and its -wal, -shm) is removed, a submit is either refused or still there after a
    clean SIGTERM and restart."""
    with Daemon(tmp_path / "ai", tmp_path / "state", SLOW_SIM) as daemon:
        first = daemon.submit("name=before max_tokens=1000")
        for path in glob.glob(os.path.join(daemon.state_dir, "journal.db*")):
            os.unlink(path)
        try:
            second = daemon.submit("name=after max_tokens=1000")
        except OSError:  # refused (EIO, EROFS, ...): the daemon saw it could not journal it
            second = None
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(20) == 0
        daemon.start()
        kept = set(os.listdir(daemon.path("tasks")))
        assert {str(first)} | ({str(second)} if second else set()) <= kept, daemon.log_tail()


# -- D2: open show files pin a rendered copy each, with no bound per uid ----------------------------------------

USERS = {"mallory": 23401}
HOLDER = r"""
import json, os, sys, time
top, what, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(top + "/ctl/submit", "r+b", buffering=0) as ctl:
    if what == "prompt":
        ctl.write(json.dumps({"name": "big", "max_tokens": 1000, "prompt": "x" * (1 << 20)}).encode() + b"\n")
        path = f"{top}/tasks/{int(ctl.read(64))}/prompt"
    else:
        ctl.write(b"name=small max_tokens=5\n" * 10000)
        path = f"{top}/tasks"
fds = []
for _ in range(count):
    fds.append(os.open(path, os.O_RDONLY))
    time.sleep(0.005)  # the sim's steps change the kernel between opens: each open renders anew
print(len(fds), flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def users():
    """Mallory, an ordinary user, deleted afterwards whatever happened."""
    yield from users_of_test("aprt4_", USERS, "REDTEAM4 USER TESTS ARE")


def rss_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS:"))


def growth_while_held(user, daemon: Daemon, what: str, count: int) -> tuple[str, int]:
    """(The descriptors `user`'s HOLDER process says it holds, the MiB the daemon grew by meanwhile)."""
    before = rss_mib(daemon.proc.pid)
    holder = subprocess.Popen(as_user(user, [SYSTEM_PYTHON, "-c", HOLDER, daemon.mountpoint, what, str(count)]),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        held = holder.stdout.readline().strip()
        return held, rss_mib(daemon.proc.pid) - before
    finally:
        holder.stdin.close()
        holder.wait(30)


@pytest.mark.mount
def test_one_user_holding_open_show_files_cannot_grow_the_daemon_without_bound(users, tmp_path):
    """Mallory submits a task with a 1 MiB prompt and opens its prompt file 300 times (opens past a limit
    may be refused): the daemon grows by less than 64 MiB."""
    with shared_mount("apeinx-redteam4-", tmp_path / "state", sim_config(2)) as daemon:
        held, grown = growth_while_held(users["mallory"], daemon, "prompt", 300)
    assert grown < 64, f"{held} descriptors held; the daemon grew by {grown} MiB"


@pytest.mark.mount
@pytest.mark.slow
def test_one_user_holding_open_directories_cannot_grow_the_daemon_without_bound(users, tmp_path):
    """Mallory submits 10,000 small tasks in one write and opens /tasks 100 times (opens past a limit may be
    refused): the daemon grows by less than 64 MiB."""
    with shared_mount("apeinx-redteam4-", tmp_path / "state", sim_config(2)) as daemon:
        held, grown = growth_while_held(users["mallory"], daemon, "tasks", 100)
    assert grown < 64, f"{held} descriptors held; the daemon grew by {grown} MiB"


# -- D3: a stream read copies the whole rest of the output ------------------------------------------------------

OUTPUT_MIB = 32


async def first_read_allocating(tree: Tree, pid: int, name: str) -> tuple[bytes, int]:
    """(What a 4 KiB read at the start of tasks/PID/NAME returns, the most bytes allocated at once meanwhile)."""
    node = tree.lookup(tree.lookup(tree.lookup(1, "tasks").inode, str(pid)).inode, name)
    handle = node.open(ROOT_CALLER, writing=False, reading=True)
    tracemalloc.start()
    try:
        return await handle.read(0, 4096, None), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def test_a_small_stream_read_of_a_long_output_copies_no_more_than_it_returns(tmp_path):
    """A 4 KiB read at the start of a task's `stream`, whose output is 32 MiB, allocates under 1 MiB."""
    with open_runtime(tmp_path) as rt:
        tree = Tree(rt)
        pid = rt.commit([Submit(spec=TaskSpec(name="long", max_tokens=1000), uid=0)])[0]
        for _ in range(OUTPUT_MIB):
            rt.deliver(Step(gpu=0, chunks=[Chunk(pid=pid, text="w" * MIB, tokens=1)]))
        data, peak = await first_read_allocating(tree, pid, "stream")
        assert len(data) == 4096
        assert peak < MIB, f"a 4 KiB read of a {OUTPUT_MIB} MiB output allocated {peak / MIB:.1f} MiB"


# -- D4: the wall clock set back across a restart ---------------------------------------------------------------

BUDGET = """
[gpus]
simulated = 1
slots = 8
[[models]]
name = "sim"
[[tenants]]
name = "t"
[tenants.members]
uids = [1000]
[tenants.budget]
tokens = 100
window = "1h"
overdraw = 0
"""
BEFORE_US = 1_800_000_000 * 1_000_000  # the clock of the first run (January 2027)
SET_BACK_US = 86_400 * 1_000_000  # the host's clock is a day behind at the next start (an RTC, an NTP step)


class FakeWallClock:
    """The daemon's clock at a time the test sets."""

    def __init__(self, now_us: int):
        self.now = now_us

    def now_us(self) -> int:
        return self.now


def started(tmp_path, clock: FakeWallClock) -> Runtime:
    """A Runtime on tmp_path's journal and BUDGET, on `clock`, recovered from what an earlier one journaled."""
    path = tmp_path / "config.toml"
    path.write_text(BUDGET)
    config = config_mod.load(str(path), str(tmp_path / "state"), use_nvml=False)
    rt = Runtime(config, Journal(str(tmp_path / "state" / "journal.db")), clock=clock)
    rt.recover()
    return rt


def run_to_end(rt: Runtime, clock: FakeWallClock, tokens: int) -> int:
    """Submit a task of `tokens` for uid 1000 and deliver them all a second later; its pid."""
    pid = rt.commit([Submit(spec=TaskSpec(name="job", max_tokens=tokens, tenant="t"), uid=1000)])[0]
    clock.now += 1_000_000
    rt.deliver(Step(gpu=0, chunks=[Chunk(pid=pid, text=" w" * tokens, tokens=tokens)]))
    assert rt.kernel.tasks[pid].done
    return pid


def a_day_behind(tmp_path) -> tuple[Runtime, FakeWallClock]:
    """A first run that used the whole budget, then a restart with the clock a day behind."""
    clock = FakeWallClock(BEFORE_US)
    first = started(tmp_path, clock)
    run_to_end(first, clock, 90)
    first.journal.close()
    clock.now -= SET_BACK_US
    return started(tmp_path, clock), clock


def test_a_budget_holds_after_a_restart_with_the_clock_set_back(tmp_path):
    """A tenant of 100 tokens an hour that used them, restarted with the clock a day behind, runs three tasks of
    90 tokens within two hours of real time: at least one is refused EDQUOT."""
    rt, clock = a_day_behind(tmp_path)
    refused = 0
    try:
        for _ in range(3):
            clock.now += 1_800_000_000  # half an hour passes between tasks
            try:
                run_to_end(rt, clock, 90)
            except ApeinxError as error:
                assert error.errno == errno.EDQUOT, error
                refused += 1
    finally:
        rt.journal.close()
    assert refused, "three tasks of 90 tokens in 90 minutes of a 100-tokens-an-hour budget"


def test_a_deadline_expires_after_a_restart_with_the_clock_set_back(tmp_path):
    """A task with a 1 s deadline, submitted after a restart with the clock a day behind, has expired 60 s later."""
    rt, clock = a_day_behind(tmp_path)
    try:
        spec = TaskSpec(name="soon", max_tokens=5, deadline_us=1_000_000, tenant="t")
        pid = rt.commit([Submit(spec=spec, uid=1000)])[0]
        clock.now += 60_000_000
        rt.deliver(Tick())
        assert rt.kernel.tasks[pid].done, rt.kernel.tasks[pid].state
    finally:
        rt.journal.close()


# -- D5: a lazy unmount leaves the daemon running while any descriptor is open -----------------------------------

def waits_on_fuse(pid: int) -> bool:
    """Whether process `pid` sleeps waiting for a FUSE request's answer."""
    with open(f"/proc/{pid}/wchan") as wchan:
        return wchan.read() == "request_wait_answer"


@pytest.mark.mount
def test_a_new_daemon_starts_after_a_lazy_unmount_with_a_reader_blocked(tmp_path):
    """With a `cat tasks/PID/wait` blocked on a 100 s task, `fusermount3 -u -z` and then a new daemon on the
    same state directory: the new one mounts."""
    old = Daemon(tmp_path / "ai", tmp_path / "state", SLOW_SIM).start()
    reader = None
    try:
        pid = old.submit("name=long max_tokens=1000")
        reader = subprocess.Popen(["cat", old.path("tasks", str(pid), "wait")], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        poll_until(lambda: waits_on_fuse(reader.pid), 10, "cat blocks in its read")
        subprocess.run(["fusermount3", "-u", "-z", old.mountpoint], check=True)
        new = Daemon(tmp_path / "ai", tmp_path / "state", SLOW_SIM)
        try:
            new.start(timeout=15)
        finally:
            new.stop()
    finally:
        if reader is not None:
            reader.kill()
            reader.wait()
        old.stop()


# -- D6: a read of a task's events rebuilds all its lines --------------------------------------------------------

@pytest.mark.invariants_every(1000)
async def test_a_small_read_of_a_long_task_events_file_copies_no_more_than_it_returns(tmp_path):
    """A 4 KiB read at the start of the events of a task given 30,000 prio changes allocates under 1 MiB."""
    with open_runtime(tmp_path) as rt:
        tree = Tree(rt)
        pid = rt.commit([Submit(spec=TaskSpec(name="long", max_tokens=1000), uid=0)])[0]
        for _ in range(3):
            rt.commit([Control(pid=pid, command=TaskCommand("prio", 1 + n % 9)) for n in range(10_000)])
        data, peak = await first_read_allocating(tree, pid, "events")
        assert len(data) == 4096
        assert peak < MIB, f"a 4 KiB read of a task's events allocated {peak / MIB:.1f} MiB"



def shell_output(*command: str) -> bytes:
    return subprocess.run(command, capture_output=True, check=True, timeout=60).stdout


@pytest.mark.mount
def test_shell_tools_agree_on_a_long_task_events_file(tmp_path):
    """Of a stopped task given 20,000 prio changes through its ctl, `cat` of its events shows them all, and
    `dd skip=`, `tail -c` and `head -c` (each reading only part of it, at offsets of their own) read the same
    bytes as the matching slices of what `cat` read."""
    with Daemon(tmp_path / "ai", tmp_path / "state", SLOW_SIM) as daemon:
        pid = daemon.submit("name=long max_tokens=1000")
        with open(daemon.path("tasks", str(pid), "ctl"), "wb", buffering=0) as ctl:
            for _ in range(2):
                ctl.write(b"".join(b"prio %d\n" % (1 + n % 9) for n in range(10_000)))
            ctl.write(b"stop\n")
        events = daemon.path("tasks", str(pid), "events")
        dd = shell_output("dd", f"if={events}", "bs=4096", "skip=37", "count=2", "status=none")
        tail, head = shell_output("tail", "-c", "5000", events), shell_output("head", "-c", "10000", events)
        whole = shell_output("cat", events)
    assert whole.count(b",prio,") == 20_000 and whole.endswith(b"\n")
    assert dd == whole[37 * 4096:39 * 4096] and tail == whole[-5000:] and head == whole[:10000]

# -- D7: the daemon's wall clock never follows a step of the host's --------------------------------------------

class SteppedHostClock:
    """time.time_ns of a host whose clock NTP steps forward by `step_ns` once `stepped` is set."""

    def __init__(self, real, step_ns: int):
        self.real, self.step_ns, self.stepped = real, step_ns, False

    def __call__(self) -> int:
        return self.real() + (self.step_ns if self.stepped else 0)


def test_the_daemon_clock_follows_the_host_clock_after_it_is_stepped(monkeypatch):
    """After the host's clock is stepped an hour forward, the daemon's clock reads within a minute of it."""
    host = SteppedHostClock(time.time_ns, 3600 * 10**9)
    monkeypatch.setattr(time, "time_ns", host)

    async def main() -> int:
        clock = WallClock()
        clock.now_us()
        host.stepped = True
        await trio.sleep(0.01)
        return clock.now_us()

    daemon_us = trio.run(main)
    assert abs(daemon_us - host() // 1000) < 60 * 10**6, f"{(host() // 1000 - daemon_us) / 1e6:.0f} s behind"
