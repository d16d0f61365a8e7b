"""What the ctl files' descriptors may hold between and within writes (`[limits]`, docs/apeinxfs.5.md).

A write's complete lines are parsed, admitted and committed in one go on the daemon's only thread: at most
`write_lines` of them, counted before any is parsed (E2BIG). A descriptor keeps the unfinished last line of
its writes (up to LINE_MAX each): one uid's descriptors together at most `pending_bytes` (ENOBUFS), root's
and admins' too, each uid apart, so that no uid's lines crowd out another's. Not here: what a line may say
(nodes/ctl.py), how long it may be (base.LINE_MAX), or where a refused write is recorded (tree.Tree.reject_at). A
ctl file gets the daemon's Buffers when it is built (base.Writes), and hands them to each descriptor it opens.
"""
import attrs

from ..kernel.errors import NoBuffers, TooBig

WRITE_LINES = 10000
PENDING_BYTES = 16 << 20


@attrs.define(eq=False)
class Buffers:
    """The limits, and the bytes of unfinished lines each uid's open ctl descriptors hold now."""

    write_lines: int = WRITE_LINES
    pending_bytes: int = PENDING_BYTES
    held: dict[int, int] = attrs.Factory(dict)  # uid -> bytes; a uid holding none is absent

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
