"""scripts/apeinxctl against a real mount, run under /bin/sh (dash on Debian)."""
import os
import re
import subprocess

import pytest

pytestmark = pytest.mark.mount

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "apeinxctl")
LONG_TOKENS = "30000"  # about 60 s at the test speeds: still running when killed


def ctl(mountpoint, *args, timeout=30):
    """Run apeinxctl with the tree at `mountpoint`; the completed process."""
    env = {**os.environ, "APEINX_MNT": str(mountpoint)}
    return subprocess.run(["/bin/sh", SCRIPT, *args], env=env, capture_output=True, text=True, timeout=timeout)


def submit(daemon, *args) -> str:
    result = ctl(daemon.mountpoint, "submit", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_submit_prints_the_new_pid(daemon):
    """submit prints one pid, and that task's directory exists."""
    pid = submit(daemon, "job1", "5", "5")
    assert pid.isdigit()
    assert os.path.isdir(daemon.path("tasks", pid))


def test_submit_takes_a_deadline(daemon):
    """A fourth argument is the deadline, shown in the task's status."""
    pid = submit(daemon, "job1", "5", "5", "30s")
    with open(daemon.path("tasks", pid, "status")) as status:
        assert "Deadline:\t30s\n" in status.read()


def test_wait_prints_done_and_exits_zero(daemon):
    """wait blocks until the task ends, prints `done` and exits 0."""
    pid = submit(daemon, "short", "5", "5")
    result = ctl(daemon.mountpoint, "wait", pid)
    assert (result.returncode, result.stdout) == (0, "done\n")


def test_kill_then_wait_reports_killed(daemon):
    """kill ends a running task; wait then prints `killed` and exits 3."""
    pid = submit(daemon, "long", LONG_TOKENS, "5")
    assert ctl(daemon.mountpoint, "kill", pid).returncode == 0
    result = ctl(daemon.mountpoint, "wait", pid)
    assert (result.returncode, result.stdout) == (3, "killed\n")


def test_status_lists_every_task(daemon):
    """status prints a header and one row per task with its name and tokens."""
    first = submit(daemon, "alpha", "5", "5")
    second = submit(daemon, "beta", LONG_TOKENS, "3")
    ctl(daemon.mountpoint, "wait", first)
    lines = ctl(daemon.mountpoint, "status").stdout.splitlines()
    assert lines[0].split()[:3] == ["PID", "NAME", "STATE"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert re.search(r"alpha\s+Z \(exited\).*5/5\s+done$", rows[first])
    assert re.search(rf"beta\s+\S \(\w+\)\s+3 .*/{LONG_TOKENS}\s+-$", rows[second])


def _status_file(pid: int, name: str, state: str) -> str:
    """A task's status file as the daemon writes it, with the lines status's table shows."""
    fields = {"Name": name, "State": state, "Pid": pid, "Prio": 5, "Gpu": 0, "TokensOut": 1, "TokensMax": 5,
              "Exit": "-"}
    return "".join(f"{key}:\t{value}\n" for key, value in fields.items())


@pytest.mark.parametrize("reaped", ["absent", "fails at read"])
def test_status_leaves_out_a_task_reaped_after_the_listing(tmp_path, reaped):
    """A task listed in /tasks whose status can no longer be opened, or opens but fails at read (as a remote
    task's reaped on its node: here a directory, EISDIR), is left out: the others are shown, nothing on stderr,
    exit 0."""
    (tmp_path / "ctl").mkdir()
    (tmp_path / "ctl" / "submit").touch()
    for pid, name in ((1048577, "first"), (1048578, None), (1048579, "third")):
        (tmp_path / "tasks" / str(pid)).mkdir(parents=True)
        if name:
            (tmp_path / "tasks" / str(pid) / "status").write_text(_status_file(pid, name, "R (running)"))
        elif reaped == "fails at read":
            (tmp_path / "tasks" / str(pid) / "status").mkdir()
    result = ctl(tmp_path, "status")
    assert (result.returncode, result.stderr) == (0, "")
    assert [line.split()[:2] for line in result.stdout.splitlines()[1:]] == [["1048577", "first"],
                                                                            ["1048579", "third"]]


def test_top_shows_memory_and_running_tasks(daemon):
    """top prints the task counts, KV pages, each GPU and the running tasks."""
    pid = submit(daemon, "busy", LONG_TOKENS, "5")
    output = ctl(daemon.mountpoint, "top").stdout
    assert re.search(r"^tasks: \d+ running", output, re.M)
    assert re.search(r"^KV: +\d+ of \d+ pages used", output, re.M)
    assert re.search(r"^gpu 0: batch \d+", output, re.M)
    assert re.search(rf"^ +{pid} +busy +R \(running\)", output, re.M)


def test_replay_prints_a_task_timeline(daemon):
    """replay PID prints the task's timeline from submit to exit."""
    pid = submit(daemon, "traced", "5", "5")
    ctl(daemon.mountpoint, "wait", pid)
    lines = ctl(daemon.mountpoint, "replay", pid).stdout.splitlines()
    assert lines[0].startswith(f"pid {pid} traced ")
    assert [line.split()[1] for line in lines[1:]][:1] == ["submit"]
    assert lines[-1].split()[1:3] == ["exit", "done;"]


def test_replay_without_pid_prints_the_trace(daemon):
    """replay with no pid prints the whole trace, header first."""
    submit(daemon, "traced", "5", "5")
    lines = ctl(daemon.mountpoint, "replay").stdout.splitlines()
    assert lines[0] == "seq,time_us,type,pid,tenant,model,gpu,node,detail"
    assert ",submit," in lines[1]


def test_billing_prints_the_bill_csv(daemon):
    """billing prints /billing: a CSV header, then a row of the default tenant once a task has run."""
    submit(daemon, "billed", "3", "5")
    assert ctl(daemon.mountpoint, "wait", "1").returncode == 0
    lines = ctl(daemon.mountpoint, "billing").stdout.splitlines()
    assert lines[0] == "period_start,tenant,model,tokens_in,tokens_out,gpu_seconds,kv_page_seconds,cost"
    assert lines[1].split(",")[1:5] == ["default", "sim", "1", "3"]


@pytest.mark.parametrize("args, errno_text", [
    (("submit", "job", "many", "5"), "Invalid argument"),
    (("submit", "job", "5", "12"), "Invalid argument"),
    (("wait", "9999"), "No such file or directory"),
    (("kill", "9999"), "No such file or directory"),
    (("kill", "abc"), "Invalid argument"),
    (("replay", "9999"), "No such file or directory"),
])
def test_errors_exit_nonzero_with_the_errno_text(daemon, args, errno_text):
    """A refused command exits 1 and prints the real errno text, not "I/O error"."""
    result = ctl(daemon.mountpoint, *args)
    assert result.returncode == 1
    assert errno_text in result.stderr
    assert "I/O error" not in result.stderr


def test_submit_error_includes_the_reason(daemon):
    """A refused submit also prints the daemon's reason, read back on the same fd."""
    result = ctl(daemon.mountpoint, "submit", "job", "many", "5")
    assert "TOKENS must be an integer" in result.stderr


def test_killing_an_exited_task_is_busy(daemon):
    """kill of a task that has already ended fails with EBUSY's text."""
    pid = submit(daemon, "short", "5", "5")
    ctl(daemon.mountpoint, "wait", pid)
    result = ctl(daemon.mountpoint, "kill", pid)
    assert (result.returncode, result.stderr.strip()) == (1, f"apeinxctl: kill {pid}: Device or resource busy")


@pytest.mark.parametrize("args", [(), ("frobnicate",), ("submit", "job"), ("wait",), ("wait", "x"),
                                  ("top", "-n", "many")])
def test_bad_arguments_print_usage_and_exit_2(daemon, args):
    """Wrong arguments print the usage message and exit 2."""
    result = ctl(daemon.mountpoint, *args)
    assert result.returncode == 2
    assert "usage: apeinxctl COMMAND" in result.stderr


def test_missing_tree_is_reported(tmp_path):
    """With nothing mounted at APEINX_MNT, commands exit 1 and say so."""
    result = ctl(tmp_path / "nothing", "status")
    assert result.returncode == 1
    assert "no apeinxfs tree at" in result.stderr and "No such file or directory" in result.stderr
