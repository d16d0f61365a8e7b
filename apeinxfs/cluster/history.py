"""The leader's compaction of etcd's history, and what /ai/cluster says of it.

etcd keeps every revision until it is compacted, and every node puts its record each
second: uncompacted, etcd's database grows until its quota (2 GiB by default) refuses
every write and the cluster stops. `Compaction(member).run(etcd, seen, every_s)`: while
`member` leads, every `every_s` compact the history up to the revision `seen()` gave
`every_s` before. `state` is /ai/cluster's `Compaction` row: `-` (not leading, or nothing
compacted yet), `revision R` (compacted up to R last time), or `refused: REASON` while etcd
refuses, with REMEDY where the reason is a permission (a user without the root role on etcd
versions that want it for compaction): one log line when a refusal starts or its reason changes, one when
compaction works again, not one every `every_s`. History compacted further already (by
auto-compaction, or a leader before) counts as compacted; no quorum is /ai/cluster's
`Etcd` row, not this one. Not here: the election (member.py).
"""
import logging
from collections.abc import Callable

import trio

from .etcd import Etcd
from .etcd_records import EtcdError, Unavailable
from .member import Member

log = logging.getLogger(__name__)
COMPACTED_ALREADY = "required revision has been compacted"  # etcd's words: history is shorter than asked
PERMISSION = "permission denied"  # etcd's words for a user whose roles do not allow the call
REMEDY = ("etcd's history is not compacted and its database grows until its quota refuses every write: give "
          "cluster.etcd_user the root role, or run etcd with --auto-compaction-mode=revision "
          "--auto-compaction-retention=N (docs/cluster.md, etcd's authentication)")


class Compaction:
    """The leader's compaction of etcd's history; `state` for /ai/cluster."""

    def __init__(self, member: Member):
        self.member = member
        self.compacted: int | None = None  # the revision compacted to last, while leading
        self.refusal: str | None = None  # etcd's words while it refuses this node's compaction

    @property
    def state(self) -> str:
        """/ai/cluster's Compaction row: `-` while this node does not lead (its last pass may be minutes old)."""
        if not self.member.leading:
            return "-"
        if self.refusal is not None:
            return f"refused: {advised(self.refusal)}"
        return "-" if self.compacted is None else f"revision {self.compacted}"

    async def run(self, etcd: Etcd, seen: Callable[[], int], every_s: float) -> None:
        """While the member leads, every `every_s` compact to the revision `seen()` gave `every_s` before."""
        behind = 0
        while True:
            await trio.sleep(every_s)
            if not self.member.leading:
                self.compacted = self.refusal = None
            elif behind:
                await self.compact(etcd, behind)
            behind = seen()

    async def compact(self, etcd: Etcd, revision: int) -> None:
        """Compact to `revision`, noting a refusal (logged once a reason) or the end of one."""
        try:
            await etcd.compact(revision)
        except Unavailable as error:  # no quorum: /ai/cluster's Etcd row says so; next time
            log.info("cluster: cannot compact etcd's history now: %s", error.reason)
            return
        except EtcdError as error:
            if COMPACTED_ALREADY not in error.reason:
                self.refused(revision, error.reason)
                return
        if self.refusal is not None:
            log.info("cluster: etcd's history is compacted again (to revision %d)", revision)
        self.compacted, self.refusal = revision, None

    def refused(self, revision: int, reason: str) -> None:
        """Note etcd's refusal to compact to `revision`, logged when it is new or its reason changed."""
        if reason != self.refusal:
            log.warning("cluster: etcd refused to compact its history to revision %d: %s", revision, advised(reason))
        self.refusal = reason


def advised(reason: str) -> str:
    """etcd's refusal, with what to do where it is a permission the user lacks."""
    return f"{reason}; {REMEDY}" if PERMISSION in reason else reason
