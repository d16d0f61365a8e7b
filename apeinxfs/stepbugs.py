"""A bug raised in the middle of an engine step: roll the kernel back, go on without what raised, fail its tasks.

The runtime applies a step at once (runtime.py `progress`); a bug raised in its middle leaves the kernel half
changed. `StepBugs.failed` rolls it back to the kernel rebuilt from the journal's rows, the written ones and
those still in memory (journal.py `rows_kept`), writing nothing: a journal outage cannot stop a rollback half
way. The rebuild quarantines nothing (but a Failed row a bug met again, as a replay will): a row that raises
in it means the bug is in what every event runs, and the rollback is given up, the bug raised as it came (the
kernel left as it left it), as it is with a journal that keeps no rows (`apeinxfs sim`), or a rebuild that cannot
start (the journal unreadable, no snapshot usable).

After the rollback: a bug serving one task's chunk (ServeBug) fails that task, `kernel bug: TYPE at FILE:LINE`,
once the step went again without its chunk; another is tried again once, then fails each task of the step so.
Past ROLLBACKS rollbacks in ROLLBACK_WINDOW_S (a rollback costs a rebuild of the kernel on the only thread), a
bug's step is not tried again: its tasks fail at once. A task whose Failed meets the bug again cannot be ended:
its chunks are dropped from then on (`without_stuck`). What was done is the Bug row `kernel.step` (/ai/health),
noted once known.

Not here: the transplant of the rebuilt state into the live objects (rollback.py), the rebuild (recovery.py).
"""
import logging

import attrs

from .compaction import CannotStart
from .kernel.errors import ApeinxError
from .kernel.events import Failed, Step
from .kernel.moves import ServeBug
from .ratelog import Windows
from .recovery import RowFailed, give_back_freed_memory
from .rollback import transplant
from .supervise import place_of

log = logging.getLogger(__name__)
ROLLBACKS = 10  # rollbacks in a window past which a bug's step is not tried again
ROLLBACK_WINDOW_S = 60.0


class StepBugs:
    """The runtime's bugs in steps, and the rollbacks they cost."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.rollbacks = Windows(ROLLBACKS, ROLLBACK_WINDOW_S)  # one key: the rollbacks of the window
        self.stuck: set[int] = set()  # pids whose Failed met their bug again: their chunks are dropped

    def without_stuck(self, step: Step) -> Step:
        """`step` without the chunks of tasks that cannot be ended (call it only while some are stuck); tasks gone
        since are forgotten."""
        self.stuck.intersection_update(pid for pid in self.stuck if pid in self.runtime.kernel.tasks)
        return attrs.evolve(step, chunks=[chunk for chunk in step.chunks if chunk.pid not in self.stuck])

    def failed(self, step: Step, exc: Exception, retried: bool) -> None:
        """Roll back the half-applied `step` that raised `exc` and go on (see the module); raises the bug itself
        when no rollback can be made, Degraded if the Failed rows cannot be journaled."""
        pid = exc.pid if isinstance(exc, ServeBug) else None
        bug = exc.__cause__ if pid is not None and isinstance(exc.__cause__, Exception) else exc
        if not self._rolled_back():
            raise bug
        reason = "kernel bug: {} at {}".format(*place_of(bug))
        capped = not self.rollbacks.admit("rollback", self.runtime.clock.now_us() / 1e6)[0]
        if capped:
            outcome = f"its step's tasks failed (over {ROLLBACKS} rollbacks in {ROLLBACK_WINDOW_S:g} s)"
            self._fail(step, [chunk.pid for chunk in step.chunks], reason, bug, outcome)
        elif pid is not None:
            if rest := [chunk for chunk in step.chunks if chunk.pid != pid]:
                self.runtime.progress(attrs.evolve(step, chunks=rest), retried)
            self._fail(step, [pid], reason, bug, "its task failed")
        elif not retried:
            self.runtime.supervisor.note("kernel.step", bug, "its step tried again")
            self.runtime.progress(step, retried=True)
        else:
            self._fail(step, [chunk.pid for chunk in step.chunks], reason, bug, "its step's tasks failed")

    def _fail(self, step: Step, pids: list[int], reason: str, bug: Exception, outcome: str) -> None:
        """Fail each task of `pids` still on the step's GPU (not one whose stale chunk the step skips), each in a
        commit of its own, then note `outcome`. A task whose Failed meets the bug again (in ending it) is stuck
        (`_end`): the bug raises once the others are failed."""
        running = self.runtime.kernel.gpus[step.gpu].running
        met_again = None
        for pid in [pid for pid in pids if pid in running]:
            met_again = self._end(pid, reason, bug, step.gpu) or met_again
        if met_again is not None:
            raise met_again
        self.runtime.supervisor.note("kernel.step", bug, outcome)

    def _end(self, pid: int, reason: str, bug: Exception, gpu: int) -> Exception | None:
        """Commit task `pid`'s Failed; if it meets a bug, roll the kernel back with its row, journaled, quarantined
        (as a replay will) and no trace row kept of it, wake who waits on the task, and return that bug: the task
        is stuck. Raises that bug at once if the rollback is given up, Degraded if the row cannot be journaled."""
        runtime, before = self.runtime, self.runtime.journal.last_seq
        try:
            runtime.commit([Failed(pid=pid, reason=reason)])
        except ApeinxError:  # refused (degraded): nothing journaled, nothing applied; the tasks run on
            runtime.supervisor.note("kernel.step", bug, "its tasks run on: their Failed could not be journaled")
            raise
        except Exception as again:
            self.stuck.add(pid)
            runtime.supervisor.note("kernel.step", bug, "its tasks' Failed met it again: their chunks are dropped")
            last = runtime.journal.last_seq  # the Failed row, if journaled (after the deferred steps' row)
            raised = range(last, last + 1) if last > before else range(0)
            for seq in raised:
                runtime.journal.drop_trace(seq)
            if not self._rolled_back(raised):
                raise
            runtime.notifier.wake({pid, ("gpu", gpu), "health"})
            return again
        return None

    def _rolled_back(self, may_quarantine: range = range(0)) -> bool:
        """Whether the kernel could be rolled back to the journal's rows (written or not), its version past both
        (the render cache keys on it: no version comes back). Only the rows of `may_quarantine` may raise."""
        runtime, live = self.runtime, self.runtime.kernel
        if not runtime.journal.keeps_rows:
            return False
        quarantined = dict(runtime.quarantined)
        try:
            rebuilt = runtime.rebuilt(runtime.journal.rows_kept, quarantined, may_quarantine)[0]
        except RowFailed as failed:
            log.error("rollback given up: %s raised in its rebuild too", failed.args[0])
            return False
        except (ApeinxError, CannotStart) as error:  # the journal unreadable, no snapshot usable (compaction.py)
            log.error("rollback given up: %s", error)
            return False
        runtime.quarantined.update(quarantined)
        version = max(live.version, rebuilt.version) + 1
        transplant(rebuilt, live)
        live.version = version
        runtime.caught_up()
        give_back_freed_memory()
        return True
