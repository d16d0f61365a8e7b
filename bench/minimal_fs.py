"""The benchmarks' baseline: a minimal pyfuse3 + trio file system serving one 64-byte file.

    python bench/minimal_fs.py MOUNTPOINT       # foreground; `fusermount3 -u MOUNTPOINT` ends it

It serves `/file` (64 fixed bytes) with the settings apeinxfs uses for its files
(direct_io, 1 s attribute and entry timeouts, default_permissions, the same worker
counts), so a read loop against it measures what pyfuse3 and the kernel cost alone.
It is not apeinxfs and has no tree, kernel, journal or error handling beyond ENOENT.
"""
import errno
import os
import stat
import sys

import pyfuse3
import trio

FILE_NAME = b"file"
FILE_INODE = pyfuse3.ROOT_INODE + 1
DATA = b"minimal pyfuse3 file system: sixty-four fixed bytes of content.\n"
TIMEOUT_S = 1.0

assert len(DATA) == 64


class MinimalOperations(pyfuse3.Operations):
    """The root directory and its one file; nothing else."""

    def attributes(self, inode: int) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        is_root = inode == pyfuse3.ROOT_INODE
        entry.st_ino = inode
        entry.st_mode = (stat.S_IFDIR | 0o555) if is_root else (stat.S_IFREG | 0o444)
        entry.st_nlink = 2 if is_root else 1
        entry.st_size = 0 if is_root else len(DATA)
        entry.st_uid, entry.st_gid = os.getuid(), os.getgid()
        entry.attr_timeout = entry.entry_timeout = TIMEOUT_S
        return entry

    async def getattr(self, inode, ctx=None):
        return self.attributes(inode)

    async def lookup(self, parent_inode, name, ctx=None):
        if parent_inode != pyfuse3.ROOT_INODE or name != FILE_NAME:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.attributes(FILE_INODE)

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=inode, direct_io=True, keep_cache=False)

    async def read(self, fh, off, size):
        return DATA[off:off + size]


def main(mountpoint: str) -> int:
    options = set(pyfuse3.default_options) | {"fsname=minimalfs", "subtype=minimalfs"}
    pyfuse3.init(MinimalOperations(), mountpoint, options)
    try:
        trio.run(pyfuse3.main, 4, 964)
    finally:
        pyfuse3.close(unmount=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
