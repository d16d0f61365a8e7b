"""A prompt's tokens as the engine counts them, in the bill, usage, quota and budget (redteam5 D2).

Until the engine reports a count (a chunk's `prefill`), a task is counted at the daemon's estimate, which a
prompt without spaces cannot shrink (a token per 4 bytes at least); the engine's count then replaces it. A
journal row of older code keeps the word count it was billed at, so its replay is unchanged. Kernel tier
(a Kernel fed events), then a Runtime's journal replayed, then a real mount on the sim driver.
"""
import errno
import json
import subprocess

import attrs
import pytest

from apeinxfs import verify
from apeinxfs.kernel import Kernel
from apeinxfs.kernel.config import GpuConfig, KernelConfig, ModelConfig, SchedConfig
from apeinxfs.kernel.events import Chunk, Control, Step, Submit, Tick, from_row, to_row
from apeinxfs.kernel.kvmem import COUNT_ENGINE, COUNT_WORDS, estimate_prompt_tokens
from apeinxfs.kernel.spec import TaskCommand, TaskSpec
from apeinxfs.kernel.task import State
from apeinxfs.kernel.tenant_config import Budget, Quota, TenantConfig
from daemon import FUSE_READY
from test_fairness_kernel import kernel as fair_kernel
from test_fairness_kernel import submit as fair_submit
from test_journal_runtime import open_runtime
from test_journal_runtime import submit as commit_submit
from test_tenancy import admit, config, refusal, trace_rows
from test_verify_mount import replay_verify

S = 1_000_000
SPACELESS = "x" * 2000  # one word of 2000 bytes: estimated at 501 tokens (500 + BOS), 2 by the word count


def step(kernel, pid, now_us, prefill=0) -> None:
    """One one-token step of task `pid` on GPU 0, reporting `prefill` prompt tokens."""
    kernel.apply(Step(gpu=0, chunks=[Chunk(pid=pid, text=" w", tokens=1, prefill=prefill)]), now_us)
    kernel.check_invariants()


def budgeted(tokens: int, overdraw: int = 0) -> Kernel:
    """A kernel with tenant t, whose budget and token quota are `tokens` a day (`overdraw` percent more budget)."""
    limits = TenantConfig("t", budget=Budget(tokens=tokens, overdraw=overdraw),
                          quota=Quota(tokens=tokens * 2, window=86400))
    return Kernel(config(limits))


def bill_lines(kernel, pid) -> list[str]:
    return [row["detail"] for row in trace_rows(kernel) if row["type"] == "bill" and row["pid"] == str(pid)]


def assert_replays(tmp_path) -> None:
    """`replay --verify` of the journal under tmp_path/state reproduces its trace."""
    journal = verify.open_journal(str(tmp_path / "state"))
    try:
        report = verify.verify(journal)
    finally:
        journal.close()
    assert report.divergence is None and report.lines > 0, report


def test_a_prompt_without_spaces_is_estimated_at_a_token_per_four_bytes():
    """40 KB of one word is 10,001 tokens, not 2; short words keep their count of words and marks, longer ones
    count their bytes (37 bytes: 10, of 9 words and marks); bytes count, not characters."""
    assert estimate_prompt_tokens("x" * 40_000) == 10_001 and estimate_prompt_tokens(SPACELESS, COUNT_WORDS) == 2
    assert estimate_prompt_tokens("I am a cat, so I nap.") == 1 + 9
    assert estimate_prompt_tokens("The quick brown fox jumps, then naps.") == 1 + 10
    assert estimate_prompt_tokens("é" * 400) == 1 + 200


def test_a_budget_at_submit_is_not_fooled_by_a_prompt_without_spaces():
    """A 2000-byte one-word prompt asks 505 tokens of a 400-token budget: EDQUOT before any engine counts it."""
    kernel = budgeted(400)
    refused = refusal(lambda: admit(kernel, tenant="t", prompt=SPACELESS))
    assert refused.errno == errno.EDQUOT and "505 more" in refused.reason


def test_an_engine_count_below_the_estimate_is_billed_and_the_rest_given_back():
    """The engine counts 250 of the estimated 501: the bill, usage, quota and budget count 250 prompt tokens."""
    kernel = budgeted(10_000)
    pid = admit(kernel, tenant="t", prompt=SPACELESS)
    usage = kernel.tenancy.usage["t"]
    assert kernel.tasks[pid].tokens_in == 501 and usage.budget.used == 501
    step(kernel, pid, S, prefill=250)
    for now in (2, 3, 4):
        step(kernel, pid, now * S)
    assert kernel.tasks[pid].exit == "done" and kernel.tasks[pid].tokens_in == 250
    assert (usage.tokens_in, usage.budget.used, usage.quota.used, usage.reserved) == (250, 254, 254, 0)
    [(_, row)] = kernel.bills.of("t")
    assert (row.tokens_in, row.tokens_out) == (250, 4) and bill_lines(kernel, pid)[0].startswith("in=250 out=4 ")


def test_an_engine_count_over_the_estimate_grows_the_kv_and_borrows_by_the_budgets_rule():
    """The engine counts 120 tokens of a 3-word prompt estimated at 4: charged, KV grown to hold them, an
    `overdraw` line for the budget of 100 (+10%) it now borrows against; the next submit is EDQUOT."""
    kernel = budgeted(100, overdraw=10)
    pid = admit(kernel, tenant="t", prompt="a b c")
    step(kernel, pid, S, prefill=120)
    task, usage = kernel.tasks[pid], kernel.tenancy.usage["t"]
    assert task.tokens_in == 120 and usage.budget.used == 121 and task.kv_holds > task.context_tokens
    [overdraw] = [row["detail"] for row in trace_rows(kernel) if row["type"] == "overdraw"]
    assert "the engine counted 116 prompt tokens more" in overdraw and usage.overdraws == 1
    assert refusal(lambda: admit(kernel, 2 * S, tenant="t", prompt="d")).errno == errno.EDQUOT


def test_a_count_reported_after_a_stop_corrects_the_bill_in_the_later_segment():
    """A first segment that reports no count bills the estimate; the count reported after `cont` (its prompt and
    the token so far, as a resumed engine request has them) bills the difference there, and only once."""
    kernel = budgeted(10_000)
    pid = admit(kernel, tenant="t", prompt=SPACELESS)
    step(kernel, pid, S)
    kernel.apply(Control(pid=pid, command=TaskCommand("stop")), 2 * S)
    kernel.apply(Control(pid=pid, command=TaskCommand("cont")), 3 * S)
    step(kernel, pid, 4 * S, prefill=301)
    step(kernel, pid, 5 * S, prefill=400)  # another count (a second request) changes nothing
    kernel.apply(Control(pid=pid, command=TaskCommand("kill")), 6 * S)
    bills = bill_lines(kernel, pid)
    assert [line.split()[0] for line in bills] == ["in=501", "in=-201"] and kernel.tasks[pid].tokens_in == 300
    assert kernel.tenancy.usage["t"].tokens_in == 300 and kernel.bills.of("t")[0][1].tokens_in == 300


def test_a_submit_row_says_how_its_task_is_counted_and_an_older_row_keeps_the_word_count():
    """A submit journals its counting; a row of older code (none) is read as the word count, billed as it
    stands whatever the engine reports, as that code billed it."""
    event = Submit(spec=TaskSpec(name="j", max_tokens=2, prompt=SPACELESS))
    kind, body = to_row(event)
    assert json.loads(body)["counting"] == COUNT_ENGINE and from_row(kind, body) == event
    older = json.dumps({key: value for key, value in json.loads(body).items() if key != "counting"})
    kernel = Kernel(config())
    pid = kernel.apply(from_row(kind, older), 0)
    assert kernel.tasks[pid].tokens_in == 2
    step(kernel, pid, S, prefill=500)
    step(kernel, pid, 2 * S)
    assert kernel.tasks[pid].tokens_in == 2 and bill_lines(kernel, pid)[0].startswith("in=2 out=2 ")


def test_a_journal_of_engine_counts_replays_to_the_same_trace(tmp_path):
    """A Runtime's journal of a task the engine counted at 250 prompt tokens: `replay --verify` reproduces its
    trace, `in=250` in its bill line."""
    with open_runtime(tmp_path) as rt:
        pid = commit_submit(rt, tokens=3, prompt=SPACELESS)
        for prefill in (250, 0, 0):
            rt.deliver(Step(gpu=0, chunks=[Chunk(pid=pid, text=" w", tokens=1, prefill=prefill)]))
        rt.deliver(Tick())
        assert bill_lines(rt.kernel, pid)[0].startswith("in=250 out=3 ")
    assert_replays(tmp_path)


@pytest.mark.skipif(not FUSE_READY, reason="needs /dev/fuse and fusermount3")
def test_a_sim_mount_bills_a_prompt_without_spaces_at_the_estimate_the_sim_counts(daemon, tmp_path):
    """Through a real mount on the sim driver (no tokenizer: it reports the estimate as its count), a 2000-byte
    one-word prompt is billed 501 tokens in, not 2; `replay --verify` of the live state passes."""
    pid = daemon.submit(f'name=big max_tokens=3 prompt="{SPACELESS}"')
    tasks = daemon.path("tasks", str(pid))
    done = subprocess.run(f"cat {tasks}/wait && grep ',bill,' {tasks}/events", shell=True, capture_output=True,
                          text=True, timeout=30)
    assert done.stdout.startswith("done\n") and '"in=501 out=3 ' in done.stdout, done
    verified = replay_verify(tmp_path / "state")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_an_engine_count_no_gpu_pool_could_hold_ends_the_task_and_frees_the_gpu():
    """The engine counts 20,000 tokens of a 3-word prompt, past what the 1 GiB pool could ever hold: the task ends
    failed, saying so, not queued again to wait for room before all behind it; tenant b's task then runs."""
    kernel = fair_kernel(slots=2)
    pid = fair_submit(kernel, "a", tokens=50, prompt="a b c")
    step(kernel, pid, S, prefill=20_000)
    task = kernel.tasks[pid]
    assert task.exit == ("failed: prompt (20000 tokens, the engine's count) plus max_tokens needs 2507 KV pages "
                         "of 1 MiB; the largest GPU pool has 1024") and task.kv_pages == 0
    usage = kernel.tenancy.usage["a"]
    assert usage.tokens_in == 20_000 and usage.reserved == 0 and bill_lines(kernel, pid)[0].startswith("in=20000 out=1 ")
    other = fair_submit(kernel, "b", tokens=2, now=2 * S, prompt="hello")
    for now in (3, 4):
        step(kernel, other, now * S)
    assert kernel.tasks[other].exit == "done"


def test_a_count_that_could_never_fit_ends_the_task_the_same_way_on_replay(tmp_path):
    """A journal in which the engine counts a prompt past every pool (ending the task on that chunk) replays to
    the same trace under `replay --verify`."""
    with open_runtime(tmp_path) as runtime:
        pid = commit_submit(runtime, tokens=3, prompt="a b c")
        runtime.deliver(Step(gpu=0, chunks=[Chunk(pid=pid, text=" w", tokens=1, prefill=10**6)]))
        runtime.deliver(Tick())
        assert runtime.kernel.tasks[pid].exit.startswith("failed: prompt (1000000 tokens, the engine's count)")
    assert_replays(tmp_path)


def test_a_count_that_could_never_fit_ends_the_task_at_the_count_so_no_requeue_leaves_it_waiting():
    """On 1024 and 512 MiB pools, the engine's count leaves a task room to run but not to finish in either (7000 +
    2000 tokens in 1024 pages): it ends failed at that count, before its own stop and cont could queue it again to
    wait for room that never comes in front of tenant b's tasks, which all run to done."""
    kernel = Kernel(KernelConfig(
        models=[ModelConfig(name="sim")], page_mib=1,
        gpus=[GpuConfig(index=0, kv_mib=1024, slots=1), GpuConfig(index=1, kv_mib=512, slots=1)],
        tenants=[TenantConfig("a"), TenantConfig("b")], sched=SchedConfig(policy="fair", min_run_tokens=2)))
    pid = fair_submit(kernel, "a", tokens=2000, prompt="a b c")
    step(kernel, pid, S, prefill=7000)
    assert kernel.tasks[pid].exit.startswith("failed: prompt (7000 tokens, the engine's count) plus max_tokens needs ")
    for now, command in ((2, "stop"), (3, "cont")):
        kernel.apply(Control(pid=pid, command=TaskCommand(command)), now * S)
    others = [fair_submit(kernel, "b", tokens=2, now=(4 + i) * S, prompt="hello") for i in range(3)]
    for now in range(10, 20):
        for gpu in kernel.gpus:
            chunks = [Chunk(pid=task.pid, text=" w", tokens=1, prefill=0 if task.prefilled else task.tokens_in)
                      for task in gpu.running.values()]
            kernel.apply(Step(gpu=gpu.config.index, chunks=chunks), now * S)
    assert [kernel.tasks[other].exit for other in others] == ["done"] * 3


def test_a_refund_after_the_window_moved_on_leaves_the_new_window_alone():
    """A prompt estimated at 752 tokens is charged in one quota window and counted at 3 in the next: that
    window's 199 tokens served stay used (the refund is dropped), where it would have wiped them."""
    kernel = Kernel(config(TenantConfig("t", quota=Quota(tokens=1000, window=60))))
    big = admit(kernel, 59 * S, tenant="t", max_tokens=2, prompt=" " * 3000 + "x")
    small = admit(kernel, 61 * S, tenant="t", max_tokens=200, prompt="hi")
    for number in range(199):
        step(kernel, small, 61 * S + number * 1000, prefill=2 if number == 0 else 0)
    assert kernel.tenancy.usage["t"].quota.used == 201
    step(kernel, big, 62 * S, prefill=3)
    assert kernel.tenancy.usage["t"].quota.used == 202 and kernel.tenancy.usage["t"].tokens_in == 3 + 2


def test_a_context_refusal_counts_words_not_the_bytes_estimate():
    """13 KB of long English words (3251 by the bytes estimate, 686 words) with max_tokens 1024 fits a
    4096-token context; 4000 words do not, refused EINVAL naming the least estimate."""
    model = KernelConfig(models=[ModelConfig(name="m", context=4096)], page_mib=1,
                         gpus=[GpuConfig(index=0, kv_mib=4096, slots=2)])
    prompt = ("internationalization responsibilities characteristically " * 250)[:13_000]
    kernel = Kernel(model)
    kernel.check(Submit(spec=TaskSpec(name="t", max_tokens=1024, prompt=prompt)))
    refused = refusal(lambda: kernel.check(Submit(spec=TaskSpec(name="t", max_tokens=1024, prompt="w " * 4000))))
    assert refused.errno == errno.EINVAL and "prompt (estimated at least 4001 tokens)" in refused.reason


def test_a_prompt_whose_estimate_fits_no_pool_is_admitted_and_placed_at_its_least_count():
    """40 KB of one word on a 512 MiB pool: the bytes estimate (10,001) could never fit, its word count (2)
    does, so it is admitted and placed at 2 until the engine counts it (3000 tokens: it runs on to done)."""
    small = attrs.evolve(fair_kernel().config, gpus=[GpuConfig(index=0, kv_mib=512, slots=2)])
    kernel = Kernel(small)
    pid = fair_submit(kernel, "a", tokens=3, prompt="x" * 40_000)
    task = kernel.tasks[pid]
    assert (task.tokens_in, task.placed_prompt, task.context_tokens, task.gpu) == (10_001, 2, 2, 0)
    for now in (1, 2, 3):
        step(kernel, pid, now * S, prefill=3000 if now == 1 else 0)
    assert task.exit == "done" and task.tokens_in == 3000 and task.placed_prompt is None
    refused = refusal(lambda: fair_submit(kernel, "a", tokens=8000, prompt="x"))
    assert refused.errno == errno.ENOSPC and refused.reason.startswith("prompt (estimated at least 2 tokens) plus ")


def test_a_prompt_placed_at_its_least_count_reserves_and_charges_its_estimate():
    """The 40 KB one-word prompt placed at its word count (2) reserves its bytes estimate (10,001 + 3) under a
    12,000-token quota: a second such submit is refused, and the first is charged the estimate at dispatch."""
    base = config(TenantConfig("t", quota=Quota(tokens=12_000, window=86400)))
    kernel = Kernel(attrs.evolve(base, gpus=[GpuConfig(index=0, kv_mib=512, slots=64)]))
    pid = admit(kernel, tenant="t", max_tokens=3, prompt="x" * 40_000)
    assert kernel.tasks[pid].placed_prompt == 2 and kernel.tenancy.usage["t"].quota.used == 10_001
    refused = refusal(lambda: admit(kernel, tenant="t", max_tokens=3, prompt="x" * 40_000))
    assert "10004 more would pass 12000" in refused.reason


def test_a_prompt_placed_at_its_least_count_that_the_engine_counts_past_every_pool_ends_billed_at_the_count():
    """The 40 KB one-word prompt placed at 2 is counted 10,000 by the engine, more than the 512 MiB pool could
    ever hold with it: it ends failed at once, billed and charged the count, nothing left reserved."""
    kernel = Kernel(attrs.evolve(fair_kernel().config, gpus=[GpuConfig(index=0, kv_mib=512, slots=2)]))
    pid = fair_submit(kernel, "a", tokens=3, prompt="x" * 40_000)
    step(kernel, pid, S, prefill=10_000)
    task, usage = kernel.tasks[pid], kernel.tenancy.usage["a"]
    assert task.exit.startswith("failed: prompt (10000 tokens, the engine's count) plus max_tokens needs ")
    assert usage.tokens_in == 10_000 and usage.reserved == 0 and task.kv_pages == 0


def test_a_correction_in_a_later_billing_period_is_that_periods_credit():
    """The estimate (501) billed in one minute-long period, the engine's lower count (300) reported after `cont`
    in the next: the next period's row holds the credit (-201), the first is left as it was, and they sum to 300."""
    kernel = Kernel(attrs.evolve(config(TenantConfig("t")), billing_period_s=60))
    pid = admit(kernel, 58 * S, tenant="t", max_tokens=3, prompt=SPACELESS)
    step(kernel, pid, 59 * S)
    kernel.apply(Control(pid=pid, command=TaskCommand("stop")), 59 * S + 1)
    kernel.apply(Control(pid=pid, command=TaskCommand("cont")), 61 * S)
    step(kernel, pid, 62 * S, prefill=301)
    step(kernel, pid, 63 * S)
    rows = [(start, usage.tokens_in) for (start, _, _), usage in kernel.bills.of("t")]
    assert rows == [(0, 501), (60, -201)] and kernel.tasks[pid].exit == "done"
