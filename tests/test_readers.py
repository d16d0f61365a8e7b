"""Blocked readers (readers.py): the signal masks, the caps per uid and in total, the one watcher
(trio, virtual clock, a stand-in for /proc), end_where (a detached mount), a real thread's status file, and on a live mount
real `cat` processes: Ctrl-C ends one of many, and a second user gets a slot past the first's cap.
"""
import collections
import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys

import attrs
import pytest
import trio
from hypothesis import given, strategies as st

from apeinxfs import config
from apeinxfs.kernel.errors import ApeinxError, Invalid, TooMany
from apeinxfs.mount import Detached, ended_by_detach
from apeinxfs.readers import SCAN_CHUNK, SLICE_S, STATUS_BYTES, Interrupted, Readers, StatusFile, signal_pending
from apeinxfs.runtime import Notifier
from daemon import Daemon, poll_until, sim_config
from test_fs_ops import open_path, ops  # noqa: F401 - ops is a fixture
from test_journal_runtime import submit
from unixusers import as_user, probe, run_as, shared_dir, users_of_test

CALLER = attrs.make_class("Caller", ["uid", "pid"])


def bit(signum: int) -> int:
    return 1 << (signum - 1)


def status_text(pending=0, shared=0, blocked=0, ignored=0, caught=0) -> bytes:
    """A /proc/PID/status text with these signal masks, the lines around them as Linux writes them."""
    return (f"Name:\tcat\nState:\tS (sleeping)\nSigQ:\t0/127\nSigPnd:\t{pending:016x}\nShdPnd:\t{shared:016x}\n"
            f"SigBlk:\t{blocked:016x}\nSigIgn:\t{ignored:016x}\nSigCgt:\t{caught:016x}\nCapInh:\t0\n").encode()


@pytest.mark.parametrize("masks, ends_the_read", [
    ({}, False),
    ({"shared": bit(signal.SIGINT)}, True),
    ({"pending": bit(signal.SIGKILL)}, True),
    ({"shared": bit(signal.SIGINT), "blocked": bit(signal.SIGINT)}, False),
    ({"shared": bit(signal.SIGINT), "ignored": bit(signal.SIGINT)}, False),
    ({"shared": bit(signal.SIGCHLD)}, False),
    ({"shared": bit(signal.SIGCHLD), "caught": bit(signal.SIGCHLD)}, True),
], ids=["none", "sigint", "sigkill", "blocked", "ignored", "sigchld", "sigchld-caught"])
def test_signal_pending_reads_the_masks(masks, ends_the_read):
    """Pending for the thread or its process, not blocked or ignored, and not ignored by default unless caught."""
    assert signal_pending(status_text(**masks)) is ends_the_read


# -- the registry, with a stand-in for /proc ----------------------------------------------------------


@attrs.define
class Probes:
    """A stand-in for StatusFile: pids in `signalled` read as signalled; checks and open files counted."""

    signalled: set = attrs.Factory(set)
    checks: collections.Counter = attrs.Factory(collections.Counter)  # pid -> times checked
    open: int = 0

    def __call__(self, pid: int) -> "FakeStatus":
        self.open += 1
        return FakeStatus(self, pid)


@attrs.define
class FakeStatus:
    probes: Probes
    pid: int

    def signalled(self) -> bool:
        self.probes.checks[self.pid] += 1
        return self.pid in self.probes.signalled

    def close(self) -> None:
        self.probes.open -= 1


def registry(total=10, per_uid=10) -> tuple[Readers, Probes]:
    probes = Probes()
    return Readers(Notifier(), total, per_uid, probe=probes), probes


def test_per_uid_cap_leaves_slots_to_another_uid():
    """A uid at its cap gets EAGAIN naming the per-uid key; another uid is still admitted."""
    readers, _ = registry(total=5, per_uid=2)
    readers.admit(1000, 1), readers.admit(1000, 2)
    with pytest.raises(TooMany) as refused:
        readers.admit(1000, 3)
    assert refused.value.errno == errno.EAGAIN and "max_waiters_per_uid" in refused.value.reason
    readers.admit(1001, 4)
    assert len(readers) == 3 and readers.by_uid == {1000: 2, 1001: 1}
    readers.check()


@pytest.mark.parametrize("text, cap", [("", 300), ("[daemon]\nmax_waiters_per_uid = 2\n", 2),
                                       ("[daemon]\nmax_waiters_per_uid = 0\n", None)])
def test_per_uid_cap_is_a_config_key(tmp_path, text, cap):
    """daemon.max_waiters_per_uid comes from the config (300 by default); below 1 is refused, naming the key."""
    path = tmp_path / "config.toml"
    path.write_text(text)
    if cap is None:
        with pytest.raises(Invalid, match="daemon.max_waiters_per_uid"):
            config.load(str(path), str(tmp_path), use_nvml=False)
    else:
        assert config.load(str(path), str(tmp_path), use_nvml=False).max_waiters_per_uid == cap


def test_total_cap_is_eagain_for_everyone():
    """Past the total, any uid gets EAGAIN naming daemon.max_waiters."""
    readers, _ = registry(total=3, per_uid=3)
    for uid in (1, 2, 3):
        readers.admit(uid, uid)
    with pytest.raises(TooMany) as refused:
        readers.admit(4, 4)
    assert "daemon.max_waiters)" in refused.value.reason


def test_leave_frees_the_slot_and_closes_the_status_file():
    """A reader that leaves gives its uid's slot back and closes what it kept open."""
    readers, probes = registry(per_uid=1)
    readers.leave(readers.admit(1000, 1))
    readers.admit(1000, 2)
    assert probes.open == 1 and readers.by_uid == {1000: 1}


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3)), max_size=60))
def test_caps_hold_over_any_admits_and_leaves(steps):
    """Any sequence of admissions (some refused) and leaves keeps counts consistent and under the caps."""
    readers, probes = registry(total=6, per_uid=3)
    held = []
    for admitting, uid in steps:
        if admitting:
            try:
                held.append(readers.admit(uid, uid))
            except TooMany:
                assert len(readers) == 6 or readers.by_uid[uid] == 3
        elif held:
            readers.leave(held.pop(uid % len(held)))
        readers.check()
    assert probes.open == len(readers) == len(held)


# -- waiting and the watcher, in virtual time ---------------------------------------------------------


async def blocked_read(readers: Readers, key, pid: int, deadline=float("inf")):
    """One read that waits once on `key` as `pid`: what it raised, or None, and when it ended."""
    try:
        with readers.waiting(deadline) as waiter:
            await waiter(key, CALLER(uid=1000, pid=pid))
    except ApeinxError as exc:
        return exc, trio.current_time()
    return None, trio.current_time()


async def test_reader_sleeps_until_its_key_changes(autojump_clock):
    """A blocked reader returns when its key is woken, not before, and leaves the registry."""
    readers, _ = registry()
    results = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(readers.watch)
        nursery.start_soon(lambda: run_into(results, blocked_read(readers, 7, pid=1)))
        await trio.sleep(100)
        assert results == [] and len(readers) == 1
        readers.notifier.wake([7])
        await trio.sleep(0)
        await trio.sleep(0)
        nursery.cancel_scope.cancel()
    assert results == [(None, 100)] and len(readers) == 0


async def run_into(results: list, read) -> None:
    results.append(await read)


@contextlib.asynccontextmanager
async def two_blocked_readers(readers: Readers, results: list):
    """The watcher running and reads of pids 1 and 2 blocked (each on its pid as key), into `results`; all
    cancelled at the end of the block."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(readers.watch)
        for pid in (1, 2):
            nursery.start_soon(lambda pid=pid: run_into(results, blocked_read(readers, pid, pid)))
        yield
        nursery.cancel_scope.cancel()


async def test_watcher_interrupts_only_the_signalled_reader(autojump_clock):
    """Once a reader's thread has a signal pending, the next pass ends its read with EINTR; others stay blocked."""
    readers, probes = registry()
    results: list = []
    async with two_blocked_readers(readers, results):
        await trio.sleep(10)
        probes.signalled.add(1)
        await trio.sleep(SLICE_S * 2)
        assert len(results) == 1 and len(readers) == 1
    error, at = results[0]
    assert isinstance(error, Interrupted) and error.errno == errno.EINTR and 10 < at <= 10 + SLICE_S


async def test_watcher_makes_no_checks_while_no_one_waits(autojump_clock):
    """With no reader blocked the watcher reads nothing; with one it checks it once per slice."""
    readers, probes = registry()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(readers.watch)
        await trio.sleep(100)
        assert not probes.checks
        nursery.start_soon(blocked_read, readers, 7, 1)
        await trio.sleep(10.5 * SLICE_S)
        nursery.cancel_scope.cancel()
    assert probes.checks == {1: 1 + 10}  # the check at admission, then one per pass


async def test_a_pass_checks_every_reader_chunk_by_chunk(autojump_clock):
    """More readers than a chunk: every one is checked once per slice, and a signalled one ends."""
    readers, probes = registry(total=1000, per_uid=1000)
    count = 3 * SCAN_CHUNK + 5
    results = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(readers.watch)
        for pid in range(count):
            nursery.start_soon(lambda pid=pid: run_into(results, blocked_read(readers, "never", pid)))
        await trio.sleep(3.01 * SLICE_S)  # past the pass that began when the first one came
        probes.checks.clear()
        await trio.sleep(5 * SLICE_S)
        assert len(probes.checks) == count and set(probes.checks.values()) == {5}
        assert results == []
        probes.signalled.add(count - 1)
        await trio.sleep(SLICE_S)
        nursery.cancel_scope.cancel()
    assert len(results) == 1 and isinstance(results[0][0], Interrupted)


async def test_reader_gone_at_admission_ends_at_once(autojump_clock):
    """A reader already signalled (or gone) when it would block gets EINTR without waiting for a pass."""
    readers, probes = registry()
    probes.signalled.add(1)
    error, at = await blocked_read(readers, 7, pid=1)
    assert isinstance(error, Interrupted) and at == 0 and len(readers) == 0


async def test_read_past_its_deadline_is_eagain(autojump_clock):
    """A read that would outlast the kernel's FUSE request timeout ends with EAGAIN at its deadline."""
    readers, _ = registry()
    error, at = await blocked_read(readers, 7, pid=1, deadline=5.0)
    assert isinstance(error, TooMany) and "request timeout" in error.reason and at == 5.0


async def test_end_where_ends_the_picked_blocked_reads_and_refuses_their_later_ones(autojump_clock):
    """end_where (a detached mount) ends at once with ENOTCONN the blocked read of the caller it picks (pid 1, as
    if in the daemon's namespace) and its later reads, while pid 2's read (another namespace) stays blocked."""
    readers, _ = registry()
    results: list = []
    async with two_blocked_readers(readers, results):
        await trio.sleep(10)
        assert readers.end_where(ended_by_detach, lambda pid: pid in (1, 3)) == 1
        await trio.sleep(1)
        late = await blocked_read(readers, 3, pid=3)
        assert len(readers) == 1 and len(results) == 1
    assert [at for _, at in results + [late]] == [10, 11] and late[0] is not None
    assert all(isinstance(error, Detached) and error.errno == errno.ENOTCONN and "detached" in error.reason
               for error, _ in results + [late])


# -- a real thread's status file ---------------------------------------------------------------------

CATCHES_USR1 = "import signal, sys, time; signal.signal(signal.SIGUSR1, print); print(flush=True); time.sleep(60)"


def process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as file:
        return file.read().rpartition(")")[2].split()[0]


def test_status_file_sees_a_real_pending_signal_and_a_gone_thread():
    """A stopped process with a caught signal pending reads as signalled; before, not; once reaped, as gone."""
    child = subprocess.Popen([sys.executable, "-c", CATCHES_USR1], stdout=subprocess.PIPE)
    try:
        child.stdout.readline()
        status = StatusFile.of_thread(child.pid)
        assert not status.signalled()
        child.send_signal(signal.SIGSTOP)
        poll_until(lambda: process_state(child.pid) == "T", 5, "child stopped")
        child.send_signal(signal.SIGUSR1)
        assert poll_until(status.signalled, 5, "SIGUSR1 pending")
    finally:
        child.kill()
        child.wait()
    assert status.signalled()
    status.close()


def test_status_file_reads_past_a_long_groups_line(tmp_path):
    """A status whose signal lines lie beyond the first read (thousands of groups) is read up to them:
    nothing pending there reads as not signalled (a status cut short would read as gone)."""
    groups = " ".join(str(gid) for gid in range(100_000, 103_000))
    text = status_text().replace(b"State:", f"Groups:\t{groups}\nState:".encode())
    path = tmp_path / "status"
    path.write_bytes(text)
    status = StatusFile(str(path))
    assert len(text) > 4 * STATUS_BYTES and not status.signalled()
    status.close()


# -- live mount: real cat processes -------------------------------------------------------------------

LONG_TASK = "long 5000 5"  # 5000 s at 1 s a token: never ends within a test
SLOW = sim_config(1000)


def blocked_cats(daemon: Daemon, argvs: list[list[str]]) -> list[subprocess.Popen]:
    """Start one process per argv and wait until the daemon counts them all blocked (beyond those already)."""
    before = daemon.blocked_readers()
    cats = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/") for argv in argvs]
    poll_until(lambda: daemon.blocked_readers() == before + len(cats), 30, f"{len(cats)} more readers blocked")
    return cats


def end_all(cats: list[subprocess.Popen]) -> None:
    for cat in cats:
        cat.kill()
        cat.wait()


@pytest.mark.mount
def test_ctrl_c_ends_one_of_many_blocked_cats(tmp_path):
    """SIGINT to one of 40 `cat wait` blocked on a long task ends that one (bounded at 5 s); the rest stay blocked."""
    with Daemon(tmp_path / "ai", tmp_path / "state", config_text=SLOW) as slow:
        wait = slow.path("tasks", str(slow.submit(LONG_TASK)), "wait")
        cats = blocked_cats(slow, [["cat", wait]] * 40)
        try:
            cats[0].send_signal(signal.SIGINT)
            assert cats[0].wait(timeout=5) == -signal.SIGINT
            assert poll_until(lambda: slow.blocked_readers() == 39, 10, "39 still blocked")
            assert all(cat.poll() is None for cat in cats[1:])
        finally:
            end_all(cats)


READERS_USERS = {"ann": 23101, "ben": 23102}


@pytest.fixture
def users():
    """Two Unix users of one tenant, deleted afterwards whatever happened."""
    yield from users_of_test("apxr_", READERS_USERS, "PER-UID CAP MOUNT TEST IS")


@pytest.fixture
def top():
    """A directory every user may traverse, for the mountpoint; removed afterwards."""
    path = shared_dir("apeinx-readers-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def capped_config(users) -> str:
    uids = ", ".join(str(user.uid) for user in users.values())
    return SLOW + f"""
[daemon]
max_waiters = 10
max_waiters_per_uid = 2

[[tenants]]
name = "t"
[tenants.members]
uids = [{uids}]
"""


@pytest.mark.mount
def test_second_uid_gets_a_slot_when_the_first_is_at_its_cap(tmp_path, users, top):
    """ann's third blocked `cat wait` gets EAGAIN (her cap is 2 of 10), then ben's blocks: he still has a slot."""
    ann, ben = users["ann"], users["ben"]
    with Daemon(os.path.join(top, "ai"), tmp_path / "state", config_text=capped_config(users)) as daemon:
        pid = int(probe(ann, "send", daemon.path("ctl", "submit"), LONG_TASK + "\n")["data"])
        wait = daemon.path("tasks", str(pid), "wait")
        cats = blocked_cats(daemon, [as_user(ann, ["cat", wait])] * 2)
        try:
            refused = run_as(ann, ["cat", wait])
            assert refused.returncode != 0 and "Resource temporarily unavailable" in refused.stderr
            cats += blocked_cats(daemon, [as_user(ben, ["cat", wait])])
            assert all(cat.poll() is None for cat in cats)
        finally:
            end_all(cats)


# -- what wakes a reader -----------------------------------------------------------------------------


async def test_wait_reader_sleeps_through_every_token(ops, autojump_clock):
    """A `wait` read on a task of 50 tokens looks at its task twice: when it blocks and when the task ends."""
    pid = submit(ops.rt, tokens=50)
    fh = await open_path(ops, f"/tasks/{pid}/wait")
    looks = collections.Counter()
    node = ops.handles[fh].node
    poll = node.poll
    node.poll = lambda offset, size: looks.update([offset]) or poll(offset, size)
    async with trio.open_nursery() as nursery:
        await nursery.start(ops.rt.run)
        with trio.fail_after(60):
            assert await ops.read(fh, 0, 100) == b"done\n"
        nursery.cancel_scope.cancel()
    assert looks == {0: 2} and len(ops.rt.kernel.tasks[pid].output.split()) == 50
