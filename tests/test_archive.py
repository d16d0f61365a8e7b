"""Tier 1-2: the trace archive (archive.py) on its own and behind a Runtime, without FUSE.

Files rotate by size and are gzip-compressed, the oldest go beyond the byte cap, a new
Archive on the same directory carries on after its last line (a torn one is cut), one
ahead of the journal is cut back, and a runtime restarted on its journal archives each
line exactly once.
"""
import gzip
import os
import shutil

import pytest

from apeinxfs import config as config_mod
from apeinxfs import verify
from apeinxfs.archive import Archive, lines
from apeinxfs.journal import Journal
from apeinxfs.kernel.errors import Degraded, NotFound
from apeinxfs.kernel.events import Kill
from apeinxfs.kernel.trace import HEADER, TraceLog
from apeinxfs.nodes.tasks import REPLAY_SLOT, inode_of
from apeinxfs.nodes.tree import Tree
from apeinxfs.runtime import Runtime
from test_journal_runtime import ONE_GPU, submit
from test_storage_faults import FailingDb, full_error


def trace_of(lines: int, start: int = 0) -> TraceLog:
    trace = TraceLog("n")
    grow(trace, lines, start)
    return trace


def grow(trace: TraceLog, lines: int, start: int = 0) -> None:
    for index in range(start, start + lines):
        trace.emit(1000 + index, "tick", None, f"line {index} " + "x" * 40)


def archived(archive: Archive) -> bytes:
    return b"".join(archive.lines())


def body(trace: TraceLog) -> bytes:
    return bytes(trace.buffer[len(HEADER):])


def names(directory) -> list[str]:
    return sorted(os.listdir(directory))


def test_files_rotate_by_size_and_full_ones_are_compressed(tmp_path):
    """Appends in batches past trace_file_bytes start new files; the full ones become .gz, each a CSV with
    its header, and together they hold every line once, in order."""
    archive, trace = Archive(str(tmp_path), file_bytes=2000), TraceLog("n")
    for batch in range(20):
        grow(trace, 10, batch * 10)
        if archive.append(trace):
            archive.compress_full()
    files = names(tmp_path)
    assert len(files) > 5 and all(name.endswith(".csv.gz") for name in files[:-1]) and files[-1].endswith(".csv")
    assert files[0] == "events-000000000001.csv.gz"
    with gzip.open(tmp_path / files[1], "rb") as file:
        assert file.readline() == HEADER and file.readline().startswith(files[1][7:19].lstrip("0").encode() + b",")
    assert archived(archive) == body(trace)


def test_the_oldest_files_go_beyond_the_byte_cap(tmp_path):
    """With trace_bytes set, the files together stay within it and what is left is the newest lines."""
    archive, trace = Archive(str(tmp_path), file_bytes=2000, total_bytes=3000), TraceLog("n")
    for batch in range(30):
        grow(trace, 10, batch * 10)
        if archive.append(trace):
            archive.compress_full()
    sizes = [os.path.getsize(tmp_path / name) for name in names(tmp_path)]
    assert sum(sizes[:-1]) <= 3000 and not names(tmp_path)[0].startswith("events-000000000001")
    kept = archived(archive)
    assert kept and body(trace).endswith(kept) and len(kept) < len(body(trace))


def test_a_new_archive_carries_on_after_its_last_line_without_duplicates(tmp_path):
    """Reopened on the same directory, it knows its last seq and appends only the lines after it."""
    trace = trace_of(50)
    Archive(str(tmp_path), file_bytes=1 << 20).append(trace)
    again = Archive(str(tmp_path), file_bytes=1 << 20)
    assert again.seq == 50
    grow(trace, 5, 50)
    again.append(trace)
    assert archived(again) == body(trace)


def test_a_line_torn_by_a_crash_is_cut_and_written_again(tmp_path):
    """A last line without its newline (a write cut short) is dropped at start and rewritten whole."""
    trace = trace_of(10)
    Archive(str(tmp_path), file_bytes=1 << 20).append(trace)
    path = tmp_path / names(tmp_path)[0]
    path.write_bytes(path.read_bytes()[:-7])
    again = Archive(str(tmp_path), file_bytes=1 << 20)
    assert again.seq == 9
    again.append(trace)
    assert archived(again) == body(trace)


def test_an_archive_ahead_of_the_journal_is_cut_back(tmp_path):
    """After a power cut took the journal's last commits, catch_up drops the lines the replay did not
    rebuild; the lines the daemon then makes for those seqs are written in their place."""
    Archive(str(tmp_path), file_bytes=1 << 20).append(trace_of(30))
    rebuilt = trace_of(20)
    archive = Archive(str(tmp_path), file_bytes=1 << 20)
    archive.catch_up(rebuilt)
    assert archive.seq == 20
    grow(rebuilt, 5, start=200)  # seqs 21..25 again, other lines than the ones cut
    archive.append(rebuilt)
    assert archived(archive) == body(rebuilt)


def test_a_task_s_lines_are_found_by_pid(tmp_path):
    """of_task picks a pid's lines (pid column) out of compressed and plain files alike, and the tasks' tenants."""
    with runtime(tmp_path, file_bytes=600) as rt:
        pids = [submit(rt, name=f"j{i}") for i in range(6)]
        rt.commit([Kill(pid=pids[2])])
        rt.archive.compress_full()
        (found, tenants), kept = rt.archive.of_task(pids[2]), rt.kernel.trace.of_task(rt.kernel.tasks[pids[2]])
    assert any(name.endswith(".gz") for name in names(tmp_path / "state" / "trace"))
    assert found == kept and b",exit," in found and found.count(b"\n") > 3
    assert tenants == {rt.kernel.tasks[pids[2]].tenant}


def test_a_restarted_runtime_archives_each_line_once(tmp_path):
    """Lines archived before a restart are not written again; the archive equals the rebuilt trace."""
    with runtime(tmp_path) as first:
        for index in range(5):
            submit(first, name=f"a{index}")
    with runtime(tmp_path) as second:
        assert second.recover() > 0
        submit(second, name="after")
        assert archived(second.archive) == body(second.kernel.trace)


class runtime:
    """A Runtime with a journal and an archive in tmp_path/state; both closed after."""

    def __init__(self, tmp_path, file_bytes: int = 1 << 20):
        tmp_path.mkdir(exist_ok=True)
        path = tmp_path / "config.toml"
        path.write_text(ONE_GPU)
        self.config = config_mod.load(str(path), str(tmp_path / "state"), use_nvml=False)
        self.state, self.file_bytes = tmp_path / "state", file_bytes

    def __enter__(self) -> Runtime:
        archive = Archive(str(self.state / "trace"), self.file_bytes)
        self.rt = Runtime(self.config, Journal(str(self.state / "journal.db")), archive=archive)
        return self.rt

    def __exit__(self, *exc):
        self.rt.journal.close()
        self.rt.archive.close()


def test_a_crash_while_compressing_leaves_no_line_twice(tmp_path):
    """A .csv left beside its whole .gz is read once and removed by the next compress_full."""
    archive, trace = Archive(str(tmp_path), file_bytes=500), trace_of(40)
    archive.append(trace)
    full = tmp_path / names(tmp_path)[0]
    archive.compress_full()
    full.write_bytes(HEADER + body(trace))  # the .csv as it was before the crash removed it
    again = Archive(str(tmp_path), file_bytes=500)
    assert archived(again) == body(trace) and again.seq == 40
    again.compress_full()
    assert not full.exists() and archived(again) == body(trace)


# -- read by `apeinxfs replay` and /replay/PID --------------------------------------------------------


def verify_state(tmp_path) -> verify.Report:
    journal = verify.open_journal(str(tmp_path / "state"))
    try:
        return verify.verify(journal, str(tmp_path / "state" / "trace"))
    finally:
        journal.close()


def some_tasks(tmp_path, count: int = 5) -> list[int]:
    with runtime(tmp_path, file_bytes=800) as rt:
        pids = [submit(rt, name=f"v{index}") for index in range(count)]
        rt.commit([Kill(pid=pids[1])])
        rt.archive.compress_full()
    return pids


def test_verify_compares_the_archive_line_by_line(tmp_path):
    """replay --verify passes and counts every archived line; a line repeated or changed is named."""
    some_tasks(tmp_path)
    report = verify_state(tmp_path)
    assert report.divergence is None and report.archived == sum(1 for _ in lines(str(tmp_path / "state" / "trace")))
    assert "lines of the trace archive identical" in str(report)
    newest = tmp_path / "state" / "trace" / names(tmp_path / "state" / "trace")[-1]
    text = newest.read_bytes()
    head, first, *rest = text.splitlines(keepends=True)
    newest.write_bytes(text + rest[-1])  # past the journal's last line: as a live daemon's, not compared
    assert verify_state(tmp_path).divergence is None
    newest.write_bytes(head + first + first + b"".join(rest))  # a line written twice
    repeated = verify_state(tmp_path).divergence
    assert repeated is not None and repeated.expected == first.decode().rstrip("\n") + " (in the trace archive)"
    newest.write_bytes(text.replace(b",exit,", b",exit,X", 1))
    divergence = verify_state(tmp_path).divergence
    assert divergence is not None and divergence.expected.endswith("(in the trace archive)")
    assert ",exit,X" in divergence.expected and ",exit," in divergence.got


def test_a_task_the_journal_does_not_hold_is_shown_from_the_archive(tmp_path, capsys):
    """`apeinxfs replay STATE_DIR PID` falls back to the archive (as after compaction), else says so."""
    some_tasks(tmp_path / "older")
    some_tasks(tmp_path, count=2)
    shutil.rmtree(tmp_path / "state" / "trace")
    shutil.copytree(tmp_path / "older" / "state" / "trace", tmp_path / "state" / "trace")
    assert verify.main([str(tmp_path / "state"), "4"]) == 0
    assert capsys.readouterr().out.startswith("pid 4 v3 model=sim tenant=default exit=-\n")
    assert verify.main([str(tmp_path / "state"), "9"]) == 2
    assert "no task 9 in the journal or the trace archive" in capsys.readouterr().err


def test_replay_of_a_task_the_kernel_no_longer_holds_comes_from_the_archive(tmp_path):
    """/replay/PID of a task gone from the kernel (as a reaped one) shows the same timeline from the
    archive, by name and by inode; a pid never used is ENOENT."""
    with runtime(tmp_path, file_bytes=800) as rt:
        pids = [submit(rt, name=f"r{index}") for index in range(4)]
        rt.commit([Kill(pid=pids[2])])
        tree = Tree(rt)
        before = tree.root.children["replay"].child(str(pids[2])).render()
        rt.kernel.tasks.reap(pids[2])
        by_name = tree.root.children["replay"].child(str(pids[2]))
        by_inode = tree.node(inode_of(pids[2], REPLAY_SLOT))
        assert by_name.render() == by_inode.render() == before
        assert before.startswith(f"pid {pids[2]} r2 model=sim tenant=default exit=killed\n".encode())
        assert tree.root.children["replay"].child("99") is None
        with pytest.raises(NotFound):
            tree.node(inode_of(99, REPLAY_SLOT))


def test_nothing_is_archived_while_degraded_and_all_of_it_after(tmp_path):
    """The `degraded` line of an episode not yet journaled stays out of the archive; once the journal
    works again the archive catches up and equals the trace."""
    with runtime(tmp_path) as rt:
        rt.journal.db = FailingDb(rt.journal.db)
        submit(rt, name="before")
        rt.journal.db.fault = full_error
        with pytest.raises(Degraded):
            submit(rt, name="refused")
        assert b",degraded," in body(rt.kernel.trace) and b",degraded," not in archived(rt.archive)
        rt.journal.db.fault = None
        assert rt.health.recover(rt.kernel, rt.journal, rt.clock.now_us())
        submit(rt, name="after")
        assert archived(rt.archive) == body(rt.kernel.trace)
    assert verify_state(tmp_path).divergence is None
