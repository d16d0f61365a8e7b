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
interruptions it fails with the reason. A model with several endpoints (endpoints.py) has an
outage per endpoint (`EngineHealth` naming its GPUs): while one is down, the model's tasks
are placed only on the GPUs of the others (`where`); when all are, the model is down as
above. Every change is a trace line (`engine`, `stall`,
`resume`); all times are event times, so replay gives the same result. `EngineWatch` owns
the `EngineBook` and moves tasks through the kernel's `Host` seam (seams.py). Not here: how
the daemon decides an engine is down (runtime.py, drivers/enginestate.py).
"""
from __future__ import annotations

import heapq
from collections.abc import KeysView, Mapping

import attrs

from . import events as ev
from .config import ModelConfig
from .endpoints import gpus_text, redacted
from .kvreport import KVReports
from .memory import KVManager
from .models import Models
from .pressure import StallClock
from .seams import Host
from .task import State, Task


@attrs.frozen
class Outage:
    """A model's engine down since `since_us`, for `reason`."""

    since_us: int
    reason: str


@attrs.define
class EngineBook:
    """Down models, their stalled tasks, when each stalled task gives up, each task's resumes."""

    down: dict[str, Outage] = attrs.Factory(dict)  # model -> Outage
    parts: dict[str, dict[tuple[int, ...], Outage]] = attrs.Factory(dict)  # model -> its endpoints down, by GPUs
    stalled: dict[str, dict[int, Task]] = attrs.Factory(dict)  # model -> tasks taken out of the queue while down
    waits: list[tuple[int, int, int]] = attrs.Factory(list)  # heap of (give-up time µs, pid, stall number)
    stall_of: dict[int, int] = attrs.Factory(dict)  # pid -> its current stall number (older heap entries are stale)
    stalls: int = 0
    resumes: dict[int, int] = attrs.Factory(dict)  # pid -> interruptions it resumed from
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

    def __init__(self, models: Models, tasks: Mapping[int, Task], host: Host, kv: KVManager):
        self.book, self._models, self._tasks, self._host = EngineBook(), models, tasks, host
        self.kv_reports = KVReports(kv, models, host)  # what each engine says it holds in KV (kvreport.py)

    def is_down(self, model: str, gpus: tuple[int, ...] = ()) -> bool:
        """Whether the model's engine is down (all its endpoints); with `gpus`, its endpoint on those."""
        return gpus in self.book.parts.get(model, {}) if gpus else model in self.book.down

    @property
    def down(self) -> KeysView[str]:
        """The models whose engine is down now."""
        return self.book.down.keys()

    @property
    def clock(self) -> StallClock:
        """Time in which some runnable task waited for a down engine."""
        return self.book.clock

    def waiting(self, model: str | None = None) -> int:
        """Tasks stalled now (for `model`, or for all)."""
        return self.book.waiting(model)

    def health(self, event: ev.EngineHealth) -> None:
        model = self._models.get(event.model)
        if model is None:
            return
        event = attrs.evolve(event, reason=redacted(event.reason))  # an old row's reason may hold a password
        if not event.gpus or not model.endpoints:
            self._model_health(model, event.up, event.reason)
        elif any(endpoint.gpus == event.gpus for endpoint in model.endpoints):
            self._endpoint_health(model, event)

    def _endpoint_health(self, model: ModelConfig, event: ev.EngineHealth) -> None:
        """One endpoint of a model down or up: only its GPUs stop or take new tasks of the model; the
        model is down when all its endpoints are."""
        parts, host = self.book.parts.setdefault(model.name, {}), self._host
        if (event.gpus in parts) != event.up:  # no change
            return
        where = f"{model.name} at gpus={gpus_text(event.gpus)}"
        if event.up:
            outage = parts.pop(event.gpus)
            host.emit("engine", None, f"{where} up after {_seconds(host.now_us - outage.since_us)}s")
        else:
            parts[event.gpus] = Outage(host.now_us, event.reason)
            host.emit("engine", None, f"{where} down: {event.reason}; no task of {model.name} is placed there")
        self._model_health(model, len(parts) < len(model.endpoints), f"every endpoint down; {event.reason}")

    def _model_health(self, model: ModelConfig, up: bool, reason: str) -> None:
        """The model's engine (all its endpoints) down or up: its tasks stall, or go back to the queue."""
        book, host = self.book, self._host
        if (model.name in book.down) != up:  # no change
            return
        if up:
            outage = book.down.pop(model.name)
            waiting = book.stalled.pop(model.name, {})
            host.emit("engine", None, f"{model.name} up after {_seconds(host.now_us - outage.since_us)}s; "
                                      f"{sum(t.runnable for t in waiting.values())} stalled tasks queued again")
            for task in waiting.values():
                self._unstall(task)
        else:
            book.down[model.name] = Outage(host.now_us, reason)
            host.emit("engine", None, f"{model.name} down: {reason}; its tasks are not dispatched "
                                      f"and wait up to {model.engine_wait_s:g}s")

    def where(self, model: str, gpus: list[int]) -> list[int]:
        """Of the open `gpus`, those a task of `model` may be placed on: its endpoints' GPUs (every one for
        a model without endpoints), less those of its endpoints that are down."""
        served, closed = self._models[model].gpu_set, self._closed(model)
        if served is None and not closed:
            return gpus
        return [gpu for gpu in gpus if (served is None or gpu in served) and gpu not in closed]

    def down_at(self, model: str, gpus: list[int]) -> list[int]:
        """Of `gpus`, those of the model's endpoints that are down."""
        closed = self._closed(model)
        return [gpu for gpu in gpus if gpu in closed]

    def _closed(self, model: str) -> set[int]:
        """The GPUs of the model's endpoints that are down."""
        return {gpu for part in self.book.parts.get(model, ()) for gpu in part}

    def forget_model(self, model: str) -> None:
        """A model removed: its endpoints' outages and its engines' KV reports go with it."""
        self.book.parts.pop(model, None)
        self.kv_reports.forget(model)

    def _unstall(self, task: Task) -> None:
        self.book.stall_of.pop(task.pid, None)
        if task.runnable:
            self._host.unqueue(task)  # a stopped and continued task is queued already
            self._host.queue(task)

    def stall(self, task: Task) -> None:
        """Take the queue's head out of the queue: its model's engine is down. A task queued again while
        it waits (a prio change, a stop and cont) keeps waiting from when it first stalled."""
        book, model, host = self.book, self._models[task.model], self._host
        host.unqueue(task)
        if task.pid in book.stall_of:
            return
        book.stalled.setdefault(task.model, {})[task.pid] = task
        book.stalls += 1
        book.stall_of[task.pid] = book.stalls
        heapq.heappush(book.waits, (host.now_us + int(model.engine_wait_s * 1e6), task.pid, book.stalls))
        host.changed.add("deadline")
        host.emit("stall", task, f"{task.model}'s engine is down ({book.down[task.model].reason}); "
                                 f"waits up to {model.engine_wait_s:g}s")

    def expire(self) -> None:
        """Fail the stalled tasks whose engine_wait_s has passed."""
        book, host = self.book, self._host
        while book.waits and book.waits[0][0] <= host.now_us:
            _, pid, number = heapq.heappop(book.waits)
            if book.stall_of.get(pid) != number:  # released since, maybe stalled again
                continue
            del book.stall_of[pid]
            task = self._tasks[pid]
            del book.stalled[task.model][pid]
            if not task.runnable:  # killed, or stopped: a `cont` stalls it afresh
                continue
            outage = book.down[task.model]
            host.exit(task, f"failed: {task.model}'s engine down for {_seconds(host.now_us - outage.since_us)}s: "
                            f"{outage.reason}", f"waited engine_wait_s={self._models[task.model].engine_wait_s:g}")

    def count_stalls(self) -> None:
        """Keep the stall clock; nothing to do (at every event) while no task is or was stalled."""
        book = self.book
        if book.stalled or book.clock.stalled:
            book.clock.set(self._host.now_us, book.waiting() > 0)

    def forget_task(self, task: Task) -> None:
        """A reaped task: its resumes, and its stall if it was killed while stalled, go from the books."""
        book = self.book
        book.resumes.pop(task.pid, None)
        if book.stall_of.pop(task.pid, None) is not None:
            book.stalled[task.model].pop(task.pid, None)

    def interrupted(self, event: ev.Interrupted) -> None:
        task, host = self._tasks.get(event.pid), self._host
        if task is None or task.state is not State.RUNNING:  # killed, stopped or preempted meanwhile
            return
        book, limit = self.book, self._models[task.model].resume_limit
        count, reason = book.resumes.get(task.pid, 0) + 1, redacted(event.reason)  # an old row may hold a password
        if count > limit:
            host.exit(task, f"failed: {reason}", f"interrupted {count} times; resume_limit={limit}")
            return
        book.resumes[task.pid] = count
        host.emit("resume", task, f"{reason}; resumes after token {task.tokens_out} "
                                  f"(resume {count} of {limit})", task.gpu)
        host.requeue(task, State.PREEMPTED)
