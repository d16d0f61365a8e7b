"""A tenant's view of the trace: the one shared pattern of names redacts as the pattern per viewer did, and
removed tenants are forgotten, so the trace's per-tenant state stays bounded while tenants come and go.

`old_redacted` is the redaction before the shared pattern (one pattern per viewer of every other tenant's
name), kept here as the reference the new one is checked against.
"""
import re

import attrs
import hypothesis.strategies as st
from hypothesis import example, given, settings

from apeinxfs.kernel import state
from apeinxfs.kernel.config import MemoryRetention
from apeinxfs.kernel.events import Kill, RemoveTenant, SetTenant
from apeinxfs.kernel.kernel import Kernel
from apeinxfs.kernel.tenant_config import TenantConfig
from apeinxfs.kernel.trace import HEADER, TraceLog
from test_fairness_kernel import kernel as fair_kernel
from test_fairness_kernel import submit
from test_isolation import _Task

NAME_CHARS = "ab:)(.*|"  # prefixes of each other, words inside each other, regex metacharacters
NAMES = st.text(NAME_CHARS, min_size=1, max_size=3).filter(lambda name: name not in (".", ".."))
PIECES = st.one_of(st.sampled_from(["", " ", "(", ")", ":", ";", ",", "'", "\"", "=", "pid ", "pid=", "x"]),
                   st.integers(0, 12).map(str), NAMES)


def old_redacted(trace: TraceLog, viewer: str, line: bytes) -> bytes:
    """`line` as `viewer`'s users read it, by the pattern of every other tenant with lines (the old code)."""
    others = sorted((name.encode() for name in trace._tenant_last if name != viewer), key=len, reverse=True)
    names = b"|".join(map(re.escape, others)) or b"(?!)"
    pattern = re.compile(rb"(?<![^\s(])(?:pid[ =]([0-9]+)|(?:" + names + rb"))(?=$|[\s),;:'\"])")

    def redacted(match: re.Match[bytes]) -> bytes:
        if match[1] is None:
            return b"another tenant"
        task = trace.tasks.get(int(match[1]))
        return bytes(match[0]) if task is not None and task.tenant == viewer else b"another tenant's task"
    head, _, detail = line.partition(b',"')
    return head + b',"' + pattern.sub(redacted, detail)


def lines_of(trace: TraceLog, tenant: str) -> list[bytes]:
    """The whole trace's lines of `tenant`'s tasks, every name in them."""
    lines = bytes(trace.buffer).splitlines(keepends=True)[1:]
    return [line for line in lines if line.split(b",", 5)[4] == tenant.encode()]


@settings(max_examples=300, deadline=None)
@given(st.lists(NAMES, min_size=1, max_size=8, unique=True),
       st.lists(st.tuples(st.integers(0, 7), st.lists(PIECES, max_size=8)), min_size=1, max_size=12),
       NAMES)
@example(["a", "a:b"], [(0, ["x"]), (1, ["a:b", " ", "a"])], "c")  # the viewer's own name holds another's as a word
@example(["b", "x(b"], [(0, ["x"]), (1, ["x(b", ")"])], "c")  # and another's after its `(`
def test_every_view_redacts_as_the_pattern_per_viewer_did(names, lines, stranger):
    """Over random names (prefixes of each other, regex metacharacters) and details, each tenant's view and
    each task's are the old redaction of their lines, and so is the view of a tenant with no lines."""
    trace = TraceLog("n", tasks={})
    tasks = [_Task(pid, name) for pid, name in enumerate(names, 1)]
    trace.tasks.update({task.pid: task for task in tasks[:-1]})  # the last one's pid is a reaped task's
    for which, pieces in lines:
        trace.emit(0, "note", tasks[which % len(tasks)], "".join(pieces))
    for viewer in [*names, stranger]:
        expected = [old_redacted(trace, viewer, line) for line in lines_of(trace, viewer)]
        assert bytes(trace.of_tenant(viewer)).splitlines(keepends=True)[1:] == expected
    for task in tasks:
        assert trace.of_task(task).splitlines(keepends=True)[1:] == \
            [old_redacted(trace, task.tenant, line) for line in lines_of(trace, task.tenant) if
             line.split(b",", 4)[3] == str(task.pid).encode()]


def test_a_removed_tenant_stays_redacted_while_lines_before_its_removal_are_kept():
    """Tenant a's name in b's line stays "another tenant" after a is removed, until that line is dropped."""
    trace = TraceLog("n", tasks={}, limit=8)
    a, b = _Task(1, "a"), _Task(2, "b")
    trace.emit(0, "submit", a, "name=x")
    trace.emit(0, "preempt", b, "fair: tenant a is ahead")
    trace.forget("a")
    assert b"fair: tenant another tenant is ahead" in trace.of_tenant("b")
    assert "a" in trace._tenant_last
    for _ in range(8):
        trace.emit(0, "note", b, "on")
    assert "a" not in trace._tenant_last and not trace._removed


def test_a_tenant_added_again_before_it_is_forgotten_keeps_its_lines():
    """A removed tenant that has lines again before its old ones are dropped is not forgotten."""
    trace = TraceLog("n", tasks={}, limit=8)
    a, b = _Task(1, "a"), _Task(2, "b")
    trace.emit(0, "submit", a, "one")
    trace.forget("a")
    trace.emit(0, "submit", a, "two")
    for _ in range(8):
        trace.emit(0, "note", b, "on")
    assert "a" in trace._tenant_last and not trace._removed


def test_cycling_tenants_keeps_the_traces_per_tenant_state_bounded():
    """Adding a tenant, running and killing a task of it, reading its views and removing it, 300 times over,
    leaves the trace knowing at most the tenants whose lines it still keeps."""
    k = Kernel(attrs.evolve(fair_kernel().config, retention=MemoryRetention(trace_lines=64)))
    for n in range(300):
        name = f"t{n}"
        k.apply(SetTenant(tenant=TenantConfig(name), what=f"add {name}"), n)
        pid = submit(k, tenant=name, now=n)
        k.apply(Kill(pid=pid), n)
        k.trace.of_tenant(name), k.trace.of_task(k.tasks[pid])
        k.apply(RemoveTenant(name=name), n)
    assert len(k.trace._tenant_last) <= 64 and len(k.trace._removed) <= 64 and not k.trace._tenant_views


def test_a_snapshot_holds_no_pattern():
    """Reading a view builds the pattern of names, which a snapshot leaves out: the state's bytes are the same."""
    k = fair_kernel()
    submit(k, tenant="a")
    before = state.encode(k)
    assert b"another tenant" not in k.trace.of_task(next(iter(k.tasks.values())))
    assert state.encode(k) == before



def old_words(theirs: int, mine: int) -> bytes:
    """A dispatch line of b's task `mine` as traced before a backfill named the pid passed as `pid N`."""
    return f'9,1,dispatch,{mine},b,sim,0,,"fair: backfill past {theirs} (its GPUs are full), then x"\n'.encode()


def test_an_archived_dispatch_in_the_old_words_hides_another_tenants_pid():
    """A reaped task's archived dispatch traced as `backfill past N (` reads `another tenant's task` in b's
    view, as one in today's words does."""
    k = fair_kernel(slots=1)
    theirs, mine = submit(k, "a", tokens=50), submit(k, "b", tokens=50)
    shown = k.trace.redact_lines("b", HEADER + old_words(theirs, mine))
    assert b"backfill past another tenant's task (" in shown and f"past {theirs} (".encode() not in shown


def test_a_ring_line_in_the_old_words_hides_another_tenants_pid():
    """A dispatch in the ring in the old words (as an old snapshot's ring holds) hides a's pid from b's view."""
    k = fair_kernel(slots=1)
    theirs, mine = submit(k, "a", tokens=50), submit(k, "b", tokens=50)
    k.trace.emit(1, "dispatch", k.tasks[mine], f"fair: backfill past {theirs} (its GPUs are full), then x")
    view = bytes(k.trace.of_tenant("b"))
    assert b"backfill past another tenant's task (" in view and f"past {theirs} (".encode() not in view
