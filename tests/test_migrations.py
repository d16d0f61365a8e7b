"""Tier 1-2: a snapshot written by older code is loaded through the migrations declared for its changes.

tests/data/layout-7958f78.json is the layout of the previous release (commit 7958f78), whose
run queue had no `_models`. A kernel encoded as that code would have (its run queue without
`_models`) loads with `_models` recounted from the queued tasks, the same as the live
kernel's (its reap order too, from the old heap of reapable tasks; its live pids indexed afresh from the tasks: the same pids, other counters, which
kernel/livepids.py leaves out of the state compared), and its invariants hold then and after
more events. Every difference between
that layout and the code's is declared or defaulted (the next kernel field added without a
migration fails here, naming it), and an undeclared change is still refused, named.
"""
import json
import pathlib

import attrs
import pytest

from apeinxfs import config as config_mod
from apeinxfs import snapshots
from apeinxfs.compaction import Start, unusable
from apeinxfs.kernel import Kernel, migrations
from apeinxfs.kernel.counters import Counters, TenantCounts
from apeinxfs.kernel.config import GpuConfig, KernelConfig, MemoryRetention, ModelConfig
from apeinxfs.kernel.events import Chunk, Control, Kill, Step, Submit, Tick
from apeinxfs.kernel.lazyheap import LazyHeap
from apeinxfs.kernel.spec import TaskCommand, TaskSpec
from apeinxfs.kernel.state import LayoutError, encode, layout
from kernel_state import state_difference

PREVIOUS = json.loads((pathlib.Path(__file__).parent / "data" / "layout-7958f78.json").read_text())
RUN_QUEUE, TASK = "apeinxfs.kernel.runqueue.RunQueue", "apeinxfs.kernel.task.Task"
TWO_MODELS = KernelConfig(models=[ModelConfig(name="a"), ModelConfig(name="b")],
                          gpus=[GpuConfig(index=0, kv_mib=64, slots=1)])


def queued_kernel() -> Kernel:
    """A kernel of two models on one single-slot GPU: the first task runs, four of both models wait in the queue."""
    kernel = Kernel(TWO_MODELS)
    for number, model in enumerate("abbab"):
        kernel.apply(Submit(spec=TaskSpec(name=f"job{number}", max_tokens=3, model=model), uid=0), number)
    return kernel


def as_previous_release(kernel: Kernel) -> bytes:
    """The kernel's state as the previous release encoded it: its run queue without `_models` and `_tenants`, its moves
    without `backfill_after_us`, its task table without `live_pids` and with one heap of reapable tasks (`reapable`)
    for `reap_order`, its counters without tenants' shares (a slotted attrs class: its pickled state is its
    __getstate__'s, left without those two fields)."""
    models, tenants, rest, live, order = kernel.runq._models, kernel.runq._tenants, kernel.moves.backfill_after_us, \
        kernel.tasks.live_pids, kernel.tasks.reap_order
    del kernel.runq._models, kernel.runq._tenants, kernel.moves.backfill_after_us, kernel.tasks.live_pids
    del kernel.tasks.reap_order
    kernel.tasks.reapable = sorted(entry for heap in order.heaps.values() for entry in heap)  # a sorted list: a heap
    getstate = Counters.__getstate__
    Counters.__getstate__ = lambda counters: {name: value for name, value in getstate(counters).items()  # type: ignore
                                              if name not in ("tenants", "unshared")}
    try:
        return encode(kernel)
    finally:
        kernel.runq._models, kernel.runq._tenants, kernel.moves.backfill_after_us = models, tenants, rest
        kernel.tasks.live_pids, kernel.tasks.reap_order = live, order
        del kernel.tasks.reapable
        Counters.__getstate__ = getstate  # type: ignore[method-assign]


def counted_as_previous_release(kernel: Kernel) -> None:
    """Make `kernel`'s counters those the previous release kept, migrated: no tenant's share, the totals unshared."""
    kernel.counters.unshared = TenantCounts(**{name: getattr(kernel.counters, name)
                                               for name in attrs.fields_dict(TenantCounts)})
    kernel.counters.tenants = {}


def lived_kernel() -> Kernel:
    """A kernel of two models on one single-slot GPU keeping one exited task, with tasks of tenants t and default:
    1 (t) ran to its end and 4 (t) was killed, both reaped; 3 (default) killed, kept; 6 (t) stopped; 2 (t), 5
    (default, running) and 7 (default) live."""
    kernel = Kernel(attrs.evolve(TWO_MODELS, tenants=[{"name": "default"}, {"name": "t"}],
                                 retention=MemoryRetention(tasks=1)))
    for number, (model, tenant) in enumerate(zip("abbabab", ["t", "t", "default", "t", "default", "t", "default"])):
        spec = TaskSpec(name=f"job{number}", max_tokens=3, model=model, tenant=tenant)
        kernel.apply(Submit(spec=spec, uid=0), number)
    kernel.apply(Step(gpu=0, chunks=[Chunk(pid=1, text=" w", tokens=3, prefill=4)]), 10)
    for now_us, event in [(20, Kill(pid=4, uid=0)), (25, Kill(pid=3, uid=0)),
                          (30, Control(pid=6, command=TaskCommand("stop"), uid=0)), (40, Tick())]:
        kernel.apply(event, now_us)
    return kernel


def difference_but_live_marks(live: Kernel, loaded: Kernel) -> str:
    """state_difference of the kernels, their task tables' live pids compared as sets by tenant and their run
    queues' counts by tenant as dicts: the index's counters (`changes`, the marks and their order) count the
    changes it saw, which an index migrated from the tasks (LivePids.of) never saw, and no decision reads them
    but a reader's own (records.py LiveRanges); the counts' order is the tenants' first queued, recounted in
    queue order, and nothing reads it."""
    if live.tasks.live_pids.by_tenant != loaded.tasks.live_pids.by_tenant:
        return f"live pids {live.tasks.live_pids.by_tenant} != {loaded.tasks.live_pids.by_tenant}"
    if live.runq._tenants != loaded.runq._tenants:
        return f"queued by tenant {live.runq._tenants} != {loaded.runq._tenants}"
    index, live.tasks.live_pids = live.tasks.live_pids, loaded.tasks.live_pids
    tenants, live.runq._tenants = live.runq._tenants, loaded.runq._tenants
    try:
        return state_difference(live, loaded)
    finally:
        live.tasks.live_pids, live.runq._tenants = index, tenants


def test_previous_release_snapshot_loads_with_models_recounted():
    """The old-layout state of a kernel with exited, reaped, stopped and killed tasks of two tenants loads
    migrated: `_models`, the live pids and the reap order (from the one heap `reapable`) are the live kernel's, the
    counts so far no tenant's share (as that release kept them), the whole state is the same (the live pids' counters aside), and the invariants hold then
    and after more events applied to both."""
    live = lived_kernel()
    assert (live.counters.reaped, {pid: task.state.name for pid, task in live.tasks.items()}) == \
        (2, {2: "QUEUED", 3: "EXITED", 5: "RUNNING", 6: "STOPPED", 7: "QUEUED"})
    loaded = migrations.load(as_previous_release(live), PREVIOUS, layout(live.config))
    assert loaded.tasks.live_pids.by_tenant == {"t": {2, 6}, "default": {5, 7}}
    assert not hasattr(loaded.tasks, "reapable") and loaded.tasks.reap_order.heaps == {"default": [(25, 3)]}
    assert loaded.counters.tenants == {} and loaded.counters.unshared.dispatched == live.counters.dispatched > 0
    counted_as_previous_release(live)
    assert (loaded.runq._models, loaded.runq._tenants) == (live.runq._models, {"t": 1, "default": 1})
    assert difference_but_live_marks(live, loaded) == ""
    loaded.check_invariants()
    for now_us, event in [(50, Step(gpu=0, chunks=[Chunk(pid=5, text=" w", tokens=3, prefill=4)])), (60, Tick()),
                          (70, Kill(pid=2, uid=0)), (80, Submit(spec=TaskSpec(name="late", model="a"), uid=0))]:
        for kernel in (live, loaded):
            kernel.apply(event, now_us)
        loaded.check_invariants()
    assert loaded.runq._models == live.runq._models and difference_but_live_marks(live, loaded) == ""


def test_every_change_since_the_previous_release_is_declared_or_defaulted():
    """The previous release's layout migrates to the code's: a kernel field added or gone since without a
    declaration in kernel/migrations.py (or an attrs default) fails here, by class and field."""
    now = layout(config_mod.load(use_nvml=False).kernel)
    assert RUN_QUEUE in migrations.changed(PREVIOUS, now)
    assert migrations.undeclared(PREVIOUS, now) == ""


def test_an_attrs_field_added_with_a_default_needs_no_declaration():
    """Tasks loaded without `vruntime` (an attrs field with a default, never declared) migrate, each given the
    default."""
    kernel, now = queued_kernel(), layout(TWO_MODELS)
    written = {**now, TASK: [f for f in now[TASK] if f != "vruntime"]}
    assert migrations.undeclared(written, now) == "" and TASK not in migrations.DECLARED
    for task in kernel.tasks.values():
        task.vruntime = 7
        del task.vruntime
    migrations.migrate(kernel, set(migrations.changed(written, now)))
    assert [task.vruntime for task in kernel.tasks.values()] == [0] * 5


def test_an_undeclared_change_is_refused_naming_its_fields(tmp_path):
    """A class that gained a field with no declaration nor default, or lost one, is refused, named with the
    field; a snapshot of that layout cannot start a daemon, saying so."""
    now, task = layout(TWO_MODELS), TASK
    written = {**now, task: [f for f in now[task] if f != "uid"] + ["retired"]}
    assert migrations.undeclared(written, now) == f"{task} (fields added: uid; gone: retired)"
    path = snapshots.write(str(tmp_path), 5, 1, 0, {}, written, b"state")
    why = unusable(snapshots.Snapshot.read(path), {}, now, 1, 9)
    assert why.endswith(f"written by an apeinxfs whose kernel keeps other state, with no migration declared for: "
                        f"{task} (fields added: uid; gone: retired)")


def test_a_class_gone_from_the_code_is_refused():
    """A class of the snapshot the code no longer has cannot be migrated: it is named."""
    now = layout(TWO_MODELS)
    assert migrations.undeclared({**now, "apeinxfs.kernel.old.Gone": ["x"]}, now) == \
        "apeinxfs.kernel.old.Gone (no longer in the kernel)"


def test_a_migration_that_does_not_fit_the_state_is_a_layout_error():
    """A state whose migration raises (here a run queue with no queue to recount) does not load: LayoutError."""
    kernel = queued_kernel()
    del kernel.runq._queue, kernel.runq._models
    with pytest.raises(LayoutError, match="the state does not migrate: AttributeError"):
        migrations.load(encode(kernel), PREVIOUS, layout(TWO_MODELS))


def test_a_migrated_start_builds_its_trace_event_once():
    """A start from a migrated snapshot holds one Migrated event, named by the snapshot's file and row and the
    classes without the package, which each call of migration() gives again; a start from row 1 has none."""
    snapshot = snapshots.Snapshot("/state/snapshots/snapshot-000000000042.snap", 42, 0, 0, {}, PREVIOUS, 0, 0, 0)
    start = Start(Kernel, 42, {}, snapshot, (RUN_QUEUE, "apeinxfs.kernel.moves.Moves"))
    assert start.migration() == [start.traced] and start.migration()[0] is start.migration()[0]
    assert (start.traced.snapshot, start.traced.classes) == \
        ("snapshot-000000000042.snap (row 42)", "runqueue.RunQueue, moves.Moves")
    assert Start(Kernel, 0, {}).migration() == []


def test_a_gpu_held_for_engine_kv_reports_loads_with_no_pages_beyond_the_books():
    """A snapshot of the previous release's KV books (GPUs `held` for their engines' reports, no `unbooked`)
    loads with no pages counted beyond the books and no `held`, its invariants holding."""
    kernel = queued_kernel()
    del kernel.kv.unbooked
    kernel.kv.held = {0: "engines report 4 KV pages in use on gpus 0, the books 1"}
    loaded = migrations.load(encode(kernel), PREVIOUS, layout(TWO_MODELS))
    assert loaded.kv.unbooked == {} and not hasattr(loaded.kv, "held")
    loaded.check_invariants()


def test_a_fair_queue_of_one_deadline_heap_loads_with_each_tenants_deadlines_indexed():
    """A fair queue as the previous release kept it (every queued deadline in one heap) loads with its deadlines
    indexed by tenant: the same boost first, its invariants holding."""
    kernel = Kernel(attrs.evolve(TWO_MODELS, tenants=[{"name": "default"}, {"name": "t"}]))
    for number, tenant in enumerate(["t", "t", "default", "t"]):
        spec = TaskSpec(name=f"job{number}", max_tokens=3, model="a", tenant=tenant, deadline_us=(9 - number) * 10**6)
        kernel.apply(Submit(spec=spec, uid=0), number)
    queue = kernel.runq._queue
    indexed, boosted = {tenant: set(heap) for tenant, heap in queue._boosts._of.items()}, kernel.runq.peek(5 * 10**6)
    assert indexed == {"t": {2, 4}, "default": {3}} and boosted.pid == 4
    queue._deadlines, queue._boost_at = LazyHeap(), queue._boosts.at
    for task in queue._members.values():
        queue._deadlines.set(task.pid, (task.deadline_at_us, task.pid))
    del queue._boosts
    loaded = migrations.load(encode(kernel), PREVIOUS, layout(kernel.config))
    boosts = loaded.runq._queue._boosts
    assert {tenant: set(heap) for tenant, heap in boosts._of.items()} == indexed
    assert not hasattr(loaded.runq._queue, "_deadlines") and loaded.runq.peek(5 * 10**6).pid == 4
    loaded.check_invariants()
