"""Tier 1: a model's endpoints bound to GPUs (kernel/endpoints.py): config checks, placement on the
endpoints' GPUs, outages per endpoint (kernel/engines.py) and the KV books reconciled with the engines'
reports (kernel/kvreport.py), all replayable through the journal codec."""
import errno

import pytest

from apeinxfs import compaction
from apeinxfs.kernel import Kernel, state
from apeinxfs.kernel import engines as engines_module
from apeinxfs.kernel.config import GpuConfig, KernelConfig, ModelConfig, SchedConfig, kernel_config_from_dict
from apeinxfs.kernel.errors import ApeinxError, Invalid
from apeinxfs.kernel.events import (Chunk, EngineHealth, EngineKV, Failed, Interrupted, Rejected, RemoveModel,
                                    SetModel, Step, Submit, Tick, from_row, to_row)
from apeinxfs.kernel.spec import TaskSpec
from apeinxfs.kernel.task import State
from apeinxfs.nodes.memory import pool
from apeinxfs.kernel.tenant_config import TenantConfig
from test_kernel import STEP_US, step

import attrs

SECOND = 1_000_000
SPLIT = [{"url": "http://127.0.0.1:8001", "gpus": [0]}, {"url": "http://127.0.0.1:8002", "gpus": [1]}]


def config(endpoints=SPLIT, gpus=3, slots=2) -> KernelConfig:
    """`llm` on endpoints (by default one per GPU 0 and 1) of a node of `gpus` GPUs, and `sim` everywhere;
    1 MiB pages: 64 tokens of llm's KV each."""
    return KernelConfig(models=[ModelConfig(name="sim"),
                                ModelConfig(name="llm", endpoints=endpoints, layers=4, kv_heads=8, head_dim=128)],
                        page_mib=1,
                        gpus=[GpuConfig(index=n, kv_mib=64, slots=slots) for n in range(gpus)])


class Driven:
    """A kernel and the events applied to it, for replaying through the journal codec."""

    def __init__(self, kernel_config: KernelConfig):
        self.kernel, self.log = Kernel(kernel_config), []

    def apply(self, event, now_us: int = 0):
        self.kernel.check(event)
        self.log.append((now_us, event))
        result = self.kernel.apply(event, now_us)
        self.kernel.check_invariants()
        return result

    def submit(self, model: str = "llm", now_us: int = 0) -> int:
        return self.apply(Submit(spec=TaskSpec(name="t", prompt="hello", model=model, max_tokens=8), uid=1), now_us)

    def gpu(self, pid: int):
        return self.kernel.tasks[pid].gpu

    def lines(self, kind: str) -> list[str]:
        return [line for line in self.kernel.trace.buffer.decode().splitlines() if f",{kind}," in line]

    def replayed(self) -> Kernel:
        kernel = Kernel(self.kernel.config)
        for now_us, event in self.log:
            kernel.apply(from_row(*to_row(event)), now_us)
        return kernel


@pytest.mark.parametrize("model, reason", [
    (dict(endpoints=SPLIT, options={"url": "http://x"}), "either options.url"),
    (dict(endpoints=[{"url": "http://a", "gpus": [0, 1]}, {"url": "http://b", "gpus": [1]}]),
     "GPU 1 is bound to two endpoints, http://a and http://b"),
    (dict(endpoints=[{"url": "http://a", "gpus": []}]), "non-empty list of GPU indices"),
    (dict(endpoints=[{"url": "http://a", "gpus": [0, 0]}]), "list a GPU twice"),
    (dict(endpoints=[{"url": "http://a"}]), "with those two keys"),
    (dict(endpoints=[{"url": "", "gpus": [0]}]), "url must be a non-empty text"),
    (dict(endpoints="http://a"), "endpoints must be a list"),
])
def test_bad_endpoints_are_refused_with_the_reason(model, reason):
    """Endpoints beside a url, a GPU bound twice, and malformed tables are refused with EINVAL and why."""
    with pytest.raises(ApeinxError) as refused:
        ModelConfig(name="llm", **model)
    assert refused.value.errno == errno.EINVAL and reason in refused.value.reason


def test_an_endpoint_on_a_gpu_that_does_not_exist_is_refused_at_boot_and_at_runtime():
    """GPU 2 on a node of 2 GPUs: the boot config and a SetModel (ctl/models add) are both refused, naming it."""
    with pytest.raises(ApeinxError, match="bound to GPU 1, but there are 1 GPUs"):
        config(gpus=1)
    kernel = Kernel(config(gpus=2))
    extra = ModelConfig(name="extra", endpoints=[{"url": "http://c", "gpus": [2]}])
    with pytest.raises(ApeinxError, match="endpoint http://c is bound to GPU 2, but there are 2 GPUs"):
        kernel.check(SetModel(model=extra, what="add extra", uid=0))


def test_endpoints_survive_the_boot_record_and_a_setmodel_row():
    """The boot config and a SetModel go through the journal as dicts and come back equal."""
    boot = config()
    assert kernel_config_from_dict(attrs.asdict(boot)) == boot
    event = SetModel(model=ModelConfig(name="extra", endpoints=SPLIT), what="add extra", uid=0)
    assert from_row(*to_row(event)) == event


def test_a_model_with_endpoints_runs_only_on_their_gpus():
    """Six tasks of llm on a node of 3 GPUs of 2 slots fill GPUs 0 and 1; GPU 2 takes only sim's (looking
    past llm's head, which waits for a slot on its GPUs)."""
    d = Driven(config())
    pids = [d.submit() for _ in range(6)]
    assert sorted(d.gpu(p) for p in pids[:4]) == [0, 0, 1, 1]
    assert [d.kernel.tasks[p].state for p in pids[4:]] == [State.QUEUED] * 2
    sim = d.submit("sim")
    assert d.gpu(sim) == 2 and f"backfill past pid {pids[4]} (its GPUs are full)" in d.lines("dispatch")[-1]
    d.apply(Step(gpu=0, chunks=[Chunk(pid=pids[0], text="x", tokens=8, final=True)]), SECOND)
    assert d.gpu(pids[4]) == 0


def test_one_endpoint_down_sends_new_tasks_to_the_other_and_all_down_stalls():
    """GPU 1's endpoint down: new llm tasks go to GPU 0 only; both down: the model is down and its tasks
    stall; one back: they run on its GPU. Each change is an `engine` line, and replay gives the same trace."""
    d = Driven(config(slots=4))
    d.apply(EngineHealth(model="llm", up=False, reason="unreachable: refused", gpus=(1,)))
    assert {d.gpu(d.submit()) for _ in range(3)} == {0}
    assert "llm at gpus=1 down: unreachable: refused; no task of llm is placed there" in d.lines("engine")[-1]
    assert not d.kernel.engines.is_down("llm")
    d.apply(EngineHealth(model="llm", up=False, reason="unreachable: reset", gpus=(0,)), SECOND)
    assert d.kernel.engines.is_down("llm")
    assert "llm down: every endpoint down; unreachable: reset" in d.lines("engine")[-1]
    stalled = d.submit(now_us=SECOND)
    assert d.kernel.engines.waiting("llm") == 1
    d.apply(EngineHealth(model="llm", up=True, gpus=(1,)), 3 * SECOND)
    assert d.gpu(stalled) == 1 and d.kernel.engines.waiting() == 0
    assert d.replayed().trace.buffer == d.kernel.trace.buffer


def test_a_health_event_of_gpus_that_are_no_endpoint_changes_nothing():
    """EngineHealth naming GPUs no endpoint of the model is bound to is ignored: the model stays up and
    both endpoints' GPUs still take tasks, two slots each."""
    d = Driven(config())
    d.apply(EngineHealth(model="llm", up=False, reason="refused", gpus=(0, 1)))
    assert not d.lines("engine") and not d.kernel.engines.is_down("llm")
    assert sorted(d.gpu(d.submit()) for _ in range(4)) == [0, 0, 1, 1]


ONE_GPU = [{"url": "http://127.0.0.1:8001", "gpus": [0]}]
WHOLE_POOL = 64 * 64  # tokens of llm in GPU 0's 64 pages


def test_an_engine_reporting_a_few_pages_beyond_the_books_still_takes_tasks():
    """GPU 0's engine reports 200 tokens (4 pages) with one task (1 page) in the books: the 3 more count as
    used there (an `engine-kv` line, the pool file's unbooked_pages), and new tasks are still placed on it;
    a report that changes only their number adds no line."""
    d = Driven(config(endpoints=ONE_GPU, slots=4))
    assert d.gpu(d.submit()) == 0
    d.apply(EngineKV(model="llm", gpus=(0,), tokens=200), SECOND)
    assert d.kernel.kv.unbooked == {0: 3} and ("engines report 4 KV pages in use on gpus 0, the books 1: the 3 "
                                               "more count as used here until they agree") in d.lines("engine-kv")[-1]
    assert "unbooked_pages 3\n" in pool(d.kernel, 0)
    assert [d.gpu(d.submit()) for _ in range(3)] == [0, 0, 0]
    d.apply(EngineKV(model="llm", gpus=(0,), tokens=500), 2 * SECOND)  # 8 pages, 4 in the books
    assert d.kernel.kv.unbooked == {0: 4} and len(d.lines("engine-kv")) == 1
    assert d.replayed().trace.buffer == d.kernel.trace.buffer


def test_a_report_goes_stale_when_the_books_move_under_an_excess():
    """With 3 pages beyond the books, a task placed takes one into the books: the excess decided now would be
    2, so the report is stale (the daemon journals the next scrape, runtime.report_kv) until one is applied."""
    d = Driven(config(endpoints=ONE_GPU, slots=4))
    d.submit()
    d.apply(EngineKV(model="llm", gpus=(0,), tokens=200), SECOND)
    reports = d.kernel.engines.kv_reports
    assert d.kernel.kv.unbooked == {0: 3} and not reports.stale()
    assert d.gpu(d.submit(now_us=SECOND)) == 0 and reports.stale()
    d.apply(EngineKV(model="llm", gpus=(0,), tokens=200), 2 * SECOND)
    assert d.kernel.kv.unbooked == {0: 2} and not reports.stale()


def test_pages_beyond_the_books_on_an_idle_gpu_keep_its_watermark():
    """With no task of its own, GPU 0's engine reports 60 of its 64 pages: that work grows as tasks do, so a
    new task must leave the watermark free there too, and waits, where an idle pool would have taken it."""
    d = Driven(config(endpoints=ONE_GPU, slots=4))
    d.apply(EngineKV(model="llm", gpus=(0,), tokens=60 * 64), SECOND)
    assert d.kernel.kv.unbooked == {0: 60}
    assert d.kernel.tasks[d.submit(now_us=SECOND)].state is State.QUEUED


@pytest.mark.parametrize("running", [0, 1])
def test_an_engine_reporting_the_whole_pool_beyond_the_books_takes_no_task_until_a_report_agrees(running):
    """GPU 0's engine reports all 64 pages while the books hold `running` tasks' pages: no room is left, so
    a new task waits; a report of what the books hold agrees (a line saying so) and the task is placed."""
    d = Driven(config(endpoints=ONE_GPU, slots=4))
    for _ in range(running):
        d.submit()
    d.apply(EngineKV(model="llm", gpus=(0,), tokens=WHOLE_POOL), SECOND)
    assert d.kernel.kv.unbooked == {0: 64 - running} and f"unbooked_pages {64 - running}\n" in pool(d.kernel, 0)
    waiting = d.submit(now_us=SECOND)
    assert d.kernel.tasks[waiting].state is State.QUEUED
    d.apply(EngineKV(model="llm", gpus=(0,), tokens=64 * running), 2 * SECOND)
    assert not d.kernel.kv.unbooked and d.kernel.tasks[waiting].state is State.RUNNING
    assert "the engines' KV reports agree with the books again" in d.lines("engine-kv")[-1]
    assert "unbooked_pages 0\n" in pool(d.kernel, 0)


def test_one_engine_for_every_gpu_is_compared_with_all_their_books():
    """A model without endpoints reports with no GPUs: its pages are compared with the books of every GPU
    together, each GPU counting its share of the excess, rounded up, as the pool shows its share of the
    report; a task is still placed, and once the report is the books' there is no excess."""
    d = Driven(config(endpoints=(), gpus=2))
    d.apply(EngineKV(model="llm", gpus=(), tokens=300))  # 5 pages: 3 on each GPU, whose books hold none
    assert d.kernel.engines.kv_reports.engine_view(0) == (3, 150) and d.kernel.kv.unbooked == {0: 3, 1: 3}
    placed = d.submit()
    assert d.kernel.tasks[placed].state is State.RUNNING
    d.apply(EngineKV(model="llm", gpus=(), tokens=60), SECOND)  # its 1 page: the task's
    assert not d.kernel.kv.unbooked and d.kernel.engines.kv_reports.engine_view(1) == (1, 30)


def test_a_tensor_parallel_endpoint_shares_its_excess_over_its_group():
    """An endpoint on GPUs 0 and 1 is compared with their books together: one task's page on GPU 0 is enough
    for a report of one page; 5 pages against it put 2 (4 shared, rounded up) on each GPU of the group."""
    d = Driven(config(endpoints=[{"url": "http://tp", "gpus": [0, 1]}], gpus=3))
    task = d.submit()
    d.apply(EngineKV(model="llm", gpus=(0, 1), tokens=64))
    assert d.gpu(task) == 0 and not d.kernel.kv.unbooked
    d.apply(EngineKV(model="llm", gpus=(0, 1), tokens=65), SECOND)
    assert d.kernel.kv.unbooked == {0: 1, 1: 1} and "on gpus 0,1, the books 1: the 1 more" in d.lines("engine-kv")[-1]
    d.apply(EngineKV(model="llm", gpus=(0, 1), tokens=300), 2 * SECOND)
    assert d.kernel.kv.unbooked == {0: 2, 1: 2}


def test_removing_a_model_drops_its_reports_and_the_pages_beyond_the_books():
    """The reports of a removed model go, and with them the pages counted used for them only."""
    d = Driven(config())
    d.apply(EngineKV(model="llm", gpus=(1,), tokens=100))
    assert d.kernel.kv.unbooked == {1: 2}
    d.apply(RemoveModel(name="llm", uid=0))
    assert not d.kernel.kv.unbooked and not d.kernel.engines.kv_reports.reports


@pytest.mark.parametrize("event", [EngineKV(model="llm", gpus=(3,), tokens=1), EngineKV(model="llm", gpus=(0,),
                                                                                          tokens=-5)])
def test_a_report_of_a_gpu_not_there_or_negative_tokens_is_refused(event):
    """EngineKV naming a GPU the node lacks, or fewer than 0 tokens, is refused with EINVAL."""
    with pytest.raises(ApeinxError) as refused:
        Kernel(config()).check(event)
    assert refused.value.errno == errno.EINVAL and "GPUs 0 to 2" in refused.value.reason


def fair_kernel(endpoints) -> Kernel:
    """Two GPUs of one slot, tenants a and b; `sim` everywhere and `llm` on `endpoints`; a gap of one 4-token slice."""
    return Kernel(KernelConfig(
        models=[ModelConfig(name="sim"), ModelConfig(name="llm", endpoints=endpoints)], page_mib=1,
        gpus=[GpuConfig(index=n, kv_mib=1024, slots=1) for n in range(2)],
        tenants=[TenantConfig("a", 100), TenantConfig("b", 100)],
        sched=SchedConfig(min_run_tokens=2, slice_tokens=4, preempt_gap=1)))


def preempted_for_b(endpoints) -> list[int]:
    """a's two tasks run 3 steps on both GPUs, then b's llm task arrives and a step passes: the GPUs of a's
    tasks preempted for it."""
    k = fair_kernel(endpoints)
    for _ in range(2):
        k.apply(Submit(spec=TaskSpec(name="t", max_tokens=100, tenant="a", model="sim", prompt="w")), 0)
    for n in range(1, 4):
        step(k, n * STEP_US)
    k.apply(Submit(spec=TaskSpec(name="t", max_tokens=100, tenant="b", model="llm", prompt="w")), 3 * STEP_US)
    step(k, 4 * STEP_US)
    return [int(line.split(",")[6]) for line in k.trace.buffer.decode().splitlines() if ",preempt," in line]


def test_fairness_preempts_only_where_the_waiting_task_may_run():
    """b's task of a model bound to one GPU gets a fair preemption of a's task there, and none of a's task on
    the other GPU (its slot would be no help)."""
    victim_gpu, = preempted_for_b(())
    assert preempted_for_b([{"url": "http://e", "gpus": [victim_gpu]}]) == [victim_gpu]
    assert preempted_for_b([{"url": "http://e", "gpus": [1 - victim_gpu]}]) == []


def test_a_report_of_more_kv_than_its_gpus_hold_counts_them_full_and_an_absurd_one_is_refused():
    """A report of one token more than GPU 0's 64 pages hold counts as the whole pool (said in words); one of over
    1000 times the pool is Invalid, with both numbers."""
    d = Driven(config(endpoints=ONE_GPU, slots=4))
    reports = d.kernel.engines.kv_reports
    d.apply(EngineKV(model="llm", gpus=(0,), tokens=WHOLE_POOL + 1), SECOND)
    assert d.kernel.kv.unbooked == {0: 64} and reports.last("llm", (0,)).pages == 64
    assert reports.beyond_room("llm", (0,), WHOLE_POOL + 1) == (
        f"its KV report of {WHOLE_POOL + 1} tokens takes 65 pages, more than the 64 its GPUs hold here: counted as full")
    assert reports.beyond_room("llm", (0,), WHOLE_POOL) is None
    with pytest.raises(Invalid, match="take 64001 pages, more than 1000 times the 64 those GPUs hold"):
        d.kernel.check(EngineKV(model="llm", gpus=(0,), tokens=WHOLE_POOL * 1000 + 1))


def test_a_model_line_journaled_with_credentials_is_traced_and_audited_without_them():
    """An old journal's SetModel whose line holds `user:password@` shows it as `***@` in the trace and audit."""
    d = Driven(config())
    extra = ModelConfig(name="extra", driver="openai", options={"url": "http://bob:s3cret@127.0.0.1:9"})
    d.apply(SetModel(model=extra, what="add extra driver=openai url=http://bob:s3cret@127.0.0.1:9", uid=0))
    trace, audit = d.kernel.trace.buffer.decode(), d.kernel.audit.buffer.decode()
    assert "add extra driver=openai url=http://***@127.0.0.1:9 by uid 0" in trace
    assert "url=http://***@127.0.0.1:9" in audit and "s3cret" not in trace + audit


def test_an_old_journals_failed_and_interrupted_reasons_show_no_credentials():
    """Failed and Interrupted reasons journaled with `user:password@` (before drivers hid them) show `***@` in the
    resume and exit lines and the task's exit, and hiding them again changes nothing."""
    d, secret, hidden = Driven(config()), "engine at http://bob:s3cret@127.0.0.1:9", "engine at http://***@127.0.0.1:9"
    failed, interrupted = d.submit("sim"), d.submit("sim")
    d.apply(Failed(pid=failed, reason=f"{secret}: HTTP 500"))
    for _ in range(4):  # resume_limit 3: three resumes, then it fails
        d.apply(Interrupted(pid=interrupted, reason=f"{secret}: stream broke"))
    trace = d.kernel.trace.buffer.decode()
    assert d.kernel.tasks[failed].exit == f"failed: {hidden}: HTTP 500"
    assert d.kernel.tasks[interrupted].exit == f"failed: {hidden}: stream broke"
    assert len([line for line in d.lines("resume") if f"{hidden}: stream broke; resumes" in line]) == 3
    assert "s3cret" not in trace
    again = d.submit("sim")
    d.apply(Failed(pid=again, reason=f"{hidden}: HTTP 500"))
    assert d.kernel.tasks[again].exit == f"failed: {hidden}: HTTP 500"


def test_an_old_journals_engine_down_and_refusal_reasons_show_no_credentials():
    """An engine's down reason (one endpoint's and the model's) and a denied write's reason journaled with
    `user:password@` (before drivers hid them) show `***@` in the engine, stall, reject and audit lines and in the
    exit of the task that waited for the engine, and the replayed kernel shows the same."""
    d, secret = Driven(config()), "http://bob:s3cret@127.0.0.1:9"
    d.apply(EngineHealth(model="llm", up=False, reason=f"{secret}/health: refused", gpus=(0,)))
    d.apply(EngineHealth(model="sim", up=False, reason=f"{secret}/health: refused"))
    waiting = d.submit("sim")
    d.apply(Rejected(path="/ctl/models", reason=f"bad url {secret}:99999", uid=9, denial=True))
    d.apply(Tick(), 301 * SECOND)  # past engine_wait_s = 300: the stalled task gives up
    trace, audit = d.kernel.trace.buffer.decode(), d.kernel.audit.buffer.decode()
    assert d.kernel.tasks[waiting].exit.endswith("http://***@127.0.0.1:9/health: refused")
    assert len(d.lines("engine")) == 2 and all("http://***@127.0.0.1:9/health: refused" in line
                                               for line in d.lines("engine") + d.lines("stall"))
    assert "bad url http://***@127.0.0.1:9:99999 (uid 9)" in trace and "bad url http://***@" in audit
    assert "s3cret" not in trace + audit
    replayed = d.replayed()
    assert replayed.trace.buffer == d.kernel.trace.buffer and replayed.audit.buffer == d.kernel.audit.buffer


def test_a_snapshots_engines_down_for_a_reason_with_credentials_name_it_hidden_once_loaded(monkeypatch):
    """A snapshot of code that applied old EngineHealth rows as recorded (a model and an endpoint down, their reasons
    with `user:password@`), loaded: a task that stalls for the model and gives up names the reason with `***@`."""
    d, secret = Driven(config()), "http://bob:s3cret@127.0.0.1:9/health: refused"
    with monkeypatch.context() as older_code:
        older_code.setattr(engines_module, "redacted", lambda text: text)
        d.apply(EngineHealth(model="llm", up=False, reason=secret, gpus=(0,)))
        d.apply(EngineHealth(model="sim", up=False, reason=secret))
    d.kernel = compaction.with_credentials_hidden(state.decode(state.encode(d.kernel)))
    waiting = d.submit("sim")
    d.apply(Tick(), 301 * SECOND)  # past engine_wait_s = 300: the stalled task gives up
    assert d.kernel.tasks[waiting].exit.endswith("http://***@127.0.0.1:9/health: refused")
    assert "s3cret" not in d.kernel.trace.buffer.decode() and "s3cret" not in repr(d.kernel.engines.book)
