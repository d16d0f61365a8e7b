"""A log file whose oldest lines are dropped (a ring: kernel/ring.py), read like a log.

Its size counts every byte ever written, the dropped lines too, so it only grows and `tail -f`
(which reads when st_size grows, and calls a shrunk file truncated) follows it. A read at an
offset finds its bytes in what is kept: past the header, an offset counts the dropped bytes
too, and one inside them reads from the oldest line kept. `cat` reading from 0 gets the header
and then the lines kept, and the kernel moves its file offset by the bytes returned, not by the
offsets they stand for: so each handle remembers where its last read ended (as an offset and
as the position it stood for), and a read that goes on from there goes on from that position.
The header's length (`header_length`) is where lines start. Not here: what is kept (kernel/ring.py).
"""
import attrs

from .base import Handle, Log


@attrs.define(eq=False)
class RingLog(Log):
    """A log whose `source()` is (the header and the lines kept, bytes of lines dropped before them)."""

    header_length: int = attrs.field(kw_only=True)  # where lines start: the ring's HEADER, as long

    @classmethod
    def of(cls, ring, source=None, **fields) -> "RingLog":
        """The log of `ring` (kernel/ring.py: its view, else `source`), its lines starting after ring.HEADER."""
        return cls(source=source or ring.view, header_length=len(ring.HEADER), **fields)

    def size(self) -> int:
        text, dropped = self.source()
        return len(text) + dropped

    def open(self, caller, writing, reading, truncating=False):
        if writing:
            return super().open(caller, writing, reading, truncating)
        return RingHandle(self)


def kept_index(position: int, dropped: int, header_length: int) -> int:
    """Where the byte at `position` (counting dropped bytes) is in what is kept; a dropped one's
    is the oldest line kept."""
    if position < header_length:
        return position
    return max(position - dropped, header_length)


@attrs.define(eq=False)
class RingHandle(Handle):
    node: RingLog
    offset_after: int = -1  # the file offset where the last read ended
    position_after: int = 0  # ... and the position (counting dropped bytes) it stood for

    async def read(self, offset, size, waiter):
        text, dropped = self.node.source()
        position = self.position_after if offset == self.offset_after else offset
        header = self.node.header_length
        start = kept_index(position, dropped, header)
        data = bytes(text[start:start + size])
        end = start + len(data)
        self.offset_after, self.position_after = offset + len(data), end if end < header else end + dropped
        return data
