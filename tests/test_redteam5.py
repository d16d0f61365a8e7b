"""Red team 5: one tenant against another (and against the operator), as an unprivileged user of tenant a.

Each defect found is a strict xfail test here, reason "redteam5 Dn: ...", for its mend to turn into a
passing test: D1 deadlines that take every batch slot from another tenant (the `fair` deadline boost
goes before counter order whoever it favours).
Kernel tier (a Kernel fed events, no FUSE) where the defect lives in the kernel; nodes tier (a Tree on a
Runtime, callers with the role and tenant fs.py gives them) where it lives in the files.
"""
import pytest

from test_fairness_kernel import kernel, submit
from test_kernel import STEP_US, step

BOOSTED_US = 4_000_000  # a deadline within the default deadline_boost_s (5 s): always boosted


def served_by_tenant(k, steps: int, deadlines: dict[str, int]) -> dict[str, int]:
    """Tokens served to tenants a and b over `steps` engine steps, each keeping 4 tasks of 20 tokens live, a
    tenant in `deadlines` submitting each with that relative deadline."""
    served, live, now = {"a": 0, "b": 0}, {"a": [], "b": []}, 0
    for _ in range(steps):
        for tenant in served:
            live[tenant] = [pid for pid in live[tenant] if not k.tasks[pid].done]
            extra = {"deadline_us": deadlines[tenant]} if tenant in deadlines else {}
            live[tenant] += [submit(k, tenant, tokens=20, now=now, **extra) for _ in range(4 - len(live[tenant]))]
        now += STEP_US
        for event in step(k, now):
            for chunk in event.chunks:
                served[k.tasks[chunk.pid].tenant] += chunk.tokens
    return served


def test_two_busy_tenants_of_equal_weight_are_served_alike():
    """Without deadlines, two tenants of weight 100 that keep the queue full are served the same tokens."""
    served = served_by_tenant(kernel(slots=2), 600, {})
    assert served["a"] == served["b"] > 0


@pytest.mark.xfail(strict=True, reason="redteam5 D1: a tenant whose every task has a near deadline takes every "
                   "slot: the fair deadline boost goes before counter order, unbounded by the tenant's share")
def test_near_deadlines_do_not_starve_another_tenant_of_equal_weight():
    """Tenant a submitting every task with a 4 s deadline still leaves tenant b of equal weight a fair part."""
    served = served_by_tenant(kernel(slots=2), 600, {"a": BOOSTED_US})
    assert served["b"] >= (served["a"] + served["b"]) // 3
