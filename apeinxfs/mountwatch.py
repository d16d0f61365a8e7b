"""Whether the daemon's own FUSE mount is still attached: found by its device in /proc/self/mountinfo.

`fusermount3 -u -z` (umount2 with MNT_DETACH) takes the mount out of the namespace at once, but the
kernel keeps the FUSE connection, and so the daemon and its state directory's lock, while any
descriptor on the detached tree is open: a `cat wait` blocked on a long task would keep them for
ever. The daemon knows its connection by the device (major:minor) that its mount shows in
/proc/self/mountinfo, read right after mounting (a stat of its own root would wait on itself), and
checks once a second that some mount of that device is still there: a bind mount of the tree keeps
it attached. Not here: what the daemon does once it is detached (mount.py).
"""
import logging
import os

import trio

log = logging.getLogger("apeinxfs")

MOUNTINFO = "/proc/self/mountinfo"
CHECK_S = 1.0  # how often the daemon looks: one read of a small file, in the daemon's namespace
FSTYPE = "fuse.apeinxfs"
ESCAPED = str.maketrans({"\\": r"\134", " ": r"\040", "\t": r"\011", "\n": r"\012"})  # as mountinfo writes paths


def mounts(mountinfo: str = MOUNTINFO) -> list[tuple[str, str, str]]:
    """(device, mount point as mountinfo escapes it, file system type) of each mount, oldest first."""
    with open(mountinfo) as file:
        return [_fields(line.split()) for line in file if line.strip()]


def _fields(words: list[str]) -> tuple[str, str, str]:
    """The device, mount point and type of one mountinfo line (proc(5): the type follows the `-`)."""
    return words[2], words[4], words[words.index("-") + 1]


def device_of(mountpoint: str, mountinfo: str = MOUNTINFO) -> str | None:
    """The device of the apeinxfs mount on top at `mountpoint` (the latest mounted there); None if none is."""
    escaped = canonical(mountpoint).translate(ESCAPED)
    found = [device for device, point, fstype in mounts(mountinfo) if point == escaped and fstype == FSTYPE]
    return found[-1] if found else None


def canonical(mountpoint: str) -> str:
    """The path mountinfo shows for `mountpoint`: its directory's links resolved, not its own (a stat of
    the mounted root would wait on the daemon that asks)."""
    head, name = os.path.split(os.path.abspath(mountpoint))
    return os.path.join(os.path.realpath(head), name)


def attached(device: str, mountinfo: str = MOUNTINFO) -> bool:
    """Whether some mount of `device` is still in this namespace."""
    return any(mounted == device for mounted, _, _ in mounts(mountinfo))


async def until_detached(device: str, check_s: float = CHECK_S, mountinfo: str = MOUNTINFO) -> None:
    """Return once no mount of `device` is left, looking every `check_s`. A look that cannot read mountinfo
    (EMFILE: every descriptor taken) finds the mount still there, with a warning."""
    while _still_attached(device, mountinfo):
        await trio.sleep(check_s)


def _still_attached(device: str, mountinfo: str) -> bool:
    try:
        return attached(device, mountinfo)
    except OSError as exc:
        log.warning("cannot read %s (%s): the mount is taken to be still there", mountinfo, exc.strerror)
        return True
