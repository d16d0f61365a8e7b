"""The daemon's heart: one kernel, its journal, the drivers, and wake-ups for readers.

Every state change goes through `commit`: check with the kernel (refusals raise), append
to the journal (durable before return), apply (the journal keeps the trace lines each
event emits, for `apeinxfs replay --verify`), then wake whoever waits on what changed.
An engine `Step` is applied at once and journaled later (`progress`): with the next
commit, or one scheduling round later (once the readers it woke have their bytes) if it
emitted a trace line (a first token, an exit, a dispatch, a preemption) or the oldest
step waiting is PROGRESS_S old, whichever comes first. So a crash loses at most PROGRESS_S of
tokens and no trace line but of that round, and never an acknowledged write.
Once their rows are journaled (after each commit, and a step's after its deferred row is written) the
trace's new lines go to the trace archive (archive.py), when it has one, and the audit trail's to the
audit archive; each (a ring of `retention.trace_lines`, `audit_lines`) keeps them in memory until they
are there.
`recover` rebuilds the kernel from the journal at start. A journal write that fails makes
the daemon degraded rather than dead (health.py): state changes are refused with the
storage's errno, drivers get no batches, and every PROBE_S it tries to write again. The
FUSE tree (nodes/) and the drivers only ever talk to the kernel through this object. Beside the kernel it keeps what
is observed, not decided: the engines' own metrics (`engine_metrics`, by model; by endpoint for a
model with several), which are never journaled; what they report of their KV caches is, as an
`EngineKV` event, when it changes (kernel/kvreport.py).
"""
import contextlib
import logging

import attrs
import trio

from . import statefile
from .clock import WallClock
from .drivers import enginestate, metrics
from .enginehost import DriverGroups
from .health import Health
from .journal import LAST, Emitted, Journal
from .nodes.base import Writes
from .nodes.buffers import Buffers
from .ratelog import Windows
from .readers import Readers
from .kernel import Kernel
from .kernel.errors import ApeinxError, Degraded
from .kernel.config import MIB
from .kernel.events import EngineHealth, EngineKV, GpuMemory, Rejected, Restart, Step, Tick
from .kernel.trace import TaskViews
from .recovery import give_back_freed_memory, rebuild
from .stepbugs import StepBugs
from .supervise import Supervisor

log = logging.getLogger(__name__)
GPU_SAMPLE_S = 2.0  # how often real GPUs' free memory is read for placement
REJECT_OVERALL = 10  # reject lines of all uids per window: this many times `[limits] reject_lines`
PROBE_S = 1.0  # how often a degraded daemon tries to write its journal again
PROGRESS_S = 0.1  # the longest an applied engine step waits to be journaled
DEADLINE_CHECK_S = 60.0  # the longest the deadline timer waits: a step or suspend nothing read is seen then


class Notifier:
    """Wake-ups by key: a pid, ('done', pid), 'trace', 'deadline' or ('gpu', N)."""

    def __init__(self):
        self._events: dict = {}

    async def wait(self, key, timeout: float | None = None) -> None:
        """Sleep until `key` is woken or `timeout` s pass. Most waits (readers, drivers, idle timers)
        have no timeout: they open no cancel scope, a good part of the CPU a wake-up costs."""
        if (event := self._events.get(key)) is None:
            event = self._events[key] = trio.Event()
        if timeout is None:
            await event.wait()
            return
        with trio.move_on_after(timeout):
            await event.wait()

    def awaited(self, key) -> bool:
        """Whether someone waits on `key` (a wake of it would do something)."""
        return key in self._events

    def wake(self, keys) -> None:
        for key in keys:
            event = self._events.pop(key, None)
            if event is not None:
                event.set()


class Runtime:
    """The kernel inside the daemon."""

    def __init__(self, config, journal: Journal, clock=None, archive=None, audit_archive=None):
        self.config = config
        self.journal, self.archive, self.audit_archive = journal, archive, audit_archive
        self.kernel = self._fresh_kernel()
        self.archive_failing: set = set()  # the archives whose last write failed (logged once until one works)
        journal.boot(config.kernel)
        self.notifier = Notifier()
        self.clock = WallClock(clock, on_step=lambda: self.notifier.wake(["deadline"]))  # the daemon's time;
        # `clock`: the host's (a test's). A step followed wakes the deadline timer: its wait was in the old time
        self.health = Health()
        self.supervisor = Supervisor(lambda: self.clock.now_us())  # the background loops' bugs (supervise.py)
        self.readers = Readers(self.notifier, config.max_waiters, config.max_waiters_per_uid)
        self.buffers = Buffers(config.limits.write_lines, config.limits.pending_bytes)
        self.reject_lines = Windows(config.limits.reject_lines, config.limits.reject_window_s,  # per uid, denial
                                    config.limits.reject_lines * REJECT_OVERALL)
        self.writes = Writes(self.buffers)  # the ctl and settings files' limits; their reject lines go to the Tree
        # built over this Runtime (Tree sets them: Writes.send_rejects_to)
        self.quarantined: dict = {}  # journal seq -> recovery.Quarantined: rows recover() went on without
        self.readings = None  # drivers/nvml.Readings of the real GPUs, set by the daemon (mount.py)
        self.engine_metrics: dict = {}  # model -> drivers/metrics.Observation, the last scrape of its engine
        self.engine_states: dict = {}  # model -> drivers/enginestate.EngineState, what its driver's checks found (observed)
        self.endpoint_metrics: dict = {}  # (model, gpus) -> the last scrape of one endpoint of a model with endpoints
        self.endpoint_states: dict = {}  # (model, gpus) -> one endpoint's EngineState (engine_states: the best of them)
        self.cannot_run: dict = {}  # model -> the enginehost.CannotRun serving it: its driver cannot be built
        self.clamped: dict = {}  # model kept in the journal -> its options out of bounds, clamped (enginehost.py)
        self.observed = 0  # observations stored: what a rendered file depends on besides the kernel
        self.journal_due = False  # the steps waiting are to be journaled next round (a trace line, or PROGRESS_S)
        self.snapshotter = None  # compaction.Snapshotter, set by the daemon (mount.py): snapshots and compaction
        self.mount_watch = None  # mountwatch.Watch for a lazy unmount of the daemon's mount (set by mount.py)
        self.cluster = None  # cluster/daemon.Cluster when [cluster] names etcd (set by mount.py); None: one node
        self.elsewhere: dict = {}  # tenant -> kernel/tenancy.Elsewhere, its use on the other nodes (cluster/usage.py)
        self.task_views = TaskViews()  # the tasks' events read so far, a cache beside the kernel (kernel/trace.py)
        self.step_bugs = StepBugs(self)  # a bug in the middle of a step: the rollback (stepbugs.py)

    def recover(self) -> int:
        """Replay the journal into the kernel, from the newest usable snapshot if the daemon keeps them
        (compaction.py), quarantining any row that cannot be applied (recovery.py); mark the restart.
        The daemon's time goes on from the journal's last at least, whatever the host's clock says (clock.py).
        Returns the journal's rows."""
        self.kernel, after, migration = self.rebuilt(self.journal.rows, self.quarantined)
        self.caught_up()
        rows = len(self.journal)
        if rows or after:  # a snapshot is of a daemon that ran, even when the journal lost every row after it
            self.commit([Restart(), *migration])
        give_back_freed_memory()
        return rows

    def rebuilt(self, rows, quarantined: dict, may_quarantine=None) -> tuple[Kernel, int, list]:
        """A kernel rebuilt from the journal's `rows` (Journal.rows or rows_kept), from the newest usable snapshot
        if the daemon keeps them; the seq of that snapshot's last row (0: none), and the events that say it was
        migrated (to journal at a restart). A row that raises is quarantined in `quarantined` (recovery.py),
        only if among `may_quarantine` when that is given (else RowFailed)."""
        fresh, after, migration = self._fresh_kernel, 0, []
        if self.snapshotter is not None:
            start = self.snapshotter.start()
            fresh, after, migration = (lambda: self._holding(start.fresh())), start.seq, start.migration()
        return rebuild(fresh, rows, after, LAST, quarantined, may_quarantine=may_quarantine), after, migration

    def caught_up(self) -> None:
        """After a rebuild: what it changed is no news, time goes on from the kernel's, and the archives have
        every line of its trace and audit trail, unless steps wait to be journaled (a rollback's rebuild holds
        them: stepbugs.py): then their lines go with their row (`_flush_progress`), the ring holding them."""
        self.kernel.take_changed()
        self.clock.not_before(self.kernel.now_us)
        if self.config.check_invariants:
            self.kernel.check_invariants()
        if self.journal.deferred_since_us is not None:
            return
        for archive, ring in self._archived(self.kernel):
            archive.catch_up(ring)
            ring.release(archive.seq)

    def _fresh_kernel(self) -> Kernel:
        return self._holding(Kernel(self.config.kernel))

    def _holding(self, kernel: Kernel) -> Kernel:
        """`kernel`, its trace and audit trail keeping the lines their archives have not written yet (ring.py's
        `hold`)."""
        kernel.trace.hold = kernel.audit.hold = None
        for archive, ring in self._archived(kernel):
            ring.hold = archive.seq
        return kernel

    def _archived(self, kernel: Kernel) -> list:
        """(archive, the ring of `kernel` it keeps) for each archive the daemon has."""
        pairs = ((self.archive, kernel.trace), (self.audit_archive, kernel.audit))
        return [(archive, ring) for archive, ring in pairs if archive is not None]

    def commit(self, events: list) -> list:
        """Admit, journal, apply; results in order. Raises the first refusal, changing nothing."""
        now, batch = self.clock.now_us(), {}
        return self.commit_checked([self.kernel.admit(event, now, batch, self.elsewhere) for event in events])

    def commit_checked(self, events: list) -> list:
        """Journal and apply events the caller has just checked (no await in between).
        Raises Degraded, changing nothing, while the journal cannot be written or if this write fails.
        On a cluster node a settings change goes to etcd instead, and comes back through it (cluster/shared.py)."""
        self.health.refuse()
        if self.cluster is not None and self.cluster.shared.takes(events):
            return self.cluster.shared.take(events)
        now = self.clock.now_us()
        try:
            seqs = self.journal.append([(now, e) for e in events])
        except Degraded as error:
            self._degrade(error, now)
            raise
        results = []
        for seq, event in zip(seqs, events):
            with self.journal.recording(seq, self.kernel.trace):
                results.append(self.kernel.apply(event, now))
        if self.config.check_invariants:
            self.kernel.check_invariants()
        self._archive()
        self.task_views.prune(self.kernel.trace)
        self._wake(self.kernel.take_changed())
        return results

    def _archive(self) -> None:
        """Append the trace's and audit trail's new lines to their archives: call it only when every line is
        of a journaled event (after a commit, not while degraded); a full file is compressed in a thread."""
        for archive, ring in self._archived(self.kernel):
            try:
                if archive.append(ring):
                    self.notifier.wake({"archive"})
                ring.release(archive.seq)
            except (OSError, statefile.Untrusted) as exc:  # the lines stay in the ring for the next commit that can write
                # them: a link planted at the next file's name is refused, in words, until it goes
                if archive.directory not in self.archive_failing:
                    log.error("archive: cannot write %s: %s", archive.directory, exc)
                self.archive_failing.add(archive.directory)
                continue
            self.archive_failing.discard(archive.directory)

    def _wake(self, changed: set) -> None:
        """Wake whoever waits on what changed; a changed pid whose task's tree has ended (or
        is gone) also wakes ('done', pid), the key of `wait` readers, who so sleep through
        every token. Only the pids someone waits on so are looked at."""
        self.notifier.wake(changed)
        pids = [key for key in changed if isinstance(key, int) and self.notifier.awaited(("done", key))]
        if pids:
            tasks = self.kernel.tasks
            done = tasks.trees_done([pid for pid in pids if pid in tasks])
            self.notifier.wake([("done", pid) for pid in pids if pid not in tasks or pid in done])

    def reject(self, path: str, error: ApeinxError, uid: int, pid: int = 0, tenant: str | None = None) -> None:
        """Record a refused write in the journal and trace (and, for a denial, the audit trail): the `reject`
        line. Past `[limits] reject_lines` in the uid's window (its denials have a window of their own), or past
        REJECT_OVERALL times that across uids, it is only counted, and the count goes with the uid's first line
        of its next window. While the journal cannot be written the refusal stands unrecorded."""
        key = (uid, error.denial)
        admitted, ended = self.reject_lines.admit(key, self.clock.now_us() / 1e6)
        if not admitted:
            return
        suppressed = ended.suppressed if ended else 0
        if self.record_reject(path, error, uid, pid, tenant, suppressed):
            self.reject_lines.told(suppressed)
        else:
            self.reject_lines.retell(key, suppressed)

    def record_reject(self, path: str, error: ApeinxError, uid: int, pid: int = 0, tenant: str | None = None,
                      suppressed: int = 0) -> bool:
        """Journal one refusal, with no limit (the simulator's are all counted); whether it was."""
        try:
            self.commit([Rejected(path=path, reason=error.reason, uid=uid, errno=error.errno, denial=error.denial,
                                  caller_pid=pid, caller_tenant=tenant, suppressed=suppressed)])
        except Degraded:
            return False
        return True

    # -- a journal that cannot be written (health.py) ------------------------------------

    def _degrade(self, error: Degraded, now_us: int) -> None:
        log.error("degraded: %s; state changes are refused until the journal can be written", error.reason)
        self.health.fail(self.kernel, error, now_us)
        self._wake_all()

    def _wake_all(self) -> None:
        """Wake what depends on health: the GPUs' drivers (batches stop or resume), the timers, readers."""
        gpus = {("gpu", gpu) for gpu in range(len(self.kernel.gpus))}
        self._wake(self.kernel.take_changed() | gpus | {"health", "deadline"})

    async def _probe_journal(self) -> None:
        """While degraded, try every PROBE_S to journal the episode; once that works, resume."""
        while True:
            if self.health.fault is None:
                await self.notifier.wait("health")
                continue
            await trio.sleep(PROBE_S)  # not at once: what just failed would most often fail again
            if self.health.recover(self.kernel, self.journal, self.clock.now_us()):
                log.warning("recovered: the journal can be written again")
                self._archive()
                self._wake_all()

    # -- blocking readers ------------------------------------------------------------

    async def wait_for(self, key, timeout: float) -> None:
        """Wait up to `timeout` s for `key` to change. Readers of the tree wait through
        `readers` (readers.py) instead, which caps them and watches for their signals."""
        await self.notifier.wait(key, timeout)

    # -- what drivers report (through enginehost.ModelHost) -----------------------------

    def deliver(self, *events) -> None:
        """Commit what a driver, the clock or NVML reports (engine steps through `progress`). While
        degraded it is dropped: the kernel is unchanged (no token counted), and the driver makes it
        again once batches resume."""
        with contextlib.suppress(Degraded):
            if self.cluster is not None:  # a lease that may have expired holds the engines first (cluster/fencing.py)
                self.cluster.fencing.check()
            if all(type(event) is Step for event in events):
                for step in events:
                    self.progress(step)
            else:
                self.commit(list(events))

    def progress(self, step: Step, retried: bool = False) -> None:
        """Apply an engine step now and journal it later: the next scheduling round if it emitted a trace
        line or the oldest step waiting is PROGRESS_S old (`_progress_timer`), else with the next commit.
        Raises Degraded, changing nothing, while the journal cannot be written. A bug in the step is rolled back
        (stepbugs.py; `retried`: this is the step's second try)."""
        self.health.refuse()
        if self.step_bugs.stuck and step.chunks and not (step := self.step_bugs.without_stuck(step)).chunks:
            return  # only chunks of tasks that cannot be ended (stepbugs.py): nothing to apply or journal
        now = self.clock.now_us()
        try:
            with Emitted(self.kernel.trace) as emitted:
                self.kernel.apply(step, now)
        except Exception as exc:  # a bug, not a refusal: a step is never refused
            self.step_bugs.failed(step, exc, retried)
            return
        first = self.journal.deferred_since_us is None
        self.journal.defer(now, step, emitted)
        due = bool(emitted.text) or now - self.journal.deferred_since_us >= PROGRESS_S * 1e6
        self.journal_due |= due
        self.task_views.prune(self.kernel.trace)
        self._wake(self.kernel.take_changed() | ({"progress"} if first or due else set()))

    def _flush_progress(self, now_us: int) -> None:
        """Journal the steps waiting, then archive their trace lines; if that fails, go degraded (they wait for the
        recovery). Their lines go to the archive only now: before, a kill -9 would leave it ahead of the journal."""
        self.journal_due = False
        try:
            self.journal.flush()
        except Degraded as error:
            self._degrade(error, now_us)
            return
        self._archive()

    def flush_all(self) -> None:
        """Journal everything waiting (steps, trace rows), then archive the trace's lines: before a snapshot and
        at unmount, where no commit or step flush follows to archive them. Raises Degraded, archiving nothing,
        if the journal cannot be written."""
        self.journal.flush_all()
        self.journal_due = False
        self._archive()

    async def _progress_timer(self) -> None:
        """Journal the steps waiting when one emitted a trace line or the oldest is PROGRESS_S old, and no
        commit has taken them along: one scheduling round after `progress` said so, once the readers that
        step woke have their bytes (no journal write sits between a reader and its tokens)."""
        while True:
            since = None if self.health.fault else self.journal.deferred_since_us
            if since is None:
                await self.notifier.wait("progress")
                continue
            if self.journal_due:
                await trio.sleep(0)
                self._flush_progress(self.clock.now_us())
                continue
            now = self.clock.now_us()
            if now - since >= PROGRESS_S * 1e6:
                self._flush_progress(now)
            else:
                await self.notifier.wait("progress", (since - now) / 1e6 + PROGRESS_S)

    def observe(self, model: str, observation, gpus: tuple = ()) -> None:
        """Keep the engine's latest metrics for `model`, stamped now (for models of the kernel only); of one
        endpoint of it (`gpus`), and the model's as all its endpoints' together."""
        if model in self.kernel.models:
            stamped = attrs.evolve(observation, at_us=self.clock.now_us())
            if gpus:
                self.endpoint_metrics[model, gpus] = stamped
                stamped = metrics.together([o for (m, _), o in sorted(self.endpoint_metrics.items()) if m == model])
            self.engine_metrics[model] = stamped
            self.observed += 1

    def report_state(self, model: str, state: str, error: str | None = None, gpus: tuple = ()) -> None:
        """Keep what a check of `model`'s engine (of its endpoint on `gpus`) found (for models of the kernel only).
        A report naming no GPUs of a model with endpoints (its driver's start: enginehost.py) is the model's own: it
        opens or closes no endpoint, the kernel holding the model down only as its endpoints are (kernel/engines.py),
        so an endpoint down from before a restart stays closed until its own check finds it back. Unless it says
        failed (its driver cannot be built: enginehost.CannotRun): then it is each endpoint's, none an outage to wait
        out, so the model's tasks reach a GPU and fail at once."""
        if model not in self.kernel.models:
            return
        endpoints = self.kernel.models[model].endpoints
        if gpus or not endpoints:
            self._follow_outage(model, self._keep_state(model, state, error, gpus), gpus)
        elif state == "failed":
            for endpoint in endpoints:
                self._follow_outage(model, self._keep_state(model, state, error, endpoint.gpus), endpoint.gpus)
        else:
            self._keep_state(model, state, error, ())

    def _keep_state(self, model: str, state: str, error: str | None, gpus: tuple) -> str | None:
        """Keep the state a check found of `model`'s engine (its endpoint on `gpus`); the outage it means, if any."""
        states, key = (self.endpoint_states, (model, gpus)) if gpus else (self.engine_states, model)
        before = states.get(key)
        states[key] = enginestate.advance(before, state, error, self.clock.now_us())
        self.observed += states[key] != before
        if gpus:
            self.engine_states[model] = enginestate.best(
                [seen for (m, _), seen in self.endpoint_states.items() if m == model])
        return enginestate.outage(states[key])

    def _follow_outage(self, model: str, reason: str | None, gpus: tuple = ()) -> None:
        """Journal an EngineHealth event when the engine's (endpoint's) outage begins or ends as the kernel knows it."""
        if (reason is not None) != self.kernel.engines.is_down(model, gpus):
            self.deliver(EngineHealth(model=model, up=reason is None, reason=reason or "", gpus=gpus))

    def report_kv(self, model: str, gpus: tuple, tokens: int) -> str | None:
        """Journal the tokens an engine (of `model`, on `gpus`) reports in its KV cache when the pages they
        take changed, or when the pages counted beyond the books would change (kernel/kvreport.py `stale`).
        In words, if they are more than its GPUs hold (counted as full); else None."""
        reports = self.kernel.engines.kv_reports
        if model not in self.kernel.models:
            return None
        last = reports.last(model, gpus)
        if last is None or last.pages != reports.pages_of(model, gpus, tokens) or reports.stale():
            self.deliver(EngineKV(model=model, gpus=gpus, tokens=tokens))
        return reports.beyond_room(model, gpus, tokens)

    def forget_engines(self) -> None:
        """Drop the observations and states of models that no longer exist."""
        observed = (self.engine_metrics, self.engine_states, self.endpoint_metrics, self.endpoint_states, self.clamped)
        for seen in observed:
            for key in [key for key in seen if (key if isinstance(key, str) else key[0]) not in self.kernel.models]:
                del seen[key]
                self.observed += 1

    @property
    def version(self) -> tuple[int, int]:
        """Changes whenever the kernel or an observation does: the key of rendered files."""
        return self.kernel.version, self.observed

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run the models' drivers on every GPU (enginehost.py), the deadline timer, the blocked
        readers' signal watcher and the cluster's tasks (if any) until cancelled. Each loop is supervised
        (supervise.py): a bug in one is logged, shown in /ai/health, and the loop started again; each keeps
        what it needs across a restart on its object, and goes on from there; `Cluster.run` too, around its
        own loops, each supervised in it, its clients open outside it, until this ends (Cluster.clients). Not
        supervised: the drivers' own tasks (enginehost.py)."""
        clients = contextlib.nullcontext() if self.cluster is None else self.cluster.clients()
        async with clients, trio.open_nursery() as nursery:
            groups = DriverGroups(self, nursery)
            groups.sync()  # builds the drivers (mount.main checked the configured ones; a journal model's may fail alone)
            loops = [("drivers.follow", groups.follow), ("deadlines", self._deadline_timer),
                     ("journal.probe", self._probe_journal), ("progress", self._progress_timer),
                     ("readers.watch", self.readers.watch)]
            if self._archived(self.kernel):
                loops.append(("archive.compress", self._compress_archive))
            if self.readings is not None:
                loops.append(("gpu.sample", self._sample_gpu_memory))
            if self.snapshotter is not None:
                loops.append(("snapshots", self.snapshotter.run))
            if self.cluster is not None:  # its own loops, each supervised in it
                loops.append(("cluster.run", self.cluster.run))
            for name, loop in loops:
                nursery.start_soon(self.supervisor.supervised, name, loop)
            task_status.started()

    async def _compress_archive(self) -> None:
        """Compress the archives' full files in a thread: at start (a crash may have left some), then
        whenever one fills."""
        while True:
            for archive, _ in self._archived(self.kernel):
                try:
                    await trio.to_thread.run_sync(archive.compress_full)
                except OSError as exc:  # the lines are still in the .csv; a later try may work
                    log.error("archive: cannot compress %s: %s", archive.directory, exc)
            await self.notifier.wait("archive")

    async def _deadline_timer(self) -> None:
        while True:
            due = None if self.health.fault else self.kernel.next_deadline_us()  # degraded: waits for recovery
            delay = None if due is None else (due - self.clock.now_us()) / 1e6
            if delay is not None and delay <= 0:
                self.deliver(Tick())
                continue
            await self.notifier.wait("deadline", None if delay is None else min(delay, DEADLINE_CHECK_S))

    async def _sample_gpu_memory(self) -> None:
        """Read the real GPUs' free memory every GPU_SAMPLE_S; journal a change the kernel should see."""
        real = [g.config.index for g in self.kernel.gpus if not g.config.simulated]
        while True:
            try:
                changed = [e for e in map(self._free_memory, real) if e is not None]
            except Exception as exc:  # the NVIDIA driver went away: placement keeps the last reading
                log.warning("NVML reading failed, GPU memory no longer followed: %s", exc)
                return
            if changed:
                self.deliver(*changed)
            await trio.sleep(GPU_SAMPLE_S)

    def _free_memory(self, gpu: int) -> GpuMemory | None:
        """A GpuMemory event if `gpu`'s free memory moved by 1/64 of its pool (at least a page)."""
        reading = self.readings.read(gpu)
        free_mib = reading.memory_total_mib - reading.memory_used_mib
        pages, last = free_mib * MIB // self.kernel.kv.page_bytes, self.kernel.kv.real_free[gpu]
        step = max(1, self.kernel.kv.pools[gpu].pages_total // 64)
        return GpuMemory(gpu=gpu, free_mib=free_mib) if last is None or abs(pages - last) >= step else None
