"""redteam6: what users hand the daemon's tools (apeinxctl, replay --verify, sim) and tenants across a cluster.

Each test reproduces one defect the red team found (Dn in its docstring or name) and asserts the behaviour it
should have; each was a strict xfail until its mend.
"""
import os
import pickle
import subprocess
import sys
import threading

import pytest

from apeinxfs import snapshots
from apeinxfs.compaction import boot_config
from apeinxfs.kernel import state
from apeinxfs.verify import config_after, open_journal, recorded_boots
from daemon import FAST_CONFIG, Daemon, poll_until
from test_cluster_nodes import SETTLE_S
from test_apeinxctl import ctl
from test_cluster_tenants import nodes, placed_on, users  # noqa: F401  (fixtures: nodes x, y; alice and bob)
from test_simulate import HEADER
from unixusers import probe



def apeinxfs(*args: str, preexec_fn=None) -> subprocess.CompletedProcess:
    """Run the venv's apeinxfs command line to completion (`preexec_fn` run in the child first)."""
    return subprocess.run([os.path.join(os.path.dirname(sys.executable), "apeinxfs"), *args], capture_output=True,
                          text=True, timeout=300, preexec_fn=preexec_fn)


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


def _limited_memory() -> None:
    """In the child: at most 2 GiB of address space, so a run that grows without bound fails fast here."""
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def test_sim_refuses_a_row_claiming_a_trillion_prompt_tokens_in_words(tmp_path):
    """A workload row with prompt_tokens 10^12 is refused (or counted refused) in words, within bounded memory:
    no MemoryError traceback."""
    path = workload(tmp_path, "0,t,a,1000000000000,5,5,,,\n")
    result = apeinxfs("sim", path, preexec_fn=_limited_memory)
    assert "Traceback" not in result.stderr, result.stderr[-400:]
    assert result.returncode == 0 or result.stderr.startswith("apeinxfs sim: "), result.stderr[-400:]


@pytest.mark.parametrize("cell", [pytest.param("x" * 200_000, id="a-cell-over-csv-field-limit"),
                                  pytest.param("\udcff", id="bytes-not-utf8")])
def test_sim_refuses_an_unreadable_workload_in_words(tmp_path, cell):
    """A workload with a cell past csv's field limit, or bytes that are not UTF-8, is refused with
    `apeinxfs sim: ...` naming the file and exit 1, not a traceback."""
    path = tmp_path / "w.csv"
    path.write_bytes((HEADER + f"0,t,a,5,5,5,,,\n0,t,{cell},5,5,5,,,\n").encode(errors="surrogateescape"))
    result = apeinxfs("sim", str(path))
    assert result.returncode == 1 and result.stderr.startswith("apeinxfs sim: "), result.stderr[-400:]
    assert "Traceback" not in result.stderr



def test_replay_verify_passes_over_a_snapshot_that_is_no_regular_file(tmp_path):
    """`replay --verify` on a state dir whose snapshot is a symlink to /dev/zero finishes within bounded memory,
    naming the snapshot as not used, and verifies the journal from row 1."""
    state_dir = tmp_path / "state"
    assert apeinxfs("sim", workload(tmp_path, "0,t,a,5,5,5,,,\n"), "--state-dir", str(state_dir)).returncode == 0
    (state_dir / "snapshots").mkdir()
    os.symlink("/dev/zero", state_dir / "snapshots" / "snapshot-000000000001.snap")
    result = apeinxfs("replay", "--verify", str(state_dir), preexec_fn=_limited_memory)
    assert "Traceback" not in result.stderr, result.stderr[-400:]
    assert result.returncode == 0 and "SNAPSHOT NOT USED" in result.stdout, result.stdout + result.stderr[-400:]

def _churn(daemon: Daemon, stop: threading.Event) -> None:
    """Submit one-token tasks until `stop`: with retention.tasks = 0 each is reaped as it exits."""
    while not stop.is_set():
        daemon.submit("churn 1 5")


@pytest.mark.mount
def test_status_holds_while_tasks_are_reaped_as_it_runs(tmp_path):
    """An admin's `apeinxctl status` exits 0 without errors while tasks are being reaped as it runs: a task
    gone between the listing and its status is left out, as ps leaves out a process that exits."""
    with Daemon(tmp_path / "ai", tmp_path / "state", FAST_CONFIG + "[retention]\ntasks = 0\n") as daemon:
        stop = threading.Event()
        churner = threading.Thread(target=_churn, args=(daemon, stop))
        churner.start()
        try:
            failed = next((run for run in (ctl(daemon.mountpoint, "status", timeout=60) for _ in range(100))
                           if run.returncode != 0 or run.stderr), None)
        finally:
            stop.set()
            churner.join()
    assert failed is None, (failed.returncode, failed.stderr)


@pytest.mark.mount
@pytest.mark.slow
def test_kill_tells_another_tenants_pid_from_no_task_as_one_node_does(nodes, users):
    """bob writing his own pid on x and alice's live pid on y to ctl/kill gets ENOENT, as for a pid that
    does not exist: another tenant's task is neither told to exist nor located by the refusal."""
    alice, bob = users["alice"], users["bob"]
    hers, his = placed_on(nodes, alice, "y"), placed_on(nodes, bob, "x")
    try:
        poll_until(lambda: hers in {int(n) for n in os.listdir(nodes["x"].path("tasks"))}, SETTLE_S,
                   "alice's task listed on x")
        missing = probe(bob, "write", nodes["x"].path("ctl", "kill"), f"{his}\n99999999\n")
        mixed = probe(bob, "write", nodes["x"].path("ctl", "kill"), f"{his}\n{hers}\n")
        assert missing["errno"] == "ENOENT", missing
        assert mixed["errno"] == missing["errno"], mixed
    finally:
        for pid in (hers, his):  # one write each: pids on two nodes in one write are refused
            with open(nodes["x"].path("ctl", "kill"), "w") as kill:
                kill.write(f"{pid}\n")
