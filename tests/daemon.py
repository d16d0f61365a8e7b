"""Start and stop a real apeinxfs daemon on a real mount, for tests and benchmarks.

`Daemon` runs `apeinxfs MOUNTPOINT -f` as a child process, waits until the mount is
live (polling every 50 ms, failing early if the child died), and on stop unmounts with
`fusermount3 -u -z` and ends the child by its pid. Nothing is killed by name.
"""
import os
import shutil
import signal
import subprocess
import sys
import time

FUSE_READY = os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None
APEINXFS = [sys.executable, "-m", "apeinxfs.cli"]
FAST_CONFIG = """
[gpus]
simulated = 2
slots = 8
[[models]]
name = "sim"
[models.options]
decode_step_ms = 2
batch_step_ms = 0.1
prefill_tokens_per_s = 100000
"""


def is_mounted(path: str) -> bool:
    with open("/proc/mounts") as mounts:
        return any(line.split()[1] == path for line in mounts)


class Daemon:
    """One daemon process serving `mountpoint` from `state_dir`."""

    def __init__(self, mountpoint, state_dir, config_text: str | None = FAST_CONFIG, extra_args=()):
        self.mountpoint, self.state_dir = str(mountpoint), str(state_dir)
        self.config_text, self.extra_args = config_text, list(extra_args)
        self.proc = None
        os.makedirs(self.mountpoint, exist_ok=True)
        os.makedirs(self.state_dir, exist_ok=True)

    def command(self) -> list[str]:
        cmd = APEINXFS + [self.mountpoint, "-f", "--state-dir", self.state_dir]
        if self.config_text is not None:
            path = os.path.join(self.state_dir, "test-config.toml")
            with open(path, "w") as file:
                file.write(self.config_text)
            cmd += ["--config", path]
        return cmd + self.extra_args

    def start(self, timeout: float = 20.0) -> "Daemon":
        log = open(os.path.join(self.state_dir, "daemon.log"), "ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not is_mounted(self.mountpoint):
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

    def path(self, *parts) -> str:
        return os.path.join(self.mountpoint, *parts)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
