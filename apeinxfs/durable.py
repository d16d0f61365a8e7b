"""Renames of the daemon's state files that a power cut cannot undo: `replace` and `sync_directory`.

`os.replace` is atomic, and after a kill -9 the new name is there (the kernel's page cache
outlives the process). A power cut may still lose it: the rename is in the directory, which
is on disk only once the directory is fsynced; and the file renamed may come back empty
unless its own data was fsynced before the rename. `replace` does both, around the rename.
Every rename of state under apeinxfs/ goes through it (tests/test_durable.py checks that no
other `os.replace` or `os.rename` is left). It does not choose names, write data or remove files.
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
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
