"""Tier 1-2: the audit trail is a ring (kernel/audit.py on kernel/ring.py), archived before it drops.

The kernel's audit keeps its newest `audit_lines` lines, dropping the oldest in chunks but none it
is told to hold, its seqs going on; a replay and a snapshot of the same events give the same trail
(`[retention] audit_lines` is validated in test_retention.py). Behind a Runtime without FUSE, the audit archive
(STATE_DIR/audit/) holds every line once, across a restart and a failing write, while
/trace/audit serves the kept lines like /trace/events: `cat` from 0 gets the header and them, a
follower at the growing size gets each new line once.
"""
import csv
import io

import attrs
import pytest
import trio

from apeinxfs import config as config_mod
from apeinxfs.archive import Archive
from apeinxfs.compaction import Snapshotter
from apeinxfs.journal import Journal
from apeinxfs.kernel import Kernel, state
from apeinxfs.kernel.audit import HEADER, AuditLog
from apeinxfs.kernel.config import MemoryRetention
from apeinxfs.kernel.errors import Denied
from apeinxfs.kernel.events import Rejected
from apeinxfs.nodes.base import Caller
from apeinxfs.nodes.ringlog import RingLog
from apeinxfs.nodes.tree import Tree
from apeinxfs.runtime import Runtime
from test_journal_runtime import ONE_GPU
from test_kernel import kernel_config
from test_nodes import resolve

ADMIN = Caller()
FEW = ONE_GPU + "[retention]\naudit_lines = 16\n[limits]\nreject_lines = 1000\n"  # every denial audited here


def seqs_of(text) -> list[int]:
    """The seqs of the CSV lines in `text` (bytes, a header first or not)."""
    return [int(line.split(b",", 1)[0]) for line in bytes(text).splitlines() if line[:1].isdigit()]


def denial(index: int) -> Rejected:
    return Rejected(path="/ctl/tenants", reason=f"refused {index}", uid=1000, errno=13, denial=True)


def fill(audit: AuditLog, count: int) -> None:
    for index in range(count):
        audit.record(1000 + index, denial(index), "/ctl/tenants", "denied", f"refused {index} " + "x" * 30)


# -- the ring, in the kernel ------------------------------------------------------------------------


def test_the_audit_keeps_its_newest_lines_and_counts_the_bytes_dropped():
    """With limit 16, 100 lines leave at most 16 and at least 14, the newest, after the header; the
    bytes dropped plus those kept are every line's."""
    audit, whole = AuditLog(16), AuditLog(1000)
    fill(audit, 100)
    fill(whole, 100)
    text, dropped = audit.view()
    kept = seqs_of(text)
    assert text.startswith(HEADER) and 14 <= len(kept) <= 16 and kept == list(range(101 - len(kept), 101))
    assert dropped + len(text) == len(whole.buffer) and whole.buffer.endswith(text[len(HEADER):])


def test_held_audit_lines_stay_until_released_and_seqs_go_on():
    """Lines after `hold` stay past the limit; once released the ring trims, and new lines carry on the seqs."""
    audit = AuditLog(8)
    audit.release(10)
    fill(audit, 40)
    assert seqs_of(audit.buffer) == list(range(11, 41))
    audit.release(40)
    assert len(seqs_of(audit.buffer)) <= 8 and audit.lines_after(40) == b""
    fill(audit, 3)
    assert seqs_of(audit.buffer)[-3:] == [41, 42, 43] and seqs_of(audit.lines_after(40)) == [41, 42, 43]


def test_a_replay_and_a_snapshot_of_the_same_denials_keep_the_same_trail():
    """A kernel with audit_lines = 8 keeps at most 8 lines of 50 denials; a second kernel fed the same
    events and a snapshot of the first hold the same lines, seqs and dropped bytes."""
    config = attrs.evolve(kernel_config(), retention=MemoryRetention(audit_lines=8))
    first, second = Kernel(config), Kernel(config)
    for index in range(50):
        for kernel in (first, second):
            kernel.apply(denial(index), 1000 * (index + 1))
    restored = state.decode(state.encode(first))
    assert len(seqs_of(first.audit.buffer)) <= 8 and first.audit.seq == 50
    assert first.audit.view() == second.audit.view() == restored.audit.view()


# -- behind a Runtime, with the audit archive --------------------------------------------------------


class audited:
    """A Runtime on tmp_path/state with FEW's config, its trace and audit archives; all closed after."""

    def __init__(self, tmp_path, snapshots: bool = False):
        self.snapshots = snapshots
        path = tmp_path / "config.toml"
        path.write_text(FEW)
        self.config = config_mod.load(str(path), str(tmp_path / "state"), use_nvml=False)
        self.state = tmp_path / "state"

    def __enter__(self) -> Runtime:
        audit = Archive(str(self.state / "audit"), 1024, stem="audit", header=HEADER)
        self.rt = Runtime(self.config, Journal(str(self.state / "journal.db")),
                          archive=Archive(str(self.state / "trace"), 1 << 20), audit_archive=audit)
        if self.snapshots:
            self.rt.snapshotter = Snapshotter(self.rt, str(self.state / "snapshots"), 10**9, 3600)
        return self.rt

    def __exit__(self, *exc):
        self.rt.journal.close()
        self.rt.archive.close()
        self.rt.audit_archive.close()


def deny(rt, count: int, start: int = 0) -> None:
    for index in range(start, start + count):
        rt.reject("/ctl/tenants", Denied(f"refused {index}"), uid=1000)


def test_every_audit_line_is_archived_once_across_a_restart(tmp_path):
    """60 denials, a restart from the journal, 30 more: the kernel keeps at most 16 lines, the archive's
    files (rotated and compressed) hold seqs 1..90 once each, and their last lines are the ones kept."""
    with audited(tmp_path) as rt:
        deny(rt, 60)
        rt.audit_archive.compress_full()
    with audited(tmp_path) as rt:
        assert rt.recover() > 0
        deny(rt, 30, start=60)
        archived, kept = b"".join(rt.audit_archive.lines()), rt.kernel.audit.buffer
    names = sorted(path.name for path in (tmp_path / "state" / "audit").iterdir())
    assert names[0] == "audit-000000000001.csv.gz" and len(names) > 2
    assert seqs_of(archived) == list(range(1, 91)) and len(seqs_of(kept)) <= 16
    assert archived.endswith(bytes(kept[len(HEADER):]))


def test_a_restart_from_a_snapshot_after_compaction_archives_each_audit_line_once(tmp_path):
    """Denials, two snapshots (the journal compacted behind the older), more denials, a restart from the
    newest snapshot and more again: the archive holds seqs 1..75 once, the trail its newest ones."""
    with audited(tmp_path, snapshots=True) as rt:
        for round_ in range(2):
            deny(rt, 30, start=round_ * 30)
            trio.run(rt.snapshotter.take)
        deny(rt, 5, start=60)
        assert rt.journal.first_seq() > 1
    with audited(tmp_path, snapshots=True) as rt:
        rt.recover()
        deny(rt, 10, start=65)
        archived, kept = b"".join(rt.audit_archive.lines()), seqs_of(rt.kernel.audit.buffer)
    assert seqs_of(archived) == list(range(1, 76)) and kept == list(range(76 - len(kept), 76)) and len(kept) <= 16


def test_the_audit_holds_what_its_archive_could_not_write(tmp_path, monkeypatch):
    """While the audit archive's writes fail, the trail keeps every line past its limit; the first write
    that works archives them all and the trail trims back."""
    with audited(tmp_path) as rt:
        append = Archive.append

        def full_disk(archive, ring):
            if archive is rt.audit_archive:
                raise OSError(28, "No space left on device")
            return append(archive, ring)
        monkeypatch.setattr(Archive, "append", full_disk)
        deny(rt, 40)
        held = seqs_of(rt.kernel.audit.buffer)
        monkeypatch.setattr(Archive, "append", append)
        deny(rt, 1, start=40)
        archived = b"".join(rt.audit_archive.lines())
    assert held == list(range(1, 41)) and seqs_of(archived) == list(range(1, 42))
    assert len(seqs_of(rt.kernel.audit.buffer)) <= 16


async def test_cat_and_a_follower_of_trace_audit_see_each_kept_line_once(tmp_path):
    """/trace/audit is a ring log: read from 0 in chunks it gives the header and the kept lines; read
    from its size at open whenever it grows, across many drops, each later line once, in order."""
    with audited(tmp_path) as rt:
        node = resolve(Tree(rt), "/trace/audit")
        assert isinstance(node, RingLog)
        follower, offset, followed = node.open(ADMIN, writing=False, reading=True), node.size(), b""
        for round_ in range(10):
            deny(rt, 7, start=round_ * 7)
            while chunk := await follower.read(offset, 64, None):
                followed, offset = followed + chunk, offset + len(chunk)
        text, dropped = rt.kernel.audit.view()
        assert dropped and node.size() == len(text) + dropped
        reader, read, at = node.open(ADMIN, writing=False, reading=True), b"", 0
        while chunk := await reader.read(at, 50, None):
            read, at = read + chunk, at + len(chunk)
    rows = list(csv.DictReader(io.StringIO(HEADER.decode() + followed.decode())))
    assert [int(row["seq"]) for row in rows] == list(range(1, 71)) and rows[0]["result"] == "denied"
    assert read == bytes(text) and read.startswith(HEADER)
