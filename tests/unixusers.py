"""Real Unix users for tests that act as someone else against a live mount.

`UnixUsers` creates users (useradd: no home, nologin shell, a user group) with the uids it
is given or the first free ones above (names carry the run's pid, so runs at once never meet), and `close` deletes them (userdel) whatever happened. `run_as` runs a command as
one of them through setpriv with no supplementary groups; `probe` runs PROBE (a few lines
of the system Python, which every user may run) to open, write, read or list a path and
report the errno name and any reply as JSON; `as_user` is the argv that runs a command as
one of them. Needs root. Not fixtures: `users_of_test` is the body a test module's users
fixture yields from, `shared_mount` a daemon every user may reach.
"""
import contextlib
import json
import os
import pwd
import shutil
import subprocess
import tempfile

import attrs
import pytest

from daemon import FUSE_READY, Daemon

UID_TRIES = 200  # uids tried from the one a test asks for
SYSTEM_PYTHON = "/usr/bin/python3"  # the venv's interpreter lives under /root, out of other users' reach

PROBE = r"""
import errno, json, os, sys
op, path, text = sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else ""
result = {"errno": None, "data": ""}
def failed(exc):
    result["errno"] = result["errno"] or errno.errorcode[exc.errno]
try:
    if op in ("send", "write"):
        fd = os.open(path, os.O_RDWR if op == "send" else os.O_WRONLY)
        try:
            os.write(fd, text.encode())
        except OSError as exc:
            failed(exc)
        if op == "send":
            result["data"] = os.read(fd, 1 << 16).decode()
        os.close(fd)
    elif op == "read":
        with open(path) as file:
            result["data"] = file.read()
    elif op == "list":
        result["data"] = sorted(os.listdir(path))
    elif op == "stat":
        info = os.stat(path)
        result["data"] = [oct(info.st_mode & 0o7777), info.st_uid, info.st_gid]
except OSError as exc:
    failed(exc)
print(json.dumps(result))
"""


@attrs.frozen
class User:
    name: str
    uid: int
    gid: int


def as_user(user: User, argv: list[str]) -> list[str]:
    """`argv` run through setpriv as `user` (real and effective uid and gid, no supplementary
    groups); setpriv execs it, so the process started has the command's own pid."""
    return ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups"] + argv


def run_as(user: User, argv: list[str], timeout: float = 20.0) -> subprocess.CompletedProcess:
    """Run `argv` as `user` and wait for it."""
    return subprocess.run(as_user(user, argv), capture_output=True, text=True, timeout=timeout, cwd="/")


def probe(user: User, op: str, path: str, text: str = "") -> dict:
    """As `user`: op is send (O_RDWR write, then read the reply), write (O_WRONLY), read, list or
    stat; returns {"errno": NAME or None, "data": reply, text, names or [mode, uid, gid]}."""
    done = run_as(user, [SYSTEM_PYTHON, "-c", PROBE, op, path, text])
    if done.returncode != 0:
        raise AssertionError(f"probe {op} {path} as {user.name} failed: {done.stderr}")
    return json.loads(done.stdout)


class UnixUsers:
    """Users created for one test module, deleted on close."""

    def __init__(self):
        self.created: list[User] = []

    def add(self, name: str, uid: int) -> User:
        """Create `name` with the first uid from `uid` up that no user has (another run, CI or a second
        checkout's, may hold some at the same time: useradd refuses a taken uid, and the next is tried)."""
        if name in {entry.pw_name for entry in pwd.getpwall()}:  # this run's own name: left by a dead run
            subprocess.run(["userdel", name], check=True, capture_output=True)
        for candidate in range(uid, uid + UID_TRIES):
            if _uid_free(candidate) and _useradd(name, candidate):
                user = User(name, candidate, pwd.getpwnam(name).pw_gid)
                self.created.append(user)
                return user
        raise RuntimeError(f"no free uid in {uid}-{uid + UID_TRIES - 1} for {name}")

    def close(self) -> None:
        """Delete every user created (and its user group), even if some deletions fail."""
        failures = []
        for user in reversed(self.created):
            done = subprocess.run(["userdel", user.name], capture_output=True, text=True)
            if done.returncode != 0:
                failures.append(f"{user.name}: {done.stderr.strip()}")
        self.created.clear()
        if failures:
            raise RuntimeError("userdel failed: " + "; ".join(failures))


def _uid_free(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return True
    return False


def _useradd(name: str, uid: int) -> bool:
    """Create user `name` with `uid` (no home, nologin, a user group); False if the uid or its group's gid
    was taken meanwhile (useradd's 4: not unique, 9: group name in use)."""
    done = subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group",
                           "--uid", str(uid), name], capture_output=True, text=True)
    if done.returncode in (4, 9) and not any(entry.pw_name == name for entry in pwd.getpwall()):
        return False
    if done.returncode != 0:
        raise RuntimeError(f"useradd {name}: {done.stderr.strip()}")
    return True


def run_tag() -> str:
    """This test run's mark on the users it creates, so that two runs at once (CI and a second checkout's)
    never create, or delete, each other's: its pid in hex."""
    return f"{os.getpid():x}"


def remove_stale(prefix: str) -> None:
    """Delete the users PREFIX*_TAG left by runs that died before their teardown (no process has TAG's pid)."""
    for entry in pwd.getpwall():
        name, _, tag = entry.pw_name.rpartition("_")
        if name.startswith(prefix) and tag and all(c in "0123456789abcdef" for c in tag) and not _alive(int(tag, 16)):
            subprocess.run(["userdel", entry.pw_name], capture_output=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def shared_dir(prefix: str) -> str:
    """A fresh directory under /tmp that every user may traverse (pytest's tmp_path is 0700)."""
    path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    os.chmod(path, 0o755)
    return path


def users_of_test(prefix: str, uids: dict[str, int], what: str):
    """A fixture's body: skip (saying so loudly, as `what`) unless root with FUSE; else the users
    PREFIX+name+_+run_tag() with these uids or the first free ones above, by name, deleted afterwards
    whatever happened."""
    if os.geteuid() != 0:
        print(f"\n*** not root: cannot create users or mount allow_other: {what} SKIPPED ***\n")
        pytest.skip("creating Unix users and mounting with allow_other need root")
    if not FUSE_READY:
        pytest.skip("no /dev/fuse or fusermount3 on this machine")
    created = UnixUsers()
    remove_stale(prefix)
    try:
        tag = run_tag()
        yield {name: created.add(f"{prefix}{name}_{tag}", uid) for name, uid in uids.items()}
    finally:
        created.close()


@contextlib.contextmanager
def shared_mount(prefix: str, state_dir, config_text: str):
    """A Daemon mounted at `ai` in a fresh shared_dir (every user may traverse it), all removed afterwards."""
    top = shared_dir(prefix)
    try:
        with Daemon(os.path.join(top, "ai"), state_dir, config_text) as daemon:
            yield daemon
    finally:
        shutil.rmtree(top, ignore_errors=True)
