"""What a look at a node's live pids costs (cluster/daemon.py `live_pids`, at most once a PUBLISH_S), in process
(no etcd, no FUSE): a `Kernel` with 10,000 live tasks, one submit between looks (a busy node), for T = 1,000
tenants of 10 tasks, 10 of 1,000 and 1 of 10,000.

Before: the walk of the whole task table that the look made (every task, live or not, grouped by tenant and
sorted, the ranges of all of them and of each tenant's; copied here as it was). After: records.LiveRanges over
the task table's index (kernel/livepids.py), which sorts again only the pids of the tenant that changed. Rounds
alternate; the figure is the best of BENCH_ROUNDS medians over 50 looks, and the ratio before / after. Both give
the same rows (checked). Figures only: nothing is judged.
"""
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from apeinxfs.cluster.records import LiveRanges, pid_ranges, tenant_ranges  # noqa: E402
from apeinxfs.kernel import Kernel  # noqa: E402
from apeinxfs.kernel.config import GpuConfig, KernelConfig, ModelConfig  # noqa: E402
from apeinxfs.kernel.events import Submit  # noqa: E402
from apeinxfs.kernel.spec import TaskSpec  # noqa: E402
from apeinxfs.kernel.task import State  # noqa: E402
from apeinxfs.kernel.tenant_config import TenantConfig  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
LIVE = 10_000
LOOKS = 50


def walked(kernel) -> tuple[str, dict[str, str]]:
    """The look before: every task walked, each tenant's live pids sorted, all of them and each tenant's as ranges."""
    found: dict[str, list[int]] = {}
    for task in kernel.tasks.values():
        if task.state is not State.EXITED:
            found.setdefault(task.tenant, []).append(task.pid)
    by_tenant = {tenant: sorted(pids) for tenant, pids in found.items()}
    every = pid_ranges(sorted(pid for pids in by_tenant.values() for pid in pids))
    return every, tenant_ranges({tenant: pid_ranges(pids) for tenant, pids in by_tenant.items()})


def kernel_of(tenants: int) -> Kernel:
    kernel = Kernel(KernelConfig(models=[ModelConfig(name="sim")], gpus=[GpuConfig(index=0, slots=8)],
                                 tenants=[TenantConfig(f"t{t:04d}") for t in range(tenants)]))
    for i in range(LIVE):
        submit(kernel, tenants, i)
    return kernel


def submit(kernel: Kernel, tenants: int, i: int) -> None:
    kernel.apply(Submit(spec=TaskSpec(name=f"q{i}", tenant=f"t{i % tenants:04d}", max_tokens=1)), i)


def median_ms(kernel: Kernel, tenants: int, look) -> float:
    """The median ms of `look()` over LOOKS looks, each after one more submit (not timed)."""
    times = []
    for _ in range(LOOKS):
        submit(kernel, tenants, len(kernel.tasks))
        start = time.perf_counter()
        look()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    print(f"a look at {LIVE:,} live tasks, one submit between looks: ms a look (best of {ROUNDS} medians)")
    for tenants in (1000, 10, 1):
        kernel, ranges = kernel_of(tenants), LiveRanges()
        best = [float("inf")] * 2
        for _ in range(ROUNDS):  # alternating
            best[0] = min(best[0], median_ms(kernel, tenants, lambda: walked(kernel)))
            best[1] = min(best[1], median_ms(kernel, tenants, lambda: ranges.of(kernel.tasks)))
        assert ranges.of(kernel.tasks) == walked(kernel)[1], "the look must give the walk's rows"
        print(f"  T={tenants:>5}: before {best[0]:7.3f} ms  after {best[1]:7.3f} ms  ratio {best[0] / best[1]:6.1f}x")


if __name__ == "__main__":
    main()
