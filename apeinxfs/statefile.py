"""Opening a state directory's files as untrusted input: a state directory may be handed over (`apeinxfs replay
[--verify] DIR`, a backup put back) or have a file planted in it (docs/security.md).

`opened` (`descriptor`) opens a file neither following a symbolic link nor waiting on a FIFO's writer and requires a regular file;
`check_regular` is that check for a name another library opens (SQLite's journal); `bounded_lines` reads a file's
lines, each at most a bound, never the whole file at once. Each refusal is `Untrusted`, naming the file and why.
The state directory itself may be a link (an operator's choice): only its files are checked.
This module decides nothing about what a refusal means: each reader says whether a start refuses or skips.
"""
import errno
import gzip
import io
import os
import stat
from collections.abc import Iterator
from typing import IO

from .kernel.errors import ApeinxError

LINE_MAX = 1 << 20  # bytes of one line of an archive read at most: a trace line takes some hundred
BLOCK = LINE_MAX  # bytes read at once: a line ending in a block is at most LINE_MAX with the part carried before it
LINKED = ("a symbolic link, which the daemon never writes there (to keep the state on another disk, link the state "
          "directory itself)")
INFLATE_RATIO, INFLATE_FLOOR = 64, 64 << 20  # a compressed file inflates to at most 64 times its length, or 64 MiB:
# a snapshot's state compresses 2 to 8 times at zlib level 1, an archive's CSV under 20 times; a bomb 1000 times


class Untrusted(ApeinxError):
    """A state file that is not what the daemon writes there (a link, a FIFO, a device, a line without bound)."""


def refusal(path: str, why: str) -> Untrusted:
    return Untrusted(f"damaged or untrusted state file: {path}, {why}")


def opened(path: str, writing: bool = False) -> IO[bytes]:
    """The regular file at `path`, open to read (and write, if `writing`); Untrusted if the name is a symbolic
    link or no regular file (a FIFO is opened without waiting for a writer, and not read). FileNotFoundError
    and other OSErrors as open(2) raises them."""
    return os.fdopen(descriptor(path, os.O_RDWR if writing else os.O_RDONLY), "r+b" if writing else "rb")


def descriptor(path: str, flags: int, mode: int = 0o600) -> int:
    """A descriptor of the regular file at `path` opened with `flags` (O_CREAT: made with `mode` if none is
    there), never through a symbolic link nor waiting on a FIFO; Untrusted if it is not a regular file."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise refusal(path, LINKED) from None
        if exc.errno == errno.ENXIO:  # a FIFO opened to write, no reader on it
            raise refusal(path, "a FIFO, which the daemon never writes there") from None
        raise
    try:
        kind_checked(path, os.fstat(fd).st_mode)
    except Untrusted:
        os.close(fd)
        raise
    os.set_blocking(fd, True)
    return fd


def check_regular(path: str) -> None:
    """Untrusted if a name is at `path` that is a symbolic link or no regular file; none there is fine."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise refusal(path, LINKED)
    kind_checked(path, mode)


def kind_checked(path: str, mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise refusal(path, f"not a regular file (mode {stat.filemode(mode)}), which the daemon always writes there")


def inflate_limit(packed_bytes: int) -> int:
    """The most bytes a compressed state file of `packed_bytes` may inflate to."""
    return max(INFLATE_FLOOR, INFLATE_RATIO * packed_bytes)


def bounded_lines(file: IO[bytes], path: str, total: int | None = None) -> Iterator[bytes]:
    """The lines of `file` one by one (the last maybe without its newline), read in blocks; Untrusted at a line
    longer than LINE_MAX, or past `total` bytes in all."""
    read, carried = 0, b""
    while block := file.read(BLOCK):
        read += len(block)
        if total is not None and read > total:
            raise refusal(path, f"it inflates past {total} bytes, {INFLATE_RATIO} times its length or more, "
                                "as no file the daemon compressed does")
        chunk = carried + block
        whole = chunk.rfind(b"\n") + 1  # the lines ending in it; the rest is carried to the next block
        carried = chunk[whole:]
        if len(carried) > LINE_MAX or chunk.find(b"\n", 0, whole) >= LINE_MAX:
            raise refusal(path, f"a line longer than {LINE_MAX} bytes, as no archive line is")
        yield from io.BytesIO(chunk[:whole])  # split on b"\n" alone, in C
    if carried:
        yield carried


def archive_lines(path: str) -> Iterator[bytes]:
    """The lines of the archive file at `path` (opened; gzip-inflated, streamed, if it ends in .gz), bounded."""
    with opened(path) as file:
        if not path.endswith(".gz"):
            yield from bounded_lines(file, path)
            return
        with gzip.GzipFile(fileobj=file, mode="rb") as inflating:
            try:
                yield from bounded_lines(inflating, path, inflate_limit(os.fstat(file.fileno()).st_size))
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                raise refusal(path, f"not a whole gzip file ({exc})") from None
