"""Declared migrations: how the state in a snapshot of older code becomes the state the code keeps now.

A snapshot (kernel/state.py) holds the kernel's objects with the fields of the code that
wrote it, its `layout`. For each kernel class whose fields changed since a layout,
`MIGRATIONS` says how to fill each field it gained from the loaded object (a function of
it) and which fields it no longer keeps (dropped on loading). A field an attrs class gained
with a default needs no declaration: it gets its default. A class new to the code needs
none either: no older snapshot holds one of its objects. Any other difference (a class
gone, a field added or gone with no declaration) is `undeclared`, and such a snapshot is
refused. `load` decodes a snapshot's state and, before the kernel is used, migrates each
object of a changed class, found by walking the loaded kernel (state.reached).

A declaration stays while snapshots of the layouts before it may still be loaded;
tests/test_migrations.py checks that the previous release's layout is covered. This module
is not the file format (snapshots.py) nor which snapshot a daemon starts from
(compaction.py). Pure: no I/O.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import attrs

from . import state
from .boost import Boosts
from .counters import Counters, TenantCounts
from .kernel import Kernel
from .livepids import LivePids
from .memory import KVManager
from .moves import Moves
from .reaporder import ReapOrder
from .runqueue import RunQueue, count_by
from .sched import FairQueue
from .submits import SubmitChecks
from .tasktable import TaskTable
from .trace import TraceLog

Layout = dict[str, list[str]]


@attrs.frozen
class Migration:
    """How objects of one kernel class, loaded from a snapshot of older code, become objects of the class now."""

    added: dict[str, Callable[[Any], Any]] = attrs.Factory(dict)  # field -> its value, from the loaded object
    gone: frozenset[str] = frozenset()  # fields the class no longer keeps: dropped on loading


def _totals_unshared(counters: Counters) -> TenantCounts:
    return TenantCounts(**{name: getattr(counters, name) for name in attrs.fields_dict(TenantCounts)})


MIGRATIONS: dict[type, Migration] = {
    # counts by model and by tenant of the queued tasks, recounted
    RunQueue: Migration(added={"_models": lambda run_queue: count_by(run_queue.tasks(), "model"),
                               "_tenants": lambda run_queue: count_by(run_queue.tasks(), "tenant")}),
    # each tenant's share counted from now (`tenants` defaulted empty): the totals so far are no tenant's
    Counters: Migration(added={"unshared": _totals_unshared}),
    Moves: Migration(added={"backfill_after_us": lambda _moves: 0}),  # backfill not resting
    # the queued deadlines by tenant, indexed afresh from the queued tasks
    FairQueue: Migration(added={"_boosts": lambda queue: Boosts.of(queue.tasks(), queue.accounts, queue.boost_us)},
                         gone=frozenset({"_deadlines", "_boost_at"})),
    # GPUs held from placement for their engines' KV reports became pages counted used; none until a report changes
    KVManager: Migration(added={"unbooked": lambda _kv: {}}, gone=frozenset({"held"})),
    # a submit's KV check asks the KV manager of its pools; the config and GPUs it kept are not read
    SubmitChecks: Migration(gone=frozenset({"_config", "_gpus"})),
    # each tenant's live pids indexed from its tasks (their counters afresh: livepids.py)
    # and its exited tasks ordered for reaping by tenant (reaporder.py) instead of in one heap
    TaskTable: Migration(added={"live_pids": lambda table: LivePids.of(table.values()),
                                "reap_order": lambda table: ReapOrder.of(table.values())},
                         gone=frozenset({"reapable"})),
    # one pattern of every tenant's name for all views, a cache built at the first read, replaced each tenant's own
    TraceLog: Migration(added={"_pattern": lambda _trace: None, "_removed": lambda _trace: {}},
                        gone=frozenset({"_others"})),
}
DECLARED = {state.class_name(cls): migration for cls, migration in MIGRATIONS.items()}


def undeclared(written: Layout, now: Layout) -> str:
    """'' when a snapshot of layout `written` migrates to code of layout `now`; else, in words, the classes and
    fields that differ with no declaration or default (state.layout_difference's words)."""
    return state.layout_difference(migrated(written, now), now)


def migrated(written: Layout, now: Layout) -> Layout:
    """The layout of a snapshot of layout `written` once loaded by code of layout `now`: a class new to the code
    as the code keeps it, and in a changed class the declared or defaulted fields added, the declared ones gone."""
    result = dict(written)
    for name in now.keys() - written.keys():
        result[name] = now[name]
    for name in changed(written, now):
        migration, added = DECLARED.get(name, Migration()), set(now[name]) - set(written[name])
        filled = {field for field in added if field in migration.added or _has_default(_class(name), field)}
        result[name] = sorted(set(written[name]) - migration.gone | filled)
    return result


def changed(written: Layout, now: Layout) -> list[str]:
    """The classes in both layouts whose fields differ."""
    return sorted(name for name in written.keys() & now.keys() if written[name] != now[name])


def load(data: bytes, written: Layout, now: Layout) -> Kernel:
    """The kernel that a snapshot's state `data`, of layout `written`, holds, its objects of the classes changed
    since migrated to layout `now` (refuse the snapshot first if `undeclared`); LayoutError as state.decode."""
    names = set(changed(written, now))
    return state.decode(data, lambda kernel: migrate(kernel, names) if names else None)


def migrate(kernel: Kernel, names: set[str]) -> None:
    """Migrate each object reached from `kernel` whose class is one of `names`."""
    for item in state.reached(kernel):
        if state.class_name(type(item)) in names:
            _migrate(item, DECLARED.get(state.class_name(type(item)), Migration()))


def _migrate(item: object, migration: Migration) -> None:
    """Give `item` the defaulted and then the declared fields it lacks, and drop the declared gone ones."""
    present, cls = state.fields_of(item), type(item)
    for field in attrs.fields(cls) if attrs.has(cls) else ():
        if field.name not in present and field.name not in migration.added and field.default is not attrs.NOTHING:
            object.__setattr__(item, field.name, _default(field.default, item))
    for name, fill in migration.added.items():
        if name not in present:
            object.__setattr__(item, name, fill(item))
    for name in migration.gone:
        getattr(item, "__dict__", {}).pop(name, None)  # a slotted attrs class drops it itself on loading


def _default(default: Any, item: object) -> Any:
    """An attrs field's default for `item`: a value, or what its Factory makes."""
    if not isinstance(default, attrs.Factory):  # type: ignore[arg-type]  # a class, typed as a function
        return default
    return default.factory(item) if default.takes_self else default.factory()


def _has_default(cls: type | None, field: str) -> bool:
    """Whether `cls` is an attrs class whose field `field` has a default."""
    if cls is None or not attrs.has(cls) or field not in attrs.fields_dict(cls):
        return False
    return attrs.fields_dict(cls)[field].default is not attrs.NOTHING


def _class(name: str) -> type | None:
    """The class a layout names, if the code has it at the top of its module."""
    module, _, qualname = name.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), qualname, None)
    except ImportError:
        return None
    return found if isinstance(found, type) else None
