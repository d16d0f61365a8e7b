"""Tier 1: fairness that does not waste the machine, with explicit events and times.

The gap rule in weight-normalised units (only the weights' ratios matter), a tenant's
preempted task resuming before its new work, and no input charge for recomputing a
context a preemption dropped (but one for a context the tenant's own stop and cont
dropped). The whole overloaded workload is measured through `apeinxfs sim` in
test_fair_overload.py.
"""
import pytest

from apeinxfs import config as config_mod
from apeinxfs.kernel import Kernel
from apeinxfs.kernel.config import GpuConfig, KernelConfig, ModelConfig, SchedConfig, TenantConfig
from apeinxfs.kernel.errors import Invalid
from apeinxfs.kernel.events import Submit
from apeinxfs.kernel.spec import TaskSpec
from apeinxfs.kernel.task import State
from test_kernel import STEP_US, control, run_until_idle, step


def kernel(weights=(100, 100), slots=1, model=None, **sched) -> Kernel:
    """One GPU with ample KV, tenants a and b of `weights`; by default a gap of one 4-token slice."""
    return Kernel(KernelConfig(
        models=[model or ModelConfig(name="sim")], page_mib=1, gpus=[GpuConfig(index=0, kv_mib=1024, slots=slots)],
        tenants=[TenantConfig("a", weights[0]), TenantConfig("b", weights[1])],
        sched=SchedConfig(**{"min_run_tokens": 2, "slice_tokens": 4, "preempt_gap": 1, **sched})))


def submit(k, tenant, tokens=40, now=0, words=10) -> int:
    event = Submit(spec=TaskSpec(name="t", max_tokens=tokens, tenant=tenant, prompt=" ".join(["w"] * words)))
    k.check(event)
    return k.apply(event, now)


def decisions(k) -> list[tuple]:
    """(time, type, pid) of every dispatch and preemption in the trace."""
    rows = [line.split(",") for line in k.trace.buffer.decode().splitlines()[1:]]
    return [(r[1], r[2], r[3]) for r in rows if r[2] in ("dispatch", "preempt")]


def test_weights_scaled_together_preempt_alike():
    """Tenants of weights 1:3 and 100:300 see the same dispatches and preemptions at the same times."""
    runs = []
    for weights in ((1, 3), (100, 300)):
        k = kernel(weights, slots=2)
        for i in range(3):
            submit(k, "a", words=60 * i + 5), submit(k, "b", words=5)
        run_until_idle(k, check_books=False)  # prompts of 'w's share cached blocks
        runs.append(decisions(k))
        assert k.counters.fair_preemptions > 0
    assert runs[0] == runs[1]


def run_until(k, now, done) -> int:
    while not done():
        step(k, now)
        now += STEP_US
        assert now < 200 * STEP_US, "never happened"
    return now


def test_a_preempted_task_resumes_before_its_tenants_new_work():
    """a's served task 1, preempted for b, gets a's next slot before a's queued, never-served task 2."""
    k = kernel()
    first, second = submit(k, "a"), submit(k, "a")
    other = submit(k, "b")
    now = run_until(k, STEP_US, lambda: k.tasks[first].state is State.PREEMPTED)
    assert k.tasks[other].state is State.RUNNING
    run_until(k, now, lambda: k.tasks[other].state is not State.RUNNING)
    assert k.tasks[first].state is State.RUNNING and k.tasks[second].state is State.QUEUED


def recompute_charge(k, pid: int, now: int) -> tuple[float, float]:
    """Step from `now` until task `pid` of tenant a is preempted by recompute and runs again, then once more: what
    a is charged on that step, which prefills the task's context again, and what its one generated token costs."""
    now = run_until(k, now, lambda: k.tasks[pid].state is State.PREEMPTED)
    assert "mode=recompute" in k.trace.of_task(k.tasks[pid]).decode()
    now = run_until(k, now, lambda: k.tasks[pid].state is State.RUNNING)
    task, tenant = k.tasks[pid], k.accounts.tenants["a"]
    before, pages, pool = tenant.counter, task.kv_pages, k.gpus[0].pool.pages_total
    assert not task.prefilled and task.context_tokens > 100
    step(k, now)
    return tenant.counter - before, 2 * (1 + pages / pool)


def test_recomputing_a_preempted_context_is_not_charged_as_input():
    """A task preempted by recompute pays only its generated token on the step that prefills its context again."""
    k = kernel(model=ModelConfig(name="sim", options={"swap_gbps": 1e-6}))  # swap so slow that recompute wins
    first = submit(k, "a", words=100)
    submit(k, "b")
    charged, token = recompute_charge(k, first, STEP_US)
    assert charged == token


def test_the_prefill_after_the_tenants_own_cont_is_charged_once():
    """A task's context prefilled again after its tenant's stop and cont is charged as input; once it has
    generated a token since, a recompute that the kernel's preemption causes pays only its generated token."""
    k = kernel(model=ModelConfig(name="sim", options={"swap_gbps": 1e-6}))
    first = submit(k, "a", words=100)
    step(k, STEP_US)
    for verb in ("stop", "cont"):
        control(k, first, verb, now_us=STEP_US)
    tenant = k.accounts.tenants["a"]
    before = tenant.counter
    step(k, 2 * STEP_US)
    assert tenant.counter - before > 100 and not k.tasks[first].prefill_owed
    submit(k, "b", now=2 * STEP_US)
    charged, token = recompute_charge(k, first, 3 * STEP_US)
    assert charged == token


def small_pool(watermark=0.25, slots=2) -> Kernel:
    """One GPU of `slots` slots and 20 one-MiB pages (8 tokens each)."""
    return Kernel(KernelConfig(
        models=[ModelConfig(name="sim")], page_mib=1, gpus=[GpuConfig(index=0, kv_mib=20, slots=slots)],
        tenants=[TenantConfig("a"), TenantConfig("b")],
        sched=SchedConfig(min_run_tokens=2, slice_tokens=4, kv_watermark=watermark)))


def submit_tokens(k, tenant, prompt_tokens, tokens=10, now=0) -> int:
    """A task whose prompt is `prompt_tokens` tokens (BOS included), sharing no block with another."""
    words = [f"p{len(k.tasks)}"] + ["x"] * (prompt_tokens - 2)
    event = Submit(spec=TaskSpec(name="t", max_tokens=tokens, tenant=tenant, prompt=" ".join(words)))
    k.check(event)
    return k.apply(event, now)


def test_a_new_task_leaves_the_watermark_free_on_a_busy_gpu():
    """With 6 of 20 pages held, an 11-page task would leave 3 free, under the watermark of 5: it waits
    (without a watermark it starts); alone on the GPU a task may eat into the watermark."""
    for watermark, state in ((0.25, State.QUEUED), (0.0, State.RUNNING)):
        k = small_pool(watermark)
        first = submit_tokens(k, "a", 40)
        assert k.tasks[first].kv_pages == 6
        assert k.tasks[submit_tokens(k, "a", 80)].state is state
    alone = small_pool(0.25)
    big = submit_tokens(alone, "a", 130)
    assert alone.tasks[big].state is State.RUNNING and alone.gpus[0].pool.pages_free < 5


def test_fair_preempts_only_when_the_head_then_fits():
    """b's head of 15 pages would not fit where one of a's 7-page tasks leaves: nothing is preempted
    for it; b's head of 6 pages would, and one of a's tasks is preempted."""
    for head_tokens, preempted in ((120, 0), (40, 1)):
        k = small_pool(watermark=0.0)
        submit_tokens(k, "a", 40, tokens=12), submit_tokens(k, "a", 40, tokens=12)
        waiting = submit_tokens(k, "b", head_tokens, tokens=2)
        for i in range(1, 4):
            step(k, i * STEP_US)
        assert k.counters.fair_preemptions == preempted
        assert (k.tasks[waiting].state is State.RUNNING) == bool(preempted)


def test_at_most_one_fair_preemption_between_engine_steps():
    """b, lifted level with a, waits for a step to fall behind; then its arrivals in that instant take one
    of a's four slots, not one each; the next step allows another."""
    k = kernel(slots=4)
    for _ in range(4):
        submit(k, "a", tokens=100)
    for i in range(1, 4):
        step(k, i * STEP_US)
    submit(k, "b", tokens=100, now=3 * STEP_US, words=1)  # short prompts: b stays behind as it is served
    step(k, 4 * STEP_US)
    assert k.counters.fair_preemptions == 1
    for _ in range(2):
        submit(k, "b", tokens=100, now=4 * STEP_US, words=1)
    assert k.counters.fair_preemptions == 1
    step(k, 5 * STEP_US)
    assert k.counters.fair_preemptions == 2


def test_kv_watermark_is_a_config_key_from_0_up_to_1(tmp_path):
    """`[scheduler] kv_watermark` reaches the kernel's config (default 0.05); 1 or a negative part is EINVAL."""
    path = tmp_path / "config.toml"
    path.write_text("[scheduler]\nkv_watermark = 0.1\n")
    assert config_mod.load(str(path), str(tmp_path), use_nvml=False).kernel.sched.kv_watermark == 0.1
    assert config_mod.load(None, str(tmp_path), use_nvml=False).kernel.sched.kv_watermark == 0.05
    for bad in (1, -0.1, "x"):
        with pytest.raises(Invalid, match="kv_watermark must be a number from 0"):
            SchedConfig(kv_watermark=bad)


def test_the_share_rule_waits_until_the_holder_is_a_slice_ahead():
    """a holds both slots, one over its share, while b waits: a yields one only once a slice (20) ahead,
    so counters crossing back and forth within a slice do not pass a slot back and forth."""
    k = kernel(slots=2, slice_tokens=20, preempt_gap=10)
    submit(k, "a", tokens=100, words=1), submit(k, "a", tokens=100, words=1)
    submit(k, "b", tokens=100, words=1)
    aheads, now = [], STEP_US
    while not k.counters.fair_preemptions:
        step(k, now)
        aheads.append(k.accounts.tenants["a"].counter - k.accounts.tenants["b"].counter)
        now += STEP_US
    assert len(aheads) > 3 and aheads[-1] > 20 >= max(aheads[:-1])


def test_the_worked_example_of_docs_scheduler_md():
    """alice (100) runs 4 tasks, bob (300) arrives at 0.5 s: the share rule takes 3 slots at 0.82, 0.84 and
    0.86 s, and at 0.92 s the counters are 403.7 and 270.0, as docs/scheduler.md says."""
    k = Kernel(KernelConfig(models=[ModelConfig(name="sim")], page_mib=1,
                            gpus=[GpuConfig(index=0, kv_mib=100, slots=4)],
                            tenants=[TenantConfig("alice", 100), TenantConfig("bob", 300)]))
    prompt = " ".join(f"w{i}" for i in range(10))
    for start, end, tenant in ((0, 500_000, "alice"), (500_000, 920_000, "bob")):
        for _ in range(4):
            k.apply(Submit(spec=TaskSpec(name="t", max_tokens=200, tenant=tenant, prompt=prompt)), start)
        for now in range(start + STEP_US, end + 1, STEP_US):
            step(k, now)
    times = [d[0] for d in decisions(k) if d[1] == "preempt"]
    assert times == ["820000", "840000", "860000"] and k.counters.dispatched == 7
    counters = {name: round(t.counter, 1) for name, t in k.accounts.tenants.items()}
    assert counters == {"alice": 403.7, "bob": 270.0}
