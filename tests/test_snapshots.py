"""Tiers 1-2: snapshots of the kernel's state, their files, and the journal compacted behind them.

The codec (kernel/state.py) restores the very state, bills and budget windows included; a
file (snapshots.py) that is truncated or altered is told apart; the runtime (compaction.py)
starts from the newest usable snapshot, falls back to the one before a damaged one, ignores
a temp file a crash left, and refuses to start, saying why, when rows were compacted and
no snapshot can be used. No FUSE here (test_snapshots_mount.py mounts).
"""
import contextlib
import errno
import itertools
import logging
import os
import pickle
import re
import signal
import sqlite3
import subprocess
import sys

import pytest
import trio
import trio.testing

from apeinxfs import config as config_mod
from apeinxfs import compaction, health, mount, snapshots, verify
from apeinxfs.archive import Archive
from apeinxfs.archive import files as archive_files
from apeinxfs.clock import WallClock
from apeinxfs.compaction import CannotStart, Snapshotter
from apeinxfs.journal import SCHEMA, Journal, compact
from apeinxfs.kernel import Kernel
from apeinxfs.kernel.errors import ApeinxError
from apeinxfs.kernel import kernel as kernel_module
from apeinxfs.kernel.config import ModelConfig
from apeinxfs.kernel.events import Chunk, Failed, Restart, SetModel, Step, Submit, Tick
from apeinxfs.kernel.spec import TaskSpec
from apeinxfs.kernel.state import LayoutError, decode, encode, layout, layout_difference
from apeinxfs.nodes import billing
from apeinxfs.recovery import apply_row
from daemon import poll_until
from kernel_state import state_difference
from test_journal_runtime import open_runtime

TENANTS = """
[billing]
period = "1s"
[[tenants]]
name = "default"
[[tenants]]
name = "metered"
[tenants.budget]
tokens = 40
window = "2s"
overdraw = 10
[tenants.quota]
tokens = 30
window = "1s"
"""
ONE_GPU_TENANTS = """
[gpus]
simulated = 1
slots = 4
[[models]]
name = "sim"
""" + TENANTS


def work(rt, rounds: int) -> None:
    """`rounds` times: two submits (one metered), engine steps that end them, and a second of time."""
    for _ in range(rounds):
        for tenant in ("default", "metered"):
            rt.commit([Submit(spec=TaskSpec(name="job", max_tokens=3, prompt="hello there", tenant=tenant), uid=0)])
        for _ in range(3):
            batch = rt.kernel.batch(0)
            rt.commit([Step(gpu=0, chunks=[Chunk(pid=t.pid, text=" w", tokens=1, prefill=0 if t.prefilled else 5)
                                           for t in batch])])
        rt.clock_us += 1_000_000
        rt.commit([Tick()])


class Clock:
    """A clock the test moves (`rt.clock_us`)."""

    def __init__(self, rt):
        self.rt = rt

    def now_us(self) -> int:
        return self.rt.clock_us


def daemon_like(tmp_path, every_rows: int = 10**9, toml: str = ONE_GPU_TENANTS):
    """A runtime on tmp_path/state with snapshots in tmp_path/state/snapshots, as the daemon builds it."""
    context = open_runtime(tmp_path, toml)
    rt = context.__enter__()
    rt.clock_us, rt.clock = 1_000_000, None
    rt.clock = WallClock(Clock(rt))
    rt.snapshotter = Snapshotter(rt, str(tmp_path / "state" / "snapshots"), every_rows, 3600)
    rt.close = lambda: context.__exit__(None, None, None)
    return rt


def restarted(tmp_path, old):
    """A new runtime on the same state directory that recovered, its clock going on from `old`'s."""
    old.close()
    rt = daemon_like(tmp_path)
    rt.clock_us = old.clock_us
    rt.recover()
    return rt


def snapshot(rt, clock=None) -> None:
    trio.run(rt.snapshotter.take, clock=clock)


def copy_journal(journal: Journal, path) -> Journal:
    """A read-only copy of the journal's committed rows as they are now (SQLite's backup)."""
    copy = sqlite3.connect(str(path))
    journal.db.backup(copy)
    copy.close()
    return Journal(str(path), readonly=True)


def replay(config, *rows) -> Kernel:
    """A fresh kernel of `config` that applied each of the journal rows in `rows`, one source after the other."""
    kernel = Kernel(config)
    for row in itertools.chain(*rows):
        apply_row(kernel, row, {})
    kernel.take_changed()
    return kernel


# -- the codec -----------------------------------------------------------------------------------


def test_a_restored_kernel_is_the_same_kernel(tmp_path):
    """decode(encode(kernel)) holds the same state field by field, bills and budget ledgers included."""
    rt = daemon_like(tmp_path)
    work(rt, 4)
    restored = decode(encode(rt.kernel))
    assert state_difference(rt.kernel, restored) == ""
    assert billing.show(restored) == billing.show(rt.kernel) and "metered" in billing.show(restored)
    restored.check_invariants()
    rt.close()


def test_state_loading_refuses_a_class_outside_the_kernel():
    """Bytes that name a class outside the kernel package (here os.system) are refused, never built."""
    class Evil:
        def __reduce__(self):
            return os.system, ("true",)
    with pytest.raises(LayoutError, match="names posix.system, which is not the kernel's"):
        decode(pickle.dumps(Evil()))
    with pytest.raises(LayoutError, match="does not load"):
        decode(encode(Kernel(layout_config()))[:-40])


def layout_config():
    from kernel_machine import kernel_config
    return kernel_config()


def test_a_layout_of_other_fields_is_named():
    """A snapshot whose classes kept other fields than the code now does is told apart, by class and field."""
    now = layout(layout_config())
    assert "apeinxfs.kernel.task.Task" in now and "apeinxfs.kernel.tasktable.TaskTable" in now
    written = {**now, "apeinxfs.kernel.task.Task": [f for f in now["apeinxfs.kernel.task.Task"] if f != "vruntime"]}
    assert layout_difference(written, now) == "apeinxfs.kernel.task.Task (fields added: vruntime; gone: none)"
    assert layout_difference(now, now) == ""


# -- the files -----------------------------------------------------------------------------------


def write_one(directory, seq=7, state=b"state " * 100) -> str:
    return snapshots.write(str(directory), seq, 1, 2, {"node": "n"}, {"C": ["f"]}, state)


def test_a_snapshot_file_reads_back_whole(tmp_path):
    """A written snapshot's header and state read back as written; no temp file is left."""
    path = write_one(tmp_path)
    snap = snapshots.Snapshot.read(path)
    assert (snap.seq, snap.trace_seq, snap.config, snap.state()) == (7, 2, {"node": "n"}, b"state " * 100)
    assert os.listdir(tmp_path) == ["snapshot-000000000007.snap"]


@pytest.mark.parametrize("damage, reason", [
    (lambda data: data[:-3], "bytes of state where the header says"),
    (lambda data: data[:-3] + b"xyz", "does not match its checksum"),
    (lambda data: data.replace(b'"seq":7', b'"seq":8', 1), "header does not match its checksum"),
    (lambda data: data[:30], "header is cut short: the file is damaged"),
    (lambda data: data[:10], "header is cut short: the file is damaged"),
    (lambda data: data.replace(b"apeinxfs-snapshot 1", b"apeinxfs-snapshot 0", 1), "not a snapshot of this version"),
    (lambda data: b"no snapshot at all\n" + data, "not a snapshot of this version"),
])
def test_a_damaged_snapshot_file_is_told_apart(tmp_path, damage, reason):
    """A truncated file, altered state or an altered header raises Damaged saying which."""
    path = write_one(tmp_path)
    with open(path, "rb") as file:
        data = file.read()
    with open(path, "wb") as file:
        file.write(damage(data))
    with pytest.raises(snapshots.Damaged, match=reason):
        snapshots.Snapshot.read(path).state()


def test_prune_keeps_the_two_newest_and_drops_temp_files(tmp_path):
    """Three snapshots and a crash's temp file: the two newest stay, by seq."""
    for seq in (3, 12, 9):
        write_one(tmp_path, seq)
    (tmp_path / "snapshot-000000000020.snap.tmp").write_bytes(b"half")
    assert snapshots.prune(str(tmp_path)) == [12, 9]
    assert sorted(os.listdir(tmp_path)) == ["snapshot-000000000009.snap", "snapshot-000000000012.snap"]


# -- the runtime: compaction and restart -------------------------------------------------------------


def test_compaction_keeps_the_rows_after_the_older_snapshot(tmp_path):
    """After two snapshots, the rows (and trace rows) up to the older one are gone, the rest stay."""
    rt = daemon_like(tmp_path)
    work(rt, 2)
    snapshot(rt)
    first = rt.snapshotter.seq
    assert rt.journal.first_seq() == 1  # one snapshot: nothing to fall back to yet, nothing dropped
    work(rt, 2)
    snapshot(rt)
    assert rt.journal.first_seq() == first + 1
    rt.close()
    journal = Journal(str(tmp_path / "state" / "journal.db"), readonly=True)
    assert next(journal.traces())[0] == first + 1
    assert len(journal.boots()) == 1
    journal.db.close()


def misused_compact(path: str, upto: int) -> None:
    """journal.compact handed a value SQLite cannot bind: our own misuse of SQLite (ProgrammingError)."""
    compact(path, object())


def full_disk_compact(path: str, upto: int) -> None:
    """journal.compact on a full disk, as SQLite says it."""
    raise sqlite3.OperationalError("database or disk is full")


def next_compaction_misuses_sqlite(rt, monkeypatch, clock=None) -> None:
    """Make journal.compact misuse SQLite and take snapshots (in trio time `clock`'s, if given) up to where the
    next one compacts, rows after."""
    monkeypatch.setattr(compaction, "compact", misused_compact)
    for _ in range(snapshots.KEEP - 1):
        work(rt, 1)
        snapshot(rt, clock)
    work(rt, 1)


def test_a_misuse_of_sqlite_in_compaction_is_a_bug(tmp_path, monkeypatch):
    """Compaction that misuses SQLite raises its ProgrammingError out of `take` (for the supervisor to count
    as a bug) and out of the snapshot at unmount, instead of logging it as the storage's refusal."""
    rt = daemon_like(tmp_path)
    next_compaction_misuses_sqlite(rt, monkeypatch)
    with pytest.raises(sqlite3.ProgrammingError):
        snapshot(rt)
    work(rt, 1)
    with pytest.raises(sqlite3.ProgrammingError):
        rt.snapshotter.close()
    rt.close()


def test_a_full_disk_in_compaction_is_logged_and_retried(tmp_path, monkeypatch, caplog):
    """Compaction refused by the storage is logged and the next snapshot tries again: no exception."""
    rt = daemon_like(tmp_path)
    monkeypatch.setattr(compaction, "compact", full_disk_compact)
    for _ in range(snapshots.KEEP + 1):
        work(rt, 1)
        snapshot(rt)
    assert caplog.text.count("database or disk is full") == 2 and rt.journal.first_seq() == 1
    rt.close()


def test_compaction_failing_every_time_is_warned(tmp_path, monkeypatch):
    """Snapshots whose compaction the full disk refuses FAILURES_WARNED times in a row make /health warn,
    though each snapshot file was published."""
    rt = daemon_like(tmp_path)
    monkeypatch.setattr(compaction, "compact", full_disk_compact)
    for _ in range(snapshots.KEEP - 1 + compaction.FAILURES_WARNED):
        work(rt, 1)
        snapshot(rt)
    warning = rt.snapshotter.warning()
    assert warning is not None and f"{compaction.FAILURES_WARNED} failed in a row" in warning
    assert "database or disk is full" in warning
    rt.close()


def journal_bytes(tmp_path) -> int:
    """The bytes of journal.db once its WAL is copied in (its WAL apart, which a checkpoint empties)."""
    db = sqlite3.connect(str(tmp_path / "state" / "journal.db"))
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return (tmp_path / "state" / "journal.db").stat().st_size


@pytest.mark.parametrize("older_file", [False, True])
def test_compaction_gives_the_pages_back(tmp_path, older_file):
    """The journal file shrinks after compaction, also one made before compaction was (no auto_vacuum)."""
    if older_file:
        (tmp_path / "state").mkdir()
        sqlite3.connect(str(tmp_path / "state" / "journal.db")).executescript(SCHEMA).close()
    rt = daemon_like(tmp_path)
    work(rt, 40)
    snapshot(rt)
    rt.journal.flush_all()
    grown = journal_bytes(tmp_path)
    work(rt, 1)
    snapshot(rt)
    assert journal_bytes(tmp_path) < grown / 4
    rt.close()


def test_restart_from_a_snapshot_is_a_full_replay(tmp_path):
    """Bills, budget and quota windows and every other field are the same after a restart from a
    snapshot (rows compacted) as after replaying the whole journal, the restart's row included."""
    rt = daemon_like(tmp_path)
    work(rt, 3)
    snapshot(rt)
    work(rt, 2)
    whole = copy_journal(rt.journal, tmp_path / "whole.db")
    snapshot(rt)
    work(rt, 1)
    assert rt.journal.first_seq() > 1
    again = restarted(tmp_path, rt)
    replayed = replay(again.config.kernel, whole.rows(), again.journal.rows(whole.last_seq))
    assert state_difference(replayed, again.kernel) == ""
    assert billing.show(again.kernel) == billing.show(replayed)
    whole.db.close()
    again.close()


def test_a_task_with_a_uid_past_uid_t_in_a_snapshot_is_owned_by_the_overflow_uid_after_a_restart(tmp_path, caplog):
    """A snapshot written before ids were bounded holds a task of uid 2**64: the restart from it gives the task
    uid 65534, as Linux shows an id it cannot map, and says so; the other tasks keep theirs."""
    rt = daemon_like(tmp_path)
    work(rt, 1)
    first, second = sorted(rt.kernel.tasks)[:2]
    rt.kernel.tasks[first].uid = 2 ** 64  # as a submit admitted it before the bound
    snapshot(rt)
    with caplog.at_level(logging.WARNING, logger="apeinxfs.compaction"):
        again = restarted(tmp_path, rt)
    assert (again.kernel.tasks[first].uid, again.kernel.tasks[second].uid) == (65534, 0)
    assert f"tasks {first} had a uid no uid_t holds" in caplog.text
    again.close()


SECRET_URL = "http://bob:s3cret@127.0.0.1:9"


def test_credentials_a_snapshot_shows_are_hidden_after_a_restart_from_it(tmp_path, monkeypatch, caplog):
    """A snapshot of code that applied an old journal's rows as recorded (a model's line and a failed task's reason
    with `bob:s3cret@`, compacted behind it) starts a kernel whose trace, tenant and task views, audit trail and task
    exit show `***@`, says so, and the journal verifies."""
    rt = daemon_like(tmp_path)
    with monkeypatch.context() as older_code:
        older_code.setattr(kernel_module, "redacted", lambda text: text)
        ext = ModelConfig(name="ext", driver="openai", options={"url": SECRET_URL})
        rt.commit([SetModel(model=ext, what=f"add ext driver=openai url={SECRET_URL}", uid=0)])
        work(rt, 1)
        pid = rt.commit([Submit(spec=TaskSpec(name="job", max_tokens=3, prompt="hi", tenant="metered"), uid=0)])[0]
        rt.commit([Failed(pid=pid, reason=f"engine at {SECRET_URL}: HTTP 500")])
        rt.kernel.trace.of_tenant("metered")  # a tenant's view read: its copy of the lines is in the snapshot too
        snapshot(rt)
        work(rt, 1)
        snapshot(rt)  # the rows before the first compacted
    assert rt.journal.first_seq() > 1 and "s3cret" in rt.kernel.trace.buffer.decode() + rt.kernel.audit.buffer.decode()
    with caplog.at_level(logging.WARNING, logger="apeinxfs.compaction"):
        again = restarted(tmp_path, rt)
    kernel, reason = again.kernel, "engine at http://***@127.0.0.1:9: HTTP 500"
    assert "s3cret" not in kernel.trace.buffer.decode() + kernel.audit.buffer.decode() + caplog.text
    assert "add ext driver=openai url=http://***@127.0.0.1:9" in kernel.audit.buffer.decode()
    assert kernel.tasks[pid].exit == f"failed: {reason}"
    assert kernel.trace.of_task(kernel.tasks[pid]).decode().splitlines()[-1].endswith(f'"failed: {reason}; {reason}"')
    assert "s3cret" not in kernel.trace.of_tenant("metered").decode() and "credentials" in caplog.text
    again.commit([Tick()])  # the kernel goes on from it, its invariants checked
    again.close()
    assert verified(tmp_path).divergence is None  # from the snapshots: the rows before them are compacted


def test_a_damaged_newest_snapshot_falls_back_to_the_one_before(tmp_path):
    """Newest snapshot truncated: the restart starts from the older one, replays the rows after it,
    and holds the state the daemon had."""
    rt = daemon_like(tmp_path)
    for _ in range(3):
        work(rt, 2)
        snapshot(rt)
    work(rt, 1)
    expected = decode(encode(rt.kernel))
    newest, older = snapshots.paths(str(tmp_path / "state" / "snapshots"))
    with open(newest, "r+b") as file:
        file.truncate(os.path.getsize(newest) - 10)
    again = restarted(tmp_path, rt)
    assert again.snapshotter.seq == snapshots.Snapshot.read(older).seq
    expected.apply(Restart(), again.clock_us)
    expected.take_changed()
    assert state_difference(expected, again.kernel) == ""
    again.close()


def test_no_usable_snapshot_after_compaction_refuses_to_start(tmp_path):
    """Rows compacted and every snapshot damaged: recovery refuses, naming each snapshot and why."""
    rt = daemon_like(tmp_path)
    for _ in range(2):
        work(rt, 1)
        snapshot(rt)
    for path in snapshots.paths(str(tmp_path / "state" / "snapshots")):
        with open(path, "r+b") as file:
            file.truncate(100)
    rt.close()
    again = daemon_like(tmp_path)
    with pytest.raises(CannotStart, match=r"journal rows 1\.\.\d+ were compacted .* none can be used: .*snapshot-"):
        again.recover()
    again.close()


def two_snapshots(tmp_path) -> None:
    """A closed state directory compacted behind the older of two snapshots."""
    rt = daemon_like(tmp_path)
    for _ in range(2):
        work(rt, 1)
        snapshot(rt)
    rt.close()


def test_new_admins_take_effect_on_a_restored_kernel(tmp_path):
    """[access] is read where it is used: a snapshot restores under changed admins, and holds the new config."""
    two_snapshots(tmp_path)
    again = daemon_like(tmp_path, toml=ONE_GPU_TENANTS + "[access]\nadmin_uids = [4242]\n")
    again.recover()
    assert again.kernel.config.access.admin_uids == (4242,) and again.kernel.tenancy._config is again.kernel.config
    again.close()


def test_a_changed_kernel_config_after_compaction_refuses_to_start(tmp_path):
    """Another GPU count changes what the state was built from: with rows compacted, the start is refused,
    naming the config keys that differ."""
    two_snapshots(tmp_path)
    again = daemon_like(tmp_path, toml=ONE_GPU_TENANTS.replace("simulated = 1", "simulated = 2"))
    with pytest.raises(CannotStart, match=r"written with another kernel config \(it differs in gpus\)"):
        again.recover()
    again.close()


def test_a_temp_file_left_by_a_crash_is_ignored(tmp_path):
    """A crash while writing leaves a .tmp: the restart uses the whole snapshot, and the next write removes it."""
    rt = daemon_like(tmp_path)
    work(rt, 2)
    snapshot(rt)
    seq = rt.snapshotter.seq
    work(rt, 1)
    directory = tmp_path / "state" / "snapshots"
    (directory / f"snapshot-{rt.journal.last_seq:012d}.snap.tmp").write_bytes(b"apeinxfs-snapshot 1 torn")
    again = restarted(tmp_path, rt)
    assert again.snapshotter.seq == seq
    snapshot(again)
    assert not [name for name in os.listdir(directory) if name.endswith(".tmp")]
    again.close()


# -- replay --verify and replay after compaction ------------------------------------------------------


def archived_runtime(tmp_path):
    """daemon_like, with the trace archive in tmp_path/state/trace as the daemon has it."""
    rt = daemon_like(tmp_path)
    rt.archive = Archive(str(tmp_path / "state" / "trace"), 1 << 20)
    return rt


def compacted(tmp_path):
    """A state directory whose journal was compacted behind two of three snapshots; closed. Its whole trace."""
    rt = archived_runtime(tmp_path)
    for _ in range(3):
        work(rt, 2)
        snapshot(rt)
    work(rt, 1)
    trace = bytes(rt.kernel.trace.buffer).decode()
    rt.close()
    rt.archive.close()
    return trace


def verified(tmp_path) -> verify.Report:
    state = tmp_path / "state"
    journal = verify.open_journal(str(state))
    try:
        return verify.verify(journal, str(state / "trace"), str(state / "snapshots"))
    finally:
        journal.close()


def test_verify_replays_from_the_oldest_and_newest_snapshot_after_compaction(tmp_path):
    """Compacted: verify starts from both kept snapshots, checks every row after them and the archive."""
    compacted(tmp_path)
    report = verified(tmp_path)
    assert report.divergence is None and report.checked == report.events > 0 and report.archived > 0
    names = sorted(os.listdir(tmp_path / "state" / "snapshots"))
    assert report.origins == [f"{name} (row {int(name[9:21])})" for name in names]
    assert "replayed from snapshot-" in str(report)


def test_verify_names_a_row_altered_after_the_snapshot(tmp_path):
    """A journal row after the snapshots altered: verify names it."""
    compacted(tmp_path)
    db = sqlite3.connect(str(tmp_path / "state" / "journal.db"))
    seq = db.execute("SELECT max(seq) FROM journal WHERE kind = 'submit'").fetchone()[0]
    db.execute("UPDATE journal SET body = replace(body, '\"max_tokens\":3', '\"max_tokens\":2') WHERE seq = ?", (seq,))
    db.commit()
    db.close()
    assert verified(tmp_path).divergence.seq == seq


def test_verify_compares_the_snapshot_trace_with_the_archive(tmp_path):
    """An archived line from before the snapshots altered: verify says the snapshot's line differs."""
    compacted(tmp_path)
    path = archive_files(str(tmp_path / "state" / "trace"))[0][1]
    with open(path, "rb") as file:
        text = file.read()
    with open(path, "wb") as file:
        file.write(text.replace(b"name=job", b"name=jab", 1))
    divergence = verified(tmp_path).divergence
    assert divergence.kind == "snapshot" and "name=jab" in divergence.expected


def test_verify_without_a_usable_snapshot_after_compaction_cannot_replay(tmp_path):
    """Every snapshot damaged after compaction: verify cannot replay, and says which and why."""
    compacted(tmp_path)
    for path in snapshots.paths(str(tmp_path / "state" / "snapshots")):
        os.truncate(path, 50)
    compacted_away = r"journal rows 1\.\.\d+ were compacted into snapshots .* none can be used: .*snapshot-"
    with pytest.raises(verify.CannotReplay, match=compacted_away):
        verified(tmp_path)


def test_replay_prints_the_whole_trace_from_the_archive_and_the_snapshot(tmp_path, capsys):
    """`apeinxfs replay STATE_DIR` after compaction prints the trace the daemon had, line for line."""
    trace = compacted(tmp_path)
    assert verify.main([str(tmp_path / "state")]) == 0
    assert capsys.readouterr().out == trace


@pytest.mark.parametrize("line", ["snapshot_rows = 0", "snapshot_s = -1", 'snapshot_rows = "many"'])
def test_a_bad_snapshot_setting_is_refused_naming_it(tmp_path, line):
    """[retention] snapshot_rows and snapshot_s must be positive numbers: the config is refused, naming the key."""
    path = tmp_path / "config.toml"
    path.write_text(f"[retention]\n{line}\n")
    with pytest.raises(ApeinxError, match=line.split()[0]):
        config_mod.load(str(path), str(tmp_path / "state"), use_nvml=False)


def test_a_kernel_whose_tenant_events_were_read_can_be_snapshotted():
    """A kernel that has rendered a tenant's events view (the trace then caches a redaction pattern, which it
    keeps out of its state) still encodes, and decodes to the same view."""
    kernel = Kernel(layout_config())
    view_before, _ = kernel.trace.tenant_view("default")
    restored = decode(encode(kernel))
    assert restored.trace.tenant_view("default")[0] == view_before


def test_an_re_pattern_in_the_kernels_state_encodes_and_decodes():
    """An re.Pattern held anywhere in the state (decode allows re._compile) is pickled by copyreg's reducer,
    which state.encode's dispatch table keeps beside the Kernel's: it had replaced the table, and every
    snapshot of a state holding one failed."""
    kernel = Kernel(layout_config())
    kernel.tenancy.probe = re.compile("a+b")
    assert decode(encode(kernel)).tenancy.probe.pattern == "a+b"



def test_a_snapshot_is_written_after_a_task_events_read(tmp_path):
    """After a task's events are read (as `cat /ai/tasks/PID/events` does) the next snapshot is still written."""
    rt = daemon_like(tmp_path)
    work(rt, 1)
    rt.kernel.trace.of_task(rt.kernel.tasks[1])
    try:
        snapshot(rt)
        assert rt.snapshotter.seq == rt.journal.last_seq
    finally:
        rt.close()


def test_a_snapshot_writer_dies_with_its_daemon(tmp_path):
    """A parent whose fork_writer child is busy encoding (state.encode made to sleep, as a large state takes
    its time) is killed with -9: the child is gone at once, where it went on holding the daemon's lock and
    /dev/fuse."""
    script = ("import time\nfrom apeinxfs import compaction\n"
              "compaction.state.encode = lambda kernel: time.sleep(60)\n"
              f"print(compaction.fork_writer({str(tmp_path)!r}, (), None), flush=True)\ntime.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        parent.kill()
        parent.wait()
        poll_until(lambda: not os.path.exists(f"/proc/{child}") or _zombie(child), 10, "the writer to die")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    return True


def test_a_snapshot_that_raises_is_retried_at_the_normal_pace(tmp_path, monkeypatch):
    """A `take` that raises a bug still records when it ran, so the restarted writer waits snapshot_s again
    (every snapshot in one trio time, a MockClock's)."""
    rt = daemon_like(tmp_path)
    clock = trio.testing.MockClock()
    next_compaction_misuses_sqlite(rt, monkeypatch, clock)
    clock.jump(10**4)
    try:
        with pytest.raises(sqlite3.ProgrammingError):
            snapshot(rt, clock)
        work(rt, 1)
        assert not rt.snapshotter.due(10**4 + 60) and rt.snapshotter.due(10**4 + 3600)
    finally:
        rt.close()


def test_a_bug_in_the_last_snapshot_at_unmount_is_logged_and_the_rest_still_closes(tmp_path, monkeypatch, caplog):
    """At unmount a last snapshot that raises a bug is logged CRITICAL with its traceback, the journal and the
    archives still close, and close_all says a bug happened (the daemon's exit status)."""
    rt = archived_runtime(tmp_path)
    rt.audit_archive = Archive(str(tmp_path / "state" / "audit"), 1 << 20, stem="audit")
    next_compaction_misuses_sqlite(rt, monkeypatch)
    assert rt.archive._file is not None
    assert not mount.close_all(rt)
    [critical] = [record for record in caplog.records if record.levelno == logging.CRITICAL]
    assert "the last snapshot" in critical.getMessage() and critical.exc_info[0] is sqlite3.ProgrammingError
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        rt.journal.db.execute("SELECT 1")
    assert rt.archive._file is None


def test_a_clean_unmount_closes_everything_and_says_so(tmp_path):
    """close_all after an ordinary run writes the last snapshot, closes the journal and says no bug happened."""
    rt = archived_runtime(tmp_path)
    rt.audit_archive = Archive(str(tmp_path / "state" / "audit"), 1 << 20, stem="audit")
    work(rt, 1)
    assert mount.close_all(rt) and rt.snapshotter.seq == rt.journal.last_seq
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        rt.journal.db.execute("SELECT 1")


def no_room_to_write(directory, *header_and_data):
    """snapshots.write_temp on a full disk, as the system says it (it runs in the forked writer)."""
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_health_warns_once_snapshots_fail_in_a_row(tmp_path, monkeypatch):
    """Snapshots refused by a full disk FAILURES_WARNED times in a row give /health a Warning row with the reason
    (State stays ok: the journal is written); the next snapshot written clears it."""
    rt = daemon_like(tmp_path)
    monkeypatch.setattr(snapshots, "write_temp", no_room_to_write)
    for _ in range(compaction.FAILURES_WARNED - 1):
        work(rt, 1)
        snapshot(rt)
    assert health.show(rt.health, None, rt.snapshotter) == "State:\tok\n"
    work(rt, 1)
    snapshot(rt)
    shown = health.show(rt.health, None, rt.snapshotter)
    assert shown.startswith(f"State:\tok\nWarning:\tsnapshots: {compaction.FAILURES_WARNED} failed in a row")
    assert re.search(r"the last: the snapshot writer \(pid \d+\) exited 1: see the log\n", shown)
    monkeypatch.undo()
    snapshot(rt)
    assert health.show(rt.health, None, rt.snapshotter) == "State:\tok\n"
    rt.close()


def test_health_warns_when_no_snapshot_comes_while_rows_wait(tmp_path):
    """With rows waiting and no snapshot for STALE_PERIODS x snapshot_s (nothing failed: a writer that never
    ends), /health warns; without waiting rows it does not."""
    rt = daemon_like(tmp_path)
    rt.clock_us += compaction.STALE_PERIODS * 3600 * 1_000_000
    assert health.show(rt.health, None, rt.snapshotter) == "State:\tok\n"
    work(rt, 1)
    assert "Warning:\tsnapshots: 0 failed in a row" in health.show(rt.health, None, rt.snapshotter)
    rt.close()
