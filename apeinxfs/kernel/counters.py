"""Monotonic totals of one kernel, for /metrics and sched/stat, and each tenant's share of the scheduler's."""
from typing import Literal

import attrs

Act = Literal["dispatched", "preempted", "fair_preemptions", "lifts", "boosts"]  # a TenantCounts field


@attrs.define
class TenantCounts:
    """One tenant's share of the scheduling totals: what sched/stat shows its users (a removed tenant's go)."""

    dispatched: int = 0
    preempted: int = 0
    fair_preemptions: int = 0
    lifts: int = 0
    boosts: int = 0


@attrs.define
class Counters:
    """Monotonic totals for /metrics."""

    submitted: int = 0
    rejected: int = 0
    dispatched: int = 0
    preempted: int = 0
    steps: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    evictions: int = 0
    oom_kills: int = 0
    fair_preemptions: int = 0
    lifts: int = 0
    boosts: int = 0
    reaped: int = 0  # exited tasks forgotten (retention.py)
    exits: dict[str, int] = attrs.Factory(dict)  # exit kind (done, killed, ...) -> tasks
    tenants: dict[str, TenantCounts] = attrs.Factory(dict)  # tenant -> its share, counted since its first
    # the shares of removed tenants, and what was counted before shares were (a migrated snapshot's totals)
    unshared: TenantCounts = attrs.Factory(TenantCounts)

    @property
    def decisions(self) -> int:
        """Scheduling decisions made: each is a dispatch (sched/stat's name for it)."""
        return self.dispatched

    def count(self, tenant: str, act: Act) -> None:
        """One more scheduling `act`, in the total and in tenant `tenant`'s share together: they cannot part."""
        setattr(self, act, getattr(self, act) + 1)
        share = self._of(tenant)
        setattr(share, act, getattr(share, act) + 1)

    def _of(self, tenant: str) -> TenantCounts:
        """Tenant `tenant`'s share, to count in (made at its first, the only call that allocates)."""
        share = self.tenants.get(tenant)
        if share is None:
            share = self.tenants[tenant] = TenantCounts()
        return share

    def share(self, tenant: str) -> TenantCounts:
        """Tenant `tenant`'s share, to read: zeros if it has none."""
        return self.tenants.get(tenant) or TenantCounts()

    def forget(self, tenant: str) -> None:
        """Tenant `tenant` was removed: its share goes, into `unshared`."""
        gone = self.tenants.pop(tenant, TenantCounts())
        for name in attrs.fields_dict(TenantCounts):
            setattr(self.unshared, name, getattr(self.unshared, name) + getattr(gone, name))

    def index_problems(self) -> list[str]:
        """Where the tenants' shares and `unshared` do not add up to the totals."""
        return [f"counters: the tenants' {name} and the unshared add up to {shared}, the total is {total}"
                for name in attrs.fields_dict(TenantCounts)
                if (shared := sum(getattr(t, name) for t in (*self.tenants.values(), self.unshared)))
                != (total := getattr(self, name))]
