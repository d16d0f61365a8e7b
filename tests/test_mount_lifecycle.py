"""Tier 3: the mount's life cycle on a real FUSE mount, driven as an admin would.

Covers `mount -t fuse`, the daemonised command (and its refusal of a bad configuration), umount, SIGTERM/SIGINT, a stale mount
left by kill -9, statfs, and shutdown with a reader blocked in `wait`. Not the tree's
contents (test_shell.py) nor concurrency (test_concurrency.py).

util-linux `mount` strips PATH from the helper's environment (sanitize_env), so mount(8)
finds `apeinxfs` only in the system PATH, where scripts/link-apeinxfs links it when asked
(scripts/setup does not). The `mount -t fuse` test looks which program mount(8) would run:
this checkout's is named `apeinxfs`; otherwise the test names this checkout's by its path.
The mount.fuse3 form is tested with PATH set.
"""
import errno
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from apeinxfs import mountwatch
from apeinxfs.journal import Journal
from apeinxfs.kernel.config import ModelConfig
from apeinxfs.kernel.events import SetModel, Submit
from apeinxfs.kernel.spec import TaskSpec
from daemon import Daemon, is_mounted, poll_until, sim_config, wait_pid_gone

pytestmark = pytest.mark.mount

VENV_BIN = os.path.dirname(sys.executable)
SLOW_CONFIG = sim_config(50)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mount(8) of a FUSE type needs root")


@pytest.fixture
def unstarted(tmp_path):
    """A Daemon not yet started, stopped (unmounted, its pid ended) afterwards."""
    daemon = Daemon(tmp_path / "ai", tmp_path / "state")
    yield daemon
    daemon.stop()


def path_env() -> dict:
    return {**os.environ, "PATH": VENV_BIN + os.pathsep + os.environ.get("PATH", "")}


def mount_type(mountpoint: str) -> str | None:
    with open("/proc/mounts") as mounts:
        return next((line.split()[2] for line in mounts if line.split()[1] == mountpoint), None)


def mount_options(daemon: Daemon) -> str:
    return f"state_dir={daemon.state_dir},config={daemon.config_path()}"


def assert_ready_now(daemon: Daemon) -> None:
    """Right after the mounting command returned: no polling, the tree answers."""
    with open(daemon.path("README")) as readme:
        assert readme.read().startswith("apeinxfs")
    assert mount_type(daemon.mountpoint) == "fuse.apeinxfs"


def assert_unmounts_and_exits(daemon: Daemon, command: list[str]) -> None:
    subprocess.run(command + [daemon.mountpoint], check=True, timeout=30)
    assert not is_mounted(daemon.mountpoint)
    assert wait_pid_gone(daemon.detached_pid, 10), "daemon still running after unmount"


SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # the helper's shell's, PATH stripped


def mount_source() -> str:
    """The source for `mount -t fuse`: `apeinxfs` where mount(8) would run this checkout's, else its path."""
    mine, found = os.path.join(VENV_BIN, "apeinxfs"), shutil.which("apeinxfs", path=SYSTEM_PATH)
    return "apeinxfs" if found and os.path.realpath(found) == os.path.realpath(mine) else mine


@needs_root
def test_mount_t_fuse_returns_once_ready_and_umount_ends_the_daemon(unstarted):
    """`mount -t fuse SOURCE MNT`, SOURCE this checkout's program, returns with the tree served; `umount` ends it."""
    source = mount_source()
    unstarted.start_detached(["mount", "-t", "fuse", source, unstarted.mountpoint, "-o", mount_options(unstarted)])
    with open(f"/proc/{unstarted.detached_pid}/cmdline", "rb") as cmdline:
        program = cmdline.read().split(b"\0")
    assert any(os.path.realpath(VENV_BIN) in os.path.realpath(part.decode()) for part in program if part), program
    assert_ready_now(unstarted)
    assert_unmounts_and_exits(unstarted, ["umount"])


def test_mount_helper_runs_apeinxfs_by_name_from_path(unstarted):
    """mount.fuse3 with source `apeinxfs` finds the program on PATH and mounts it."""
    argv = ["mount.fuse3", "apeinxfs", unstarted.mountpoint, "-o", mount_options(unstarted)]
    unstarted.start_detached(argv, env=path_env())
    assert_ready_now(unstarted)
    assert_unmounts_and_exits(unstarted, ["fusermount3", "-u"])


def test_daemonised_command_returns_zero_once_mounted(unstarted):
    """`apeinxfs MNT --state-dir DIR` without -f exits 0 with the mount already live."""
    argv = [os.path.join(VENV_BIN, "apeinxfs"), unstarted.mountpoint, "--state-dir", unstarted.state_dir,
            "--config", unstarted.config_path()]
    unstarted.start_detached(argv, env=path_env())
    assert_ready_now(unstarted)
    assert os.listdir(unstarted.path("tasks")) == []
    assert_unmounts_and_exits(unstarted, ["umount"])


OPENAI = '[gpus]\nsimulated = 1\n[[models]]\nname = "llm"\ndriver = "openai"\n'
REFUSED = [  # a configuration, and the reason printed for it
    (OPENAI, "model llm: the openai driver needs options.url or endpoints"),
    (OPENAI + '[models.options]\nurl = "http://127.0.0.1:99999"\n',
     "model llm: openai options: url must be an http:// or https:// URL with a host (and a port 1 to 65535), not "
     "'http://127.0.0.1:99999'"),
    (OPENAI + '[models.options]\nurl = "http://e:1"\nretries = "3"\n',
     "model llm: openai options: retries must be an integer from 0 to 100, not '3'"),
    (OPENAI + '[models.options]\nurl = "http://e:1"\nretry = 3\n',
     "model llm: openai options: no option 'retry' (its options: url, engine_model, timeout_s, retries, backoff_s, "
     "api, metrics_s)"),
    ("[gpus]\nsimulated = 100000000\n", "config: gpus.simulated must be an integer from 0 to 1024, not 100000000"),
]


@pytest.mark.parametrize("config_text, reason", REFUSED, ids=["no url", "port", "retries text", "unknown", "gpus"])
def test_a_configuration_refused_at_start_is_printed_and_leaves_no_mount(unstarted, config_text, reason):
    """A configuration whose driver options (checked by building the drivers, before the mount) or GPUs are
    refused: the command exits 1 and prints the reason in words, and the mountpoint is left unmounted."""
    unstarted.config_text = config_text
    argv = [os.path.join(VENV_BIN, "apeinxfs"), unstarted.mountpoint, "--state-dir", unstarted.state_dir,
            "--config", unstarted.config_path()]
    done = subprocess.run(argv, env=path_env(), capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stderr) == (1, f"apeinxfs: {reason}\n")
    assert not is_mounted(unstarted.mountpoint)


def test_a_journal_model_whose_options_are_now_refused_starts_failed_and_can_be_removed(unstarted):
    """A model in the journal with retries = "200" (a text: accepted once, refused now), and 20 tasks of it queued
    (more than the free slots): the daemon mounts, the model's status says failed and why, each queued task fails
    at once saying why (`cat wait` of the last ends), a new submit to the model is refused with ENXIO and the reason in the reply and the trace, and
    `remove` through ctl/models takes the model away (not EBUSY)."""
    journal = Journal(os.path.join(unstarted.state_dir, "journal.db"))
    ext = ModelConfig(name="ext", driver="openai", options={"url": "http://127.0.0.1:9", "retries": "200"})
    now_us = time.time_ns() // 1000
    journal.append([(now_us, SetModel(model=ext, what="add ext", uid=0))] +
                   [(now_us, Submit(spec=TaskSpec(name="hang", max_tokens=5, model="ext"), uid=os.getuid()))] * 20)
    journal.close()
    unstarted.start()
    with open(unstarted.path("models", "ext", "status")) as status:
        text = status.read()
    assert "State:\tfailed\n" in text and "retries must be an integer from 0 to 100, not '200'" in text
    waited = subprocess.run(["cat", unstarted.path("tasks", "20", "wait")], capture_output=True, text=True, timeout=30)
    assert waited.stdout.startswith("failed: model ext cannot run: the driver cannot be built: ")
    with open(unstarted.path("ctl", "submit"), "r+b", buffering=0) as submit:
        with pytest.raises(OSError) as refused:
            submit.write(b"name=late max_tokens=5 model=ext\n")
        reply = submit.read(4096).decode()
    assert refused.value.errno == errno.ENXIO and "/ctl/submit: model ext cannot run: " in trace_text(unstarted)
    assert reply.startswith("error: model ext cannot run: the driver cannot be built: ") and "not '200'" in reply
    assert sorted(map(int, os.listdir(unstarted.path("tasks")))) == list(range(1, 21))
    with open(unstarted.path("ctl", "models"), "w") as models:
        models.write("remove ext\n")
    assert "ext" not in os.listdir(unstarted.path("models"))


def trace_text(daemon) -> str:
    with open(daemon.path("trace", "events")) as trace:
        return trace.read()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_unmounts_cleanly_and_state_survives(unstarted, signum):
    """SIGTERM or SIGINT unmounts, the daemon exits 0, and a restart still lists the task."""
    unstarted.start()
    pid = unstarted.submit("keepme 5 5")
    unstarted.proc.send_signal(signum)
    assert unstarted.proc.wait(timeout=15) == 0
    assert not is_mounted(unstarted.mountpoint)
    unstarted.start()
    assert str(pid) in os.listdir(unstarted.path("tasks"))
    assert unstarted.status(pid)["Name"] == "keepme"


def test_stale_mount_after_kill9_is_recovered_by_next_start(unstarted):
    """A crash leaves an ENOTCONN mount; the next start replaces it and keeps the tasks."""
    unstarted.start()
    pid = unstarted.submit("survivor 5 5")
    unstarted.kill9()
    assert is_mounted(unstarted.mountpoint)
    with pytest.raises(OSError) as stale:
        os.statvfs(unstarted.mountpoint)
    assert stale.value.errno == errno.ENOTCONN
    unstarted.start()
    assert unstarted.status(pid)["Name"] == "survivor"


def test_mount_is_fuse_apeinxfs_and_statfs_works(daemon):
    """/proc/mounts names the type fuse.apeinxfs; `df` and `stat -f` succeed (statfs)."""
    assert mount_type(daemon.mountpoint) == "fuse.apeinxfs"
    df = subprocess.run(["df", daemon.mountpoint], capture_output=True, text=True, timeout=10)
    assert df.returncode == 0 and df.stdout.splitlines()[1].split()[0] == "apeinxfs"
    stat_f = subprocess.run(["stat", "-f", daemon.mountpoint], capture_output=True, text=True, timeout=10)
    assert stat_f.returncode == 0 and "Namelen: 255" in stat_f.stdout


@pytest.fixture
def blocked_wait(tmp_path):
    """A slow daemon, a long task, and a `cat wait` on it blocked in read(2)."""
    with Daemon(tmp_path / "ai", tmp_path / "state", config_text=SLOW_CONFIG) as slow:
        pid = slow.submit("forever 5000 5")
        cat = subprocess.Popen(["cat", slow.path("tasks", str(pid), "wait")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            poll_until(slow.blocked_readers, 10, "cat blocked in wait")
            yield slow, cat
        finally:
            cat.kill()
            cat.wait()


def test_umount_with_blocked_reader_answers_and_then_succeeds(blocked_wait):
    """umount with a reader blocked in `wait` returns (busy) instead of hanging; once the reader is interrupted it unmounts."""
    slow, cat = blocked_wait
    busy = subprocess.run(["umount", slow.mountpoint], capture_output=True, text=True, timeout=10)
    assert busy.returncode != 0 and "busy" in busy.stderr
    cat.send_signal(signal.SIGINT)
    assert cat.wait(timeout=10) == -signal.SIGINT
    subprocess.run(["umount", slow.mountpoint], check=True, timeout=10)
    assert slow.proc.wait(timeout=10) == 0


def test_sigterm_with_blocked_reader_exits_and_ends_the_read(blocked_wait):
    """SIGTERM while a reader is blocked in `wait` still unmounts and exits 0; the read fails instead of hanging."""
    slow, cat = blocked_wait
    slow.proc.send_signal(signal.SIGTERM)
    assert slow.proc.wait(timeout=15) == 0
    assert not is_mounted(slow.mountpoint)
    assert cat.wait(timeout=10) != 0


def test_lazy_unmount_ends_the_blocked_read_with_enotconn_and_the_daemon_exits(blocked_wait):
    """After `fusermount3 -u -z` the blocked `cat wait` (in the daemon's namespace) fails with ENOTCONN; its exit
    closes the last descriptor, and the daemon exits 0 without unmounting the path, saying why."""
    slow, cat = blocked_wait
    subprocess.run(["fusermount3", "-u", "-z", slow.mountpoint], check=True, timeout=10)
    assert cat.wait(timeout=10) == 1
    assert os.strerror(errno.ENOTCONN) in cat.stderr.read().decode()
    assert slow.proc.wait(timeout=15) == 0
    assert "was detached: ended 1 blocked reads in this mount namespace with ENOTCONN" in slow.log_tail()


def mount_checks(daemon) -> int:
    """The apeinx_mount_checks_total counter of /metrics (the daemon's looks for a lazy unmount)."""
    with open(daemon.path("metrics")) as file:
        return next(int(line.split()[1]) for line in file if line.startswith("apeinx_mount_checks_total "))


def test_a_reader_blocked_on_a_mounted_tree_is_untouched_by_the_detach_checks(blocked_wait):
    """While the daemon looks for a lazy unmount three more times, a `cat wait` on the mounted tree stays blocked."""
    slow, cat = blocked_wait
    first = mount_checks(slow)
    poll_until(lambda: mount_checks(slow) >= first + 3, 10 * mountwatch.CHECK_S, "three more checks")
    assert cat.poll() is None and slow.proc.poll() is None and slow.blocked_readers() == 1
    assert "detached" not in slow.log_tail()


def test_a_start_waits_for_a_detached_daemon_and_names_it_while_a_file_holds_it(unstarted):
    """With a file held open, `fusermount3 -u -z`: the file still reads; a new start on the same state directory
    waits HOLDER_EXIT_S, then is refused naming the old daemon's pid and why; once the file is closed the old
    daemon exits 0 (the kernel ends its connection) and a new start mounts."""
    unstarted.start()
    held = os.open(unstarted.path("README"), os.O_RDONLY)
    old = unstarted.proc
    try:
        subprocess.run(["fusermount3", "-u", "-z", unstarted.mountpoint], check=True, timeout=10)
        assert os.pread(held, 8, 0) == b"apeinxfs"
        with pytest.raises(RuntimeError, match=f"daemon \\(pid {old.pid}\\) uses .*: its mount was detached, but it "
                                               "is still in use by files open on its tree or by other mount namespaces"):
            unstarted.start(timeout=30)
        assert old.poll() is None and os.pread(held, 8, 0) == b"apeinxfs"
    finally:
        os.close(held)
    assert old.wait(timeout=10) == 0
    unstarted.start()
    with open(unstarted.path("README")) as readme:
        assert readme.read().startswith("apeinxfs")


@pytest.mark.skipif(os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter")),
                    reason="a mount namespace of its own (unshare -m, nsenter -m) needs root and util-linux")
def test_a_reader_in_another_mount_namespace_is_served_on_after_a_lazy_unmount(blocked_wait):
    """A `cat wait` in another mount namespace (a container's view of the tree) is not ended by a lazy unmount in
    the daemon's, while the one in the daemon's is; the daemon ends only once that namespace's reader is gone."""
    slow, own = blocked_wait
    pid = slow.submit("forever 5000 5")
    other = subprocess.Popen(["unshare", "-m", "--propagation", "private", "cat", slow.path("tasks", str(pid), "wait")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        poll_until(lambda: slow.blocked_readers() == 2, 10, "both readers blocked")
        subprocess.run(["fusermount3", "-u", "-z", slow.mountpoint], check=True, timeout=10)
        assert own.wait(timeout=10) == 1
        poll_until(lambda: "ended 1 blocked reads in this mount namespace" in slow.log_tail(), 10, "the end logged")
        metrics = subprocess.run(["nsenter", "-t", str(other.pid), "-m", "cat", slow.path("metrics")],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
        # read after the ending ran (requests are served in order): the other's read is still the daemon's
        assert "\napeinx_blocked_readers 1\n" in metrics  # the tree is served on in that namespace
        assert other.poll() is None and slow.proc.poll() is None
    finally:
        other.kill()
        other.wait()
    assert slow.proc.wait(timeout=15) == 0


COMPACTION_MISUSES_SQLITE = """import sqlite3, sys
from apeinxfs import cli, compaction
def misused_compact(path, upto):
    raise sqlite3.ProgrammingError("a misuse of SQLite")
compaction.compact = misused_compact
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_bug_in_a_close_at_unmount_makes_the_daemon_exit_1(unstarted):
    """A daemon whose last snapshot at unmount meets a bug (its compaction misuses SQLite: the second snapshot
    kept compacts) unmounts and exits 1, saying so; the same unmount without the bug exits 0."""
    unstarted.start()
    unstarted.submit("name=one max_tokens=2")
    unstarted.stop()
    assert unstarted.proc.returncode == 0
    unstarted.command = lambda: [sys.executable, "-c", COMPACTION_MISUSES_SQLITE, *Daemon.command(unstarted)[3:]]
    unstarted.start()
    unstarted.submit("name=two max_tokens=2")
    unstarted.stop()
    assert unstarted.proc.returncode == 1 and not is_mounted(unstarted.mountpoint)
    assert "a bug in closing the last snapshot at unmount" in unstarted.log_tail()
