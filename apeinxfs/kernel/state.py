"""The kernel's whole state as bytes and back: what a snapshot (snapshots.py) holds.

Generic over the kernel: the object graph reachable from a `Kernel` is pickled whole, so
a field a component gains later is in every snapshot without a line here, and the Task
objects that the task table, the run queue and the GPUs' batches share stay one object
each. What the kernel derives from its code rather than its state (its handler table) is
left out and built again on loading. Loading builds only what a snapshot of this code
names (`names`): the attrs classes of the kernel package, the other kernel classes and
functions of `PLAIN`, and a fixed few of the standard library (`STANDARD`), each by its
exact module and name, and gets no attribute but the bound methods of `METHODS`: a file
handed over or planted names nothing else (LayoutError, in words).

`layout` is what a snapshot must agree on with the code that loads it: every kernel class
a fresh kernel of that config reaches, and every attrs class of the package, with its
field names. A snapshot written by code that kept other fields is loaded only through the
migrations declared for them (migrations.py, which `decode` takes; `reached` walks the
loaded objects); else its objects would miss attributes, or carry stale ones, and
`layout_difference` says which classes differ. Pure: no I/O.
"""
from __future__ import annotations

import array
import copyreg
import decimal
import enum
import functools
import importlib
import io
import pickle
import pkgutil
import re
import types
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from . import loadcheck
from .access import OVERFLOW_ID, UID_MAX, id_fits
from .audit import AuditLog
from .billing import BillBook
from .boost import Boosts
from .config import KernelConfig
from .endpoints import redacted
from .engines import EngineBook, EngineWatch, Outage
from .errors import Invalid
from .kernel import Kernel
from .kvreport import KVReports
from .lazyheap import LazyHeap
from .memory import KVManager, PrefixCache
from .models import Models
from .moves import Moves
from .reclaim import Reclaim
from .retention import Reaper
from .runqueue import RunQueue
from .sched import Accounts, FairQueue, FlatQueue, _arrival, _higher_prio_first, _one_level, _pid
from .sharedlog import SharedLog
from .submits import SubmitChecks
from .task import State
from .tasktable import TaskTable
from .tenancy import Tenancy
from .trace import TraceLog

PACKAGE = __name__.rpartition(".")[0]  # apeinxfs.kernel
PROTOCOL = 5
PATTERN_FLAGS = re.UNICODE | re.ASCII  # what re.compile gives a str pattern, or a bytes one
METHODS = {(Kernel, "_evicted"), (Moves, "emit")}  # bound methods the state holds: KVManager.on_evict, Kernel.emit


class LayoutError(Exception):
    """A snapshot's bytes name a class the kernel does not allow, or do not load."""


def encode(kernel: Kernel) -> bytes:
    """The kernel's state as bytes."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=PROTOCOL)
    pickler.dispatch_table = copyreg.dispatch_table | {Kernel: _reduce_kernel}  # copyreg's: re.Pattern's reducer
    pickler.dump(kernel)
    return buffer.getvalue()


def ids_in_bounds(kernel: Kernel) -> list[int]:
    """Give each task whose uid is no id (one of a snapshot written before ids were bounded, that the mount
    cannot show) OVERFLOW_ID, as Linux shows an id it cannot map; the pids of those changed."""
    changed = [pid for pid, task in kernel.tasks.items() if not id_fits(task.uid, UID_MAX)]
    for pid in changed:
        kernel.tasks[pid].uid = OVERFLOW_ID
    return changed


def credentials_hidden(kernel: Kernel) -> bool:
    """Hide each URL's credentials (endpoints.redacted) in the lines of the trace and audit trail, in the tasks'
    exits and in the reasons of the engines down, as the kernel hides them applying a row: a snapshot of code that
    applied rows as recorded holds those of an old journal's rows. Whether any were shown."""
    shown = [ring.rewrite(_lines_hidden) for ring in (kernel.trace, kernel.audit)]
    for task in kernel.tasks.values():
        if task.exit is not None and task.exit != redacted(task.exit):
            task.exit = redacted(task.exit)
            shown.append(True)
    return any(shown) | _outages_hidden(kernel.engines.book)


def _outages_hidden(book: EngineBook) -> bool:
    """Hide them in the reasons of the models and endpoints down, which the stall lines and the exits of the tasks
    that wait for them name later. Whether any were shown."""
    every: list[dict[Any, Outage]] = [book.down, *book.parts.values()]
    shown = False
    for outages in every:
        for key, outage in list(outages.items()):
            if outage.reason != redacted(outage.reason):
                outages[key], shown = attrs.evolve(outage, reason=redacted(outage.reason)), True
    return shown


def _lines_hidden(text: str) -> str:
    """redacted(text), lines of it without an `@` (a URL's credentials end with one) left as they are: most lines
    have none, and the pattern tried at every word took 9 times as long on 100,000 lines of a trace. In each whole
    line, as archive.shown does, not in each reason as the kernel: a URL's `@digits` ending followed by `;` or `"`
    is hidden as a host (`http://10.0.0.1:8000@1;` as `http://***@1;`)."""
    return "\n".join(redacted(line) if "@" in line else line for line in text.split("\n"))


def _reduce_kernel(kernel: Kernel) -> tuple[Any, ...]:
    """A kernel as pickle rebuilds it: a bare Kernel, then its fields but the handler table (code, not
    state: `decode` builds it again)."""
    fields = {name: value for name, value in vars(kernel).items() if name != "handlers"}
    return _bare_kernel, (), fields, None, None, _set_kernel_state


def _bare_kernel() -> Kernel:
    return Kernel.__new__(Kernel)


def _set_kernel_state(kernel: Kernel, fields: dict[str, Any]) -> None:
    if type(kernel) is not Kernel:  # a function's __dict__ takes any name
        raise LayoutError(f"the state gives a kernel's fields to a {type(kernel).__name__}: a damaged or untrusted "
                          "snapshot")
    vars(kernel).update(fields)


def decode(data: bytes, migrate: Callable[[Kernel], object] | None = None) -> Kernel:
    """The kernel that `encode` turned into `data`, brought to the code's layout by `migrate` (migrations.py)
    if given, its handler table built; LayoutError if they are not such bytes, do not migrate, or hold a name or
    number the kernel refuses (loadcheck.py)."""
    try:
        kernel = KernelUnpickler(io.BytesIO(data)).load()
    except LayoutError:
        raise
    except Exception as exc:  # truncated or altered bytes that still passed a checksum
        raise LayoutError(f"the state does not load: {type(exc).__name__}: {exc}") from None
    if not isinstance(kernel, Kernel):
        raise LayoutError(f"the state is a {type(kernel).__name__}, not a kernel")
    try:
        if migrate is not None:
            migrate(kernel)
        kernel.handlers = kernel._handlers()  # after migrating: a handler may be of a component it added
    except Exception as exc:  # a migration that does not fit the state it finds
        raise LayoutError(f"the state does not migrate: {type(exc).__name__}: {exc}") from None
    try:
        loadcheck.checked(kernel)
    except Invalid as exc:
        raise LayoutError(f"the state holds what the kernel refuses: {exc}") from None
    return kernel


class KernelUnpickler(pickle.Unpickler):
    """Builds only what `names` holds, found by its exact module and name; refuses any other name."""

    def find_class(self, module: str, name: str) -> Any:
        found = names().get((module, name))
        if found is None:
            raise LayoutError(f"the state names {module}.{name}, which is not the kernel's: a damaged or untrusted "
                              "snapshot")
        return found


def _kernel_method(owner: object, name: str) -> Any:
    """getattr as a snapshot calls it (pickle's form of a bound method): only the bound methods of METHODS."""
    if (type(owner), name) not in METHODS:
        raise LayoutError(f"the state takes {name} of a {type(owner).__name__}, which is not a bound method of the "
                          "kernel's: a damaged or untrusted snapshot")
    return getattr(owner, name)


def _pattern(pattern: str | bytes, flags: int = 0) -> re.Pattern[Any]:
    """re._compile as a snapshot calls it (pickle's form of an re.Pattern: a snapshot of 1a026e0 to bb96f1a holds
    the trace's), the flags a pattern of the kernel's has only: re.DEBUG prints the parse on stdout."""
    if flags & ~PATTERN_FLAGS or not isinstance(pattern, (str, bytes)):
        raise LayoutError(f"the state compiles a pattern with flags {flags}, which no pattern of the kernel's has: "
                          "a damaged or untrusted snapshot")
    return re.compile(pattern, flags)


def _array_rebuilt(*arguments: Any) -> Any:
    """array._array_reconstructor as a snapshot calls it (pickle's form of an array), by a function of the kernel's:
    a BUILD on the builtin itself sets its __module__."""
    return array._array_reconstructor(*arguments)  # type: ignore[attr-defined]


# What a snapshot names beside the attrs classes, each checked for what its call, __new__ and __setstate__ do with
# the arguments a file gives (docs/security.md): plain kernel classes, the queues' key functions, the Kernel's reducer.
PLAIN: tuple[Any, ...] = (
    AuditLog, BillBook, Boosts, EngineWatch, KVReports, LazyHeap, KVManager, PrefixCache, Models, Moves, Reclaim, Reaper,
    RunQueue, Accounts, FairQueue, FlatQueue, SharedLog, SubmitChecks, State, TaskTable, Tenancy, TraceLog,
    _arrival, _higher_prio_first, _one_level, _pid, _bare_kernel, _set_kernel_state)
STANDARD = {("builtins", "getattr"): _kernel_method, ("collections", "OrderedDict"): OrderedDict,
            ("collections", "deque"): deque, ("array", "array"): array.array,
            ("array", "_array_reconstructor"): _array_rebuilt,
            ("decimal", "Decimal"): decimal.Decimal, ("re", "_compile"): _pattern}


@functools.cache
def names() -> dict[tuple[str, str], Any]:
    """(module, name) -> what a snapshot may build by that name: STANDARD, PLAIN and the kernel's attrs classes,
    each one a BUILD of a file cannot change (`_build_refused`)."""
    kernel_names = {(found.__module__, found.__qualname__): found for found in (*PLAIN, *attrs_classes())}
    allowed = STANDARD | kernel_names
    for found in allowed.values():
        _build_refused(found)
    return allowed


def _build_refused(found: Any) -> None:
    """Make a BUILD on `found` itself fail. pickle's BUILD calls the object's __setstate__ if it has one, else
    sets the state's names on it with setattr: on a kernel class or function, for the whole process, even when
    the snapshot is then refused. A kernel class without one gets `_fields_restored` (pickle's own BUILD, for its
    instances; on the class, a call without its instance: TypeError); a function gets one that refuses. The
    standard library's types and builtins take no attribute."""
    if isinstance(found, types.FunctionType):
        found.__setstate__ = _no_state  # type: ignore[attr-defined]
    elif isinstance(found, type) and found.__module__.startswith(PACKAGE) and not hasattr(found, "__setstate__"):
        found.__setstate__ = _fields_restored  # type: ignore[attr-defined]


def _fields_restored(self: object, state: Any) -> None:
    """What pickle's BUILD does with an instance's state: a dict into its __dict__, or (dict, slots) and the slots
    set too."""
    fields, slots = state if isinstance(state, tuple) else (state, None)
    if fields:
        vars(self).update(fields)
    for name, value in (slots or {}).items():
        setattr(self, name, value)


def _no_state(state: object) -> None:
    raise LayoutError("the state gives state to a function of the kernel's: a damaged or untrusted snapshot")


def attrs_classes() -> list[type]:
    """Every attrs class defined in a module of the kernel package."""
    found = []
    for module in pkgutil.iter_modules(importlib.import_module(PACKAGE).__path__):
        for cls in vars(importlib.import_module(f"{PACKAGE}.{module.name}")).values():
            if attrs.has(cls) and cls.__module__.startswith(PACKAGE):
                found.append(cls)
    return found


def layout(config: KernelConfig) -> dict[str, list[str]]:
    """{class: its field names} of every kernel class a fresh kernel of `config` reaches and every
    attrs class of the kernel package."""
    classes = {class_name(type(item)): sorted(fields_of(item)) for item in reached(Kernel(config))}
    classes |= {class_name(cls): sorted(a.name for a in attrs.fields(cls)) for cls in attrs_classes()}
    return dict(sorted(classes.items()))


def class_name(cls: type) -> str:
    """A class's name in a layout: module and qualified name."""
    return f"{cls.__module__}.{cls.__qualname__}"


def reached(root: object) -> Iterator[object]:
    """Each kernel object reachable from `root`, found by a walk with its own stack; an object's fields are
    walked after it is yielded (so they are the ones it holds then)."""
    seen, stack = set(), [root]
    while stack:
        item = stack.pop()
        if id(item) in seen or callable(item) or isinstance(item, enum.Enum):
            continue
        seen.add(id(item))
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif type(item).__module__.startswith(PACKAGE):
            yield item
            stack.extend(fields_of(item).values())


def fields_of(item: object) -> dict[str, Any]:
    """An object's fields: its __dict__ and its slots (getstate aside: this is what the code keeps)."""
    slots = [name for cls in type(item).__mro__ for name in getattr(cls, "__slots__", ())]
    fields = {name: getattr(item, name) for name in slots if name != "__weakref__" and hasattr(item, name)}
    return {**fields, **getattr(item, "__dict__", {})}


def layout_difference(written: dict[str, list[str]], now: dict[str, list[str]]) -> str:
    """'' when two layouts agree, else which classes differ, in words."""
    differ = sorted(name for name in written.keys() | now.keys() if written.get(name) != now.get(name))
    if not differ:
        return ""
    shown = ", ".join(_difference(name, written.get(name), now.get(name)) for name in differ[:5])
    return shown + (f" and {len(differ) - 5} more" if len(differ) > 5 else "")


def _difference(name: str, written: list[str] | None, now: list[str] | None) -> str:
    if written is None or now is None:
        return f"{name} ({'not in the snapshot' if written is None else 'no longer in the kernel'})"
    added, gone = sorted(set(now) - set(written)), sorted(set(written) - set(now))
    return f"{name} (fields added: {', '.join(added) or 'none'}; gone: {', '.join(gone) or 'none'})"
