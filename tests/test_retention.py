"""Tier 1-2: retention (kernel/retention.py, the trace ring in kernel/trace.py, nodes/ringlog.py).

The kernel with explicit times reaps exited tasks by count (the oldest of the tenant keeping
the most first) and by age (the oldest first, before any for the count), a parent after its
children, never reuses a pid, forgets the books kept of a reaped task, and a replay of the
same events reaps the same tasks; the trace keeps its newest lines (and all those it is
told to hold); `[retention]` is validated at load. Without FUSE, the tree answers ENOENT for
a reaped task's files and `wait`, lists a bounded /tasks, and a ring log read from offset 0,
or followed at its growing size, gives each kept line once.
"""
import csv
import io

import attrs
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import invariant, run_state_machine_as_test

from apeinxfs import config as config_mod
from apeinxfs.kernel import Kernel
from apeinxfs.kernel.config import MemoryRetention, kernel_config_from_dict
from apeinxfs.kernel.errors import Busy, Invalid, NotFound
from apeinxfs.kernel.events import Chunk, Interrupted, Kill, Step, Submit, Tick
from apeinxfs.kernel.spec import TaskSpec
from apeinxfs.kernel.state import fields_of
from apeinxfs.kernel.task import State
from apeinxfs.kernel.trace import HEADER, TaskViews, TraceLog
from apeinxfs.nodes.base import Caller
from apeinxfs.nodes.ringlog import RingLog
from apeinxfs.nodes.tree import Tree
from kernel_machine import KernelMachine
from test_fairness_kernel import kernel as fair_kernel
from test_fairness_kernel import submit as submit_as
from test_journal_runtime import ONE_GPU, open_runtime
from test_kernel import STEP_US, kernel_config, run_until_idle, step, submit
from test_nodes import resolve

SECOND_US = 1_000_000


def retaining(tasks=10000, task_age_s=3600, trace_lines=100000, **fields) -> Kernel:
    """A kernel of test_kernel's small config with these retention limits."""
    config = attrs.evolve(kernel_config(**fields), retention=MemoryRetention(tasks, task_age_s, trace_lines))
    return Kernel(config)


def finish(kernel, count, now_us=0, **fields) -> list[int]:
    """Submit `count` one-token tasks at `now_us` and run them to their exit; their pids."""
    pids = [submit(kernel, now_us=now_us, name=f"t{index}", tokens=1, **fields) for index in range(count)]
    run_until_idle(kernel, now_us + STEP_US)
    return pids


# -- reaping, in the kernel ------------------------------------------------------------------------


def test_the_oldest_exited_tasks_go_beyond_the_count_and_pids_are_not_reused():
    """With tasks = 3, six finished tasks leave the three that exited last; the next pid is 7."""
    kernel = retaining(tasks=3, slots=1)
    pids = finish(kernel, 6)
    assert sorted(kernel.tasks) == pids[3:] and kernel.counters.reaped == 3
    assert kernel.tasks.count(State.EXITED) == 3
    assert submit(kernel, now_us=SECOND_US, tokens=1) == 7


def tenants_retaining(tasks: int, task_age_s: int = 3600) -> Kernel:
    """test_fairness_kernel's kernel (tenants a and b, two slots) keeping `tasks` exited tasks."""
    return Kernel(attrs.evolve(fair_kernel(slots=2).config, retention=MemoryRetention(tasks, task_age_s, 100000)))


def finish_as(kernel, tenants: str, now_us: int) -> tuple[list[int], int]:
    """Run one one-token task of each tenant named in `tenants` (one letter each), one after the other from
    `now_us`, to its exit; their pids, and the time after."""
    pids = []
    for tenant in tenants:
        pids.append(submit_as(kernel, tenant, tokens=1, now=now_us))
        now_us = run_until_idle(kernel, now_us + STEP_US)
    return pids, now_us


def test_beyond_the_count_the_tenant_keeping_the_most_loses_its_oldest_first():
    """With tasks = 4, b's two finished tasks stay while a's churn reaps a's own oldest, though b's exited
    first; the node keeps 4 exited tasks throughout."""
    kernel = tenants_retaining(4)
    theirs, now = finish_as(kernel, "bb", 0)
    mine, _ = finish_as(kernel, "aaaaa", now)
    assert sorted(kernel.tasks) == theirs + mine[3:] and kernel.counters.reaped == 3
    assert kernel.tasks.count(State.EXITED) == 4


def test_tenants_keeping_as_many_lose_the_task_that_exited_first():
    """With tasks = 3 and a and b keeping two finished tasks each, b's that exited first is the one reaped."""
    kernel = tenants_retaining(3)
    pids, _ = finish_as(kernel, "baba", 0)
    assert sorted(kernel.tasks) == pids[1:]


def test_an_event_past_both_limits_reaps_the_aged_first_and_no_more_for_the_count():
    """With tasks = 2 and task_age_s = 10, an exit that makes three exited tasks just as b's passes its age reaps
    b's alone: that brings the node to two, so a's (the fullest tenant's) both stay."""
    kernel = tenants_retaining(2, task_age_s=10)
    [theirs], _ = finish_as(kernel, "b", 0)
    [first], _ = finish_as(kernel, "a", 5 * SECOND_US)
    second = submit_as(kernel, "a", tokens=1, now=6 * SECOND_US)
    assert kernel.tasks.count(State.EXITED) == 2 and theirs in kernel.tasks
    step(kernel, kernel.tasks[theirs].exited_us + 10 * SECOND_US + 1)  # the second exits: three exited, b's aged
    assert sorted(kernel.tasks) == [first, second] and kernel.counters.reaped == 1


def test_exited_tasks_older_than_task_age_go_at_the_tick_after():
    """With task_age_s = 10 a task stays until 10 s after its exit; the next deadline is a tick a
    second after that, which reaps it."""
    kernel = retaining(task_age_s=10)
    [pid] = finish(kernel, 1)
    exited = kernel.tasks[pid].exited_us
    assert kernel.next_deadline_us() == exited + 11 * SECOND_US
    kernel.apply(Tick(), exited + 10 * SECOND_US - 1)
    assert pid in kernel.tasks
    kernel.apply(Tick(), kernel.next_deadline_us())
    assert pid not in kernel.tasks and kernel.next_deadline_us() is None


def test_the_first_exit_to_reap_by_age_is_news_to_the_deadline_timer():
    """An exit that becomes the oldest reapable task puts "deadline" in the kernel's changes (an idle
    daemon's timer, waiting for no deadline, must hear of the reap to come); a later one does not."""
    kernel = retaining(task_age_s=10, slots=1)
    kernel.take_changed()
    first, second = finish(kernel, 2)
    assert kernel.tasks[first].done and kernel.tasks[second].done
    kernel.take_changed()
    kernel.apply(Tick(), kernel.next_deadline_us())
    assert first not in kernel.tasks and second not in kernel.tasks
    [third] = finish(kernel, 1, now_us=kernel.now_us)
    assert "deadline" in kernel.take_changed()
    submit(kernel, now_us=kernel.now_us, name="later", tokens=1)
    kernel.take_changed()
    run_until_idle(kernel, kernel.now_us + STEP_US)
    assert third in kernel.tasks and "deadline" not in kernel.take_changed()


def test_a_parent_stays_while_its_children_live_and_goes_right_after_them():
    """With tasks = 0 a parent that exits first stays (listing its child) until the child exits;
    then both go, and the agent's scheduler account with them."""
    kernel = retaining(tasks=0)
    parent = submit(kernel, tokens=1)
    child = submit(kernel, tokens=3, parent=parent)
    step(kernel, STEP_US)
    assert kernel.tasks[parent].done and kernel.tasks[parent].children == [child]
    assert parent in kernel.accounts.agents
    run_until_idle(kernel, 2 * STEP_US)
    assert child not in kernel.tasks and parent not in kernel.tasks
    assert parent not in kernel.accounts.agents and len(kernel.tasks) == 0


def test_a_reaped_child_leaves_its_parents_children():
    """A child that exits long before its parent is reaped by age; the parent lists only the others."""
    kernel = retaining(task_age_s=1, slots=4, kv_mib=64)
    parent = submit(kernel, tokens=50)
    short, long = submit(kernel, tokens=1, parent=parent), submit(kernel, tokens=50, parent=parent)
    step(kernel, STEP_US)
    kernel.apply(Tick(), 3 * SECOND_US)
    assert short not in kernel.tasks and kernel.tasks[parent].children == [long]
    assert kernel.tasks.tree_done(kernel.tasks[parent]) is False


def test_a_reaped_pid_is_enoent_to_kill_and_to_a_parent_of_a_new_task():
    """Kill of a reaped pid is NotFound (not Busy, as for an exited one kept); so is parent=."""
    kernel = retaining(tasks=1)
    first, second = finish(kernel, 2)
    with pytest.raises(Busy):
        kernel.check(Kill(pid=second))
    with pytest.raises(NotFound):
        kernel.check(Kill(pid=first))
    with pytest.raises(NotFound):
        kernel.check(Submit(spec=TaskSpec(name="c", max_tokens=1, parent=first)))


def test_a_reaped_tasks_engine_books_go():
    """The resume count of an interrupted task that then finished is forgotten when it is reaped."""
    kernel = retaining(tasks=0)
    pid = submit(kernel, tokens=2)
    step(kernel, STEP_US)
    kernel.apply(Interrupted(pid=pid, reason="stream broke"), 2 * STEP_US)
    assert kernel.engines.book.resumes == {pid: 1}
    run_until_idle(kernel, 3 * STEP_US)
    assert pid not in kernel.tasks and kernel.engines.book.resumes == {}


def test_bills_stay_when_their_tasks_are_reaped():
    """The bill rows of reaped tasks are unchanged by reaping: tasks = 0 bills what tasks = 10000 bills."""
    kept, reaped = retaining(), retaining(tasks=0)
    for kernel in (kept, reaped):
        finish(kernel, 4)
    assert len(reaped.tasks) == 0 and len(kept.tasks) == 4
    assert reaped.bills.rows == kept.bills.rows and reaped.bills.rows


def test_a_replay_of_the_same_events_reaps_the_same_tasks():
    """Two kernels given the same timed events (submits, steps, ticks, a kill) hold the same tasks,
    trace, accounts and counters."""
    recorded = []
    original = retaining(tasks=5, task_age_s=2, trace_lines=40, slots=2)
    apply = original.apply

    def record(event, now_us):
        recorded.append((event, now_us))
        return apply(event, now_us)
    original.apply = record
    for round_ in range(6):
        now = round_ * SECOND_US
        for index in range(3):
            submit(original, now_us=now, name=f"r{round_}i{index}", tokens=2 + index)
        original.apply(Kill(pid=original.tasks.next_pid - 1), now)
        run_until_idle(original, now + STEP_US)
    original.apply(Tick(), 20 * SECOND_US)
    replica = retaining(tasks=5, task_age_s=2, trace_lines=40, slots=2)
    for event, now_us in recorded:
        replica.apply(event, now_us)
    assert sorted(replica.tasks) == sorted(original.tasks) and original.counters.reaped > 10
    assert replica.trace.view() == original.trace.view() and replica.counters == original.counters
    assert replica.accounts.agents.keys() == original.accounts.agents.keys()


class RetainingMachine(KernelMachine):
    """The kernel state machine keeping 2 exited tasks, for 50 ms, 40 trace lines and 4 audit lines."""

    retention = MemoryRetention(tasks=2, task_age_s=0.05, trace_lines=40, audit_lines=4)

    @invariant()
    def kept_within_the_limits(self):
        """Past `tasks` exited tasks, every one left is a parent of a live task; at most 40 trace lines, 4 audit lines."""
        tasks = self.kernel.tasks
        assert tasks.count(State.EXITED) <= 2 or tasks.oldest_reapable() is None
        assert self.kernel.trace.seq - self.kernel.trace.first < 40 and self.kernel.audit.seq - self.kernel.audit.first < 4


@pytest.mark.invariants_every(0)  # the machine checks the invariants after each rule itself
def test_random_event_sequences_with_small_retention_keep_the_books_and_replay_the_same():
    """100 sequences of 50 rules of every event kind, with tasks reaped as they go: invariants hold,
    the limits are kept, and a replay (at each restart and at the end) gives the same trace."""
    run_state_machine_as_test(RetainingMachine, settings=settings(
        max_examples=100, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]))


# -- the trace ring -----------------------------------------------------------------------------------


def lines_of(text) -> list[str]:
    return bytes(text).decode().splitlines()[1:]


def grow(trace: TraceLog, count: int, task=None) -> None:
    for _ in range(count):
        trace.emit(trace.seq + 1, "tick", task, f"line {trace.seq + 1}")


def test_the_trace_keeps_its_newest_lines_and_counts_the_bytes_dropped():
    """With limit 16, 100 lines leave 14 to 16, the newest, in order; kept plus dropped bytes are all written."""
    trace, written = TraceLog("n", limit=16), 0
    for _ in range(100):
        grow(trace, 1)
        text, dropped = trace.view()
        assert 14 <= len(lines_of(text)) <= 16 or trace.seq < 14
        written = len(text) + dropped
    seqs = [int(line.split(",")[0]) for line in lines_of(trace.buffer)]
    assert seqs == list(range(trace.first, 101)) and seqs[-1] == 100
    assert written == len(HEADER) + sum(len(f'{s},{s},tick,,,,,n,"line {s}"\n') for s in range(1, 101))


def test_held_lines_stay_until_released():
    """Lines after `hold` stay past the limit; lines_after the hold has them all; release trims."""
    trace = TraceLog("n", limit=8)
    grow(trace, 5)
    trace.hold = 5
    grow(trace, 30)
    assert trace.first <= 6 and len(trace.lines_after(5).splitlines()) == 30
    trace.release(35)
    assert 7 <= len(lines_of(trace.buffer)) <= 8 and trace.first > 5


def test_task_and_tenant_views_keep_only_the_kept_lines():
    """A task's and its tenant's views show its lines that are still in the ring, oldest first."""
    kernel = retaining(trace_lines=16)
    pid = submit(kernel, tokens=1)
    early = bytes(kernel.trace.of_tenant("default"))
    grow(kernel.trace, 40, kernel.tasks[pid])
    task_lines, tenant_lines = lines_of(kernel.trace.of_task(kernel.tasks[pid])), lines_of(kernel.trace.of_tenant("default"))
    assert task_lines == tenant_lines == lines_of(kernel.trace.buffer)
    text, dropped = kernel.trace.tenant_view("default")
    assert text.endswith(task_lines[-1].encode() + b"\n") and dropped >= len(early) - len(HEADER)


def read_in_pieces(views: TaskViews, trace: TraceLog, task, size: int) -> bytes:
    """A task's events read from 0 to the end `size` bytes at a time, as the file's handle reads them."""
    text, offset = b"", 0
    while piece := bytes(views.of_task(trace, task, offset + size)[offset:offset + size]):
        text, offset = text + piece, offset + len(piece)
    return text


def test_a_tasks_events_read_in_small_pieces_are_its_kept_lines_as_they_grow_and_drop():
    """While its lines and another task's go past the ring's 64, a task's events read 100 bytes at a time
    are the header and its lines in the ring, in order, at every eighth pass; at the others, only the first
    100 bytes are read (the lines after them wait, and many are dropped before any read reaches them)."""
    kernel, views = retaining(trace_lines=64), TaskViews()
    pid, other = submit(kernel, tokens=1), submit(kernel, tokens=1)
    for round_ in range(25):
        grow(kernel.trace, 9, kernel.tasks[pid])
        grow(kernel.trace, 4, kernel.tasks[other])
        if round_ % 8:
            views.of_task(kernel.trace, kernel.tasks[pid], 100)
            continue
        kept = [line for line in bytes(kernel.trace.buffer).splitlines(keepends=True)[1:]
                if line.split(b",")[3] == str(pid).encode()]
        assert read_in_pieces(views, kernel.trace, kernel.tasks[pid], 100) == HEADER + b"".join(kept)
    assert kernel.trace.first > 3 * 64


def test_a_small_read_of_a_tasks_events_renders_only_the_lines_it_reaches():
    """After 1,000 lines, the events rendered for a 4 KiB read hold 4 KiB and a line, not the whole file."""
    kernel, views = retaining(), TaskViews()
    task = kernel.tasks[submit(kernel, tokens=1)]
    grow(kernel.trace, 1000, task)
    head = bytes(views.of_task(kernel.trace, task, 4096))
    assert 4096 <= len(head) < 4096 + 100 and len(kernel.trace.of_task(task)) > 5 * len(head)
    assert head == bytes(views.of_task(kernel.trace, task)[:len(head)])


def test_a_reaped_tasks_view_goes_at_the_next_drop_of_lines():
    """The view kept of a task read before it was reaped is forgotten once the ring next drops lines."""
    kernel, views = retaining(tasks=0, trace_lines=16), TaskViews()
    pid = submit(kernel, tokens=1)
    views.of_task(kernel.trace, kernel.tasks[pid])
    run_until_idle(kernel, STEP_US)
    views.prune(kernel.trace)
    assert pid not in kernel.tasks and pid in views._views
    grow(kernel.trace, 16)
    views.prune(kernel.trace)
    assert pid not in views._views


def test_a_reaped_tasks_pid_is_unnamed_in_another_tasks_view():
    """`pid N` of a task the kernel no longer holds is redacted in a tenant's view: its tenant is unknown."""
    kernel = retaining()
    pid = submit(kernel, tokens=1)
    kernel.trace.emit(1, "preempt", kernel.tasks[pid], f"for pid {pid + 1} (reaped), then pid {pid}")
    assert f"for another tenant's task (reaped), then pid {pid}" in kernel.trace.of_task(kernel.tasks[pid]).decode()


# -- configuration -----------------------------------------------------------------------------------


@pytest.mark.parametrize("line, reason", [
    ("tasks = -1", "retention.tasks must be an integer >= 0, not -1"),
    ("tasks = 2.5", "retention.tasks must be an integer >= 0, not 2.5"),
    ("task_age_s = \"1h\"", "retention.task_age_s must be a number of seconds >= 0, not '1h'"),
    ("task_age_s = -3", "retention.task_age_s must be a number of seconds >= 0, not -3"),
    ("trace_lines = 0", "retention.trace_lines must be an integer >= 1, not 0"),
    ("trace_lines = true", "retention.trace_lines must be an integer >= 1, not True"),
    ("audit_lines = 0", "retention.audit_lines must be an integer >= 1, not 0"),
    ("audit_lines = \"many\"", "retention.audit_lines must be an integer >= 1, not 'many'"),
    ("lines = 5", "unknown key retention.lines"),
    ("snapshot_s = true", "retention.snapshot_s must be a number of seconds > 0, not True"),
    ("snapshot_s = inf", "retention.snapshot_s must be a number of seconds > 0, not inf"),
])
def test_bad_retention_values_are_refused_at_load(tmp_path, line, reason):
    """A bad [retention] value stops the config from loading, with the key and the reason."""
    assert reason in load_refusal(tmp_path, f"[retention]\n{line}\n")


def load_refusal(tmp_path, text: str) -> str:
    """The reason a configuration file of `text` is refused as it loads."""
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(Invalid) as refused:
        config_mod.load(str(path), str(tmp_path), use_nvml=False)
    return refused.value.reason


def test_retention_is_in_the_kernel_config_the_boot_row_records(tmp_path):
    """The kernel's four keys go to its config, which survives the boot row's dict form; the archives' stay the daemon's."""
    path = tmp_path / "config.toml"
    path.write_text("[retention]\ntasks = 7\ntask_age_s = 1.5\ntrace_lines = 99\ntrace_bytes = 1000\n"
                    "audit_lines = 33\naudit_bytes = 5000\n")
    config = config_mod.load(str(path), str(tmp_path), use_nvml=False)
    assert config.kernel.retention == MemoryRetention(tasks=7, task_age_s=1.5, trace_lines=99, audit_lines=33)
    assert config.retention.trace_bytes == 1000 and config.retention.audit_bytes == 5000
    assert kernel_config_from_dict(attrs.asdict(config.kernel)).retention == config.kernel.retention
    assert kernel_config_from_dict({k: v for k, v in attrs.asdict(config.kernel).items() if k != "retention"}
                                   ).retention == MemoryRetention()


# -- the tree, without FUSE ------------------------------------------------------------------------------

SMALL = ONE_GPU + "[retention]\ntasks = 2\ntrace_lines = 24\n"
ADMIN = Caller()


def run_all(rt) -> None:
    """Deliver one-token steps until nothing runs."""
    while batch := rt.kernel.batch(0):
        rt.deliver(Step(gpu=0, chunks=[Chunk(pid=t.pid, text=" w", tokens=1, prefill=1, final=True) for t in batch]))


def submit_all(rt, count: int) -> list[int]:
    return rt.commit([Submit(spec=TaskSpec(name=f"t{i}", max_tokens=1), uid=1000) for i in range(count)])


@pytest.fixture
def small(tmp_path):
    with open_runtime(tmp_path, SMALL) as runtime:
        yield runtime


def test_a_reaped_tasks_files_are_enoent_and_tasks_lists_at_most_the_kept(small):
    """Of five finished tasks /tasks lists two; the others' directories and files are ENOENT."""
    tree, pids = Tree(small), submit_all(small, 5)
    run_all(small)
    tasks = resolve(tree, "/tasks")
    assert [name for name, _ in tasks.entries()] == [str(pid) for pid in pids[3:]]
    for path in (f"/tasks/{pids[0]}", f"/tasks/{pids[0]}/status", f"/tasks/{pids[0]}/wait"):
        with pytest.raises(NotFound):
            resolve(tree, path)


async def test_wait_on_a_task_reaped_while_read_is_enoent(small):
    """A `wait` opened on a live task whose reader is blocked ends with ENOENT once the task is reaped."""
    tree = Tree(small)
    [parent] = submit_all(small, 1)
    child = small.commit([Submit(spec=TaskSpec(name="c", max_tokens=50, parent=parent), uid=1000)])[0]
    handle = resolve(tree, f"/tasks/{parent}/wait").open(ADMIN, writing=False, reading=True)

    async def waiter(key, caller):  # while the reader is blocked: the tree ends and more tasks push it out
        assert small.kernel.tasks.get(parent) is not None, "woken once only"
        small.commit([Kill(pid=child)])
        submit_all(small, 3)
        run_all(small)
    with pytest.raises(NotFound):
        await handle.read(0, 100, waiter)
    assert parent not in small.kernel.tasks


async def test_cat_of_trace_events_reads_the_header_and_the_kept_lines(small):
    """Reading /trace/events from 0 in small chunks gives the header and every kept line once, while
    its size counts the dropped lines too."""
    submit_all(small, 10)
    run_all(small)
    node = resolve(Tree(small), "/trace/events")
    text, dropped = small.kernel.trace.view()
    assert isinstance(node, RingLog) and dropped and node.size() == len(text) + dropped
    handle, read, offset = node.open(ADMIN, writing=False, reading=True), b"", 0
    while chunk := await handle.read(offset, 100, None):
        read, offset = read + chunk, offset + len(chunk)
    assert read == bytes(text) and read.startswith(HEADER)


async def test_a_follower_at_the_growing_size_gets_each_new_line_once(small):
    """Like `tail -f`: read from the size at open, then again whenever it grew, across many drops:
    every line written after the open comes once, in order."""
    node = resolve(Tree(small), "/trace/events")
    handle, offset, followed = node.open(ADMIN, writing=False, reading=True), node.size(), b""
    first_seq = small.kernel.trace.seq + 1
    for _ in range(8):
        submit_all(small, 3)
        run_all(small)
        while chunk := await handle.read(offset, 64, None):
            followed, offset = followed + chunk, offset + len(chunk)
        assert offset == node.size()
    seqs = [int(row["seq"]) for row in csv.DictReader(io.StringIO(HEADER.decode() + followed.decode()))]
    assert seqs == list(range(first_seq, small.kernel.trace.seq + 1)) and small.kernel.trace.first > first_seq


def test_a_tasks_events_read_through_the_tree_are_kept_beside_the_kernel_and_go_once_reaped(small):
    """/tasks/PID/events keeps its rendered lines on the Runtime, the kernel's trace holding the fields of a fresh
    one (a snapshot's layout unchanged by reads); once the task is reaped and lines dropped, its view goes."""
    tree, (pid,) = Tree(small), submit_all(small, 1)
    run_all(small)
    node = resolve(tree, f"/tasks/{pid}/events")
    assert node.size() == len(small.kernel.trace.of_task(small.kernel.tasks[pid])) and pid in small.task_views._views
    assert fields_of(small.kernel.trace).keys() == fields_of(TraceLog("n")).keys()
    submit_all(small, 5)
    run_all(small)
    assert pid not in small.kernel.tasks and pid not in small.task_views._views


def test_a_tenant_view_grows_in_size_as_its_oldest_lines_go(small):
    """/tenants/default/events: its size never shrinks and its text holds only kept lines."""
    node, sizes = resolve(Tree(small), "/tenants/default/events"), []
    for _ in range(6):
        submit_all(small, 3)
        run_all(small)
        sizes.append(node.size())
    text, _ = node.source()
    assert sizes == sorted(sizes) and len(lines_of(text)) <= 24


def test_the_trace_holds_what_the_archive_lacks(tmp_path):
    """With an archive, a commit of more lines than trace_lines keeps them until archived, then trims;
    the archive has every line."""
    from apeinxfs.archive import Archive
    from apeinxfs.journal import Journal
    from apeinxfs.runtime import Runtime
    path = tmp_path / "config.toml"
    path.write_text(SMALL)
    config = config_mod.load(str(path), str(tmp_path / "state"), use_nvml=False)
    archive = Archive(str(tmp_path / "state" / "trace"), 1 << 20)
    rt = Runtime(config, Journal(str(tmp_path / "state" / "journal.db")), archive=archive)
    try:
        submit_all(rt, 60)
        assert len(lines_of(rt.kernel.trace.buffer)) <= 24
        archived = b"".join(archive.lines())
        assert [int(line.split(b",")[0]) for line in archived.splitlines()] == list(range(1, rt.kernel.trace.seq + 1))
    finally:
        rt.journal.close()
        archive.close()


def test_deadline_entries_of_ended_tasks_do_not_pile_up():
    """Tasks under a long deadline that end early leave at most a few entries per live task behind."""
    kernel = retaining(tasks=10, slots=4, kv_mib=64)
    for round_ in range(100):
        finish(kernel, 4, now_us=round_ * SECOND_US, deadline_us=3600 * SECOND_US)
    assert kernel.counters.submitted == 400 and len(kernel.tasks._deadlines) <= 65  # no task is live: the slack of 64, and one
