"""The journal's files, apart from its rows: where SQLite opens it (`uri`), which files its path holds
(`identity`), copies of it (`backed_up`, synced), and what a start finds beside it that it must not pass over:
a daemon's rows set aside (DISPLACED) or a write-back's copy left by a kill (.restore).

It reads no rows and runs no kernel (journal.py does the one, the runtime the other).
"""
import contextlib
import glob
import logging
import os
import sqlite3
import urllib.parse

from . import durable, statefile
from .kernel.errors import ApeinxError

log = logging.getLogger("apeinxfs.journal")  # said with the journal's own lines
DISPLACED = ".displaced"  # beside the journal's path: its rows, while another file held the path


class SetAside(ApeinxError):
    """Rows of the journal beside it that a start must not pass over: a daemon's set aside (DISPLACED), or a
    write-back's copy left half way; said with the files and what to do."""


def uri(path: str, mode: str) -> str:
    """SQLite's URI of the file at `path` opened in `mode` ("ro", "rw": never a new file); the path quoted, as a
    `#`, `?` or `%` in it would end it or be decoded."""
    return f"file:{urllib.parse.quote(path)}?mode={mode}"


def identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`; None when there is none."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


def backed_up(db: sqlite3.Connection, path: str) -> None:
    """Write a copy of the database `db` has open (the rows in its WAL too) at `path`, synced; a temp file
    beside it is renamed over it, so that `path` never holds half a copy."""
    durable.replace(copied(db, path), path)


def copied(db: sqlite3.Connection, path: str) -> str:
    """A synced copy of the database `db` has open (the rows in its WAL too), at `path`.restore; that path."""
    temp = path + ".restore"
    copy = sqlite3.connect(temp)
    try:
        db.backup(copy)
    finally:
        copy.close()
    make_durable(temp)
    return temp


def drop_wal(path: str, wal: tuple | None) -> None:
    """Remove the -wal and -shm at the journal's `path` if the -wal is the file of identity `wal` (the daemon's)."""
    if wal is not None and identity(path + "-wal") == wal:
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + suffix)


def unused_name(path: str) -> str:
    """`path`, or `path.2`, `path.3`... the first no file has: a copy set aside never overwrites another."""
    name, number = path, 1
    while os.path.lexists(name):
        number += 1
        name = f"{path}.{number}"
    return name


def refuse_set_aside(path: str) -> None:
    """SetAside when a daemon's rows were set aside beside the journal at `path` (DISPLACED): a start from the
    journal there would number new rows over theirs and leave them behind."""
    if found := sorted(glob.glob(glob.escape(path + DISPLACED) + "*")):
        raise SetAside(f"{', '.join(found)}: the rows of a daemon whose journal {path} was replaced under it by "
                       f"another file; to start from them, move {found[0]} to {path} (and the file there away, "
                       f"with its -wal and -shm); to start from {path} as it is, move {', '.join(found)} out of "
                       f"{os.path.dirname(path)}")


def take_restore(path: str) -> None:
    """The copy a write-back left at `path`.restore when the daemon was killed before renaming it: used when no
    journal is at `path` and it is a whole journal (the write-back's, synced); else SetAside, saying what to do."""
    restore = path + ".restore"
    if not os.path.lexists(restore):
        return
    if not os.path.lexists(path) and whole_journal(restore):
        durable.replace(restore, path)
        log.warning("%s: a write-back of the journal the daemon did not finish (it was killed): a whole copy, "
                    "used as %s", restore, path)
        return
    raise SetAside(f"{restore}: a copy of the journal from a write-back the daemon did not finish (it was killed), "
                   f"{'beside a journal at ' + path if os.path.lexists(path) else 'not a whole journal'}: check "
                   f"it (sqlite3 {restore} 'PRAGMA integrity_check') and move it to {path} to start from it, or "
                   "delete it")


def whole_journal(path: str) -> bool:
    """Whether `path` is a journal SQLite reads whole (quick_check) with its journal table; Untrusted
    (statefile.py) if it is a link or no regular file."""
    statefile.check_regular(path)
    try:
        db = sqlite3.connect(uri(path, "ro"), uri=True)
        try:
            whole = db.execute("PRAGMA quick_check").fetchall() == [("ok",)]
            return whole and db.execute("SELECT 1 FROM sqlite_master WHERE name = 'journal'").fetchone() is not None
        finally:
            db.close()
    except sqlite3.DatabaseError:
        return False


def make_durable(path: str) -> None:
    """Sync the journal's files: rows are committed without a sync (synchronous=NORMAL), and a snapshot
    written next must never be ahead of the journal after a power cut. No lock is taken: the daemon's
    writes and a `replay --verify` beside it go on."""
    for name in (path, path + "-wal"):
        with contextlib.suppress(FileNotFoundError):
            durable.sync_file(name)
