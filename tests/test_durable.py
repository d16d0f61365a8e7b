"""Every rename of state is durable: the renamed file's data synced before, its directory synced after.

A kill -9 needs neither (the page cache outlives the daemon); a power cut needs both. The
fsyncs and renames are recorded as the real calls are made (`recorded`), at each rename site:
snapshots, the trace archive's compression, the journal's copies (set aside as `.displaced`,
written back, a killed write-back's `.restore` taken at start); and the archive is synced
before a compaction drops the journal rows its lines were made from.
"""
import ast
import os
import sqlite3

import pytest

from apeinxfs import archive, compaction, durable, snapshots
from apeinxfs.journal import Journal
from apeinxfs.journalfiles import backed_up, take_restore
from test_journal_runtime import open_runtime, submit
from test_snapshots import archived_runtime, snapshot, work

PACKAGE = os.path.dirname(durable.__file__)


@pytest.fixture
def recorded(monkeypatch) -> list[tuple]:
    """The calls os.replace and os.fsync get from here on, in order, made for real: ("replace", source, target)
    and ("fsync", the path of the descriptor synced)."""
    calls, replace, fsync = [], os.replace, os.fsync

    def recording_replace(source, target):
        calls.append(("replace", str(source), str(target)))
        replace(source, target)

    def recording_fsync(fd):
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    monkeypatch.setattr(os, "replace", recording_replace)
    monkeypatch.setattr(os, "fsync", recording_fsync)
    return calls


def assert_renamed_durably(calls: list[tuple], target) -> None:
    """`target` was renamed into place from a file synced before it, and its directory was synced after it."""
    target = os.path.realpath(target)
    renames = [i for i, call in enumerate(calls) if call[0] == "replace" and os.path.realpath(call[2]) == target]
    assert renames, f"no rename to {target} in {calls}"
    source = os.path.realpath(calls[renames[-1]][1])
    assert ("fsync", source) in calls[:renames[-1]], f"{source} renamed unsynced: {calls}"
    assert ("fsync", os.path.dirname(target)) in calls[renames[-1]:], f"directory not synced after: {calls}"


def test_replace_syncs_the_file_before_and_the_directory_after(tmp_path, recorded):
    """durable.replace: fsync of the source, the rename, then fsync of the directory; the target holds the data."""
    (tmp_path / "new").write_text("data")
    durable.replace(str(tmp_path / "new"), str(tmp_path / "kept"))
    assert recorded == [("fsync", str(tmp_path / "new")), ("replace", str(tmp_path / "new"), str(tmp_path / "kept")),
                        ("fsync", str(tmp_path))]
    assert (tmp_path / "kept").read_text() == "data" and not (tmp_path / "new").exists()


def test_a_rename_between_directories_syncs_both(tmp_path, recorded):
    """A file moved from one directory to another: both directories are synced after the rename."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "f").write_text("data")
    durable.replace(str(tmp_path / "a" / "f"), str(tmp_path / "b" / "f"))
    assert {("fsync", str(tmp_path / "a")), ("fsync", str(tmp_path / "b"))} <= set(recorded[2:])


def test_a_snapshot_is_renamed_durably(tmp_path, recorded):
    """snapshots.write: the snapshot's temp file renamed to its name, durably."""
    path = snapshots.write(str(tmp_path), 7, 1, 1, {}, {}, b"state")
    assert_renamed_durably(recorded, path)


def test_a_full_trace_file_is_compressed_durably(tmp_path, recorded):
    """archive.compress: the .gz renamed into place durably before the .csv goes."""
    (tmp_path / "events-000000000001.csv").write_bytes(b"header\n1,line\n")
    archive.compress(str(tmp_path / "events-000000000001.csv"))
    assert_renamed_durably(recorded, tmp_path / "events-000000000001.csv.gz")
    assert not (tmp_path / "events-000000000001.csv").exists()


def test_a_copy_of_the_journal_set_aside_is_renamed_durably(tmp_path, recorded):
    """journalfiles.backed_up (the `.displaced` copy): its temp copy renamed to its name, durably."""
    db = sqlite3.connect(tmp_path / "journal.db")
    db.execute("CREATE TABLE journal (seq INTEGER)")
    backed_up(db, str(tmp_path / "journal.db.displaced"))
    db.close()
    assert_renamed_durably(recorded, tmp_path / "journal.db.displaced")


def test_a_killed_write_backs_copy_taken_at_start_is_renamed_durably(tmp_path, recorded):
    """take_restore: a whole `.restore` left by a killed write-back becomes the journal, durably."""
    Journal(str(tmp_path / "journal.db")).close()
    os.rename(tmp_path / "journal.db", tmp_path / "journal.db.restore")
    take_restore(str(tmp_path / "journal.db"))
    assert_renamed_durably(recorded, tmp_path / "journal.db")


def test_a_journal_written_back_is_renamed_durably(tmp_path, recorded):
    """A journal deleted under the daemon is written back at its path from its copy, durably."""
    with open_runtime(tmp_path) as rt:
        submit(rt, name="before")
        os.unlink(rt.journal.path)
        submit(rt, name="after")
        assert_renamed_durably(recorded, rt.journal.path)


MOVES = {"os": {"replace", "rename", "renames"}, "shutil": {"move"}}  # the calls that rename or move a file


def renames_in(source: str) -> list[str]:
    """The renames and moves in Python `source` (line: what): os.replace/rename/renames and shutil.move, called or
    passed on, those names imported from their module, and a Path's .rename or .replace (one argument, where
    str.replace takes two)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and any(alias.name in MOVES.get(node.module, ()) for alias in node.names):
            found.append(f"{node.lineno}: from {node.module} import")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.attr in MOVES.get(
                node.value.id, ()):
            found.append(f"{node.lineno}: {node.value.id}.{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "rename", "replace") and len(node.args) + len(node.keywords) == 1:
            found.append(f"{node.lineno}: .{node.func.attr}")
    return found


@pytest.mark.parametrize("source", ["os.replace(a, b)", "os.rename(a, b)", "partial(os.replace, a)",
                                    "from os import replace", "from os import rename as mv", "shutil.move(a, b)",
                                    "from shutil import move", "Path(a).rename(b)", "path.replace(target=b)"])
def test_the_bypass_check_finds_each_way_to_rename(source):
    """Each way to rename or move a file is found, whether called or imported."""
    assert len(renames_in(source)) == 1


def test_the_bypass_check_passes_a_string_replace():
    """str.replace (two arguments) is no rename."""
    assert renames_in('line.replace("a", "b")\ntext.replace(old, new, 1)') == []


def test_no_rename_of_state_bypasses_durable_replace():
    """No module of the package but durable.py renames or moves a file itself (`renames_in`)."""
    bypassing = []
    for folder, _, files in os.walk(PACKAGE):
        for name in (n for n in files if n.endswith(".py") and n != "durable.py"):
            with open(os.path.join(folder, name)) as file:
                bypassing += [f"{os.path.relpath(os.path.join(folder, name), PACKAGE)}:{found}"
                              for found in renames_in(file.read())]
    assert bypassing == []


def test_the_archives_sync_syncs_its_directory_too(tmp_path, recorded):
    """Archive.sync fsyncs the files not compressed and then the directory: the file being written was created
    at the last rotation, its name on disk only once the directory is synced (review of the soak)."""
    rt = archived_runtime(tmp_path)
    work(rt, 1)
    recorded.clear()
    rt.archive.sync()
    [(_, writing)] = rt.archive.files()
    assert recorded == [("fsync", os.path.realpath(writing)), ("fsync", os.path.realpath(rt.archive.directory))]
    rt.close()


def test_the_trace_archive_is_synced_before_compaction_drops_the_rows_behind_it(tmp_path, recorded, monkeypatch):
    """A compaction deletes journal rows the archive's lines were made from: the archive's files not compressed
    yet are fsynced first, so a power cut cannot take both the rows and the lines."""
    calls = recorded
    monkeypatch.setattr(compaction, "compact", lambda path, seq, compact=compaction.compact: (
        calls.append(("compact", seq)), compact(path, seq)))
    rt = archived_runtime(tmp_path)
    for _ in range(2):  # the second snapshot compacts behind the first
        work(rt, 2)
        snapshot(rt)
    compacted = [i for i, call in enumerate(calls) if call[0] == "compact"]
    archived = os.path.realpath(rt.archive.files()[-1][1])
    assert compacted and ("fsync", archived) in calls[:compacted[0]], calls
    rt.close()
