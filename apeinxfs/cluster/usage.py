"""Tenants' use across the cluster: what a node publishes of its own, and what admission counts of the others'.

A node publishes, for each tenant with a limit that holds across the nodes (`quota tasks`,
`quota tokens` or a budget) and live tasks or tokens used, `[live, reserved, quota window,
quota used, budget window, budget used]` (its ledgers as they stand: a window index and the
tokens used in it; windows are aligned to the epoch, so every node numbers them alike), at
most MAX_TENANTS of them: `published(kernel)`. It puts each row in a key of its own,
`usage/NODE/TENANT` on its lease (usagekeys.py writes them); a node of an older version puts
them all in its record's `usage` instead. `key_row` reads a usage key and `valid_usage` a
record's rows, keeping only rows of that form. `Elsewheres` sums the up nodes' but this one's
into kernel/tenancy.Elsewhere records, kept as each node's keys and record come (a node's keys
if it has any, else its record's rows), which `Runtime.elsewhere` hands to every admission:
so a tenant's task quota, token quota and budget hold across the nodes, up to what was
admitted on several nodes within one propagation delay (docs/cluster.md, Quotas and
budgets). Not counted elsewhere: a budget's debt carried from the last window, and the
GPU and KV-page quotas (each node's own GPUs).
Pure: no etcd, no trio.
"""
import logging
from collections.abc import Callable, Iterable, Mapping

import attrs

from ..kernel.tenancy import Elsewhere
from .peerdata import MAX_COUNT, Unreadable, loads

log = logging.getLogger(__name__)
MAX_TENANTS = 1_000  # tenants a node publishes the use of at most (by name: those past it are not counted elsewhere)
MAX_ROW_BYTES = 256  # a usage key's value at most: six counts of etcd's int64 are under 130 bytes
Row = list[int]


def published(kernel) -> dict[str, Row]:
    """This node's tenants' use as its usage keys carry it: of those with a limit to hold (the others' use
    changes nothing elsewhere, and a change of it writes no key: daemon.py)."""
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
            and min(row[0], row[1], row[3], row[5]) >= 0 and max(row) < MAX_COUNT)


def key_row(name: str, value: bytes) -> tuple[str, str, Row]:
    """(node, tenant, row) of the usage key `usage/NODE/TENANT` (`name` is NODE/TENANT) holding `value`;
    Unreadable unless `value` is a row admission can count (see valid_usage), of MAX_ROW_BYTES at most."""
    node, _, tenant = name.partition("/")
    if not node or not tenant or "/" in tenant:
        raise Unreadable("a usage key is usage/NODE/TENANT")
    if len(value) > MAX_ROW_BYTES:
        raise Unreadable(f"{len(value)} bytes, over the {MAX_ROW_BYTES} of a row")
    row = loads(value)
    if not _valid(row):
        raise Unreadable(f"{value[:60]!r} is not [live, reserved, quota window, used, budget window, used]")
    return node, tenant, row


class Elsewheres:
    """Each tenant's use on the up nodes other than `here`, kept up to date one change at a time: a usage key
    costs its one tenant, a node's record or `up` key that node's tenants (their sums and Elsewhere records),
    never a sum over every node's (every node sees N records a second, and every node's changes of use).
    A node's rows counted are those of its usage keys while it has any (`keyed`, the one copy of them), else
    its record's (a node of an older version publishes them there)."""

    def __init__(self, here: str):
        self.here = here
        self.keyed: dict[str, dict[str, Row]] = {}  # node -> the rows of its usage keys, whether counted or not
        self.from_keys: set[str] = set()  # the nodes counted from their usage keys: their rows are `keyed`'s
        self.from_record: dict[str, dict[str, Row]] = {}  # node -> its record's rows counted (it has no keys)
        self.totals: dict[str, Sums] = {}  # tenant -> its sums over the nodes counted
        self.by_tenant: dict[str, Elsewhere] = {}  # the sums as admission reads them (Runtime.elsewhere)

    def load(self, nodes: Mapping, usage_keys: Iterable[tuple[str, bytes]] = ()) -> dict[str, Elsewhere]:
        """Start again from every node (name -> records.NodeView) and every usage key ((NODE/TENANT, value));
        the sums by tenant (kept current by `update` and `key_changed`)."""
        self.keyed, self.from_keys, self.from_record, self.totals = {}, set(), {}, {}
        self.by_tenant.clear()
        for name, value in usage_keys:
            self._keep_key(name, value)
        for name, node in nodes.items():
            self.update(name, node)
        return self.by_tenant

    def counted(self, name: str) -> dict[str, Row]:
        """Node `name`'s rows counted in the sums (none while it is down, or if it is this node)."""
        return self.keyed[name] if name in self.from_keys else self.from_record.get(name, {})

    def update(self, name: str, node) -> None:
        """Node `name` is now `node` (a records.NodeView; None: it has no record): count its keys' rows or its
        record's instead of those counted before (none while it is down, or if it is this node)."""
        counts = node is not None and node.up and name != self.here
        if counts and name in self.from_keys:
            return  # counted from its keys, kept a row at a time: its record changes nothing
        keys = counts and name in self.keyed
        rows = self.keyed[name] if keys else node.record.usage if counts else {}
        before = self.counted(name)
        if rows != before:  # most records: published again, their use unchanged
            for tenant in before.keys() | rows.keys():
                self._swap(tenant, before.get(tenant), rows.get(tenant))
            self.from_record.pop(name, None)
            if rows and not keys:
                self.from_record[name] = dict(rows)
        if keys:
            self.from_keys.add(name)
            self.from_record.pop(name, None)  # its record's rows, equal to its keys'
        else:
            self.from_keys.discard(name)

    def key_changed(self, name: str, value: bytes | None, node_of: Callable[[str], object]) -> None:
        """The usage key `usage/NAME` (NODE/TENANT) now holds `value` (None: deleted); `node_of(NODE)` is the
        node as the view has it. An unreadable key is logged and not counted."""
        node, _, tenant = name.partition("/")
        before = self.keyed.get(node, {}).get(tenant)
        if not self._keep_key(name, value):
            return
        if node in self.from_keys:
            self._swap(tenant, before, self.keyed.get(node, {}).get(tenant))
            if node in self.keyed:
                return
            self.from_keys.discard(node)  # its last key gone: its record's rows count instead
        if node != self.here:
            self.update(node, node_of(node))  # its first key, or its last one gone: it changes where its rows are

    def check_invariants(self) -> None:
        """The nodes counted from their keys have keys and no record's rows counted, and each tenant's sums
        are those of the rows counted (the kept sums checked against what they are kept from)."""
        assert self.from_keys <= self.keyed.keys(), f"nodes {self.from_keys - self.keyed.keys()} counted from no keys"
        assert not self.from_keys & self.from_record.keys(), "a node counted from its keys and its record"
        sums: dict[str, Sums] = {}
        for name in self.from_keys | self.from_record.keys():
            for tenant, row in self.counted(name).items():
                sums.setdefault(tenant, Sums()).add(row, 1)
        assert sums == self.totals, "the sums are not those of the rows counted"

    def _keep_key(self, name: str, value: bytes | None) -> bool:
        """Keep the row of usage key `name` holding `value` (None: none) in `keyed`; False for a key that
        names no node's tenant."""
        node, _, tenant = name.partition("/")
        try:
            row = key_row(name, value)[2] if value is not None else None
        except Unreadable as exc:
            log.warning("cluster: usage key %.80r not counted: %s", name, exc)
            row = None
        if not node or not tenant:
            return False
        rows = self.keyed.setdefault(node, {})
        if row is not None and tenant not in rows and len(rows) >= MAX_TENANTS:
            log.warning("cluster: node %s has usage keys of over %d tenants: %.80r not counted", node, MAX_TENANTS,
                        tenant)
            row = None
        if row is None:
            rows.pop(tenant, None)
        else:
            rows[tenant] = row
        if not rows:
            del self.keyed[node]
        return True

    def _swap(self, tenant: str, before: Row | None, after: Row | None) -> None:
        """Count a node's row `after` of `tenant` (None: none) instead of `before`, and refresh its sums."""
        if before == after:
            return
        if before is not None:
            self.totals[tenant].add(before, -1)
        if after is not None:
            if tenant not in self.totals:  # not setdefault: it would build a Sums at every row
                self.totals[tenant] = Sums()
            self.totals[tenant].add(after, 1)
        self._refresh(tenant)

    def _refresh(self, tenant: str) -> None:
        """The Elsewhere record of `tenant` from its sums (none for a use of nothing, which admission reads
        alike); its sums go once no node counts it."""
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
