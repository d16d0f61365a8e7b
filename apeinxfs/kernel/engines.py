"""Engine outages in the kernel: nothing is dispatched to a model whose engine is down.

The daemon journals `EngineHealth(model, up, reason)` when its checks of a model's engine
(scrapes, requests) find it unreachable or back; the kernel keeps the model down until the
event says up. While down, a queued task of that model that reaches the head of the run
queue is stalled: taken out of the queue (state kept: queued or preempted) into the
model's stalled set, with a `stall` trace line, for up to the model's `engine_wait_s`
counted from then; past that it fails with the outage's reason. When the engine is up
again its stalled tasks go back to the queue. `Interrupted(pid, reason)` (a stream that
broke, an engine that went away midway) puts a running task back in the queue with the
text it has, like a preemption, so it resumes from there; past the model's `resume_limit`
interruptions it fails with the reason. Every change is a trace line (`engine`, `stall`,
`resume`); all times are event times, so replay gives the same result. A mixin of `Kernel`
(kernel.py) over an `EngineBook`; it uses the kernel's `_exit`, `_requeue`, `_emit` and run
queue. Not here: how the daemon decides an engine is down (runtime.py, drivers/enginestate.py).
"""
import heapq

import attrs

from . import events as ev
from .pressure import StallClock
from .task import State


@attrs.frozen
class Outage:
    """A model's engine down since `since_us`, for `reason`."""

    since_us: int
    reason: str


@attrs.define
class EngineBook:
    """Down models, their stalled tasks, when each stalled task gives up, each task's resumes."""

    down: dict = attrs.Factory(dict)  # model -> Outage
    stalled: dict = attrs.Factory(dict)  # model -> {pid: task} taken out of the queue while it is down
    waits: list = attrs.Factory(list)  # heap of (give-up time µs, pid, stall number)
    stall_of: dict = attrs.Factory(dict)  # pid -> its current stall number (older heap entries are stale)
    stalls: int = 0
    resumes: dict = attrs.Factory(dict)  # pid -> interruptions it resumed from
    clock: StallClock = attrs.Factory(StallClock)  # time in which some runnable task waited for a down engine

    def waiting(self, model: str | None = None) -> int:
        """Tasks stalled now (for `model`, or for all), not counting those killed or stopped since."""
        groups = self.stalled.values() if model is None else [self.stalled.get(model, {})]
        return sum(1 for group in groups for task in group.values() if task.runnable)

    def next_wait_us(self) -> int | None:
        """When the next stalled task gives up (maybe a stale entry: a Tick then changes nothing)."""
        return self.waits[0][0] if self.waits else None


def _seconds(us: int) -> str:
    return f"{us / 1e6:g}"


class EngineWatch:
    """Effects of EngineHealth and Interrupted, the stalling of a down model's tasks and their expiry."""

    def _apply_enginehealth(self, event: ev.EngineHealth) -> None:
        model, book = self.models.get(event.model), self.engines
        if model is None or (event.model in book.down) != event.up:  # unknown, or no change
            return
        if event.up:
            outage = book.down.pop(event.model)
            waiting = book.stalled.pop(event.model, {})
            self._emit("engine", None, f"{event.model} up after {_seconds(self.now_us - outage.since_us)}s; "
                                       f"{sum(t.runnable for t in waiting.values())} stalled tasks queued again")
            for task in waiting.values():
                self._unstall(task)
        else:
            book.down[event.model] = Outage(self.now_us, event.reason)
            self._emit("engine", None, f"{event.model} down: {event.reason}; its tasks are not dispatched "
                                       f"and wait up to {model.engine_wait_s:g}s")

    def _unstall(self, task) -> None:
        self.engines.stall_of.pop(task.pid, None)
        if task.runnable:
            self.runq.remove(task)  # a stopped and continued task is queued already
            self.runq.push(task)

    def _stall(self, task) -> None:
        """Take the queue's head out of the queue: its model's engine is down. A task queued again while
        it waits (a prio change, a stop and cont) keeps waiting from when it first stalled."""
        book, model = self.engines, self.models[task.model]
        self.runq.remove(task)
        if task.pid in book.stall_of:
            return
        book.stalled.setdefault(task.model, {})[task.pid] = task
        book.stalls += 1
        book.stall_of[task.pid] = book.stalls
        heapq.heappush(book.waits, (self.now_us + int(model.engine_wait_s * 1e6), task.pid, book.stalls))
        self.changed.add("deadline")
        self._emit("stall", task, f"{task.model}'s engine is down ({book.down[task.model].reason}); "
                                  f"waits up to {model.engine_wait_s:g}s")

    def _expire_engine_waits(self) -> None:
        """Fail the stalled tasks whose engine_wait_s has passed."""
        book = self.engines
        while book.waits and book.waits[0][0] <= self.now_us:
            _, pid, number = heapq.heappop(book.waits)
            if book.stall_of.get(pid) != number:  # released since, maybe stalled again
                continue
            del book.stall_of[pid]
            task = self.tasks[pid]
            del book.stalled[task.model][pid]
            if not task.runnable:  # killed, or stopped: a `cont` stalls it afresh
                continue
            outage = book.down[task.model]
            self._exit(task, f"failed: {task.model}'s engine down for {_seconds(self.now_us - outage.since_us)}s: "
                             f"{outage.reason}", f"waited engine_wait_s={self.models[task.model].engine_wait_s:g}")

    def _count_engine_stalls(self) -> None:
        """Keep the stall clock; nothing to do (at every event) while no task is or was stalled."""
        book = self.engines
        if book.stalled or book.clock.stalled:
            book.clock.set(self.now_us, book.waiting() > 0)

    def _apply_interrupted(self, event: ev.Interrupted) -> None:
        task = self.tasks.get(event.pid)
        if task is None or task.state is not State.RUNNING:  # killed, stopped or preempted meanwhile
            return
        book, limit = self.engines, self.models[task.model].resume_limit
        count = book.resumes.get(task.pid, 0) + 1
        if count > limit:
            self._exit(task, f"failed: {event.reason}", f"interrupted {count} times; resume_limit={limit}")
            return
        book.resumes[task.pid] = count
        self._emit("resume", task, f"{event.reason}; resumes after token {task.tokens_out} "
                                   f"(resume {count} of {limit})", task.gpu)
        self._requeue(task, State.PREEMPTED)
