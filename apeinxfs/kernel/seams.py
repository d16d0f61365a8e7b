"""Seams: what the kernel's components may ask of the kernel that coordinates them.

A component (tenancy.py, engines.py, reclaim.py) owns its own state; where an effect of
its crosses into another component's (a task leaving a GPU, a line in the trace), it asks
through `Host`, which `Kernel` implements. Narrow on purpose: a component sees the clock,
the trace, the set of what changed and a task's moves, not the kernel's fields.
"""
from __future__ import annotations

from typing import Protocol

from .task import State, Task


class Host(Protocol):
    """The kernel as its components see it."""

    now_us: int
    changed: set[object]

    def emit(self, kind: str, task: Task | None, detail: str, gpu: int | None = None) -> None:
        """Append a trace line at the current time."""

    def forget_tenant(self, name: str) -> None:
        """Tenant `name` was removed: what the trace keeps of it may go."""

    def exit(self, task: Task, how: str, detail: str) -> None:
        """End a live task (and, if killed, its live descendants)."""

    def requeue(self, task: Task, state: State) -> None:
        """From a GPU back to the run queue in `state` (preempted or queued)."""

    def preempt(self, task: Task, reason: str) -> None:
        """Requeue a running task as preempted, with a `preempt` trace line."""

    def unqueue(self, task: Task) -> None:
        """Take a runnable task out of the run queue, its state kept (held or stalled)."""

    def queue(self, task: Task) -> None:
        """Put a runnable task (back) in the run queue, its state kept."""
