"""A state directory's journal files and trace archive opened as untrusted input (statefile.py): a FIFO, a link to
/dev/zero, a gzip bomb or a line without bound planted in a state directory is refused in words naming it, by a real
daemon start within its timeout (a hang is the failure) and by `apeinxfs replay --verify`, never waited on, read
without bound or answered with a traceback.
"""
import gzip
import io
import logging
import os
import shutil
import subprocess
import sys
import zlib

import pytest

from apeinxfs import archive, statefile, verify
from apeinxfs.archive import Archive
from apeinxfs.kernel.events import Kill
from apeinxfs.kernel.trace import HEADER, TraceLog
from test_archive import grow, names, runtime, some_tasks
from test_journal_runtime import submit

UNTRUSTED = "damaged or untrusted state file"
START_TIMEOUT_S = 60  # a start that waits on a FIFO or reads /dev/zero runs into it


def fifo(path) -> str:
    os.mkfifo(path)
    return "mode p"


def link_to_zero(path) -> str:
    os.symlink("/dev/zero", path)
    return "a symbolic link"


def huge_line(path) -> str:
    path.write_bytes(archive.HEADER + b"1," + b"x" * statefile.LINE_MAX)
    return f"a line longer than {statefile.LINE_MAX} bytes"


def unnumbered(path) -> str:
    path.write_bytes(archive.HEADER + "no seq,\xff\n".encode("latin-1"))
    return "a line that does not start with its seq"


def zero_bomb(path) -> str:
    """A gzip of a header and LINE_MAX + 1 zero bytes past it: one line without bound."""
    path.write_bytes(gzip.compress(archive.HEADER + bytes(statefile.LINE_MAX + 1), 1))
    return f"a line longer than {statefile.LINE_MAX} bytes"


def lines_bomb(path) -> str:
    """A gzip of short lines that inflates past INFLATE_FLOOR, over 64 times its length."""
    packer, line = zlib.compressobj(1, wbits=31), b"1," + b"x" * 1021 + b"\n"  # 1 KiB
    chunks = [packer.compress(archive.HEADER)]
    chunks += [packer.compress(line * 1024) for _ in range((statefile.INFLATE_FLOOR >> 20) + 1)]
    path.write_bytes(b"".join(chunks) + packer.flush())
    return f"inflates past {statefile.INFLATE_FLOOR} bytes"


ARCHIVE_PLANTS = [
    pytest.param(fifo, ".csv", id="fifo"),
    pytest.param(link_to_zero, ".csv", id="link-to-dev-zero"),
    pytest.param(huge_line, ".csv", id="huge-line"),
    pytest.param(zero_bomb, ".csv.gz", id="gzip-bomb-one-line"),
]


def started(tmp_path, state) -> subprocess.CompletedProcess:
    """A real daemon start (foreground: a hang is killed with it) on `state`; its exit and words. A start that
    mounted after all (the failure) is unmounted."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    try:
        return subprocess.run([sys.executable, "-m", "apeinxfs.cli", str(mountpoint), "--state-dir", str(state),
                               "-f"], capture_output=True, text=True, timeout=START_TIMEOUT_S)
    finally:
        subprocess.run(["fusermount", "-u", "-z", "-q", str(mountpoint)], stderr=subprocess.DEVNULL, check=False)


def assert_start_refuses(tmp_path, state, name: str, why: str) -> None:
    done = started(tmp_path, state)
    assert done.returncode == 1 and f"{UNTRUSTED}: {state / name}, " in done.stderr and why in done.stderr, \
        done.stderr


@pytest.mark.parametrize("plant, suffix", ARCHIVE_PLANTS + [pytest.param(lines_bomb, ".csv.gz", id="gzip-bomb")])
@pytest.mark.parametrize("stem", ["events", "audit"])
def test_a_start_refuses_a_planted_archive_file_in_words(tmp_path, plant, suffix, stem):
    """A start whose newest trace or audit archive file is planted exits 1 naming it and why, within its timeout."""
    directory = tmp_path / "state" / ("trace" if stem == "events" else "audit")
    directory.mkdir(parents=True)
    name = archive.file_name(1, stem=stem) + suffix.removeprefix(".csv")
    why = plant(directory / name)
    assert_start_refuses(tmp_path, tmp_path / "state", f"{directory.name}/{name}", why)


@pytest.mark.parametrize("name", ["journal.db", "journal.db-wal", "journal.db-shm", "journal.db.restore"])
@pytest.mark.parametrize("plant", [fifo, link_to_zero])
def test_a_start_refuses_a_planted_journal_file_in_words(tmp_path, plant, name):
    """A FIFO or a link to /dev/zero at the journal, its -wal or -shm, or a write-back's .restore left without a
    journal, makes a start exit 1 naming it, instead of SQLite waiting on it or reading the device."""
    state = tmp_path / "state"
    state.mkdir()
    why = plant(state / name)
    assert_start_refuses(tmp_path, state, name, why)


def test_a_start_refuses_a_journal_linked_to_a_whole_one(tmp_path):
    """journal.db linked to a whole journal elsewhere is refused too, in words that say to link the state directory
    instead: SQLite keeps its -wal beside the link, not the file, and a write-back would replace the link."""
    some_tasks(tmp_path / "elsewhere")
    state = tmp_path / "state"
    state.mkdir()
    os.symlink(tmp_path / "elsewhere" / "state" / "journal.db", state / "journal.db")
    assert_start_refuses(tmp_path, state, "journal.db", "a symbolic link, which the daemon never writes there (to "
                         "keep the state on another disk, link the state directory itself)")  # what to do instead


def oldest_replaced(tmp_path, plant, suffix: str) -> str:
    """A state directory of some tasks whose oldest archive file is replaced by `plant`; why it is refused."""
    some_tasks(tmp_path)
    trace = tmp_path / "state" / "trace"
    os.unlink(trace / names(trace)[0])
    return plant(trace / (archive.file_name(1) + suffix.removeprefix(".csv")))


@pytest.mark.parametrize("plant, suffix", ARCHIVE_PLANTS + [pytest.param(unnumbered, ".csv", id="unnumbered")])
def test_replay_verify_reports_a_planted_archive_file(tmp_path, capsys, plant, suffix):
    """`apeinxfs replay --verify` of a state directory with a planted archive file exits 2 naming it (or, for a line
    without its seq, the archive) and why."""
    why = oldest_replaced(tmp_path, plant, suffix)
    assert verify.main(["--verify", str(tmp_path / "state")]) == 2
    error = capsys.readouterr().err
    assert f"{UNTRUSTED}: {tmp_path / 'state' / 'trace'}" in error and why in error, error


@pytest.mark.parametrize("name", ["journal.db", "journal.db-wal"])
def test_replay_verify_reports_a_planted_journal_file(tmp_path, capsys, name):
    """`apeinxfs replay --verify` with a FIFO at the journal's -wal, or the journal linked to a whole one, exits 2
    naming it."""
    some_tasks(tmp_path / "elsewhere")
    state = tmp_path / "state"
    state.mkdir()
    os.symlink(tmp_path / "elsewhere" / "state" / "journal.db", state / "journal.db")
    if name == "journal.db-wal":
        os.unlink(state / "journal.db")
        os.link(tmp_path / "elsewhere" / "state" / "journal.db", state / "journal.db")
        fifo(state / name)
    assert verify.main(["--verify", str(state)]) == 2
    assert f"{UNTRUSTED}: {state / name}, " in capsys.readouterr().err


def test_the_archive_lines_of_a_lines_bomb_stop_at_the_bound(tmp_path):
    """A .gz of short lines inflating past 64 times its length is read line by line to the bound, then refused."""
    why = lines_bomb(tmp_path / "events-000000000001.csv.gz")
    with pytest.raises(statefile.Untrusted, match=why):
        sum(1 for _ in archive.lines(str(tmp_path)))


def test_a_start_never_truncates_through_a_planted_lock_link(tmp_path):
    """A `lock` that links to another file is refused at start, that file left whole: the lock is truncated and
    written with the daemon's pid."""
    state, victim = tmp_path / "state", tmp_path / "victim"
    state.mkdir()
    victim.write_text("another file's text\n")
    os.symlink(victim, state / "lock")
    assert_start_refuses(tmp_path, state, "lock", "a symbolic link")
    assert victim.read_text() == "another file's text\n"


@pytest.mark.parametrize("plant", [fifo, link_to_zero])
def test_a_daemonised_start_refuses_a_planted_log_in_words(tmp_path, plant):
    """A FIFO at `apeinxfs.log` (opened to append, it waited for a reader) or a link there makes a daemonised start
    exit 1 naming it, not hang or write through the link."""
    state, mountpoint = tmp_path / "state", tmp_path / "mnt"
    state.mkdir()
    mountpoint.mkdir()
    plant(state / "apeinxfs.log")
    done = subprocess.run([sys.executable, "-m", "apeinxfs.cli", str(mountpoint), "--state-dir", str(state)],
                          capture_output=True, text=True, timeout=START_TIMEOUT_S)
    assert done.returncode == 1 and f"{UNTRUSTED}: {state / 'apeinxfs.log'}, " in done.stderr, done.stderr


def skips_logged(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.getMessage().startswith("archive: skipping")]


def test_a_planted_full_file_is_skipped_and_the_oldest_files_still_go(tmp_path, caplog):
    """A link planted at a full file's name is logged once and left by compress_full, which goes on compressing
    the others and dropping the oldest over the cap: it raised each time, and the archive grew without bound."""
    directory, victim = tmp_path / "trace", tmp_path / "victim"
    victim.write_bytes(b"another file\n")
    planted = Archive(str(directory), file_bytes=2000, total_bytes=3000)
    os.symlink(victim, directory / archive.file_name(0))  # the oldest name of all
    trace = TraceLog("n")
    with caplog.at_level(logging.WARNING, logger="apeinxfs.archive"):
        for batch in range(30):
            grow(trace, 10, batch * 10)
            if planted.append(trace):
                planted.compress_full()
    files = names(directory)
    assert archive.file_name(0) not in files and all(name.endswith(".gz") for name in files[:-1])
    assert sum(os.path.getsize(directory / name) for name in files[:-1]) <= 3000
    assert victim.read_bytes() == b"another file\n" and len(skips_logged(caplog)) == 1, caplog.text


def test_a_link_planted_at_the_next_file_s_name_is_refused_not_written_through(tmp_path):
    """A link at the name the archive's next file will have is refused at the rotation, its target left whole."""
    directory, victim, trace = tmp_path / "trace", tmp_path / "victim", TraceLog("n")
    victim.write_bytes(b"another file\n")
    rotating = Archive(str(directory), file_bytes=2000)
    while not rotating.append(trace):
        grow(trace, 10, trace.seq)
    os.symlink(victim, directory / archive.file_name(rotating.first))
    grow(trace, 10, trace.seq)
    with pytest.raises(statefile.Untrusted, match="a symbolic link"):
        rotating.append(trace)
    assert victim.read_bytes() == b"another file\n"


def test_a_daemon_keeps_its_lines_while_the_next_archive_file_is_a_link(tmp_path, caplog):
    """Behind a runtime, the refusal is logged and the lines stay in the ring: a commit never raises from it."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"another file\n")
    with runtime(tmp_path, file_bytes=600) as rt:
        directory = tmp_path / "state" / "trace"
        while (directory / archive.file_name(rt.archive.first)).exists():
            submit(rt)
        os.symlink(victim, directory / archive.file_name(rt.archive.first))
        pid = submit(rt)
        rt.commit([Kill(pid=pid)])
        assert rt.archive.seq < rt.kernel.trace.seq and "a symbolic link" in caplog.text
    assert victim.read_bytes() == b"another file\n"


def test_a_damaged_last_line_refuses_the_archive_and_a_header_alone_is_no_line(tmp_path):
    """A newest file whose last line does not start with its seq is refused, not read as holding no line (the
    lines before it were written again); a file of its header alone starts after the seq before its first."""
    damaged = tmp_path / "damaged" / archive.file_name(1)
    damaged.parent.mkdir()
    damaged.write_bytes(HEADER + b"1,x\n2,x\n3zz,x\n")
    with pytest.raises(statefile.Untrusted, match="does not start with its seq: b'3zz,x'"):
        Archive(str(damaged.parent), file_bytes=1 << 20)
    (tmp_path / archive.file_name(5)).write_bytes(HEADER)
    assert Archive(str(tmp_path), file_bytes=1 << 20).seq == 4


@pytest.mark.parametrize("longest, whole", [(statefile.LINE_MAX, True), (statefile.LINE_MAX + 1, False)])
def test_a_line_across_blocks_is_read_whole_up_to_the_bound(longest, whole):
    """A line reaching over a block's end is read whole if at most LINE_MAX with its newline, refused if longer."""
    lines = [b"a" * (statefile.BLOCK // 2) + b"\n", b"b" * (longest - 1) + b"\n", b"c"]
    read = statefile.bounded_lines(io.BytesIO(b"".join(lines)), "lines")
    if whole:
        assert list(read) == lines
    else:
        with pytest.raises(statefile.Untrusted, match="a line longer than"):
            list(read)


def test_replay_skips_a_bad_archive_file_and_shows_the_others(tmp_path, caplog):
    """/replay/PID's lines (Archive.of_task) leave out a planted archive file, logged once, and show the rest's;
    `task_lines` (replay --verify's) still refuses it."""
    pids = some_tasks(tmp_path)
    trace = tmp_path / "state" / "trace"
    kept = tmp_path / "kept"
    shutil.copytree(trace, kept)
    os.unlink(kept / names(kept)[0])
    oldest = names(trace)[0]
    os.unlink(trace / oldest)
    fifo(trace / oldest)
    with caplog.at_level(logging.WARNING, logger="apeinxfs.archive"):
        shown = [Archive(str(trace), file_bytes=800).of_task(pid) for pid in pids]
    assert shown == [archive.task_lines(str(kept), pid) for pid in pids] and shown[-1][0].count(b"\n") > 1
    assert len(skips_logged(caplog)) == 1 and oldest in caplog.text, caplog.text
    with pytest.raises(statefile.Untrusted, match="mode p"):
        archive.task_lines(str(trace), pids[0])
