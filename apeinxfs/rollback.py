"""Rolling the live kernel back to the state its journal holds, in the objects others hold.

A kernel step (runtime.py `progress`) is applied at once and journaled later; a bug raised in
its middle leaves the kernel half changed: chunks served before it, the raising one in part.
The journal holds every event the kernel applied before that step, so a kernel rebuilt from it
(as at start: recovery.py, from the newest snapshot if the daemon keeps them) is the kernel as
it was before the step. `transplant` moves that state into the live kernel's own objects rather
than replacing them: the tree holds the kernel, its trace and audit rings and KV prefix caches
(nodes/tree.py), the drivers' jobs and the readers hold Task objects. Each mutable object of the
rebuilt kernel that has a live one of its type at the same place (field, key, index; a task, the
live task of its pid) gives that one its state, and the rebuilt graph points at the live objects;
frozen records and the objects the live kernel lacks come as the rebuilt kernel has them. The
kernel's handler table (closures over its components, which stay the same objects) is kept.

Costs a rebuild, as a start does, and a walk and a pickle of the kernel: for a bug, never on the
step's own path. Not here: which step to try again after it (stepbugs.py), nor anything of the journal.
"""
import array
import collections
import enum
import io
import pickle
from collections.abc import Iterator
from typing import Any

import attrs

from .kernel import Kernel
from .kernel.state import PROTOCOL, fields_of
from .kernel.task import Task

CONTAINERS = (list, dict, set, bytearray, collections.deque, array.array)
_FROZEN_SETATTR = attrs.frozen(type("_Probe", (), {})).__setattr__  # what a frozen attrs class sets with (it refuses)
Pairs = dict[int, tuple[Any, Any]]  # id of a rebuilt object -> (it, the live object that stands for it)


def transplant(rebuilt: Kernel, live: Kernel) -> None:
    """Give `live`'s objects the state of `rebuilt`'s at the same places; `live` then holds `rebuilt`'s state."""
    pairs = _paired(rebuilt, live)
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=PROTOCOL)
    pickler.persistent_id = lambda obj: _paired_id(obj, pairs)  # type: ignore[method-assign]
    states = {key: _state_of(new) for key, (new, old) in pairs.items() if new is not old}
    pickler.dump(states)  # one pickle: what the states share stays shared
    unpickler = pickle.Unpickler(io.BytesIO(buffer.getvalue()))
    unpickler.persistent_load = lambda key: pairs[key][1]  # type: ignore[method-assign]
    for key, state in unpickler.load().items():
        _set_state(pairs[key][1], state)


def _paired_id(obj: object, pairs: Pairs) -> int | None:
    """What stands for `obj` in the pickle: its id if it is paired with a live object, else None (itself)."""
    return id(obj) if id(obj) in pairs and pairs[id(obj)][0] is obj else None


def _paired(rebuilt: Kernel, live: Kernel) -> Pairs:
    """Each mutable object of `rebuilt` with the live object of its type at the same place, one to one."""
    pairs: Pairs = {}
    taken: set[int] = set()
    tasks = [(task, live.tasks[pid]) for pid, task in rebuilt.tasks.items() if pid in live.tasks]
    stack: list[tuple[Any, Any]] = [(rebuilt, live), *tasks]  # the tasks first, each with its own pid's
    while stack:
        new, old = stack.pop()
        if type(new) is not type(old) or id(new) in pairs or id(old) in taken or not _mutable(new):
            continue
        if isinstance(new, Task) and new.pid != old.pid:  # a list's place may hold another task live
            continue
        pairs[id(new)] = (new, old)
        if new is old:  # held by both kernels (a fresh one shares what the config gives it): kept as it is
            continue
        taken.add(id(old))
        stack.extend(_places(new, old))
    return pairs


def _mutable(obj: object) -> bool:
    """Whether `obj` keeps state that changes: a container, or an object of this package that is not frozen."""
    if isinstance(obj, CONTAINERS):
        return True
    cls = type(obj)
    return (cls.__module__.startswith("apeinxfs.") and not isinstance(obj, (type, enum.Enum)) and not callable(obj)
            and cls.__setattr__ is not _FROZEN_SETATTR)


def _places(new: Any, old: Any) -> Iterator[tuple[Any, Any]]:
    """(rebuilt part, live part) at each place both objects have: a key, an index, a field."""
    if isinstance(new, dict):
        yield from ((value, old[key]) for key, value in new.items() if key in old)
    elif isinstance(new, (list, collections.deque)):
        yield from zip(new, old)
    elif not isinstance(new, CONTAINERS):
        kept = fields_of(old)
        yield from ((value, kept[name]) for name, value in _fields(new).items() if name in kept)


def _state_of(obj: Any) -> Any:
    """A copy of what `obj` holds, in a new container (its own items, not copies of them)."""
    if isinstance(obj, dict):
        return dict(obj)
    if isinstance(obj, CONTAINERS):
        return list(obj)
    return _fields(obj)


def _fields(obj: object) -> dict[str, Any]:
    """An object's fields (state.fields_of), a kernel's but its handler table: code over its components."""
    fields = fields_of(obj)
    if isinstance(obj, Kernel):
        del fields["handlers"]
    return fields


def _set_state(obj: Any, state: Any) -> None:
    """Make `obj` hold `state` (from `_state_of` of an object of its type)."""
    if isinstance(obj, (dict, set)):
        obj.clear()
        obj.update(state)
    elif isinstance(obj, collections.deque):
        obj.clear()
        obj.extend(state)
    elif isinstance(obj, CONTAINERS):
        obj[:] = type(obj)(obj.typecode, state) if isinstance(obj, array.array) else state
    else:
        for name, value in state.items():
            object.__setattr__(obj, name, value)

