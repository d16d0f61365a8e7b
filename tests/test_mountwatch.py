"""mountwatch.py: the device of the daemon's mount and whether a mount of it is left, read from a mountinfo
text as Linux writes it (proc(5)) or broken; a caller's namespace; a signal's unmount only while attached. The
real mountinfo of a live and a detached mount: test_mount_lifecycle.py."""
import os

import pytest
import trio

from apeinxfs import mountwatch
from apeinxfs.mount import Ending

MOUNTINFO = """22 27 0:21 / /proc rw,relatime shared:12 - proc proc rw
27 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 27 0:40 / /srv/a\\040b rw,nosuid,nodev,relatime shared:30 - fuse.apeinxfs apeinxfs rw,user_id=0,group_id=0
41 40 0:55 / /srv/a\\040b rw,nosuid,nodev,relatime - fuse.apeinxfs apeinxfs rw,user_id=0,group_id=0
42 27 0:56 / /srv/other rw,relatime - fuse.sshfs host:/ rw
"""


def write(tmp_path, text: str) -> str:
    path = tmp_path / "mountinfo"
    path.write_text(text)
    return str(path)


def test_device_of_is_the_latest_apeinxfs_mount_at_the_escaped_path(tmp_path):
    """A mount point with a space (\\040 in mountinfo) is found; of two stacked there, the later one's device."""
    info = write(tmp_path, MOUNTINFO)
    assert mountwatch.device_of("/srv/a b", info) == "0:55"
    assert mountwatch.device_of("/srv/other", info) is None and mountwatch.device_of("/srv", info) is None


def test_attached_while_any_mount_of_the_device_is_left(tmp_path):
    """The device stays attached while a bind mount of it is left elsewhere; gone with its last line."""
    bound = MOUNTINFO.replace("/srv/other", "/mnt/bound").replace("0:56", "0:55")
    assert mountwatch.attached("0:55", write(tmp_path, bound))
    detached = "\n".join(line for line in bound.splitlines() if " 0:55 " not in line)
    assert not mountwatch.attached("0:55", write(tmp_path, detached))


async def inline(device: str, mountinfo: str):
    """A look in the loop itself: trio's autojump clock would jump while a worker thread reads."""
    return mountwatch.still_attached(device, mountinfo)


async def test_until_detached_returns_at_the_first_check_after_the_mount_goes(tmp_path, autojump_clock):
    """until_detached looks once per CHECK_S: it returns at the first look after the lines of the device go."""
    info = write(tmp_path, MOUNTINFO)
    watch = mountwatch.Watch("0:55", info)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch.until_detached, mountwatch.CHECK_S, inline)
        await trio.sleep(10.5 * mountwatch.CHECK_S)
        write(tmp_path, MOUNTINFO.replace("0:55", "0:57"))
    assert trio.current_time() == 11 * mountwatch.CHECK_S and watch.looks == 12


async def test_a_mountinfo_that_cannot_be_read_counts_as_still_mounted(tmp_path, autojump_clock, caplog):
    """While mountinfo cannot be opened (ENOENT here, EMFILE in life) the mount counts as there, said once a
    WARN_EVERY_S; the first look that reads it without the device returns."""
    info = str(tmp_path / "mountinfo")
    watch = mountwatch.Watch("0:55", info)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch.until_detached, mountwatch.CHECK_S, inline)
        await trio.sleep(2.5 * mountwatch.WARN_EVERY_S + 0.5 * mountwatch.CHECK_S)
        write(tmp_path, MOUNTINFO.replace("0:55", "0:57"))
    assert trio.current_time() == 2.5 * mountwatch.WARN_EVERY_S + mountwatch.CHECK_S
    assert [record.getMessage().startswith(f"cannot read {info} (No such file") for record in caplog.records] == [True] * 3


NOT_UTF8 = MOUNTINFO.encode() + b"43 27 0:57 / /home/u/caf\xe9 rw,relatime - fuse.sshfs host:/ rw\n"


def test_a_mount_point_that_is_not_utf8_is_read_as_bytes(tmp_path):
    """A mount point with byte 0xe9 (a user's sshfs on ~/caf\\xe9) neither hides the daemon's device nor fails."""
    info = tmp_path / "mountinfo"
    info.write_bytes(NOT_UTF8)
    assert mountwatch.device_of("/srv/a b", str(info)) == "0:55" and mountwatch.attached("0:55", str(info))
    assert mountwatch.still_attached("0:59", str(info)) == (False, None)
    assert mountwatch.device_of(os.fsdecode(b"/home/u/caf\xe9"), str(info)) is None  # sshfs, not apeinxfs


@pytest.mark.parametrize("broken", ["directory", "garbled"])
def test_an_unreadable_or_garbled_mountinfo_is_still_attached_and_has_no_device(tmp_path, broken):
    """A mountinfo that cannot be read (a directory: EISDIR) or parsed (a line without its `-`) counts as still
    attached, with the reason, and device_of finds none (the daemon then runs without the watch) instead of
    raising."""
    info = tmp_path / "mountinfo"
    if broken == "directory":
        info.mkdir()
    else:
        info.write_bytes(NOT_UTF8 + b"44 27 0:58 / /x rw\n")
    mounted, problem = mountwatch.still_attached("0:59", str(info))
    assert mounted and problem.startswith(f"cannot read {info}")
    assert mountwatch.device_of("/srv/a b", str(info)) is None


def test_a_caller_whose_namespace_cannot_be_read_counts_as_in_the_daemons_own():
    """This process is in its own mount namespace; a pid that is not there (its ns/mnt unreadable) counts as in it."""
    assert mountwatch.in_own_namespace(os.getpid())
    assert mountwatch.in_own_namespace(2 ** 22 + 1)  # above pid_max's most: never a live pid


def test_a_signal_unmounts_only_a_mount_still_attached():
    """At a signal's close the daemon unmounts its path only if its device is still mounted here, looked at then
    (a lazy unmount in the second before: the path may hold another mount); a device not known: unmounted."""
    mounted = mountwatch.mounts()[0][0].decode()
    assert Ending(trio.CancelScope(), device=mounted, unmount=True).unmounts()
    assert not Ending(trio.CancelScope(), device="4095:1048575", unmount=True).unmounts()
    assert Ending(trio.CancelScope(), device=None, unmount=True).unmounts()
    assert not Ending(trio.CancelScope(), device=mounted, unmount=False).unmounts()
