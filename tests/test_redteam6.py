"""redteam6: what users hand the daemon's tools (apeinxctl, replay --verify, sim), as strict-xfail tests.

Each test reproduces one defect and asserts the behaviour it should have; the reason names it (Dn).
"""
import os
import pickle
import subprocess
import sys

import pytest

from apeinxfs import snapshots
from apeinxfs.compaction import boot_config
from apeinxfs.kernel import state
from apeinxfs.verify import config_after, open_journal, recorded_boots

HEADER = "arrival_s,tenant,name,prompt_tokens,output_tokens,prio,deadline_s,parent,weight\n"


def apeinxfs(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """Run the venv's apeinxfs command line to completion."""
    return subprocess.run([os.path.join(os.path.dirname(sys.executable), "apeinxfs"), *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def workload(tmp_path, rows: str, name: str = "w.csv") -> str:
    path = tmp_path / name
    path.write_text(HEADER + rows)
    return str(path)


class _Touches:
    """Pickles as a call of os.system that writes `path`: what a crafted state would run."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"echo ran > {self.path}",))


def _crafted_state(command_pickle: bytes) -> bytes:
    """Protocol-4 pickle bytes naming `pickle.loads` through a kernel module (apeinxfs.kernel.state imports
    pickle), called on `command_pickle`: only the module name is checked by KernelUnpickler."""
    def text(value: str) -> bytes:
        encoded = value.encode()
        return b"\x8c" + bytes([len(encoded)]) + encoded   # SHORT_BINUNICODE
    inner = b"B" + len(command_pickle).to_bytes(4, "little") + command_pickle   # BINBYTES
    return b"\x80\x04" + text(state.PACKAGE + ".state") + text("pickle.loads") + b"\x93" + inner + b"\x85R."


@pytest.mark.xfail(strict=True, reason="redteam6 D1: KernelUnpickler checks only the module, so a snapshot "
                                        "in a handed-over state dir runs any code (pickle.loads via apeinxfs.kernel.state)")
def test_a_crafted_snapshot_runs_no_code_in_replay_verify(tmp_path):
    """`replay --verify` on a state dir whose snapshot names `pickle.loads` through a kernel module's import runs
    nothing: the snapshot is refused in words (not used) and the journal is verified from row 1."""
    state_dir, ran = tmp_path / "state", tmp_path / "ran"
    assert apeinxfs("sim", workload(tmp_path, "0,t,a,5,5,5,,,\n"), "--state-dir", str(state_dir)).returncode == 0
    journal = open_journal(str(state_dir))
    config, last = config_after(recorded_boots(journal))(1), journal.last_seq
    journal.close()
    crafted = _crafted_state(pickle.dumps(_Touches(str(ran)), protocol=4))
    snapshots.write(str(state_dir / "snapshots"), last, 0, 0, boot_config(config), state.layout(config), crafted)
    result = apeinxfs("replay", "--verify", str(state_dir))
    assert not ran.exists()
    assert result.returncode == 0 and "SNAPSHOT NOT USED" in result.stdout, result.stdout + result.stderr
