"""mountwatch.py: the device of the daemon's mount and whether a mount of it is left, read from a mountinfo
text as Linux writes it (proc(5)). The real mountinfo of a live and a detached mount: test_mount_lifecycle.py."""
import trio

from apeinxfs import mountwatch

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


async def test_until_detached_returns_at_the_first_check_after_the_mount_goes(tmp_path, autojump_clock):
    """until_detached looks once per CHECK_S: it returns at the first look after the lines of the device go."""
    info = write(tmp_path, MOUNTINFO)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mountwatch.until_detached, "0:55", mountwatch.CHECK_S, info)
        await trio.sleep(10.5 * mountwatch.CHECK_S)
        write(tmp_path, MOUNTINFO.replace("0:55", "0:57"))
    assert trio.current_time() == 11 * mountwatch.CHECK_S



async def test_a_mountinfo_that_cannot_be_read_counts_as_still_mounted(tmp_path, autojump_clock):
    """While mountinfo cannot be opened (ENOENT here, EMFILE in life) the mount counts as there; the first look
    that reads it without the device returns."""
    info = str(tmp_path / "mountinfo")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mountwatch.until_detached, "0:55", mountwatch.CHECK_S, info)
        await trio.sleep(5.5 * mountwatch.CHECK_S)
        write(tmp_path, MOUNTINFO.replace("0:55", "0:57"))
    assert trio.current_time() == 6 * mountwatch.CHECK_S
