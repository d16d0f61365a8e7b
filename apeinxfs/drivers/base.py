"""The driver interface: how an engine turns the kernel's batches into kernel events.

The daemon runs `await driver.serve(gpu, host)` once per GPU. The driver asks the host
for the batch the kernel has placed on that GPU, runs it (a step at a time, like sim.py,
or one engine request per task that it follows with `batch_changed`, like openai.py), and
reports what each task produced as a `Step` event (or a `Failed` one). The kernel decides what runs;
the driver only runs it. Drivers may keep engine connections, never kernel state.
"""
from typing import Protocol

from ..kernel.events import Failed, Step


class Host(Protocol):
    """What the daemon offers a driver."""

    async def next_batch(self, gpu: int) -> list:
        """The tasks running on `gpu`; waits while there are none."""

    async def batch_changed(self, gpu: int) -> list:
        """Wait until tasks join or leave `gpu`, then return its batch (maybe empty)."""

    def deliver(self, event: Step | Failed) -> None:
        """Journal and apply one engine result."""


class Driver(Protocol):
    """One engine's driver, built from the models it serves (`{name: ModelConfig}`)."""

    name: str

    def __init__(self, models: dict): ...

    async def serve(self, gpu: int, host: Host) -> None:
        """Run batches on `gpu` until cancelled."""
