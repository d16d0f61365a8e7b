"""Whether the daemon's own FUSE mount is still attached: found by its device in /proc/self/mountinfo.

`fusermount3 -u -z` (umount2 with MNT_DETACH) takes the mount out of the namespace at once, but the
kernel keeps the FUSE connection, and so the daemon and its state directory's lock, while any
descriptor on the detached tree is open: a `cat wait` blocked on a long task would keep them for
ever. The daemon knows its connection by the device (major:minor) that its mount shows in
/proc/self/mountinfo, read right after mounting (a stat of its own root would wait on itself), and
checks once a second, in a worker thread, that some mount of that device is still there: a bind mount
of the tree keeps it attached. mountinfo is read as bytes (a mount point need not be UTF-8); one that
cannot be read or parsed counts as still attached. `in_own_namespace` tells whether a caller shares the
daemon's mount namespace (where the detach took its view of the tree). Not here: what the daemon does
once it is detached (mount.py).
"""
import logging
import math
import os

import attrs
import trio

log = logging.getLogger("apeinxfs")

MOUNTINFO = "/proc/self/mountinfo"
CHECK_S = 1.0  # how often the daemon looks: one read of mountinfo, in a worker thread (a large one takes ms)
WARN_EVERY_S = 60.0  # a mountinfo that cannot be read or parsed is said at most this often
FSTYPE = b"fuse.apeinxfs"
ESCAPED = {ord("\\"): b"\\134", ord(" "): b"\\040", ord("\t"): b"\\011", ord("\n"): b"\\012"}  # as mountinfo writes paths
UNREADABLE = (OSError, ValueError, IndexError)  # mountinfo cannot be opened or read, or a line is not as proc(5) says


def mounts(mountinfo: str = MOUNTINFO) -> list[tuple[bytes, bytes, bytes]]:
    """(device, mount point as mountinfo escapes it, file system type) of each mount, oldest first. Bytes: a
    mount point need not be UTF-8 (a user's sshfs on ~/caf\\xe9)."""
    with open(mountinfo, "rb") as file:
        return [_fields(line.split()) for line in file if line.strip()]


def _fields(words: list[bytes]) -> tuple[bytes, bytes, bytes]:
    """The device, mount point and type of one mountinfo line (proc(5): the type follows the `-`)."""
    return words[2], words[4], words[words.index(b"-") + 1]


def device_of(mountpoint: str, mountinfo: str = MOUNTINFO) -> str | None:
    """The device of the apeinxfs mount on top at `mountpoint` (the latest mounted there); None if none is, or
    if mountinfo cannot be read or parsed (with a warning)."""
    escaped = b"".join(ESCAPED.get(byte, bytes([byte])) for byte in os.fsencode(canonical(mountpoint)))
    try:
        found = [device for device, point, fstype in mounts(mountinfo) if point == escaped and fstype == FSTYPE]
    except UNREADABLE as exc:
        log.warning("cannot read %s (%s): the device of %s is not known", mountinfo, _why(exc), mountpoint)
        return None
    return found[-1].decode("ascii", errors="replace") if found else None


def canonical(mountpoint: str) -> str:
    """The path mountinfo shows for `mountpoint`: its directory's links resolved, not its own (a stat of
    the mounted root would wait on the daemon that asks)."""
    head, name = os.path.split(os.path.abspath(mountpoint))
    return os.path.join(os.path.realpath(head), name)


def attached(device: str, mountinfo: str = MOUNTINFO) -> bool:
    """Whether some mount of `device` is still in this namespace (raises what UNREADABLE names)."""
    wanted = device.encode("ascii", errors="replace")
    return any(mounted == wanted for mounted, _, _ in mounts(mountinfo))


def still_attached(device: str, mountinfo: str = MOUNTINFO) -> tuple[bool, str | None]:
    """Whether some mount of `device` is still there, and the reason when that is assumed: a mountinfo that
    cannot be read (EMFILE: every descriptor taken) or parsed counts as still attached."""
    try:
        return attached(device, mountinfo), None
    except UNREADABLE as exc:
        return True, f"cannot read {mountinfo} ({_why(exc)}): the mount is taken to be still there"


def _why(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"


async def _look_in_thread(device: str, mountinfo: str) -> tuple[bool, str | None]:
    return await trio.to_thread.run_sync(still_attached, device, mountinfo)


@attrs.define
class Watch:
    """The watch for a lazy unmount of one device: `looks` counts its looks (/metrics apeinx_mount_checks_total)."""

    device: str
    mountinfo: str = MOUNTINFO
    looks: int = 0

    async def until_detached(self, check_s: float = CHECK_S, look=_look_in_thread) -> None:
        """Return once no mount of the device is left, looking every `check_s` (`look`: still_attached in a worker
        thread, so the loop never stalls on a large mountinfo). Why a look assumed the mount still there is logged
        at most once per WARN_EVERY_S."""
        warned = -math.inf
        while True:
            mounted, problem = await look(self.device, self.mountinfo)
            self.looks += 1
            if not mounted:
                return
            if problem is not None and trio.current_time() - warned >= WARN_EVERY_S:
                log.warning("%s", problem)
                warned = trio.current_time()
            await trio.sleep(check_s)


def in_own_namespace(pid: int) -> bool:
    """Whether thread `pid` is in this process's mount namespace (/proc/PID/ns/mnt); one that cannot be read
    (gone, or hidden) counts as in it."""
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    except OSError:
        return True
