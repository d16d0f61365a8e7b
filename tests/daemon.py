"""Start and stop a real apeinxfs daemon on a real mount, for tests and benchmarks.

`Daemon` runs `apeinxfs MOUNTPOINT -f` as a child process, waits until the mount is
live (polling every 50 ms, failing early if the child died), and on stop unmounts with
`fusermount3 -u -z` and ends the child by its pid. `start_detached` instead runs a
command that mounts and returns (`mount -t fuse`, `apeinxfs` without -f) and adopts the
daemon it leaves behind, found by its argv in /proc. Nothing is killed by name.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

FUSE_READY = os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None
APEINXFS = [sys.executable, "-m", "apeinxfs.cli"]


def sim_config(decode_step_ms: float) -> str:
    """A TOML config: 2 simulated GPUs of 8 slots, a sim model stepping every `decode_step_ms`."""
    return f"""
[gpus]
simulated = 2
slots = 8
[[models]]
name = "sim"
[models.options]
decode_step_ms = {decode_step_ms}
batch_step_ms = 0.1
prefill_tokens_per_s = 100000
"""


FAST_CONFIG = sim_config(2)
TINY_SHAPE = {"layers": 2, "kv_heads": 4, "head_dim": 16}  # the KV shape of tests/tinymodel.py's model


def engine_config(driver: str, name: str = "tiny", context: int = 4096, shape: dict | None = None,
                  **options) -> str:
    """A TOML config: one simulated GPU of 4 slots and one model on `driver`, with its `options`."""
    lines = [f"{key} = {json.dumps(value)}" for key, value in {"context": context, **(shape or {})}.items()]
    lines += ["[models.options]"] + [f"{key} = {json.dumps(value)}" for key, value in options.items()]
    head = f'[gpus]\nsimulated = 1\nslots = 4\n[[models]]\nname = "{name}"\ndriver = "{driver}"\n'
    return head + "\n".join(lines) + "\n"


def checking_invariants(config_text: str) -> str:
    """The config with `check_invariants = true` in its [daemon] section (added if it has none), unless
    it sets check_invariants itself (a benchmark measuring the daemon as deployed)."""
    if "check_invariants =" in config_text:
        return config_text
    if "[daemon]\n" in config_text:
        return config_text.replace("[daemon]\n", "[daemon]\ncheck_invariants = true\n", 1)
    return config_text + "\n[daemon]\ncheck_invariants = true\n"


def is_mounted(path: str) -> bool:
    with open("/proc/mounts") as mounts:
        return any(line.split()[1] == path for line in mounts)


def poll_until(predicate, timeout: float, what: str):
    """Call `predicate` every 50 ms until it returns something true; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)
    return result


def is_live(path: str) -> bool:
    """Mounted and answering: a stale (ENOTCONN) mount left by a crash is not live."""
    try:
        os.statvfs(path)  # not stat: the kernel answers that from its attr cache for a while
    except OSError:
        return False
    return is_mounted(path)


def find_daemon_pid(mountpoint: str) -> int | None:
    """The apeinxfs process whose argv names `mountpoint` exactly (found, never killed, by argv)."""
    wanted = os.fsencode(mountpoint)
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                argv = file.read().split(b"\0")
        except OSError:
            continue
        if wanted in argv and any(b"apeinxfs" in arg for arg in argv):
            return int(entry)
    return None


def pid_running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie (orphans are not reaped in every container)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def wait_pid_gone(pid: int, timeout: float) -> bool:
    """Poll until `pid` has exited; say whether it did within `timeout` seconds."""
    try:
        poll_until(lambda: not pid_running(pid), timeout, f"pid {pid} exits")
    except AssertionError:
        return False
    return True


class Daemon:
    """One daemon process serving `mountpoint` from `state_dir`."""

    def __init__(self, mountpoint, state_dir, config_text: str | None = FAST_CONFIG, extra_args=()):
        self.mountpoint, self.state_dir = str(mountpoint), str(state_dir)
        self.config_text, self.extra_args = config_text, list(extra_args)
        self.proc = None
        self.detached_pid = None
        os.makedirs(self.mountpoint, exist_ok=True)
        os.makedirs(self.state_dir, exist_ok=True)

    def config_path(self) -> str | None:
        """Write `config_text`, with daemon.check_invariants on, into the state dir and return its
        path (None: no config)."""
        if self.config_text is None:
            return None
        path = os.path.join(self.state_dir, "test-config.toml")
        with open(path, "w") as file:
            file.write(checking_invariants(self.config_text))
        return path

    def command(self) -> list[str]:
        cmd = APEINXFS + [self.mountpoint, "-f", "--state-dir", self.state_dir]
        config = self.config_path()
        if config is not None:
            cmd += ["--config", config]
        return cmd + self.extra_args

    def start_detached(self, argv: list[str], env: dict | None = None, timeout: float = 20.0) -> "Daemon":
        """Run `argv`, which mounts and returns; adopt the daemon it leaves, by pid."""
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
        self.detached_pid = find_daemon_pid(self.mountpoint)
        if done.returncode != 0 or self.detached_pid is None:
            self.stop()
            raise RuntimeError(f"{argv} exited {done.returncode}, daemon pid {self.detached_pid}: {done.stderr}")
        return self

    def start(self, timeout: float = 20.0) -> "Daemon":
        log = open(os.path.join(self.state_dir, "daemon.log"), "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not is_live(self.mountpoint):
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mount not ready after {timeout}s: {self.log_tail()}")
            time.sleep(0.05)
        return self

    def log_tail(self) -> str:
        with open(os.path.join(self.state_dir, "daemon.log"), errors="replace") as file:
            return file.read()[-3000:]

    def kill9(self) -> None:
        """Crash the daemon: SIGKILL, leaving a dead (ENOTCONN) mount behind."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """Unmount (lazily, so a dead mount goes too) and end the child by pid."""
        if is_mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", self.mountpoint], check=False)
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.detached_pid is not None and not wait_pid_gone(self.detached_pid, timeout):
            os.kill(self.detached_pid, signal.SIGKILL)

    def path(self, *parts) -> str:
        return os.path.join(self.mountpoint, *parts)

    def submit(self, line: str) -> int:
        """Submit one line on a read-write fd and return the pid the reply names."""
        with open(self.path("ctl", "submit"), "r+b", buffering=0) as ctl:
            ctl.write(line.encode() + b"\n")
            return int(ctl.read(64))

    def status(self, pid: int) -> dict:
        """The task's status file as a dict of key -> value."""
        with open(self.path("tasks", str(pid), "status")) as file:
            return dict(line.rstrip("\n").split(":\t", 1) for line in file)

    def blocked_readers(self) -> int:
        """The apeinx_blocked_readers gauge of /metrics (readers waiting in stream or wait)."""
        with open(self.path("metrics")) as file:
            return next(int(line.split()[1]) for line in file if line.startswith("apeinx_blocked_readers "))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
