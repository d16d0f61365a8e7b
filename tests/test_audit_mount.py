"""Tier 3-4: the audit trail on a real daemon stays bounded in memory and whole on disk, through kill -9.

An admin's writes to ctl/tenants (each one an audit line) go past a small `audit_lines`: `wc -l`
of trace/audit stays bounded, the files of STATE_DIR/audit/ (rotated, gzip-compressed: read with
zcat) hold every line exactly once, and after kill -9 and a restart they still do, the lines
written after it going on from the seqs before.
"""
import glob
import os
import subprocess

import pytest

from daemon import FAST_CONFIG, Daemon
from test_verify_mount import replay_verify

pytestmark = pytest.mark.mount

FEW_AUDIT = FAST_CONFIG + "[retention]\naudit_lines = 16\ntrace_file_bytes = 2048\n"


def change_tenants(daemon: Daemon, start: int, count: int) -> None:
    """`count` writes to ctl/tenants, each its own write(2): add tN, then remove it."""
    for index in range(start, start + count):
        verb = f"add t{index // 2}" if index % 2 == 0 else f"remove t{index // 2}"
        with open(daemon.path("ctl", "tenants"), "w") as ctl:
            ctl.write(verb + "\n")


def shell(command: str) -> str:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60, check=True).stdout


def archived_seqs(state) -> list[int]:
    """The seq of every line of STATE_DIR/audit/'s files, oldest file first, read with zcat -f."""
    files = sorted(glob.glob(os.path.join(state, "audit", "audit-*")))
    text = subprocess.run(["zcat", "-f", *files], capture_output=True, text=True, timeout=30, check=True).stdout
    return [int(line.split(",", 1)[0]) for line in text.splitlines() if line[:1].isdigit()]


def test_audit_is_bounded_in_memory_and_archived_once_through_kill9(tmp_path):
    """80 tenant changes keep at most 16 lines in trace/audit and 80 in the archive; after kill -9, a restart
    and 40 more, the archive holds seqs 1..120 once each, some compressed, and replay --verify passes."""
    state = tmp_path / "state"
    daemon = Daemon(tmp_path / "ai", state, FEW_AUDIT).start()
    try:
        change_tenants(daemon, 0, 80)
        before = int(shell(f"tail -n +2 {daemon.path('trace', 'audit')} | wc -l"))
        archived_before = archived_seqs(state)
        daemon.kill9()
        daemon.start()
        change_tenants(daemon, 80, 40)
        kept = shell(f"tail -n +2 {daemon.path('trace', 'audit')}").splitlines()
    finally:
        daemon.stop()
    assert 1 <= before <= 16 and archived_before == list(range(1, 81))
    assert archived_seqs(state) == list(range(1, 121)) and 1 <= len(kept) <= 16
    assert [int(line.split(",", 1)[0]) for line in kept] == list(range(121 - len(kept), 121))
    assert any(name.endswith(".csv.gz") for name in os.listdir(state / "audit"))
    verified = replay_verify(state)
    assert verified.returncode == 0, verified.stdout + verified.stderr
