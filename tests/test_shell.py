"""Tier 4: the tree driven by real shell tools (sh, echo, cat, ls, head, tail, grep, wc, cp).

Each test mounts its own daemon and talks to it only through processes and file
descriptors, as a user would: submit forms, replies and errno on the same fd, blocking
`wait` and `stream`, `tail -f`, copies, Ctrl-C and per-task ctl. Not the mount's life
cycle (test_mount_lifecycle.py) nor many writers at once (test_concurrency.py).
"""
import errno
import os
import select
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time

import pytest

from daemon import FAST_CONFIG, Daemon, poll_until, sim_config

pytestmark = pytest.mark.mount

SLOW_CONFIG = sim_config(50)
SMALL_KV_CONFIG = FAST_CONFIG.replace("slots = 8", "slots = 8\nkv_mib = 256")
LONG_TASK = "long 5000 5"  # 250 s at 50 ms a token: never ends within a test


@pytest.fixture
def slow(tmp_path):
    """A mount whose engine takes 50 ms a token, so tasks stay running while we look."""
    with Daemon(tmp_path / "ai", tmp_path / "state", config_text=SLOW_CONFIG) as running:
        yield running


@pytest.fixture
def small_kv(tmp_path):
    """A mount whose GPUs hold 4 KV pages each (2048 tokens of the sim model)."""
    with Daemon(tmp_path / "ai", tmp_path / "state", config_text=SMALL_KV_CONFIG) as running:
        yield running


def sh(script: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=timeout)


def write_rw(path: str, line: str) -> tuple[int | None, bytes]:
    """Write `line` on a read-write fd and read the reply back: (errno or None, reply)."""
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            os.write(fd, line.encode() + b"\n")
            failure = None
        except OSError as exc:
            failure = exc.errno
        return failure, os.read(fd, 4096)
    finally:
        os.close(fd)


def task_file(daemon: Daemon, pid: int, name: str) -> str:
    return daemon.path("tasks", str(pid), name)


def cat(path: str, timeout: float = 30) -> str:
    return subprocess.run(["cat", path], capture_output=True, text=True, check=True, timeout=timeout).stdout


def blocked_cat(daemon: Daemon, path: str) -> subprocess.Popen:
    """A `cat PATH` that the daemon reports blocked in read(2)."""
    reader = subprocess.Popen(["cat", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    poll_until(daemon.blocked_readers, 10, f"cat {path} blocked")
    return reader


# -- submitting --------------------------------------------------------------------------

@pytest.mark.parametrize("line, name", [
    ("seed1 5 5", "seed1"),
    ('name=pairs1 max_tokens=5 prio=3 prompt="two words"', "pairs1"),
    ('{"name": "json1", "max_tokens": 5, "prio": 7}', "json1"),
], ids=["seed", "key=value", "json"])
def test_echo_submit_creates_a_task_listed_by_ls(daemon, line, name):
    """`echo LINE > ctl/submit` in each form succeeds and the task shows in `ls tasks`."""
    done = sh(f"echo {shlex.quote(line)} > {daemon.path('ctl', 'submit')}")
    assert done.returncode == 0, done.stderr
    listed = sh(f"ls {daemon.path('tasks')}").stdout.split()
    assert listed == ["1"]
    assert daemon.status(1)["Name"] == name


def test_reply_on_same_fd_is_the_pid_of_each_write(daemon):
    """A read-write fd reads back `PID\\n` after each write, numbered in order."""
    fd = os.open(daemon.path("ctl", "submit"), os.O_RDWR)
    try:
        replies = [(os.write(fd, f"r{n} 5 5\n".encode()), os.read(fd, 64))[1] for n in range(3)]
    finally:
        os.close(fd)
    assert replies == [b"1\n", b"2\n", b"3\n"]


@pytest.mark.parametrize("line, code", [
    ("bad line", errno.EINVAL),
    ("name=x colour=red", errno.EINVAL),
    ("name=x model=nope", errno.ENOENT),
    ("name=huge max_tokens=30000", errno.ENOSPC),
], ids=["malformed", "unknown-key", "unknown-model", "never-fits"])
def test_refused_submit_fails_the_write_and_replies_the_reason(small_kv, line, code):
    """A refused line fails write(2) with its errno and reads back `error: REASON`."""
    failure, reply = write_rw(small_kv.path("ctl", "submit"), line)
    assert failure == code
    assert reply.startswith(b"error: ") and reply.endswith(b"\n") and len(reply) > len(b"error: \n")
    assert os.listdir(small_kv.path("tasks")) == []


@pytest.mark.parametrize("line, text", [
    ("bad line", "Invalid argument"),
    ("name=x model=nope", "No such file or directory"),
], ids=["EINVAL", "ENOENT"])
def test_pipe_through_cat_shows_the_errno_text(daemon, line, text):
    """`printf LINE | cat > ctl/submit` under sh exits non-zero naming the real errno."""
    done = sh(f"printf '%s\\n' {shlex.quote(line)} | cat > {daemon.path('ctl', 'submit')}")
    assert done.returncode != 0
    assert text in done.stderr


def test_cont_on_a_running_task_is_ebusy(slow):
    """`cont` to a task that is not stopped fails with EBUSY, and the trace says why."""
    pid = slow.submit(LONG_TASK)
    poll_until(lambda: slow.status(pid)["State"].startswith("R"), 10, "task running")
    with pytest.raises(OSError) as refused:
        with open(task_file(slow, pid, "ctl"), "wb", buffering=0) as ctl:
            ctl.write(b"cont\n")
    assert refused.value.errno == errno.EBUSY
    rejects = [line for line in cat(slow.path("trace", "events")).splitlines() if ",reject," in line]
    assert len(rejects) == 1 and f"/tasks/{pid}/ctl" in rejects[0] and "not stopped" in rejects[0]


# -- blocking files --------------------------------------------------------------------------

def test_cat_wait_prints_done(daemon):
    """`cat tasks/N/wait` blocks until the task finishes and prints `done`."""
    pid = daemon.submit("short 20 5")
    assert cat(task_file(daemon, pid, "wait")) == "done\n"


def test_cat_wait_prints_killed_after_ctl_kill(slow):
    """A blocked `cat wait` prints `killed` once the pid is written to ctl/kill."""
    pid = slow.submit(LONG_TASK)
    reader = blocked_cat(slow, task_file(slow, pid, "wait"))
    assert sh(f"echo {pid} > {slow.path('ctl', 'kill')}").returncode == 0
    assert reader.communicate(timeout=10)[0] == b"killed\n"


def test_cat_wait_prints_expired_when_the_deadline_passes(slow):
    """A task that cannot finish before its deadline ends `expired`."""
    pid = slow.submit("late 5000 5 300ms")
    assert cat(task_file(slow, pid, "wait")) == "expired\n"


def test_ctrl_c_interrupts_a_blocked_wait(slow):
    """SIGINT to a `cat wait` blocked on a long task ends it (bounded at 2 s, a check of interruptibility)."""
    pid = slow.submit(LONG_TASK)
    reader = blocked_cat(slow, task_file(slow, pid, "wait"))
    reader.send_signal(signal.SIGINT)
    assert reader.wait(timeout=2) == -signal.SIGINT


def read_some(pipe, timeout: float) -> bytes:
    """Whatever `pipe` yields next, waiting at most `timeout` s; b'' at EOF."""
    ready, _, _ = select.select([pipe], [], [], timeout)
    assert ready, f"nothing to read within {timeout}s"
    return os.read(pipe.fileno(), 65536)


def test_cat_stream_yields_text_while_the_task_runs(slow):
    """`cat stream` prints the first words while the task still runs, and all of `output` by EOF."""
    pid = slow.submit("words 40 5")
    reader = subprocess.Popen(["cat", task_file(slow, pid, "stream")], stdout=subprocess.PIPE)
    first = read_some(reader.stdout, 10)
    assert first and slow.status(pid)["State"].startswith("R")
    rest = reader.communicate(timeout=30)[0]
    assert reader.returncode == 0
    with open(task_file(slow, pid, "output"), "rb") as output:
        assert first + rest == output.read()
    assert slow.status(pid)["Exit"] == "done"


def test_tail_f_trace_shows_a_new_submit(daemon):
    """`tail -f trace/events` prints the submit line of a new task within 2 s."""
    tail = subprocess.Popen(["tail", "-n", "+1", "-f", daemon.path("trace", "events")], stdout=subprocess.PIPE)
    try:
        seen = read_some(tail.stdout, 5)
        assert seen.startswith(b"seq,time_us,type,")
        daemon.submit("tailed 3 5")
        deadline = time.monotonic() + 2
        while b",submit," not in seen:
            seen += read_some(tail.stdout, max(0.01, deadline - time.monotonic()))
        assert b"name=tailed" in seen
    finally:
        tail.kill()
        tail.wait()


# -- copies and text tools ----------------------------------------------------------------------

def status_keys(text: str) -> list[str]:
    return [line.split(":\t", 1)[0] for line in text.splitlines()]


@pytest.mark.parametrize("copy", [
    lambda src, dst: subprocess.run(["cp", src, dst], check=True, timeout=30),
    shutil.copy,
], ids=["cp", "shutil.copy"])
@pytest.mark.parametrize("task", ["running", "exited"])
def test_copying_a_status_file_copies_every_line(slow, tmp_path, copy, task):
    """`cp` and shutil.copy of a status file, running or exited, hold every key `cat` shows."""
    pid = slow.submit(LONG_TASK if task == "running" else "brief 2 5")
    if task == "exited":
        cat(task_file(slow, pid, "wait"))
    copy(task_file(slow, pid, "status"), tmp_path / "copy")
    copied = (tmp_path / "copy").read_text()
    shown = cat(task_file(slow, pid, "status"))
    assert status_keys(copied) == status_keys(shown)
    assert copied.endswith("\n") and "\nExit:\t" in copied


def readable_files(root: str) -> list[str]:
    """Every file of the tree with a read bit, found by walking it."""
    found = []
    for directory, _dirs, files in os.walk(root):
        found += [os.path.join(directory, f) for f in files if os.stat(os.path.join(directory, f)).st_mode & 0o444]
    return sorted(found)


def test_head_grep_wc_work_on_every_readable_file(daemon):
    """head, grep and wc read every readable file of a quiet tree and agree with Python's read."""
    for n in range(3):
        cat(task_file(daemon, daemon.submit(f'name=t{n} max_tokens=4 prompt="p {n}"'), "wait"))
    files = readable_files(daemon.mountpoint)
    assert {"README", "status", "output", "stream", "wait", "events", "meminfo", "metrics"} <= \
        {os.path.basename(f) for f in files}
    for path in files:
        with open(path, "rb") as file:
            lines = file.read().splitlines(keepends=True)
        head = subprocess.run(["head", "-n", "1", path], capture_output=True, timeout=30, check=True).stdout
        assert head.split(maxsplit=1)[:1] == (lines[0].split(maxsplit=1)[:1] if lines else []), path
        grep = subprocess.run(["grep", "-c", "", path], capture_output=True, text=True, timeout=30)
        assert int(grep.stdout) == len(lines), path
        wc = subprocess.run(["wc", "-l", path], capture_output=True, text=True, timeout=30, check=True)
        assert int(wc.stdout.split()[0]) == sum(line.endswith(b"\n") for line in lines), path


def test_files_are_regular_files_with_real_sizes(daemon):
    """Every readable file reports S_IFREG and a size equal to what a read returns once the tree is quiet."""
    cat(task_file(daemon, daemon.submit("sized 4 5"), "wait"))
    for path in readable_files(daemon.mountpoint):
        if os.path.basename(path) in ("metrics", "pressure"):
            continue  # their numbers move with the clock
        info = os.stat(path)
        with open(path, "rb") as file:
            assert stat.S_ISREG(info.st_mode) and info.st_size == len(file.read()), path


# -- per-task ctl ------------------------------------------------------------------------------

def test_task_ctl_stop_cont_and_prio_show_in_status(slow):
    """`echo stop|cont|'prio 9' > tasks/N/ctl` shows at once as State T, back to runnable, and Prio 9."""
    pid = slow.submit(LONG_TASK)
    ctl = task_file(slow, pid, "ctl")
    assert sh(f"echo stop > {ctl}").returncode == 0
    assert slow.status(pid)["State"].startswith("T")
    assert sh(f"echo cont > {ctl}").returncode == 0
    assert slow.status(pid)["State"][0] in "QRP"
    assert sh(f"echo 'prio 9' > {ctl}").returncode == 0
    assert slow.status(pid)["Prio"] == "9"


# -- other users (allow_other; modes are checked by the daemon) ---------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="setpriv to another uid needs root")
def test_other_user_reads_but_cannot_write_read_only_files(tmp_path):
    """With allow_other, uid 65534 reads README and status but gets EACCES writing status."""
    public = tempfile.mkdtemp(prefix="apeinx-perm-")  # pytest's tmp_path is private to root
    os.chmod(public, 0o755)
    try:
        check_other_user(Daemon(os.path.join(public, "ai"), tmp_path / "state", extra_args=["-o", "allow_other"]))
    finally:
        shutil.rmtree(public)


def check_other_user(daemon: Daemon) -> None:
    with daemon as mounted:
        pid = mounted.submit("shared 3 5")
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c"]
        read = subprocess.run(as_nobody + [f"cat {mounted.path('tasks', str(pid), 'status')}"], capture_output=True, text=True)
        assert read.returncode == 0 and "Name:\tshared" in read.stdout
        write = subprocess.run(as_nobody + [f"echo x | cat > {mounted.path('tasks', str(pid), 'status')}"],
                               capture_output=True, text=True)
        assert write.returncode != 0 and "Permission denied" in write.stderr


@pytest.mark.parametrize("command, words", [
    ("echo x > {ai}/ctl/submt", "Permission denied"),  # a typo: O_CREAT of a name that is not there
    ("rm -f {ai}/ctl/submit", "Operation not permitted"),
    ("mv {ai}/ctl/submit {ai}/ctl/x", "Operation not permitted"),
    ("mkdir {ai}/tasks/x", "Operation not permitted"),
    ("ln -s submit {ai}/ctl/l", "Operation not permitted"),
])
def test_changing_a_name_in_the_tree_is_refused_in_words_and_changes_nothing(daemon, command, words):
    """echo to a name not there, rm, mv, mkdir and ln -s fail with EACCES or EPERM (never 'Function not
    implemented'), and the tree's names stay as they were."""
    before = sorted(os.listdir(daemon.path("ctl")))
    done = sh(command.format(ai=daemon.path()))
    assert done.returncode != 0 and words in done.stderr, done.stderr
    assert sorted(os.listdir(daemon.path("ctl"))) == before and not os.path.exists(daemon.path("tasks", "x"))


# -- scheduler knobs and agents ----------------------------------------------------------------------


def test_sched_policy_writes_mirror_reads(daemon):
    """`echo vtc > sched/policy` switches live and reads back; a bad policy is EINVAL with the reason."""
    policy = daemon.path("sched", "policy")
    assert cat(policy) == "fair\n"
    assert sh(f"echo vtc > {policy}").returncode == 0
    assert cat(policy) == "vtc\n"
    refused = sh(f"printf 'lottery\\n' | cat > {policy}")
    assert refused.returncode != 0 and "Invalid argument" in refused.stderr
    assert "policy" in cat(daemon.path("sched", "stat")) and "tenant/default" in cat(daemon.path("sched", "runqueue"))


def test_parent_wait_covers_its_children(slow):
    """A child submitted with parent=PID is listed in children, and the parent's wait ends after it."""
    parent = slow.submit("agent 40 5")  # 2 s at 50 ms a token: still live when the child comes
    child = slow.submit(f"name=sub max_tokens=60 parent={parent}")
    assert cat(slow.path("tasks", str(parent), "children")) == f"{child}\n"
    assert cat(task_file(slow, parent, "wait")) == "done\n"
    assert slow.status(child)["Exit"] == "done" and slow.status(child)["PPid"] == str(parent)
