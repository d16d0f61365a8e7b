"""A GPU as the kernel sees it: its config, its KV pool and the tasks in its batch."""
from __future__ import annotations

import attrs

from .config import GpuConfig
from .kvmem import KVPool
from .task import Task


@attrs.define
class Gpu:
    """A GPU as the kernel sees it: its config, KV pool and the tasks in its batch."""

    config: GpuConfig
    pool: KVPool
    running: dict[int, Task] = attrs.Factory(dict)  # pid -> task, in dispatch order
    key: tuple[str, int] = attrs.field(init=False)  # ("gpu", N): what take_changed() reports when its batch changes

    @key.default
    def _key(self) -> tuple[str, int]:
        return ("gpu", self.config.index)

    @property
    def open(self) -> bool:
        """Whether its batch has a free slot."""
        return len(self.running) < self.config.slots
