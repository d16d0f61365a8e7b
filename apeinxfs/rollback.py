"""Rolling the live kernel back to the state its journal holds, keeping the Task objects others hold.

A kernel step (runtime.py `progress`) is applied at once and journaled later; a bug raised in
its middle leaves the kernel half changed: chunks served before it, the raising one in part.
The journal holds every event the kernel applied before that step, so a kernel rebuilt from it
(as at start: recovery.py, from the newest snapshot if the daemon keeps them) is the kernel as
it was before the step. `transplant` moves that state into the live kernel rather than
replacing it: the drivers' jobs (drivers/flow.py) and the readers hold the live Task objects,
so each task the two kernels share keeps its object, given the rebuilt one's fields.

Costs a rebuild, as a start does: for a bug, never on the step's own path. Not here: which step
to try again after it (runtime.py), nor anything of the journal.
"""
import io
import pickle

import attrs

from .kernel import Kernel
from .kernel import state
from .kernel.task import Task


def transplant(rebuilt: Kernel, live: Kernel) -> None:
    """Give `live` the state of `rebuilt`: its fields, each task of both with its live object (fields the rebuilt
    one's), the handler table built again over its new components."""
    kept: dict = dict(live.tasks.items())
    names = [field.name for field in attrs.fields(Task)]
    fields = {name: value for name, value in vars(rebuilt).items() if name != "handlers"}
    tasks = {pid: {name: getattr(task, name) for name in names} for pid, task in rebuilt.tasks.items() if pid in kept}
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=state.PROTOCOL)
    pickler.persistent_id = lambda obj: _kept_id(obj, rebuilt, kept)  # type: ignore[method-assign]
    pickler.dump((fields, tasks))  # one pickle: what the tasks' fields share with the rest stays shared
    unpickler = pickle.Unpickler(io.BytesIO(buffer.getvalue()))
    unpickler.persistent_load = lambda key: live if key == "kernel" else kept[key]  # type: ignore[method-assign]
    fields, tasks = unpickler.load()
    for pid, values in tasks.items():
        for name, value in values.items():
            setattr(kept[pid], name, value)
    vars(live).clear()
    vars(live).update(fields)
    live.handlers = live._handlers()


def _kept_id(obj: object, rebuilt: Kernel, kept: dict) -> object:
    """What stands for `obj` in the pickle: the live kernel for the rebuilt one (its components' bound methods
    name it), a live task's pid for the rebuilt task of that pid; None (itself) for the rest."""
    if obj is rebuilt:
        return "kernel"
    if type(obj) is Task and obj.pid in kept:
        return obj.pid
    return None
