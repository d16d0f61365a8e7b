"""What a tenant's read of sched/stat and sched/runqueue costs (nodes/sched.py), in process (no FUSE): a
`Kernel` with QUEUED tasks waiting (BENCH_QUEUED, 100,000 unless set), of tenants a and b by halves, on one GPU
of 2 slots.

Before: tenant a's queued tasks counted by a walk of the run queue in the policy's order (`runq.tasks()`, a sort
of the whole queue) and its agents found by a walk of the whole task table (copied here as they were); each
task is an agent of its own here, so tenant a's runqueue has QUEUED / 2 agent rows, written whatever the look.
After: the run queue's count by tenant (`RunQueue.queued_of`) and the index of the tenant's live pids. The admin's read
(no walk, before or after) is printed beside them. Rounds alternate; the figure is the best of BENCH_ROUNDS
medians over 20 reads, and the ratio before / after. Both give the same text (checked). Figures only.
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from apeinxfs.kernel import Kernel  # noqa: E402
from apeinxfs.kernel.config import GpuConfig, KernelConfig, ModelConfig  # noqa: E402
from apeinxfs.kernel.events import Submit  # noqa: E402
from apeinxfs.kernel.spec import TaskSpec  # noqa: E402
from apeinxfs.kernel.tenant_config import TenantConfig  # noqa: E402
from apeinxfs.nodes import sched  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
QUEUED = int(os.environ.get("BENCH_QUEUED", "100000"))
READS = 20


def stat_before(kernel, view: str) -> str:
    """sched/stat of tenant `view` as it was read: its queued tasks counted in a walk of the ordered queue."""
    queued = sum(task.tenant == view for task in kernel.runq.tasks())
    acts, running = kernel.counters.share(view), kernel.accounts.tenants[view].running
    rows = [("policy", kernel.runq.name), ("queued", queued), ("running", running), ("decisions", acts.dispatched),
            ("preemptions", acts.preempted), ("fair_preemptions", acts.fair_preemptions),
            ("lifts", acts.lifts), ("deadline_boosts", acts.boosts)]
    return "".join(f"{k} {v}\n" for k, v in rows)


def agents_before(kernel, view: str) -> set[int]:
    """sched/runqueue's agents of tenant `view` as they were found: a walk of every task."""
    return {task.agent for task in kernel.tasks.values() if task.tenant == view}


def runqueue_before(kernel, view: str) -> str:
    """sched/runqueue of tenant `view` as it was read: its agents found by `agents_before`."""
    accounts, agents = kernel.accounts, agents_before(kernel, view)
    rows = [(f"tenant/{t.name}", t) for t in accounts.tenants.values() if t.name == view]
    rows += [(f"agent/{a.name}", a) for pid, a in accounts.agents.items() if a.active and pid in agents]
    return "entity counter weight state\n" + "".join(
        f"{name} {e.counter:.1f} {e.weight} {e.state}\n" for name, e in rows)


def kernel_of() -> Kernel:
    kernel = Kernel(KernelConfig(models=[ModelConfig(name="sim")], gpus=[GpuConfig(index=0, slots=2)],
                                 tenants=[TenantConfig("a"), TenantConfig("b")]))
    for i in range(QUEUED + 2):
        kernel.apply(Submit(spec=TaskSpec(name=f"q{i}", tenant="ab"[i % 2], max_tokens=10)), i)
    return kernel


def median_ms(read) -> float:
    times = []
    for _ in range(READS):
        start = time.perf_counter()
        read()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    kernel = kernel_of()
    assert stat_before(kernel, "a") == sched.stat(kernel, "a"), "the count must be the walk's"
    assert runqueue_before(kernel, "a") == sched.runqueue(kernel, "a"), "the index must give the walk's agents"
    reads = {"stat before": lambda: stat_before(kernel, "a"), "stat after": lambda: sched.stat(kernel, "a"),
             "stat admin": lambda: sched.stat(kernel), "no role": lambda: sched.stat(kernel, ""),
             "runqueue before": lambda: runqueue_before(kernel, "a"),
             "runqueue after": lambda: sched.runqueue(kernel, "a")}
    best = dict.fromkeys(reads, float("inf"))
    for _ in range(ROUNDS):  # alternating
        for name, read in reads.items():
            best[name] = min(best[name], median_ms(read))
    print(f"{len(kernel.runq):,} queued: ms a read (best of {ROUNDS} medians of {READS})")
    print("  " + "  ".join(f"{name} {ms:.4f}" for name, ms in best.items()))
    print(f"  sched/stat of tenant a: ratio before / after {best['stat before'] / best['stat after']:.0f}x;"
          f" after / admin {best['stat after'] / best['stat admin']:.1f}")
    print(f"  sched/runqueue of tenant a ({len(kernel.accounts.agents):,} agents, half a's): ratio before / after"
          f" {best['runqueue before'] / best['runqueue after']:.2f}")


if __name__ == "__main__":
    main()
