"""A state directory whose journal is damaged (red-team findings, 2026-12-06): the mount and `apeinxfs replay`
should refuse it in words that name the file, as apeinxfs(5) REPLAY VERIFICATION and FILES promise for a
damaged snapshot, not with SQLite's bare "file is not a database" or a Python traceback.
"""
import os
import subprocess
import sys

from apeinxfs import verify

NOT_SQLITE = b"this is no SQLite file, whatever its name says\n" * 100


def damaged_state(tmp_path) -> str:
    """A state directory holding a journal.db that is not a database."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "journal.db").write_bytes(NOT_SQLITE)
    return str(state)


def test_replay_of_a_damaged_journal_says_so_and_exits_2(tmp_path, capsys):
    """`apeinxfs replay --verify` of a journal that is not a database exits 2 naming journal.db."""
    status = verify.main(["--verify", damaged_state(tmp_path)])
    assert status == 2 and "journal.db" in capsys.readouterr().err


def test_a_mount_on_a_damaged_journal_names_the_journal(tmp_path):
    """The mount command refuses a state directory whose journal is not a database, naming journal.db."""
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    done = subprocess.run([sys.executable, "-m", "apeinxfs.cli", str(mountpoint), "--state-dir",
                           damaged_state(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and os.path.join("state", "journal.db") in done.stderr, done.stderr
