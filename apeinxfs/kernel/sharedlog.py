"""Where a cluster node stands in the cluster's log of settings changes (tenants, policy, models).

The log is in etcd (cluster/shared.py); each entry is applied on every node, in etcd's
revision order, as the ordinary events it holds, journaled together with a `Shared` event
that records its revision. `SharedLog` keeps the revision of the last entry applied or
refused here, so that an entry is applied once and a restarted node goes on after it, and
traces a `settings` line per entry. Pure: no etcd, no clock.
"""
from collections.abc import Callable

from .errors import Exists
from .events import Shared


class SharedLog:
    """The revision of the last entry of the cluster's settings log this node applied or refused."""

    def __init__(self, emit: Callable[..., None]):
        self.revision = 0
        self.refused = 0  # entries this node refused (its settings differ from the writer's there)
        self._emit = emit

    def check(self, event: Shared) -> None:
        """Exists unless the entry is past the last one applied: each applies once, in order."""
        if event.revision <= self.revision:
            raise Exists(f"settings entry at revision {event.revision} is past: this node is at {self.revision}")

    def apply(self, event: Shared) -> None:
        self.revision = event.revision
        self.refused += bool(event.refused)
        outcome = f"refused here: {event.refused}" if event.refused else "applied"
        self._emit("settings", None, f"revision {event.revision} from node {event.node}: {outcome}")
