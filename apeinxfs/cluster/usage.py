"""Tenants' use across the cluster: what a node publishes of its own, and what admission counts of the others'.

A node's record (records.py) carries `usage`: for each tenant with a limit that holds across
the nodes (`quota tasks`, `quota tokens` or a budget) and live tasks or tokens used,
`[live, reserved, quota window, quota used, budget window, budget used]` (its ledgers
as they stand: a window index and the tokens used in it; windows are aligned to the epoch,
so every node numbers them alike), at most MAX_TENANTS of them. `elsewhere(nodes, here)`
sums the up nodes' but this one's into kernel/tenancy.Elsewhere records, which
`Runtime.elsewhere` hands to every admission: so a tenant's task quota, token quota and
budget hold across the nodes, up to what was admitted on several nodes within one
propagation delay (docs/cluster.md, Quotas and budgets). Not counted elsewhere: a budget's
debt carried from the last window, and the GPU and KV-page quotas (each node's own GPUs).
Pure: no etcd, no trio.
"""
from collections.abc import Mapping

from ..kernel.tenancy import Elsewhere

MAX_TENANTS = 1_000  # tenants a record lists the use of at most (by name: those past it are not counted elsewhere)


def published(kernel) -> dict[str, list[int]]:
    """This node's tenants' use as its record carries it: of those with a limit to hold (the others' use
    changes nothing elsewhere, and a change of it publishes no record early: daemon.py)."""
    held = [(name, used) for name, used in kernel.tenancy.usage.items()  # cheap test first: most use nothing
            if (used.live or used.quota.used or used.budget.used) and _limited(kernel.tenancy.config_of(name))]
    return {name: [used.live, used.reserved, used.quota.window_index, used.quota.used, used.budget.window_index,
                   used.budget.used] for name, used in sorted(held, key=lambda pair: pair[0])[:MAX_TENANTS]}


def _limited(tenant) -> bool:
    """Whether the tenant (None: removed) has a limit that other nodes' use counts against."""
    return tenant is not None and (tenant.quota.tasks is not None or tenant.quota.tokens is not None
                                   or tenant.budget.tokens is not None)


def elsewhere(nodes: Mapping, here: str) -> dict[str, Elsewhere]:
    """Each tenant's use on the up nodes of `nodes` (name -> records.NodeView) other than `here`."""
    live: dict[str, list] = {}
    for name, node in nodes.items():
        if node.up and name != here:
            for tenant, row in node.record.usage.items():
                total = live.setdefault(tenant, [0, 0, {}, {}])
                _add(total, row)
    return {tenant: Elsewhere(live=n, reserved=r, quota=q, budget=b) for tenant, (n, r, q, b) in live.items()}


def _add(total: list, row: list[int]) -> None:
    """Add one node's row of a tenant, `[live, reserved, quota window, used, budget window, used]`, to `total`."""
    count, reserved, quota_window, quota_used, budget_window, budget_used = row
    total[0] += count
    total[1] += reserved
    total[2][quota_window] = total[2].get(quota_window, 0) + quota_used
    total[3][budget_window] = total[3].get(budget_window, 0) + budget_used
