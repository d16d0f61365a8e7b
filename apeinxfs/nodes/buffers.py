"""What the ctl files' descriptors may hold between and within writes (`[limits]`, docs/apeinxfs.5.md).

A write's complete lines are parsed, admitted and committed in one go on the daemon's only thread: at most
`write_lines` of them, counted before any is parsed (E2BIG). A descriptor keeps the unfinished last line of
its writes (up to LINE_MAX each): one uid's descriptors together at most `pending_bytes` (ENOBUFS), root's
and admins' too, each uid apart, so that no uid's lines crowd out another's. Not here: what a line may say
(nodes/ctl.py) or how long it may be (base.LINE_MAX). A ctl file gets its `Limits` (the daemon's Buffers and
its own path) when it is built, and hands them to each descriptor it opens; every write a descriptor refuses, by
these limits or by a line, is journaled through them (`Limits.journal`: `Buffers.journal`, the runtime's `reject`)
wherever it came from, the mount or a peer.
"""
from collections.abc import Callable

import attrs

from ..kernel.errors import ApeinxError, NoBuffers, TooBig

Journal = Callable[[str, ApeinxError, int, int, "str | None"], None]  # (path, refusal, uid, pid, tenant)

WRITE_LINES = 10000
PENDING_BYTES = 16 << 20


@attrs.define(eq=False)
class Buffers:
    """The limits, and the bytes of unfinished lines each uid's open ctl descriptors hold now."""

    write_lines: int = WRITE_LINES
    pending_bytes: int = PENDING_BYTES
    held: dict[int, int] = attrs.Factory(dict)  # uid -> bytes; a uid holding none is absent
    journal: Journal | None = None  # where a refused write is recorded (Runtime.reject); None: nowhere

    def at(self, path: str) -> "Limits":
        """The limits of the ctl file at `path`."""
        return Limits(self, path)

    def check_write(self, uid: int, data: bytes, pending: int, holding: int) -> None:
        """TooBig if `data` holds more than write_lines lines; NoBuffers if, a descriptor of `uid` holding
        `holding` bytes of which `pending` unfinished, its unfinished line after `data` would take the uid's
        past pending_bytes."""
        lines = data.count(b"\n")
        if lines > self.write_lines:
            raise TooBig(f"a write holds at most {self.write_lines} lines (limits.write_lines), not {lines}: "
                         f"split it")
        total = self.held.get(uid, 0) - holding + unfinished(data, pending)
        if total > self.pending_bytes:
            raise NoBuffers(f"uid {uid}'s open ctl files would hold {total} bytes of unfinished lines, more than "
                            f"limits.pending_bytes ({self.pending_bytes}): end lines with a newline, or close some")

    def hold(self, uid: int, before: int, after: int) -> int:
        """A descriptor of `uid` holds `after` bytes instead of `before`; returns `after`."""
        total = self.held.get(uid, 0) - before + after
        if total:
            self.held[uid] = total
        else:
            self.held.pop(uid, None)
        return after


def unfinished(data: bytes, pending: int) -> int:
    """The bytes of unfinished line a descriptor holding `pending` of them holds once `data` is written to it."""
    last = data.rfind(b"\n")
    return pending + len(data) if last < 0 else len(data) - last - 1


@attrs.frozen
class Limits:
    """The daemon's `buffers` as one ctl file (at `path`) applies them, and where its refused writes are journaled."""

    buffers: Buffers
    path: str

    def check_write(self, caller, data: bytes, pending: int, holding: int) -> None:
        """Buffers.check_write for a descriptor of `caller` (nodes.base.Caller)."""
        self.buffers.check_write(caller.uid, data, pending, holding)

    def journal(self, refusal: ApeinxError, caller) -> None:
        """Record `refusal` of a write of `caller` to this file (a `reject` line)."""
        if self.buffers.journal is not None:
            self.buffers.journal(self.path, refusal, caller.uid, caller.pid, caller.tenant)
