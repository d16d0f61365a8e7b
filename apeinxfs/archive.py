"""The trace and audit archives: every line of a ring (kernel/ring.py) of journaled events, in files.

The trace's are under STATE_DIR/trace/, named `events-...`, the audit trail's under
STATE_DIR/audit/, named `audit-...` (the `stem`). The files hold the CSV of /trace/events
or /trace/audit (each starts with its header): the one being written is
`<STEM>-<FIRST>.csv`, FIRST the seq of its first line (12 digits, so names sort in seq
order). Past `retention.trace_file_bytes` the next lines start a new file, and the full
one becomes `<STEM>-<FIRST>.csv.gz` (`compress_full`, slow enough to run off the trio
thread; a crash in it leaves the .csv, compressed again at the next start). Then the
oldest files go until all of them take at most `retention.trace_bytes` (`audit_bytes`; 0:
no limit); the one being written always stays.

The runtime calls `append(trace)` after each journal commit, with the kernel's trace (the
audit archive's with its audit trail, and all that follows holds for it too); only lines
of journaled events are ever in the trace then (runtime.py), so the archive is never
ahead of the journal after a crash: at the next start the journal's replay rebuilds the
same lines with the same seqs, and `append` adds those after the archive's last seq, read
back from its files, so no line is written twice. It can be ahead only after a power
cut took the journal's last commits but not the file's (neither is synced): then `catch_up`
cuts the lines the replay did not rebuild, as far as the file being written has them.

Lines read to be shown pass `shown` (each URL's credentials hidden); the files keep the lines as written.
This module writes and reads the files; it does not decide what is in the trace
(kernel/trace.py) or the audit trail (kernel/audit.py) nor when lines are journaled (runtime.py).
"""
import contextlib
import gzip
import logging
import os
import re
import shutil

from . import durable, statefile
from .kernel.endpoints import redacted
from .kernel.trace import HEADER

log = logging.getLogger(__name__)
TRACE = "events"  # the trace archive's stem
TAIL_BYTES = 1 << 16  # read from the end of the file to find its last line


def file_name(first_seq: int, compressed: bool = False, stem: str = TRACE) -> str:
    return f"{stem}-{first_seq:012d}.csv" + (".gz" if compressed else "")


class Archive:
    """An archive directory for one daemon (STATE_DIR/trace/ by default): `seq` is the last line in it."""

    def __init__(self, directory: str, file_bytes: int, total_bytes: int = 0, stem: str = TRACE,
                 header: bytes = HEADER):
        self.directory, self.file_bytes, self.total_bytes = directory, file_bytes, total_bytes
        self.stem, self.header = stem, header
        os.makedirs(directory, exist_ok=True)
        files = self.files()
        self.seq = self._last_seq(files[-1]) if files else 0
        self.first = self.seq + 1  # the first seq of the file being written: a new one, unless
        if files and not files[-1][1].endswith(".gz") and os.path.getsize(files[-1][1]) < file_bytes:
            self.first = files[-1][0]  # the newest has room
        self._file = None

    def files(self) -> list[tuple[int, str]]:
        return files(self.directory, self.stem)

    def _last_seq(self, newest: tuple[int, str]) -> int:
        """The seq of the newest file's last whole line (a line torn by a crash is cut off); Untrusted
        (statefile.py) if it is not a file the daemon wrote."""
        first, path = newest
        if path.endswith(".gz"):  # a crash between compressing and starting the next file
            last = b""
            for last in statefile.archive_lines(path):
                pass
            return last_seq_in(last, first, path)
        with statefile.opened(path, writing=True) as file:
            size = file.seek(0, os.SEEK_END)
            file.seek(max(0, size - TAIL_BYTES))
            tail = file.read()
            if b"\n" not in tail:  # a last line longer than the tail: read it, up to a line's bound
                file.seek(max(0, size - statefile.LINE_MAX))
                tail = file.read()
            if b"\n" not in tail and size > statefile.LINE_MAX:
                raise statefile.refusal(path, f"a line longer than {statefile.LINE_MAX} bytes, as no archive line is")
            whole = tail[:tail.rfind(b"\n") + 1]
            if len(whole) < len(tail):
                file.truncate(size - len(tail) + len(whole))
        return last_seq_in(whole, first, path)

    # -- writing ----------------------------------------------------------------------------------

    def append(self, trace) -> bool:
        """Write the lines of `trace` (a kernel/ring.Ring) after `seq`; True when a file just filled
        (`compress_full` has work)."""
        if trace.seq <= self.seq:
            return False
        file = self._writing()
        write_all(file, trace.lines_after(self.seq))
        self.seq = trace.seq
        if file.tell() < self.file_bytes:
            return False
        file.close()
        self._file, self.first = None, self.seq + 1
        return True

    def _writing(self):
        if self._file is None:
            path = os.path.join(self.directory, file_name(self.first, stem=self.stem))
            opened = statefile.descriptor(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            self._file = os.fdopen(opened, "ab", buffering=0)
            if self._file.tell() == 0:
                self._file.write(self.header)
        return self._file

    def catch_up(self, trace) -> None:
        """At start, after the journal's replay: cut lines the replay did not rebuild, then add the new ones."""
        if self.seq > trace.seq:
            log.warning("archive %s ahead of the journal (seq %d > %d): cutting the lines after it",
                        self.directory, self.seq, trace.seq)
            self._cut_after(trace.seq)
        if self.append(trace):
            self.compress_full()

    def _cut_after(self, seq: int) -> None:
        """Drop the lines after `seq` from the file being written (compressed files are left as they are)."""
        path = os.path.join(self.directory, file_name(self.first, stem=self.stem))
        if not os.path.exists(path):  # the lines are in compressed files: they stay
            return
        with statefile.opened(path, writing=True) as file:
            header, *lines = file.read().splitlines(keepends=True)
            kept = header + b"".join(line for line in lines if seq_of(line, path) <= seq)
            file.seek(0)
            file.write(kept)
            file.truncate()
        self.seq = last_seq_in(kept, self.first, path)

    def compress_full(self) -> None:
        """gzip every full file (all .csv but the one being written), then drop the oldest files over
        `total_bytes`. Safe in a thread beside `append`, which touches only the file being written. A file the
        daemon did not write (Untrusted: a link, a FIFO) is logged and left, for `_trim` to drop in its turn."""
        for first, path in self.files():
            if first != self.first and not path.endswith(".gz"):
                try:
                    compress(path)
                except statefile.Untrusted as exc:
                    skipped(path, exc)
            elif path.endswith(".gz") and os.path.exists(path[:-3]):  # a crash before the .csv went
                os.unlink(path[:-3])
        self._trim()

    def _trim(self) -> None:
        if not self.total_bytes:
            return
        files = [(path, os.lstat(path).st_size) for _, path in self.files()]  # a planted link's own, not its target's
        total = sum(size for _, size in files)
        for path, size in files[:-1]:
            if total <= self.total_bytes:
                break
            os.unlink(path)
            total -= size

    def sync(self) -> None:
        """fsync every file not compressed yet, the one being written among them: before a compaction drops the
        journal rows their lines were made from. Safe in a thread beside `append`; a file compressed meanwhile
        was synced as its .gz (durable.replace). Then the directory: the file being written was created at the last
        rotation, and its name is on disk only once the directory is synced."""
        for _, path in self.files():
            if not path.endswith(".gz"):
                with contextlib.suppress(FileNotFoundError):
                    durable.sync_file(path)
        durable.sync_directory(self.directory)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # -- reading ----------------------------------------------------------------------------------

    def lines(self):
        return lines(self.directory, self.stem)

    def of_task(self, pid: int) -> tuple[bytes, frozenset[str]]:
        """/replay/PID's lines and tenants: as `task_lines`, a file the daemon did not write logged and skipped."""
        return task_lines(self.directory, pid, skipping=True)


# -- reading, without an Archive (it changes nothing: `apeinxfs replay` reads beside a daemon) ---------


def files(directory: str, stem: str = TRACE) -> list[tuple[int, str]]:
    """(first seq, path) of every archive file named `stem`-... in `directory`, oldest first; of a .csv and
    its .gz (a crash between compressing and removing the .csv) only the .gz, which is whole."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    name_re = re.compile(rf"^{re.escape(stem)}-(\d{{12}})\.csv(\.gz)?$")
    found = dict(sorted((int(m.group(1)), name) for name in names if (m := name_re.match(name))))
    return [(first, os.path.join(directory, name)) for first, name in found.items()]


def lines(directory: str, stem: str = TRACE):
    """Every archived line (bytes, with its newline), oldest first."""
    for _, path in files(directory, stem):
        yield from file_lines(path)


def file_lines(path: str):
    """The lines of one archive file but its header; of a .csv compressed since it was listed, its .gz's;
    none of a file trimmed meanwhile."""
    for candidate in (path,) if path.endswith(".gz") else (path, path + ".gz"):
        try:
            lines = statefile.archive_lines(candidate)
            next(lines, None)  # the header
            yield from lines
            return
        except FileNotFoundError:
            continue


def write_all(file, data: bytes) -> None:
    """Write `data` to the unbuffered `file`, or none of it: raises OSError (a full disk) after cutting
    what got written, so that the next try writes the lines whole."""
    start, view = file.tell(), memoryview(data)
    try:
        while view:
            view = view[file.write(view):]
    except OSError:
        file.truncate(start)
        file.seek(start)
        raise


def last_seq_in(text: bytes, first: int, path: str) -> int:
    """The seq of the last line of `text`, from the file `path` starting at `first` (first - 1 if it has only the
    header); Untrusted if that line does not start with its seq: the lines before it are not thrown away."""
    last = text.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    if not last or last.startswith(b"seq,"):  # the header, the trace's or the audit trail's
        return first - 1
    return seq_of(last, path)


def seq_of(line: bytes, path: str) -> int:
    """The seq an archived line of `path` (a file, or the archive's directory) starts with; Untrusted if none."""
    head = line.split(b",", 1)[0]
    if not head.isdigit():
        raise statefile.refusal(path, f"a line that does not start with its seq: {line[:60]!r}")
    return int(head)


def compress(path: str) -> None:
    """`path` -> `path`.gz, durably: a crash or power cut leaves the .csv whole (and maybe a .tmp, redone later)."""
    target = path + ".gz"
    if not os.path.exists(target):
        with statefile.opened(path) as source, gzip.open(target + ".tmp", "wb") as sink:
            shutil.copyfileobj(source, sink, 1 << 20)
        durable.replace(target + ".tmp", target)
    os.unlink(path)


def task_lines(directory: str, pid: int, skipping: bool = False) -> tuple[bytes, frozenset[str]]:
    """(Task `pid`'s archived lines as they are shown (`shown`), with the header (the header alone if none); the
    tenants of every archived task line): a scan of every file. Those are the tenants its lines may name, a removed
    one's too, which the trace forgets once its lines leave the ring (kernel/trace.py `redact_lines` hides them).
    Untrusted at a file the daemon did not write, or if `skipping` (the daemon's /replay: one bad file does not
    take out every task's) that file logged and its lines left out."""
    own, found, tenants = b"%d" % pid, [], set()
    for _, path in files(directory):
        try:
            found.extend(_task_lines_in(path, own, tenants))
        except statefile.Untrusted as exc:
            if not skipping:
                raise
            skipped(path, exc)
    return HEADER + b"".join(found), frozenset(name.decode(errors="replace") for name in tenants if name)


def _task_lines_in(path: str, own: bytes, tenants: set[bytes]) -> list[bytes]:
    """The lines of task `own` in one archive file, shown; the tenant of each task line added to `tenants` (a
    file that turns out bad adds tenants, never lines: they are hidden, not shown)."""
    found = []
    for line in file_lines(path):
        if len(fields := line.split(b",", 5)) == 6:  # seq,time_us,type,pid,tenant,...: a split is cheaper than a match
            tenants.add(fields[4])  # b"" on a line of no task
            if fields[3] == own:
                found.append(shown(line))
    return found


_skipped: set[str] = set()  # the paths `skipped` logged: each once in a daemon's life


def skipped(path: str, exc: statefile.Untrusted) -> None:
    """Log, once per path, that an archive file the daemon did not write is left as it is."""
    if path not in _skipped:
        _skipped.add(path)
        log.warning("archive: skipping %s", exc)


def shown(lines: bytes) -> bytes:
    """Archived lines (one, or several joined: the same text) as /replay and `apeinxfs replay` show them: each URL's
    credentials hidden (kernel/endpoints.py `redacted`), as the kernel hides them in the lines it writes now, but in
    the whole line where the kernel hides them in each reason (an old line's reasons are not known here). So an
    `@digits` ending of a URL followed in the line by `;` or `"` is not read as GPUs: `http://10.0.0.1:8000@1;`
    shows as `http://***@1;` here, whole in the live ring. Accepted: it hides more there. The files keep
    each line as it was written, those of a daemon that wrote them shown too: they are the record that `replay
    --verify` compares."""
    if b"@" not in lines:  # most lines: a URL's credentials end with one
        return lines
    return redacted(lines.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
