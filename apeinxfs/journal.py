"""The append-only journal of kernel inputs, in SQLite (WAL) in the state directory.

A row is committed before the write(2) that caused it returns, so every acknowledged
write survives kill -9 (a journal opened with `rows_per_commit` > 1, as `apeinxfs sim`
does, commits that many rows at a time instead, and all at close). Rows are (seq,
time_us, kind, body); replaying them in seq order through the kernel rebuilds all state.
Engine steps already applied can be `defer`red: they wait in memory and go, as one
`steps` row (kernel/events.py), at the head of the next append, or of a `flush` (runtime.py
says when); a crash loses them, and only them.

Beside them it keeps what `apeinxfs replay --verify` (verify.py) checks a replay
against: a `boot` row per daemon start (the kernel config, JSON) and, per applied journal
row, a `trace` row: the trace lines its apply emitted and a CRC of the row as applied.
Trace rows wait in memory until FLUSH_ROWS of them are pending, then go in the
transaction of the next append (and all at close): a one-row commit then writes one page,
not two, and a crash loses the trace rows of at most the last FLUSH_ROWS rows and the last
transaction, never a journal row.

A write the storage refuses (a full disk, an I/O error, a read-only file system, a damaged file) raises
`Degraded` with the storage's errno and changes nothing: the transaction is rolled back,
and the connection stays usable for the next try (runtime.py decides what the daemon does).

After each commit, before the write is acknowledged, it looks (a stat of the file and of its -wal) whether the
files at its path are still the ones it opened: rows committed to a file deleted under the daemon would be lost
at its next start. When they were deleted (all of them, or either alone), it writes the journal back at its path
from its open connection (SQLite's backup: every row, the WAL's too); when another file took the journal's place
(a copy an operator put back, say), it takes the rows just committed back out, copies its rows once to a new
journal.db.displaced[.N] (DISPLACED), takes its -wal and -shm from beside the other file (SQLite would read that
file with them on top at its next open) and refuses with EIO (`Degraded`), naming both, until the other file is
moved away (the next try writes the journal back and deletes the copy). A start (a writer's open) refuses while
a DISPLACED file is there, and takes a write-back's whole copy (.restore) that a kill left in place of a journal
(`SetAside` otherwise); a damaged file is `Unreadable` at start, in words.

Behind a snapshot of the state (compaction.py) `compact` deletes the rows, their trace rows
and the boot rows no later row needs, from a connection of its own; `first_seq` then says
where the rows start.

This module stores and reads rows; it does not interpret them (kernel/events.py does) and
does not run the kernel. `NullJournal` keeps nothing, for runs no one will replay.
"""
import contextlib
import errno
import json
import logging
import os
import sqlite3
import zlib
from collections.abc import Callable, Iterator

import attrs

from . import durable, statefile
from .journalfiles import (DISPLACED, backed_up, copied, drop_wal, identity, refuse_set_aside, take_restore, unused_name,
                           uri)
from .kernel.errors import ApeinxError, Degraded
from .kernel.events import Step, stamped_of_row, steps_to_row, to_row

SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY,
    time_us INTEGER NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS boot (
    boot INTEGER PRIMARY KEY,
    after_row INTEGER NOT NULL,  -- the last journal row written before this boot
    config TEXT NOT NULL         -- the KernelConfig booted, attrs.asdict as JSON
);
CREATE TABLE IF NOT EXISTS trace (
    row INTEGER PRIMARY KEY,     -- the journal row (its seq) whose apply emitted these lines
    crc INTEGER NOT NULL,        -- row_crc of that row's kind and body when it was applied
    lines TEXT NOT NULL          -- the trace lines it emitted, each ending in a newline ('' for none)
);
"""
log = logging.getLogger(__name__)
LAST = (1 << 63) - 1  # the largest seq SQLite holds: "to the end"
FLUSH_ROWS = 32
WAL_BYTES = 4 << 20
SQLITE_ERRNO = {sqlite3.SQLITE_FULL: errno.ENOSPC, sqlite3.SQLITE_READONLY: errno.EROFS,  # by primary result code
                sqlite3.SQLITE_IOERR: errno.EIO}
STORAGE_FAULTS = (sqlite3.DatabaseError, OSError)  # what a write the storage refused raises (a corrupt file too)
SQL_BUGS = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.NotSupportedError)  # DatabaseErrors of misuse


@attrs.frozen
class Boot:
    """One daemon start: its rows (after_row, upto], the last of them with a trace row, its kernel config."""

    after_row: int
    upto: int
    traced_to: int
    config: dict


def storage_fault(exc: Exception) -> Degraded:
    """A failed journal write as the daemon reports it: the storage's errno and what it said."""
    if isinstance(exc, OSError):
        code, said = exc.errno or errno.EIO, exc.strerror or str(exc)
    else:
        code, said = SQLITE_ERRNO.get(getattr(exc, "sqlite_errorcode", 0) & 0xFF, errno.EIO), str(exc)
    return Degraded(code, f"the journal cannot be written: {said} ({errno.errorcode.get(code, code)})")


@contextlib.contextmanager
def storage_faults_as(fault: Callable[[Exception], Exception]) -> Iterator[None]:
    """Raise what the storage refused (STORAGE_FAULTS: a full disk, a damaged file) as `fault(exc)`, and our
    misuse of SQLite (SQL_BUGS: a seq twice, a value it cannot bind) as it is: a bug, for the boundary that
    counts bugs, never a storage fault that degrades the daemon for good or is retried."""
    try:
        yield
    except SQL_BUGS:
        raise
    except STORAGE_FAULTS as exc:
        raise fault(exc) from exc


def row_crc(kind: str, body: str) -> int:
    """A journal row's checksum, so that a row altered after it was applied is told apart."""
    return zlib.crc32(f"{kind}\n{body}".encode())


class Emitted:
    """`with Emitted(trace) as emitted:` sets `emitted.text` to the trace text written inside the block.

    `row` is the journal row (seq, time_us, kind, body) applied inside it, when there is one.
    """

    def __init__(self, trace, row: tuple = ()):
        self.trace, self.row, self.text = trace, row, ""

    def __enter__(self) -> "Emitted":
        """Hold the lines the block emits in the trace (a ring: trace.py) until they are copied."""
        self._seq, self._hold = self.trace.seq, self.trace.hold
        self.trace.hold = self._seq if self._hold is None else min(self._hold, self._seq)
        return self

    def __exit__(self, *exc) -> None:
        self.text = self.trace.lines_after(self._seq).decode()
        self.trace.release(self._hold)

    @classmethod
    def joined(cls, row: tuple, parts: list["Emitted"]) -> "Emitted":
        """What `parts` captured, one after the other, as the trace of journal row `row`."""
        emitted = cls(None, row)
        emitted.text = "".join(part.text for part in parts)
        return emitted


class Unreadable(ApeinxError):
    """A journal file that cannot be opened or read as one (not a database, damaged, not permitted),
    named with SQLite's or the system's words."""


def connected(path: str, readonly: bool) -> sqlite3.Connection:
    """A connection to the journal at `path`, read-only or set up for the daemon's writes; Untrusted (statefile.py)
    if it, its -wal or its -shm is a link or no regular file (SQLite would follow the one, wait on a FIFO)."""
    for name in (path, path + "-wal", path + "-shm"):
        statefile.check_regular(name)
    if readonly:
        return sqlite3.connect(uri(path, "ro"), uri=True, isolation_level=None)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # a new file: compaction gives pages back (compact)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(f"PRAGMA journal_size_limit={WAL_BYTES}")  # the WAL is cut back to this once reset
    db.executescript(SCHEMA)
    return db


def unreadable(path: str) -> contextlib.AbstractContextManager:
    """What the storage refused reading the journal at `path` (a damaged file) raised as Unreadable, naming it."""
    return storage_faults_as(lambda exc: Unreadable(f"cannot read the journal {path}: {exc}"))


class Journal:
    """An open journal file; one writer (the daemon) at a time, or read-only readers. Unreadable, naming
    the file, if it is not a journal SQLite can read."""

    keeps_rows = True  # a kernel can be rebuilt from its rows (`rows_kept`)

    def __init__(self, path: str, readonly: bool = False, rows_per_commit: int = 1):
        self.path, self.rows_per_commit = path, rows_per_commit
        if not readonly:
            refuse_set_aside(path)
            take_restore(path)
        with unreadable(path):
            self.db = connected(path, readonly)
            self.last_seq = self.db.execute("SELECT coalesce(max(seq), 0) FROM journal").fetchone()[0]
        self._files = None if readonly else self._identities()  # what it opened: a commit checks it is still there
        self._aside: tuple[tuple | None, str] = (None, "")  # (the other file's identity, where its rows went)
        self._booted = False
        self._uncommitted: list[tuple] = []
        self._appended: list[tuple] = []
        self._pending: list[Emitted] = []
        self._deferred: list[tuple[int, object]] = []  # (time_us, Step) applied, not yet in a row
        self._deferred_trace: list[Emitted] = []  # what each of them emitted

    def boot(self, kernel_config) -> None:
        """Record a daemon start with `kernel_config`; trace rows are kept from now on."""
        config = json.dumps(attrs.asdict(kernel_config), separators=(",", ":"), default=str)
        with unreadable(self.path):  # the first write at a start: a damaged file is found here too
            self.db.execute("INSERT INTO boot (after_row, config) VALUES (?, ?)", (self.last_seq, config))
        self._booted = True

    def go_on_after(self, seq: int) -> None:
        """Number the next rows after `seq`, past the last row here: the row of the snapshot a start used
        when the journal had lost rows (compaction.py). The rows here, behind the snapshot, go (as compaction
        drops them), so that no gap is left for a replay from row 1; this boot's rows start after `seq`."""
        self.last_seq = seq
        with storage_faults_as(storage_fault), self.db:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM journal WHERE seq <= ?", (seq,))
            self.db.execute("DELETE FROM trace WHERE row <= ?", (seq,))
            self.db.execute("DELETE FROM boot WHERE boot < (SELECT max(boot) FROM boot)")
            self.db.execute("UPDATE boot SET after_row = ?", (seq,))

    def append(self, stamped: list[tuple[int, object]]) -> range:
        """Journal (time_us, event) pairs after the deferred steps, committed in one transaction (or
        rows_per_commit); their seqs. A Step is a steps row of its own."""
        groups = ([self._deferred] if self._deferred else []) + [[pair] for pair in stamped]
        rows = [(seq,) + encoded(group) for seq, group in enumerate(groups, self.last_seq + 1)]
        if len(self._uncommitted) + len(rows) >= self.rows_per_commit:
            self._commit(self._uncommitted + rows, FLUSH_ROWS)  # raises Degraded: nothing was journaled
            self._uncommitted = []
        else:
            self._uncommitted += rows
        self.last_seq, self._appended = self.last_seq + len(rows), rows
        if self._deferred:
            self._keep(Emitted.joined(rows[0], self._deferred_trace))
            self._deferred, self._deferred_trace = [], []
        return range(self.last_seq + 1 - len(stamped), self.last_seq + 1)

    def defer(self, time_us: int, step, emitted: Emitted) -> None:
        """Keep `step`, applied at `time_us` emitting what `emitted` captured, for the next append."""
        self._deferred.append((time_us, step))
        self._deferred_trace.append(emitted)

    @property
    def deferred_since_us(self) -> int | None:
        """When the oldest deferred step was applied; None when none waits."""
        return self._deferred[0][0] if self._deferred else None

    def flush(self) -> None:
        """Journal the deferred steps now, if any (raises Degraded, keeping them, when that fails)."""
        if self._deferred:
            self.append([])

    def flush_all(self) -> None:
        """Journal the deferred steps and write every trace row pending (before a snapshot: compaction
        must not meet a trace row written after the rows it drops)."""
        self.flush()
        if self._uncommitted or self._pending:
            self._commit(self._uncommitted, 1)
            self._uncommitted = []

    def _identities(self) -> tuple:
        return identity(self.path), identity(self.path + "-wal")

    def _connected(self) -> None:
        """Degraded (EIO) when an earlier write-back or take-back failed half way: no connection to go on with."""
        if self._files is None:
            raise Degraded(errno.EIO, f"the journal {self.path} could not be written back or set aside: "
                                      "restart the daemon")

    def _keep_files(self, rows: list[tuple], traced: list) -> None:
        """Make sure the rows just committed are in the journal's files at its path: write them back if they
        were deleted; if another file took the journal's place, take the rows back out, set the journal's rows
        aside (`_set_aside`) and raise Degraded (EIO)."""
        found = self._identities()
        if found == self._files:
            return
        if found[0] in (None, self._files[0]):
            try:
                return self._write_back()
            except Degraded:
                self._take_back(rows, traced)
                raise
        self._take_back(rows, traced)
        self._set_aside(found[0])
        raise Degraded(errno.EIO, f"the journal {self.path} was replaced under the daemon by another file "
                                  f"(inode {found[0][1]}, not {self._files[0][1]}); the daemon's rows are in "
                                  f"{self._aside[1]}: move that other file away and the daemon writes its "
                                  "journal back (a start refuses while the rows set aside are there)")

    def _take_back(self, rows: list[tuple], traced: list) -> None:
        """Delete `rows` and the trace rows of `traced`, just committed, from the journal's file: they were never
        acknowledged. If that fails, or a write-back closed the connection, it is given up (`_connected`)."""
        if self._files is None:
            return
        files, self._files = self._files, None
        with storage_faults_as(storage_fault), self.db:
            self.db.execute("BEGIN")
            self.db.executemany("DELETE FROM journal WHERE seq = ?", [(row[0],) for row in rows])
            self.db.executemany("DELETE FROM trace WHERE row = ?", [(e.row[0],) for e in traced])
        self._files = files

    def _write_back(self) -> None:
        """Write the journal back at its path from the open connection, and go on there; the copy of its rows
        set aside while another file held the path goes, as they are at the path again."""
        files = self._files
        with storage_faults_as(storage_fault):
            temp = copied(self.db, self.path)  # a failure here leaves all as it was: the next commit tries again
            self._files = None  # no connection until connected() succeeds
            self.db.close()  # its file is gone from the path: SQLite neither checkpoints nor deletes the -wal
            drop_wal(self.path, files[1])  # which the copy would be read with on top
            durable.replace(temp, self.path)
            self.db = connected(self.path, readonly=False)
        self._files = self._identities()
        log.warning("the journal %s was deleted or moved away under the daemon: written back from its open copy "
                    "(rows to %d)", self.path, self.last_seq)
        if self._aside[1]:
            os.unlink(self._aside[1])
            log.warning("%s removed: its rows are in the journal written back", self._aside[1])
            self._aside = (None, "")

    def _commit(self, rows: list[tuple], trace_rows_at_least: int) -> None:
        """One transaction: journal `rows`, and the trace rows pending if there are enough."""
        traced = list(self._pending) if len(self._pending) >= trace_rows_at_least else []
        self._connected()
        try:
            with storage_faults_as(storage_fault), self.db:
                self.db.execute("BEGIN")
                self.db.executemany("INSERT INTO journal (seq, time_us, kind, body) VALUES (?, ?, ?, ?)", rows)
                if traced:  # most commits write none: trace rows go FLUSH_ROWS at a time
                    self._write_trace(traced)
        except Exception:  # a storage fault (Degraded) or a bug: either way no transaction is left open
            self._roll_back()
            raise
        self._keep_files(rows, traced)  # after the commit, so no rm between look and commit goes unseen
        del self._pending[:len(traced)]

    def _roll_back(self) -> None:
        """End a transaction the failure left open (SQLite may have rolled it back itself already)."""
        if self.db.in_transaction:
            with contextlib.suppress(*STORAGE_FAULTS):
                self.db.rollback()

    def recording(self, seq: int, trace) -> Emitted:
        """A context in which what `trace` gets becomes the trace row of row `seq`, just appended."""
        return self.keep_trace(seq, Emitted(trace))

    def keep_trace(self, seq: int, emitted: Emitted) -> Emitted:
        """Make what `emitted` captures the trace row of row `seq`, just appended: also an event's
        trace captured when it was applied, before its row could be journaled (health.py)."""
        emitted.row = self._appended[seq - self._appended[0][0]]
        return self._keep(emitted)

    def drop_trace(self, seq: int) -> None:
        """Keep no trace row for row `seq`, just appended, whose event raised while applied: what it emitted is
        half of it, and a replay quarantines the row (no trace row to verify, verify.py)."""
        self._pending = [emitted for emitted in self._pending if emitted.row[0] != seq]

    def _keep(self, emitted: Emitted) -> Emitted:
        if self._booted:
            self._pending.append(emitted)
        return emitted

    def _write_trace(self, emitted: list[Emitted]) -> None:
        rows = [(e.row[0], row_crc(e.row[2], e.row[3]), e.text) for e in emitted]
        self.db.executemany("INSERT INTO trace (row, crc, lines) VALUES (?, ?, ?)", rows)

    def rows(self, after: int = 0, upto: int = LAST):
        """Yield raw (seq, time_us, kind, body) rows with after < seq <= upto, in order."""
        query = "SELECT seq, time_us, kind, body FROM journal WHERE seq > ? AND seq <= ? ORDER BY seq"
        with unreadable(self.path):  # a damaged file is found reading its pages
            yield from self.db.execute(query, (after, upto))

    def rows_kept(self, after: int = 0, upto: int = LAST):
        """`rows`, then the rows not written yet, writing nothing: those waiting for `rows_per_commit`, and the
        deferred steps as the row they will be. What a kernel holds that applied every event so far."""
        yield from self.rows(after, upto)
        deferred = [(self.last_seq + 1,) + encoded(self._deferred)] if self._deferred else []
        yield from (row for row in self._uncommitted + deferred if after < row[0] <= upto)

    def replay(self):
        """Yield (seq, time_us, event) in order: each step of a steps row with that row's seq."""
        for seq, time_us, kind, body in self.rows():
            for at_us, event in stamped_of_row(time_us, kind, body):
                yield seq, at_us, event

    def boots(self) -> list[Boot]:
        """The recorded daemon starts, oldest first (none in a journal older than the boot table)."""
        if not self._has_table("boot"):
            return []
        rows = self.db.execute("SELECT after_row, config FROM boot ORDER BY boot").fetchall()
        ends = [after for after, _ in rows[1:]] + [LAST]
        return [Boot(after, upto, self._last_traced(after, upto), json.loads(config))
                for (after, config), upto in zip(rows, ends)]

    def _last_traced(self, after: int, upto: int) -> int:
        query = "SELECT coalesce(max(row), ?) FROM trace WHERE row > ? AND row <= ?"
        return self.db.execute(query, (after, after, upto)).fetchone()[0]

    def traces(self, after: int = 0, upto: int = LAST):
        """Yield trace rows (row, crc, lines) with after < row <= upto, in order."""
        query = "SELECT row, crc, lines FROM trace WHERE row > ? AND row <= ? ORDER BY row"
        yield from self.db.execute(query, (after, upto))

    def _has_table(self, name: str) -> bool:
        query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        return self.db.execute(query, (name,)).fetchone() is not None

    def crc_of(self, seq: int) -> int | None:
        """row_crc of row `seq`; None when the journal does not hold it."""
        with unreadable(self.path):  # read at start
            found = self.db.execute("SELECT kind, body FROM journal WHERE seq = ?", (seq,)).fetchone()
        return None if found is None else row_crc(*found)

    def first_seq(self) -> int:
        """The seq of the first row the journal holds: 1 unless rows were compacted (`compact`)."""
        with unreadable(self.path):  # read at start, where a damaged file is Unreadable
            return self.db.execute("SELECT coalesce(min(seq), ?) FROM journal", (self.last_seq + 1,)).fetchone()[0]

    def __len__(self) -> int:
        return self.db.execute("SELECT count(*) FROM journal").fetchone()[0] + len(self._uncommitted)

    def close(self) -> None:
        """Commit the deferred steps, the rows and the trace rows still pending, and check the files once more
        (a commit does: `_keep_files`) even when none was pending, then close."""
        try:
            self.flush_all()
            if self._files is not None:
                self._keep_files([], [])
        finally:
            self.db.close()
            self._files = None  # a second close checks nothing

    def _set_aside(self, other: tuple) -> None:
        """Once per other file at the journal's path (`other`, its identity): copy the journal's rows to a new
        DISPLACED file beside it, and take the daemon's -wal and -shm from beside that other file, which SQLite
        would otherwise read with them on top at its next open (a kill -9 now, say). The connection goes on on
        the files it holds open."""
        if self._aside[0] == other:
            return
        with storage_faults_as(storage_fault):
            name = unused_name(self.path + DISPLACED)
            backed_up(self.db, name)
            drop_wal(self.path, self._files[1])
        self._aside = (other, name)
        log.error("the journal %s was replaced under the daemon by another file: the daemon's rows (to %d) are in "
                  "%s; move that other file away and the daemon writes its journal back", self.path, self.last_seq,
                  name)


COMPACT_ROWS = 5000  # rows deleted per transaction: the daemon's own writes wait at most that long
INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL


def compact(path: str, upto: int) -> None:
    """Delete the journal rows up to `upto` (never the last), their trace rows and the boot rows no
    later row needs, then give the free pages back (the file shrinks) and empty the WAL. On a
    connection of its own: it runs in a thread beside the daemon's writes, which wait for each of
    its transactions (SQLite's busy timeout)."""
    db = sqlite3.connect(uri(path, "rw"), uri=True, isolation_level=None, timeout=60)  # never a new file:
    try:  # one at the path of a journal deleted under the daemon would stop it writing its journal back
        while db.execute("DELETE FROM journal WHERE seq IN (SELECT seq FROM journal WHERE seq <= ? AND seq < "
                         "(SELECT max(seq) FROM journal) ORDER BY seq LIMIT ?)", (upto, COMPACT_ROWS)).rowcount:
            db.execute("DELETE FROM trace WHERE row IN (SELECT row FROM trace WHERE row <= ? ORDER BY row LIMIT ?)",
                       (upto, COMPACT_ROWS))
        db.execute("DELETE FROM trace WHERE row <= ?", (upto,))
        db.execute("DELETE FROM boot WHERE boot < (SELECT max(boot) FROM boot WHERE after_row <= ?)", (upto,))
        if db.execute("PRAGMA auto_vacuum").fetchone()[0] != INCREMENTAL:  # a file made before compaction was
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            db.execute("VACUUM")  # once: it rewrites the file, the daemon's writes waiting
        db.executescript("PRAGMA incremental_vacuum;")  # run to its end (execute would free one page)
        db.execute("PRAGMA busy_timeout = 100")  # a reader (replay --verify) holds the WAL: try again next time,
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # for while this waits, the daemon's writes wait too
    finally:
        db.close()


def encoded(group: list[tuple[int, object]]) -> tuple[int, str, str]:
    """(time_us, kind, body) of one row: steps, or one other event."""
    time_us, event = group[0]
    return steps_to_row(group) if type(event) is Step else (time_us,) + to_row(event)


NOT_RECORDED = contextlib.nullcontext()  # reusable: entering it does nothing


class NullJournal:
    """A journal that keeps nothing and counts its rows: for runs no one will replay (`apeinxfs sim`)."""

    keeps_rows = False  # no kernel can be rebuilt from it

    def __init__(self):
        self.last_seq = 0

    def boot(self, kernel_config) -> None:
        """Nothing to record."""

    def append(self, stamped: list) -> range:
        self.last_seq += len(stamped)
        return range(self.last_seq - len(stamped) + 1, self.last_seq + 1)

    def recording(self, seq: int, trace) -> contextlib.nullcontext:
        return NOT_RECORDED

    deferred_since_us = None  # nothing waits: a deferred step is dropped at once

    def defer(self, time_us: int, step, emitted) -> None:
        """Nothing to keep."""

    def flush(self) -> None:
        """Nothing waits."""

    def __len__(self) -> int:
        return self.last_seq

    def close(self) -> None:
        """Nothing to close."""
