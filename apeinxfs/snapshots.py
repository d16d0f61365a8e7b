"""Snapshot files under STATE_DIR/snapshots/: the kernel's state at a journal row, checksummed.

A file `snapshot-<SEQ>.snap` (SEQ, 12 digits, the last journal row applied to the state)
is one header line, `apeinxfs-snapshot 1 <crc32 of the header> <header JSON>`, then the
state (kernel/state.py) compressed with zlib. The header holds SEQ, the kernel config it
was booted with (as the journal's boot rows hold it), the kernel's layout, the trace's
last seq, the compressed state's length and crc32, and the CRC of journal row SEQ
(`row_crc`: a start tells a journal of another history by it; absent in older files). A file is written as `.tmp`, fsynced,
renamed, and the directory fsynced (`write`; or `write_temp` in one process, `publish` in
another): a crash leaves the old files whole and at most a `.tmp`, which nothing reads and
the next `prune` removes.

`Snapshot.read` raises `Damaged` for a file that is truncated, altered, or of another
version, and for a name that is no regular file (a symbolic link, a FIFO, a device: `opened`
neither follows nor waits on one) or whose header line or state would take memory without
bound (HEADER_MAX, statefile.INFLATE_RATIO): a reader then falls back to the one before it (`usable`). This module reads and
writes files; when to write one and what the journal drops after it is compaction.py's.
"""
import json
import os
import re
import zlib

import attrs

from . import durable, statefile

MAGIC = "apeinxfs-snapshot 1"
NAME = re.compile(r"^snapshot-(\d{12})\.snap$")
KEEP = 2  # snapshots kept: the newest, and one to fall back to
HEADER_MAX = 16 << 20  # bytes of a header line read at most: its config and layout take some KiB


class Damaged(Exception):
    """A snapshot file that cannot be used, and why."""


@attrs.frozen
class Snapshot:
    """A snapshot file's header and the path it was read from; `state` is read on demand."""

    path: str
    seq: int
    time_us: int
    trace_seq: int
    config: dict
    layout: dict
    length: int
    crc: int
    offset: int  # where the state starts in the file
    row_crc: int | None = None  # journal.row_crc of row `seq` as the journal held it; None: no such row, or older

    @classmethod
    def read(cls, path: str) -> "Snapshot":
        """The header of the file at `path`; Damaged if it is not a whole one."""
        try:
            with opened(path) as file:
                line = file.readline(HEADER_MAX + 1)
                size = os.fstat(file.fileno()).st_size
        except OSError as exc:
            raise Damaged(f"{path}: {exc.strerror}") from None
        if len(line) > HEADER_MAX:
            raise Damaged(f"{path}: its header line is longer than {HEADER_MAX} bytes: not a snapshot")
        header = parse_header(path, line)
        if size != len(line) + header["length"]:
            raise Damaged(f"{path}: {size - len(line)} bytes of state where the header says {header['length']}")
        return cls(path=path, offset=len(line), **header)

    def state(self) -> bytes:
        """The state's bytes, decompressed; Damaged if they do not match the header's checksum."""
        try:
            with opened(self.path) as file:
                file.seek(self.offset)
                packed = file.read(self.length + 1)
        except OSError as exc:
            raise Damaged(f"{self.path}: {exc.strerror}") from None
        if len(packed) != self.length or zlib.crc32(packed) != self.crc:
            raise Damaged(f"{self.path}: the state does not match its checksum (crc32 {self.crc:08x})")
        return inflated(self.path, packed)


def opened(path: str):
    """The regular file at `path`, open to read (statefile.opened); Damaged if the name is a symbolic link or no
    regular file."""
    try:
        return statefile.opened(path)
    except statefile.Untrusted as exc:
        raise Damaged(exc.reason) from None


def inflated(path: str, packed: bytes) -> bytes:
    """The state `packed` decompressed, at most statefile.inflate_limit of its length; Damaged if it
    would be more, or is not whole."""
    limit, inflater = statefile.inflate_limit(len(packed)), zlib.decompressobj()
    try:
        state = inflater.decompress(packed, limit)
    except zlib.error as exc:
        raise Damaged(f"{path}: {exc}") from None
    if inflater.unconsumed_tail:
        raise Damaged(f"{path}: its state inflates past {limit} bytes, {statefile.INFLATE_RATIO} times its compressed "
                      "length or more, as no kernel's state does: a damaged or untrusted snapshot")
    if not inflater.eof:
        raise Damaged(f"{path}: its state is cut short (the compressed stream does not end)")
    return state


def parse_header(path: str, line: bytes) -> dict:
    """The header fields of a snapshot's first line; Damaged if it is not one, or altered."""
    magic, _, rest = line.decode(errors="replace").rstrip("\n").partition(" ")
    version, _, rest = rest.partition(" ")
    crc, _, text = rest.partition(" ")
    if not line.endswith(b"\n") and (line.startswith(MAGIC.encode()) or MAGIC.encode().startswith(line)):
        raise Damaged(f"{path}: its header is cut short: the file is damaged")
    if f"{magic} {version}" != MAGIC or not line.endswith(b"\n"):
        raise Damaged(f"{path}: not a snapshot of this version ({MAGIC})")
    if crc != f"{zlib.crc32(text.encode()):08x}":
        raise Damaged(f"{path}: its header does not match its checksum")
    return json.loads(text)


def write(directory: str, seq: int, time_us: int, trace_seq: int, config: dict, layout: dict, state: bytes,
          row_crc: int | None = None) -> str:
    """Write the snapshot of `state` at journal row `seq` durably and atomically; its path."""
    return publish(write_temp(directory, seq, time_us, trace_seq, config, layout, row_crc, state))


def write_temp(directory: str, seq: int, time_us: int, trace_seq: int, config: dict, layout: dict,
               row_crc: int | None, state: bytes) -> str:
    """Write the snapshot of `state` at journal row `seq` (whose row_crc is `row_crc`) to its temp file, synced;
    the temp file's path."""
    os.makedirs(directory, exist_ok=True)
    packed = zlib.compress(state, 1)
    header = json.dumps({"seq": seq, "time_us": time_us, "trace_seq": trace_seq, "config": config,
                         "layout": layout, "length": len(packed), "crc": zlib.crc32(packed), "row_crc": row_crc},
                        separators=(",", ":"), default=str)
    temp = path_of(directory, seq) + ".tmp"
    with open(temp, "wb") as file:
        file.write(f"{MAGIC} {zlib.crc32(header.encode()):08x} {header}\n".encode())
        file.write(packed)
        file.flush()
        os.fsync(file.fileno())
    return temp


def path_of(directory: str, seq: int) -> str:
    """The path of the snapshot of journal row `seq` in `directory`."""
    return os.path.join(directory, f"snapshot-{seq:012d}.snap")


def publish(temp: str) -> str:
    """Rename a written temp file to the snapshot it holds, durably; the snapshot's path."""
    path = temp.removesuffix(".tmp")
    durable.replace(temp, path)
    return path


def paths(directory: str) -> list[str]:
    """The snapshot files in `directory`, newest (highest seq) first; temp files are not among them."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return [os.path.join(directory, name) for name in sorted(filter(NAME.match, names), reverse=True)]


def usable(directory: str, damaged: list[str] | None = None):
    """Yield the snapshots whose header reads, newest first; why each other one cannot be used goes
    into `damaged` (its state's checksum is checked when it is read: Snapshot.state)."""
    for path in paths(directory):
        try:
            yield Snapshot.read(path)
        except Damaged as exc:
            if damaged is not None:
                damaged.append(str(exc))


def prune(directory: str, keep: int = KEEP) -> list[int]:
    """Remove all but the `keep` newest snapshots and any temp file; the seqs of those kept, newest first."""
    for name in os.listdir(directory):
        if name.endswith(".tmp"):
            os.unlink(os.path.join(directory, name))
    found = paths(directory)
    for path in found[keep:]:
        os.unlink(path)
    return [int(NAME.match(os.path.basename(path)).group(1)) for path in found[:keep]]
