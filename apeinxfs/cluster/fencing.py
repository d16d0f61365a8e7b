"""Fencing at once: a cluster node whose lease may have expired holds its engines until it has
checked with etcd which tasks are still its own.

etcd cannot expire this node's lease before `Member.expires`: the trio time the last refresh
that got through was sent, plus the TTL. trio's clock is monotonic and counts the time the
process was stopped, so after SIGSTOP and SIGCONT it shows the jump at once. From then on
the leader may have moved this node's tasks, so `check` commits events.Fence(held=True)
before an engine's step is applied or a batch is handed out (runtime.deliver and
enginehost call it first; failover's recorder every second): the kernel then gives the
engines no batch, dispatches nothing and drops the steps made before the hold, so no task
here makes a token or ends by its engine. `release`, called by failover.Failover once it has
read `tasks/` with the lease refreshed or after a new join (and stopped the tasks moved away,
events.MovedAway), commits Fence(held=False). A node without an etcd quorum for longer than
its lease is held the same way (it cannot tell that from being cut off while the others
move its tasks) until etcd answers again; so is a node from its start until its first join
(stopped, or killed, its tasks may have been moved meanwhile).
Pure decisions over a clock; the commits go through the runtime. Not here: the lease (member.py).
"""
import logging
from collections.abc import Callable

import trio

from ..kernel.errors import ApeinxError
from ..kernel.events import Fence

log = logging.getLogger(__name__)


class Fencing:
    """Holds and releases this node's engines as its lease may have expired or is known alive."""

    def __init__(self, rt, member, clock: Callable[[], float] = trio.current_time):
        self.rt, self.member, self.clock = rt, member, clock

    @property
    def held(self) -> bool:
        return self.rt.kernel.moves.fenced

    def expired(self) -> bool:
        """Whether etcd may have expired this node's lease by now."""
        return self.clock() >= self.member.expires

    def check(self) -> None:
        """Hold the engines once the lease may have expired (at once: before any other work)."""
        if not self.held and self.expired():
            self.commit(True, f"{self.why()}, so its tasks may have been moved: held until it has checked with etcd")

    def why(self) -> str:
        """Why the lease may have expired: a join not made since the start, or the time since it may have."""
        if self.member.epoch == 0:
            return f"node {self.member.name} has not joined the cluster since it started"
        late = self.clock() - self.member.expires
        return f"the lease of node {self.member.name} (epoch {self.member.epoch}) may have expired {late:.1f}s ago"

    def release(self) -> None:
        """Release the engines once the tasks still here were checked with etcd under a live lease."""
        if self.held and not self.expired():
            self.commit(False, f"checked with etcd in epoch {self.member.epoch} which tasks are still its own")

    def commit(self, held: bool, reason: str) -> None:
        try:
            self.rt.commit([Fence(held=held, reason=reason)])
        except ApeinxError as error:  # degraded: the drivers get no batch anyway (health.py)
            log.warning("cluster: cannot journal the fence (%s): %s", reason, error.reason)
            return
        (log.warning if held else log.info)("cluster: engines %s: %s", "held" if held else "released", reason)
