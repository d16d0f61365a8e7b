"""Tier 1: the dry run of a split submit write's admission (kernel/submits.py `admit_anywhere`, `Anywhere`):
it never changes the kernel, refuses a line exactly as admit does where the line's model and parent are here,
counts a child of a task on another node in that task's tenant, and leaves out what only the node running a
line can know (a model only other nodes hold, this node's KV pages)."""
import copy
import errno

import pytest
from hypothesis import given, settings, strategies as st

from apeinxfs.kernel import Kernel
from apeinxfs.kernel.config import GpuConfig, KernelConfig, ModelConfig
from apeinxfs.kernel.errors import ApeinxError, NotFound
from apeinxfs.kernel.events import SetRules, Submit
from apeinxfs.kernel.spec import TaskSpec
from apeinxfs.kernel.submits import Anywhere
from apeinxfs.kernel.tenancy import Elsewhere
from apeinxfs.kernel.tenant_config import Budget, Quota, Sandbox, TenantConfig

from kernel_state import state_difference

NOW_US = 1_000 * 60_000_000
REMOTE = 500  # a live task of tenant t on another node
ELSEWHERE = Anywhere(models_elsewhere=frozenset({"other"}), parents={REMOTE: "t"})
AWAY = {"t": Elsewhere(live=1, reserved=300, quota={1000: 200})}


def kernel(live: tuple[str, ...] = ("t", "u", "t")) -> Kernel:
    """A node holding `sim` and `short` (context 600), tenants with quotas, a budget, a sandbox and policy
    rules, and a live task of each tenant in `live` (pids from 1)."""
    tenants = (TenantConfig("default"), TenantConfig("t", quota=Quota(tasks=4, tokens=6000, window=60)),
               TenantConfig("u", budget=Budget(tokens=3000), sandbox=Sandbox(max_tokens=900, models=("sim",))),
               TenantConfig("k", quota=Quota(kv_pages=1)))
    made = Kernel(KernelConfig(models=[ModelConfig(name="sim"), ModelConfig(name="short", context=600)],
                               gpus=[GpuConfig(index=0)], node="a", tenants=tenants))
    made.apply(SetRules(rules=("deny tenant=u model=short", "limit tenant=t max_tokens=1500")), NOW_US)
    for tenant in live:
        made.apply(Submit(spec=TaskSpec(name="old", max_tokens=100, tenant=tenant)), NOW_US)
    return made


lines = st.builds(lambda tenant, model, tokens, prio, parent: TaskSpec(
    name="j", tenant=None if parent else tenant, model=model, max_tokens=tokens, prio=prio, parent=parent),
    st.sampled_from(["t", "u", "default", "k", "nope"]), st.sampled_from([None, "sim", "short", "other", "ghost"]),
    st.integers(1, 2500), st.integers(0, 9), st.sampled_from([None, None, 1, 2, 99, REMOTE]))


def outcomes(admit, specs: list[TaskSpec]) -> list[tuple[int, str] | None]:
    """Each line's refusal (errno, reason) or None, every line counting the admitted ones before it."""
    found, batch = [], {}
    for spec in specs:
        try:
            admit(Submit(spec=spec, uid=0), NOW_US, batch, AWAY)
            found.append(None)
        except ApeinxError as exc:
            found.append((exc.errno, exc.reason))
    return found


def dry_run(made: Kernel):
    return lambda event, now, batch, away: made.submits.admit_anywhere(event, now, batch, away, ELSEWHERE)


@settings(max_examples=60, deadline=None)
@given(st.lists(lines, max_size=12))
def test_the_dry_run_of_any_write_leaves_the_kernel_as_it_was(specs):
    """However a write's lines are refused or admitted, the kernel's whole state after its dry run is the same
    as before it."""
    made = kernel()
    before = copy.deepcopy(made)
    outcomes(dry_run(made), specs)
    assert state_difference(before, made) == ""


@settings(max_examples=80, deadline=None)
@given(st.lists(lines, max_size=12))
def test_the_dry_run_refuses_what_admit_refuses_for_a_model_here(specs):
    """Over writes whose lines name models and parents this node holds (none needing more KV pages than it has), the dry
    run refuses each line as admit does, with the same errno and reason; but for tenant k's KV-page quota,
    counted in the running node's pages, which it leaves out."""
    specs = [spec for spec in specs if spec.model not in ("other", "ghost") and spec.parent != REMOTE]
    made = kernel()
    expected = outcomes(made.admit, specs)
    got = outcomes(dry_run(made), specs)
    for spec, want, have in zip(specs, expected, got):
        if want is not None and "kv_pages quota" in want[1]:
            break  # the rest count a batch the dry run admitted this line into
        assert have == want, spec


def test_a_model_only_another_node_holds_is_left_to_it_and_one_nowhere_is_enoent():
    """A line naming `other` (held by another up node) passes the dry run though this node lacks it; `ghost`
    (no node holds it) is ENOENT as admit says."""
    made = kernel()
    assert outcomes(dry_run(made), [TaskSpec(name="j", tenant="t", model="other", max_tokens=10)]) == [None]
    refused = outcomes(dry_run(made), [TaskSpec(name="j", tenant="t", model="ghost", max_tokens=10)])
    assert refused == [(errno.ENOENT, "unknown model 'ghost': see /models")]
    with pytest.raises(NotFound):
        made.admit(Submit(spec=TaskSpec(name="j", tenant="t", model="other", max_tokens=10)), NOW_US, {}, AWAY)


def test_a_write_over_the_task_quota_is_refused_at_the_line_that_passes_it():
    """Tenant t, quota tasks 4, with 2 live here and 1 elsewhere: the dry run of three lines admits the first
    and refuses the next two with EDQUOT, as a single node's admission of the write would."""
    refused = (errno.EDQUOT, "tenant t has 4 live tasks (1 on other nodes); its quota allows 4")
    specs = [TaskSpec(name="j", tenant="t", max_tokens=10)] * 3
    assert outcomes(dry_run(kernel()), specs) == [None, refused, refused]


def test_a_child_of_a_task_on_another_node_counts_in_its_parents_tenant():
    """Tenant t (quota tasks 4: 2 live here, 1 elsewhere): a child of t's task on another node counts as t's
    fourth task, so a line of t after it is EDQUOT; a child naming tenant u is EINVAL as a local child's is."""
    refused = (errno.EDQUOT, "tenant t has 4 live tasks (1 on other nodes); its quota allows 4")
    child, own = TaskSpec(name="c", max_tokens=10, parent=REMOTE), TaskSpec(name="j", tenant="t", max_tokens=10)
    assert outcomes(dry_run(kernel()), [child, own]) == [None, refused]
    named = TaskSpec(name="c", max_tokens=10, parent=REMOTE, tenant="u")
    assert outcomes(dry_run(kernel()), [named]) == [(errno.EINVAL, "a child runs in its parent's tenant 't', not 'u'")]


@pytest.mark.parametrize("model", ["sim", "ghost"])
@pytest.mark.parametrize("tenant", [None, "t", "u", "nope"])
@pytest.mark.parametrize("max_tokens", [10, 2000, 5000])
def test_a_child_of_a_remote_task_is_refused_as_its_parents_node_refuses_it(model, tenant, max_tokens):
    """A child of task 1 (tenant t) checked by the dry run on a node without it (told its tenant) gets the
    errno and reason that admit gives it on task 1's node: the model first, then the parent's tenant, then
    the policy and sizes."""
    spec = TaskSpec(name="c", model=model, tenant=tenant, max_tokens=max_tokens, parent=1)
    there = outcomes(kernel(live=("t",)).admit, [spec])
    anywhere = Anywhere(parents={1: "t"})
    here = outcomes(lambda *args: kernel(live=()).submits.admit_anywhere(*args, anywhere), [spec])
    assert here == there


def test_a_tenant_only_the_parents_node_knows_is_left_to_it():
    """A child of a remote task of tenant z, which this node does not know, passes the dry run (its node judges
    it, as a one-line write sent there would be); a line of z not placed by a parent is ENOENT as admit says."""
    anywhere = Anywhere(parents={REMOTE: "z"})
    made = kernel()
    child = TaskSpec(name="c", max_tokens=10, parent=REMOTE)
    assert outcomes(lambda *args: made.submits.admit_anywhere(*args, anywhere), [child]) == [None]
    own = TaskSpec(name="j", tenant="z", max_tokens=10)
    assert outcomes(lambda *args: made.submits.admit_anywhere(*args, anywhere), [own]) == [
        (errno.ENOENT, "unknown tenant 'z'")]


@pytest.mark.parametrize("name", [".", ".."])
def test_a_child_of_a_remote_task_cannot_make_a_tenant_named_as_a_directory_entry(name):
    """A child of a remote task whose tenant is `.` or `..`, a tenant this node lacks and would make, is EINVAL."""
    anywhere = Anywhere(parents={REMOTE: name})
    child = TaskSpec(name="c", max_tokens=10, parent=REMOTE)
    [refused] = outcomes(lambda *args: kernel().submits.admit_anywhere(*args, anywhere), [child])
    assert refused is not None and refused[0] == errno.EINVAL
