"""The driver interface: how an engine turns the kernel's batches into kernel events.

The daemon runs `await driver.serve(gpu, host)` once per GPU. The driver asks the host
for the batch the kernel has placed on that GPU, runs it (a step at a time, like sim.py,
or one engine request per task that it follows with `batch_changed`, like openai.py), and
reports what each task produced as a `Step` event (or a `Failed` one). The kernel decides what runs;
the driver only runs it. Drivers may keep engine connections, never kernel state.
A driver that can read its engine's own metrics also has `observe(host)`, run once per
driver: it reports them with `host.observe(model, metrics.Observation)`, outside the kernel.
Every driver says how its engines answer with `host.report_state(model, state, error)` (enginestate.py).
A model with endpoints (kernel/endpoints.py) has one engine per GPU or group of GPUs: the driver sends
a task placed on a GPU to that GPU's endpoint, and says `gpus=` of the endpoint in what it reports.
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

    def observe(self, model: str, observation: Observation, gpus: tuple = ()) -> None:
        """Keep the latest engine metrics of `model` (of its endpoint on `gpus`, for a model with endpoints:
        kernel/endpoints.py), for /models/NAME/engine and meminfo; never journaled."""

    def report_state(self, model: str, state: str, error: str | None = None, gpus: tuple = ()) -> None:
        """Say what a check of `model`'s engine (its endpoint on `gpus`) found: ready, starting, unreachable
        or failed (enginestate.py)."""

    def report_kv(self, model: str, gpus: tuple, tokens: int) -> str | None:
        """Say how many tokens the engine of `model` on `gpus` (empty: its one engine) holds in its KV cache;
        the daemon journals it when it changes, for the kernel to reconcile its books (kernel/kvreport.py).
        In words, if they are more than its GPUs hold (counted as full); else None."""

    def engine_down(self, model: str, gpus: tuple = ()) -> bool:
        """Whether the kernel holds `model`'s engine (its endpoint on `gpus`) down (kernel/engines.py)."""

    def note_bug(self, name: str, exc: Exception, outcome: str) -> None:
        """Keep a bug the driver contained (a job's: flow.py) as the daemon's Bug `name` (supervise.py)."""


class Driver(Protocol):
    """One engine's driver, built from the models it serves (`{name: ModelConfig}`)."""

    name: str

    def __init__(self, models: dict): ...

    async def serve(self, gpu: int, host: Host) -> None:
        """Run batches on `gpu` until cancelled."""

    # optional: async def observe(self, host: Host) -> None: report engine metrics until cancelled
