"""Renames of the daemon's state files that a power cut cannot undo (`replace`), and the fsyncs it is made of.

`os.replace` is atomic, and after a kill -9 the new name is there (the kernel's page cache
outlives the process). A power cut may still lose it: the rename is in the directory, which
is on disk only once the directory is fsynced; and the file renamed may come back empty
unless its own data was fsynced before the rename. `replace` does both, around the rename.
Every rename of state under apeinxfs/ goes through it (tests/test_durable.py checks that no
other rename or move is left: `os.replace`/`os.rename`, their `Path` methods, `shutil.move`).
It does not choose names, write data or remove files.
"""
import os


def replace(source: str, target: str) -> None:
    """Rename `source` over `target` so that a power cut leaves the one or the other, whole: the data of
    `source` synced first, the directory synced after (both directories, if the rename moves between two)."""
    sync_file(source)
    os.replace(source, target)
    for directory in {os.path.dirname(os.path.abspath(path)) for path in (source, target)}:
        sync_directory(directory)


def sync_file(path: str) -> None:
    """fsync the file at `path`: its data on disk (not its name: that is its directory's)."""
    _sync(path, os.O_RDONLY)


def sync_directory(directory: str) -> None:
    """fsync `directory`: the names it holds on disk, those of files created or renamed in it among them."""
    _sync(directory, os.O_RDONLY | os.O_DIRECTORY)


def _sync(path: str, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
