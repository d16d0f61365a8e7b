"""Tenants' use across the cluster: what a node publishes of its own, and what admission counts of the others'.

A node's record (records.py) carries `usage`: for each tenant with a limit that holds across
the nodes (`quota tasks`, `quota tokens` or a budget) and live tasks or tokens used,
`[live, reserved, quota window, quota used, budget window, budget used]` (its ledgers
as they stand: a window index and the tokens used in it; windows are aligned to the epoch,
so every node numbers them alike), at most MAX_TENANTS of them; `valid_usage` keeps of a
peer's rows only those of that form. `Elsewheres` sums the up nodes' but this one's into
kernel/tenancy.Elsewhere records, kept as each node's record comes, which
`Runtime.elsewhere` hands to every admission:
so a tenant's task quota, token quota and budget hold across the nodes, up to what was
admitted on several nodes within one propagation delay (docs/cluster.md, Quotas and
budgets). Not counted elsewhere: a budget's debt carried from the last window, and the
GPU and KV-page quotas (each node's own GPUs).
Pure: no etcd, no trio.
"""
import logging
from collections.abc import Mapping

import attrs

from ..kernel.tenancy import Elsewhere

log = logging.getLogger(__name__)
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


def valid_usage(node: str, usage: object) -> dict[str, list[int]]:
    """The rows of a peer's record (`usage` as its JSON has it) that admission can count: six whole numbers,
    the counts (live, reserved, tokens used) at least 0 (a window index is -1 before the first); the others
    are left out, with one log line (another version, or a broken peer)."""
    if not isinstance(usage, dict):
        log.warning("cluster: node %s's record has no usage by tenant (%.40r): not counted", node, usage)
        return {}
    valid = {tenant: row for tenant, row in usage.items() if _valid(row)}
    if len(valid) < len(usage):
        bad = [tenant for tenant in usage if tenant not in valid]
        log.warning("cluster: node %s's record has %d malformed usage rows (tenants %s): not counted",
                    node, len(bad), ", ".join(bad[:3]) + (" ..." if len(bad) > 3 else ""))
    return valid


def _valid(row: object) -> bool:
    return (isinstance(row, list) and len(row) == 6 and all(type(number) is int for number in row)  # no bool
            and min(row[0], row[1], row[3], row[5]) >= 0)


class Elsewheres:
    """Each tenant's use on the up nodes other than `here`, kept up to date one node at a time: a change of
    one node's record or of its `up` key costs that node's tenants (their sums and Elsewhere records), not
    a sum over every node's (every node sees N changes a second, up to 20 times that while use changes)."""

    def __init__(self, here: str):
        self.here = here
        self.counted: dict[str, dict[str, list[int]]] = {}  # node -> the usage rows of its record counted
        self.totals: dict[str, Sums] = {}  # tenant -> its sums over the nodes counted
        self.by_tenant: dict[str, Elsewhere] = {}  # the sums as admission reads them (Runtime.elsewhere)

    def load(self, nodes: Mapping) -> dict[str, Elsewhere]:
        """Start again from every node (name -> records.NodeView); the sums by tenant (kept current by `update`)."""
        self.counted, self.totals = {}, {}
        self.by_tenant.clear()
        for name, node in nodes.items():
            self.update(name, node)
        return self.by_tenant

    def update(self, name: str, node) -> None:
        """Node `name` is now `node` (a records.NodeView; None: it has no record): count its rows instead of
        those counted before (none while it is down, or if it is this node)."""
        rows = node.record.usage if node is not None and node.up and name != self.here else {}
        if rows == self.counted.get(name, {}):  # most records: published again, their use unchanged
            return
        before = self.counted.pop(name, {})
        if rows:
            self.counted[name] = rows
        for tenant, row in before.items():
            self.totals[tenant].add(row, -1)
        for tenant, row in rows.items():
            if tenant not in self.totals:  # not setdefault: it would build a Sums at every row
                self.totals[tenant] = Sums()
            self.totals[tenant].add(row, 1)
        self._refresh(before.keys() | rows.keys())

    def _refresh(self, tenants) -> None:
        """The Elsewhere records of `tenants` from their sums (none for a use of nothing, which admission reads
        alike); a tenant's sums go once no node counts it."""
        for tenant in tenants:
            sums = self.totals[tenant]
            if not sums.nodes:
                del self.totals[tenant]
            if sums.live or sums.reserved or sums.quota or sums.budget:
                self.by_tenant[tenant] = Elsewhere(live=sums.live, reserved=sums.reserved, quota=dict(sums.quota),
                                                   budget=dict(sums.budget))
            else:
                self.by_tenant.pop(tenant, None)


@attrs.define
class Sums:
    """One tenant's use summed over the nodes counting it: live tasks, reserved tokens, tokens used by quota
    window and by budget window, and how many nodes count it."""

    live: int = 0
    reserved: int = 0
    quota: dict[int, int] = attrs.Factory(dict)
    budget: dict[int, int] = attrs.Factory(dict)
    nodes: int = 0

    def add(self, row: list[int], sign: int) -> None:
        """Add (`sign` 1) or take away (-1) one node's row of the tenant, `[live, reserved, quota window, used,
        budget window, used]` (and that node to or from those counting it)."""
        live, reserved, quota_window, quota_used, budget_window, budget_used = row
        self.live += sign * live
        self.reserved += sign * reserved
        self.nodes += sign
        _add_used(self.quota, quota_window, sign * quota_used)
        _add_used(self.budget, budget_window, sign * budget_used)


def _add_used(windows: dict[int, int], window: int, used: int) -> None:
    """Add `used` tokens to `window`'s count; a window back at 0 is dropped (as if none were used)."""
    windows[window] = windows.get(window, 0) + used
    if not windows[window]:
        del windows[window]
