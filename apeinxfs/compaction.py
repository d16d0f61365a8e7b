"""Snapshots and compaction in the daemon: start from the newest usable snapshot, write new ones.

Every `retention.snapshot_rows` journal rows, or `retention.snapshot_s` seconds after the
last snapshot if any row came since (spaced by BUSY_SHARE), the daemon forks: the child
encodes the kernel's state at the last journal row from its copy-on-write image of the
daemon's memory (the daemon's trio thread stops only for the fork, however large the
state) and writes the snapshot's temp file (snapshots.py). A worker thread waits for the
child, syncs the journal's files (so the snapshot is never ahead of the journal on disk),
publishes the file, keeps the newest KEEP snapshots and, once the trace archive holds the
older one's lines (synced first: `sync_archives`), deletes the journal rows, trace rows and boot rows behind it
(journal.compact): a damaged newest snapshot can still fall back to the one before it and
replay the rows after that. At unmount `close` writes one in process.

At start (`start`) the newest snapshot that reads whole, was written with the same kernel
config (but for LIVE_KEYS, which the restored kernel takes from the config now: admins,
the local time zone, retention's limits) and layout, or a layout that the migrations
declared for its changes (kernel/migrations.py) bring to the code's, and whose rows after
it the journal still holds, is the kernel the journal's tail is replayed into (a snapshot of a row past the
journal's last is used too: the journal lost rows the snapshot holds, and new rows are numbered after it); a migrated
one is said in the log and, once the daemon runs, in a `migrate` trace line (`run`). A URL's credentials that
its trace, audit trail or task exits show (rows of an old journal that older code applied as recorded) are hidden
as it loads (`with_credentials_hidden`), as the kernel hides them applying a row now. When
rows were compacted and no snapshot is usable, the daemon refuses to start, saying why for
each, rather than start from nothing.

Decoding a snapshot and replaying rows is recovery (recovery.py); the file format is
snapshots.py's; `apeinxfs replay --verify` starts from snapshots through `starts` too.
"""
import ctypes
import json
import logging
import os
import signal
from collections.abc import Callable, Iterator

import attrs
import trio

from . import snapshots
from .journal import LAST, compact, storage_faults_as
from .journalfiles import make_durable
from .kernel import Kernel
from .kernel import events as ev
from .kernel import migrations, state
from .kernel.access import OVERFLOW_ID
from .kernel.config import KernelConfig
from .kernel.errors import Degraded

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1  # linux/prctl.h
PRCTL = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: a dlopen in a forked child of threads may hang
POLL_S = 0.25  # how often the daemon looks whether a snapshot is due
BUSY_SHARE = 0.25  # snapshots take at most this share of the time (their child's, mostly): one after a
# snapshot that took T seconds waits 3 T at least
FAILURES_WARNED = 3  # snapshots failed in a row after which /health warns
STALE_PERIODS = 3  # snapshot_s periods without a snapshot while rows wait, after which /health warns
LIVE_KEYS = frozenset({"access", "utc_offset_s", "retention", "limits"})  # kernel config read where used, not built into state


class NotStored(Exception):
    """What the storage refused a snapshot or its compaction (a full disk, no memory to fork): the next try may
    work. Our misuse of SQLite in compaction is not one: a bug (journal.storage_faults_as)."""


class CannotStart(Exception):
    """Rows were compacted behind snapshots and none of them can be used: the state is not rebuilt."""


def boot_config(config: KernelConfig) -> dict:
    """`config` as the journal's boot rows and the snapshots' headers hold it (JSON of attrs.asdict)."""
    return json.loads(json.dumps(attrs.asdict(config), default=str))


def structural(config: dict) -> dict:
    """A boot config without LIVE_KEYS: what a snapshot's state was built from."""
    return {key: value for key, value in config.items() if key not in LIVE_KEYS}


def with_ids_in_bounds(kernel: Kernel) -> Kernel:
    """`kernel`, each task of it whose uid is no id shown as OVERFLOW_ID (state.ids_in_bounds), with a warning."""
    if changed := state.ids_in_bounds(kernel):
        log.warning("snapshot: tasks %s had a uid no uid_t holds (written before ids were bounded); "
                    "they are owned by uid %d now", ",".join(map(str, changed[:20])), OVERFLOW_ID)
    return kernel


def with_credentials_hidden(kernel: Kernel) -> Kernel:
    """`kernel`, each URL's credentials hidden in its trace, audit trail, task exits and the reasons of its engines
    down (state.credentials_hidden), with a warning if it showed some."""
    if state.credentials_hidden(kernel):
        log.warning("snapshot: its trace, audit trail, task exits or engine outages showed a URL's credentials (an "
                    "old journal's rows, applied as recorded); they show as ***@ now")
    return kernel


def rebound(kernel: Kernel, config: KernelConfig) -> Kernel:
    """`kernel`, holding `config` (and its records) wherever it held the config it was snapshotted with (and
    its records: the kernel's and its components' references), so that what changed in LIVE_KEYS takes
    effect; the trace and audit trail copy their limits."""
    old = kernel.config
    swaps = {id(old): config} | {id(getattr(old, field.name)): getattr(config, field.name)
                                 for field in attrs.fields(type(old)) if attrs.has(type(getattr(old, field.name)))}
    for holder in [kernel, *vars(kernel).values()]:
        for name, value in getattr(holder, "__dict__", {}).items():
            if id(value) in swaps:
                setattr(holder, name, swaps[id(value)])
    kernel.trace.limit = config.retention.trace_lines
    kernel.audit.limit = config.retention.audit_lines
    return kernel


def unusable(snapshot: snapshots.Snapshot, config: dict, layout: dict, first_row: int, last_row: int) -> str:
    """Why a snapshot cannot start a kernel of `config` and `layout` on rows first_row..last_row; '' if it can."""
    if snapshot.seq < first_row - 1:
        return f"{snapshot.path}: the journal rows after it (from {snapshot.seq + 1}) were compacted"
    if snapshot.seq > last_row:
        return f"{snapshot.path}: it is of row {snapshot.seq}, past the journal's last row {last_row}"
    written, now = structural(snapshot.config), structural(config)
    if changed := sorted(key for key in written.keys() | now.keys() if written.get(key) != now.get(key)):
        return f"{snapshot.path}: written with another kernel config (it differs in {', '.join(changed)})"
    if difference := migrations.undeclared(snapshot.layout, layout):
        return (f"{snapshot.path}: written by an apeinxfs whose kernel keeps other state, with no migration "
                f"declared for: {difference}")
    return ""


@attrs.frozen
class Start:
    """Where a rebuild starts: a kernel that has applied rows 1..seq (`fresh()` gives a new one each call),
    built with the boot config `config` (boot_config's form), from `snapshot` if not from row 1."""

    fresh: Callable[[], Kernel]
    seq: int
    config: dict
    snapshot: snapshots.Snapshot | None = None
    migrated: tuple[str, ...] = ()  # the classes whose objects were migrated (kernel/migrations.py)
    traced: ev.Migrated | None = attrs.field(init=False, default=attrs.Factory(
        lambda self: self._migrated_event(), takes_self=True))  # built once: logged at start, journaled at restart

    @property
    def name(self) -> str:
        """Where it starts, in words: "row 1", or the snapshot's file and row."""
        return "row 1" if self.snapshot is None else f"{os.path.basename(self.snapshot.path)} (row {self.seq})"

    def _migrated_event(self) -> ev.Migrated | None:
        if not self.migrated:
            return None
        return ev.Migrated(snapshot=self.name, classes=", ".join(name.removeprefix(state.PACKAGE + ".")
                                                                 for name in self.migrated))

    def migration(self) -> list[ev.Migrated]:
        """The event that traces a migrated start (journaled with the restart), or none: the one `traced` holds."""
        return [] if self.traced is None else [self.traced]


def other_history(snapshot: snapshots.Snapshot, journal) -> str:
    """Why `snapshot` and `journal` are of different histories (the journal holds the snapshot's row, another
    one than the snapshot was written after); '' when they are not, or it cannot be told."""
    crc = journal.crc_of(snapshot.seq)
    if snapshot.row_crc is None or crc is None or crc == snapshot.row_crc:
        return ""
    return (f"{snapshot.path} was written after another journal row {snapshot.seq} than {journal.path} holds "
            f"(crc32 {snapshot.row_crc:08x}, not {crc:08x}): they are of different histories (a journal started "
            "afresh, or a backup of one put back); move away the one not to start from (the snapshots, or the "
            "journal with its -wal and -shm)")


def compacted_away(first_row: int, directory: str | None, problems: list[str]) -> str:
    """Why no kernel can be rebuilt when the journal starts at `first_row` and none of the snapshots in
    `directory` can be used (`problems` say why each cannot)."""
    return (f"journal rows 1..{first_row - 1} were compacted into snapshots in {directory}, and none can be used: "
            f"{'; '.join(problems) or 'there are none'}")


def starts(directory: str, config_after: Callable[[int], KernelConfig | None], first_row: int, last_row: int,
           problems: list[str]) -> Iterator[Start]:
    """Each snapshot in `directory`, newest first, that starts a kernel on the journal's rows first_row..last_row,
    decoded: the rows after it ran with `config_after(seq)` (None: with more than one config) and it was written
    with that config. Why each other one cannot goes into `problems`."""
    for snapshot in snapshots.usable(directory, problems):
        config = config_after(snapshot.seq)
        if config is None:
            problems.append(f"{snapshot.path}: the kernel config changed at a boot after it")
            continue
        layout = state.layout(config)
        if why := unusable(snapshot, boot_config(config), layout, first_row, last_row):
            problems.append(why)
            continue
        try:
            data = snapshot.state()
            kernels = [migrations.load(data, snapshot.layout, layout)]
        except (snapshots.Damaged, state.LayoutError) as exc:
            problems.append(f"{snapshot.path}: {exc}")
            continue
        yield Start(lambda data=data, kernels=kernels, config=config, layout=layout, written=snapshot.layout:
                    with_credentials_hidden(with_ids_in_bounds(rebound(
                        kernels.pop() if kernels else migrations.load(data, written, layout), config))),
                    snapshot.seq, snapshot.config, snapshot, tuple(migrations.changed(snapshot.layout, layout)))


@attrs.define
class Misses:
    """The snapshots that failed since the last one written, or the start (when, on the steady clock, and
    in the daemon's time: None for the start), and the last reason."""

    written_steady_us: int
    written_us: int | None = None
    failed: int = 0
    reason: str = ""

    def written(self, steady_us: int, now_us: int) -> None:
        self.written_steady_us, self.written_us, self.failed, self.reason = steady_us, now_us, 0, ""

    def missed(self, reason: str) -> None:
        self.failed, self.reason = self.failed + 1, reason


class Snapshotter:
    """The daemon's snapshots: where they are, how often, and the last one written."""

    def __init__(self, runtime, directory: str, every_rows: int, every_s: float):
        self.runtime, self.directory = runtime, directory
        self.every_rows, self.every_s = every_rows, every_s
        self.seq = 0  # the journal row of the newest snapshot
        self.taken_at = None  # trio time of the last snapshot written, or of the start
        self.took_s = 0.0  # how long writing it took
        self.layout = state.layout(runtime.config.kernel)
        self.misses = Misses(runtime.clock.steady_us())  # steady: a clock step, a journal floor is no stale time
        self.lost = ""  # what the start said of journal rows lost behind the snapshot it used, if it did
        self.told: set[str] = set()  # why snapshots could not be used, logged already

    def warning(self) -> str | None:
        """/health's warning while snapshots are not written: FAILURES_WARNED failed in a row, or none for
        STALE_PERIODS x snapshot_s while journal rows wait for one (a writer that hangs, a loop that restarts)."""
        misses, rows = self.misses, self.runtime.journal.last_seq - self.seq
        waited_us = self.runtime.clock.steady_us() - misses.written_steady_us
        stale = rows > 0 and waited_us >= STALE_PERIODS * self.every_s * 1e6
        if misses.failed < FAILURES_WARNED and not stale:
            return None
        last = f"; the last: {misses.reason}" if misses.reason else ""
        since = "the start" if misses.written_us is None else misses.written_us
        return (f"snapshots: {misses.failed} failed in a row, none written since {since}, "
                f"{rows} rows wait{last}")

    def start(self) -> Start:
        """Where recovery starts: the newest usable snapshot, else row 0 if the journal holds all rows.
        Raises CannotStart when rows were compacted and no snapshot can be used."""
        config, journal, problems = self.runtime.config.kernel, self.runtime.journal, []
        first = journal.first_seq()
        start = next(starts(self.directory, lambda _seq: config, first, LAST, problems), None)
        for problem in set(problems) - self.told:  # a rollback starts again (stepbugs.py): said once
            log.error("snapshot not used: %s", problem)
        self.told.update(problems)
        if start is None and first > 1:
            raise CannotStart(compacted_away(first, self.directory, problems))
        start = start or Start(lambda: Kernel(config), 0, boot_config(config))
        if start.snapshot is not None and (why := other_history(start.snapshot, journal)):
            raise CannotStart(why)
        if start.seq > journal.last_seq:
            self.lost = (f"the journal {journal.path} ended at row {journal.last_seq}, before {start.name}: rows "
                         f"{journal.last_seq + 1}..{start.seq} were lost from it (the file was deleted or replaced by "
                         f"an older copy); the start used the snapshot, and new rows go on from row {start.seq + 1}")
            log.error("%s", self.lost)
            journal.go_on_after(start.seq)
        self.seq = start.seq
        if start.snapshot is not None:
            log.info("starting from %s (journal row %d)", start.snapshot.path, start.seq)
        if start.traced is not None:
            log.info("%s was written by an older apeinxfs: migrated %s", start.name, start.traced.classes)
        return start

    def due(self, now: float) -> bool:
        """Whether a snapshot is to be written now (trio time `now`)."""
        rows = self.runtime.journal.last_seq - self.seq
        if self.taken_at is None:
            self.taken_at = now
        rested = now - self.taken_at >= self.took_s * (1 / BUSY_SHARE - 1)
        return rows > 0 and rested and (rows >= self.every_rows or now - self.taken_at >= self.every_s)

    async def run(self) -> None:
        """Write a snapshot whenever one is due, until cancelled."""
        while True:
            await trio.sleep(min(POLL_S, self.every_s))
            if self.due(trio.current_time()) and self.runtime.health.fault is None:
                await self.take()

    async def take(self) -> None:
        """Write a snapshot of the state at the last journal row, and compact behind the older one kept.

        The state is encoded by a forked child, from the memory the daemon had at the fork (copied on
        write, so the daemon goes on at once); a worker thread waits for the child, makes the journal
        durable, publishes the file, then prunes and compacts."""
        try:
            header = self.header()
        except Degraded:
            return  # the next commit or the progress timer makes the daemon degraded
        began = trio.current_time()
        try:
            with storage_faults_as(NotStored):
                child = fork_writer(self.directory, header, self.runtime.kernel)
                await trio.to_thread.run_sync(self.publish_when_written, child, header[0])
            self.written()
        except (NotStored, snapshots.Damaged) as exc:
            log.error("snapshot of journal row %d not written: %s", header[0], exc)
            self.misses.missed(str(exc))
        except Exception as exc:
            self.misses.missed(f"a bug: {type(exc).__name__} (see its Bug row)")
            raise
        finally:  # a bug raised too: the supervisor's restart must not make the next snapshot due at once
            self.taken_at = trio.current_time()
            self.took_s = self.taken_at - began

    def close(self) -> None:
        """At unmount, a last snapshot (encoded here: nothing else runs now), so the next start replays
        no rows; skipped while degraded; the storage's refusal only logged (the rows are all in the journal),
        a bug raised."""
        if self.runtime.health.fault is not None or self.runtime.journal.last_seq == self.seq:
            return
        try:
            with storage_faults_as(NotStored):
                header = self.header()
                snapshots.write_temp(self.directory, *header, state.encode(self.runtime.kernel))
                self.publish(header[0])
            self.written()
        except (Degraded, snapshots.Damaged, NotStored) as exc:
            log.error("no snapshot at unmount: %s", exc)

    def header(self) -> tuple:
        """Journal what waits (the state holds it; Degraded if that fails) and archive its lines; the header of a
        snapshot of the state now, at the last journal row (its first field)."""
        runtime = self.runtime
        runtime.flush_all()
        kernel, seq = runtime.kernel, runtime.journal.last_seq
        return (seq, kernel.now_us, kernel.trace.seq, boot_config(runtime.config.kernel), self.layout,
                runtime.journal.crc_of(seq))

    def publish_when_written(self, child: int, seq: int) -> None:
        """Wait for the child writing the snapshot of row `seq`, then publish it."""
        code = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
        if code != 0:
            how = f"was killed by signal {-code}" if code < 0 else f"exited {code}"
            raise OSError(f"the snapshot writer (pid {child}) {how}: see the log")
        self.publish(seq)

    def publish(self, seq: int) -> None:
        """Make the journal durable, publish the written snapshot of row `seq`, keep KEEP, compact; the
        snapshot counts as written (`written`) once all of that succeeded; a compaction not due yet (fewer than
        KEEP snapshots, or the trace archive behind the older one) is no failure: a later snapshot compacts.
        Runs in a worker thread: it does not read the daemon's clock, whose step wakes trio's tasks."""
        journal_path = self.runtime.journal.path
        make_durable(journal_path)
        path = snapshots.publish(snapshots.path_of(self.directory, seq) + ".tmp")
        self.seq = seq
        kept = snapshots.prune(self.directory)
        log.info("snapshot %s: %d bytes", path, os.path.getsize(path))
        if len(kept) >= snapshots.KEEP and self.archived_to(kept[-1]):
            self.sync_archives()
            compact(journal_path, kept[-1])

    def sync_archives(self) -> None:
        """Sync the trace and audit archives' files: the journal rows about to be compacted away are what
        a start would rebuild their lines from after a power cut."""
        for archive in (self.runtime.archive, self.runtime.audit_archive):
            if archive is not None:
                archive.sync()

    def written(self) -> None:
        """The snapshot counts as written (Misses): once published and, where due, compacted."""
        clock = self.runtime.clock
        self.misses.written(clock.steady_us(), clock.now_us())

    def archived_to(self, seq: int) -> bool:
        """Whether the trace archive has every line of the snapshot of row `seq` (no archive: nothing to
        wait for); rows are compacted behind a snapshot only then, for a trace that keeps only its
        newest lines may no longer hold the others."""
        archive, path = self.runtime.archive, snapshots.path_of(self.directory, seq)
        return archive is None or archive.seq >= snapshots.Snapshot.read(path).trace_seq


def fork_writer(directory: str, header: tuple, kernel: Kernel) -> int:
    """Fork a child that encodes `kernel` as it is now into the temp file of a snapshot with `header`
    (snapshots.write_temp), then exits 0 (1 on failure, logged); the child's pid."""
    parent = os.getpid()
    child = os.fork()
    if child:
        return child
    code = 1
    try:
        die_with(parent)
        signal.set_wakeup_fd(-1)  # the daemon's signals are its own: this child ends with them
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        snapshots.write_temp(directory, *header, state.encode(kernel))
        code = 0
    except BaseException:  # anything: the daemon hears the status; the reason goes to the log
        log.exception("snapshot writer failed")
    finally:
        os._exit(code)


def die_with(parent: int) -> None:
    """Have the kernel kill this process when its parent `parent` dies (prctl PR_SET_PDEATHSIG); exit at once
    if it is already gone. A writer left behind by a daemon killed with -9 held the daemon's lock and
    /dev/fuse open, so an immediate restart was refused ('another apeinxfs daemon uses ...')."""
    if PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:  # it died before the prctl: no signal will come
        os._exit(1)
