"""A ring of CSV lines: a header, then lines with a strictly increasing seq, the newest kept.

The trace (trace.py) and the audit trail (audit.py) are rings. Past `limit` lines the oldest
eighth goes (one memmove per eighth of the limit); `dropped` counts their bytes, so that
offsets into the file serving it keep counting every line ever written and `tail -f`
follows across the drops (nodes/ringlog.py). Lines after `hold` are not dropped: the daemon
holds those not yet in the ring's archive (archive.py), where every line stays.
`drop_lines` deletes the oldest lines of such a buffer: the ring's trim and a tenant's view of
the trace (trace.TenantView) both drop through it. `rewrite` passes the lines kept through a
function, for a ring loaded from a snapshot of older code (state.credentials_hidden).

Not here: what a line says (the subclasses), nor writing the archive (archive.py, runtime.py).
"""
from __future__ import annotations

from array import array
from collections.abc import Callable


class Ring:
    """The newest `limit` lines (at least 7/8 of them once there are that many) after the class's HEADER."""

    HEADER = b""

    def __init__(self, limit: int):
        self.limit = limit
        self.seq = 0
        self.first = 1  # the seq of the oldest line kept
        self.dropped = 0  # bytes of the lines dropped: what the file's offsets count beyond `buffer`
        self.hold: int | None = None  # lines after this seq stay whatever the limit (not archived yet, being copied)
        self.buffer = bytearray(self.HEADER)
        self._starts = array("q")  # by seq - first: where the line starts in `buffer`, plus `dropped`

    def _add(self, line: bytes) -> None:
        """Append line `seq` (already counted) and whatever the subclass indexed of it; past `limit`, trim."""
        self._starts.append(len(self.buffer) + self.dropped)
        self.buffer += line
        if self.seq - self.first >= self.limit:
            self.trim()

    def _indexes(self) -> tuple[array[int], ...]:
        """The arrays indexed by seq - first (a subclass adds its own)."""
        return (self._starts,)

    def trim(self) -> None:
        """Drop the oldest lines while more than `limit` are kept, down to 7/8 of it, but none after `hold`."""
        last = self.seq - self.limit + self.limit // 8  # the last line to drop
        if self.hold is not None:
            last = min(last, self.hold)
        count = last - self.first + 1
        if count <= 0 or self.seq - self.first < self.limit:
            return
        self.dropped += drop_lines(self.buffer, len(self.HEADER), self._starts, self.dropped, count)
        for index in self._indexes():
            del index[:count]
        self.first = last + 1

    def release(self, seq: int | None) -> None:
        """Lines after `seq` are kept whatever the limit (None: none are); then trim."""
        self.hold = seq
        self.trim()

    def rewrite(self, change: Callable[[str], str]) -> bool:
        """The lines kept, as `change` makes their text (each line on its own: it never joins nor splits one);
        whether any changed. The offsets of the lines after a changed one move: for a ring just loaded, before
        any reader has one."""
        kept = self.buffer[len(self.HEADER):].decode()
        changed = change(kept)
        if changed == kept:
            return False
        lines = changed.split("\n")[:-1]  # each line ends with one
        assert len(lines) == len(self._starts), f"{len(lines)} lines changed, {len(self._starts)} kept"
        del self.buffer[len(self.HEADER):], self._starts[:]
        for line in lines:
            self._starts.append(len(self.buffer) + self.dropped)
            self.buffer += f"{line}\n".encode()
        return True

    def view(self) -> tuple[bytearray, int]:
        """(The header and the lines kept, bytes of lines dropped before them): what the file serves."""
        return self.buffer, self.dropped

    def lines_after(self, seq: int) -> bytes:
        """The lines kept after seq `seq`, in order (what the archive has not written yet)."""
        if seq >= self.seq:
            return b""
        return bytes(self.buffer[self._starts[max(seq + 1, self.first) - self.first] - self.dropped:])


def drop_lines(buffer: bytearray, header: int, starts: array[int], dropped: int, count: int) -> int:
    """Delete the first `count` lines of `buffer` after its `header` bytes, `starts` saying where each line
    starts (plus `dropped`, the bytes deleted before); the bytes deleted now. The caller drops its indexes."""
    end = starts[count] - dropped if count < len(starts) else len(buffer)
    del buffer[header:end]
    return end - header
