"""The apeinxfs kernel: a deterministic state machine of tasks, scheduling, KV memory and trace.

It is driven only by events (kernel/events.py) that carry their own time, so the same
journal of events always rebuilds the same state. It knows nothing of FUSE, trio,
SQLite or any inference engine; the daemon (runtime.py) and drivers feed it.
"""
from .kernel import Kernel

__all__ = ["Kernel"]
