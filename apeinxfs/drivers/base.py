"""The driver interface: how an engine turns the kernel's batches into kernel events.

The daemon runs `await driver.serve(gpu, host)` once per GPU. The driver asks the host
for the batch the kernel has placed on that GPU, runs it (a step at a time, like sim.py,
or one engine request per task that it follows with `batch_changed`, like openai.py), and
reports what each task produced as a `Step` event (or a `Failed` one). The kernel decides what runs;
the driver only runs it. Drivers may keep engine connections, never kernel state.
A driver that can read its engine's own metrics also has `observe(host)`, run once per
driver: it reports them with `host.observe(model, metrics.Observation)`, outside the kernel.
Every driver says how its engines answer with `host.report_state(model, state, error)` (enginestate.py).
"""
from typing import Protocol

from ..kernel.events import Failed, Step
from .metrics import Observation


class Host(Protocol):
    """What the daemon offers a driver."""

    async def next_batch(self, gpu: int) -> list:
        """The tasks running on `gpu`; waits while there are none."""

    async def batch_changed(self, gpu: int) -> list:
        """Wait until tasks join or leave `gpu`, then return its batch (maybe empty)."""

    def deliver(self, event: Step | Failed) -> None:
        """Journal and apply one engine result."""

    def observe(self, model: str, observation: Observation) -> None:
        """Keep the latest engine metrics of `model` (for /models/NAME/engine and meminfo; never journaled)."""

    def report_state(self, model: str, state: str, error: str | None = None) -> None:
        """Say what a check of `model`'s engine found: ready, starting, unreachable or failed (enginestate.py)."""

    def engine_down(self, model: str) -> bool:
        """Whether the kernel holds `model`'s engine down (no task of it is dispatched; kernel/engines.py)."""


class Driver(Protocol):
    """One engine's driver, built from the models it serves (`{name: ModelConfig}`)."""

    name: str

    def __init__(self, models: dict): ...

    async def serve(self, gpu: int, host: Host) -> None:
        """Run batches on `gpu` until cancelled."""

    # optional: async def observe(self, host: Host) -> None: report engine metrics until cancelled
