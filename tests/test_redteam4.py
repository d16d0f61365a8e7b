"""Red team 4: the daemon attacked through its environment and an unprivileged user's resources.

Each defect found is a strict xfail test here, reason "redteam4 Dn: ...", for its mend to turn into a
passing test: a journal deleted under a running daemon (acknowledged writes lost), open show files that
pin a rendered copy each with no bound per uid (daemon memory), a `stream` read that copies the whole
rest of the output whatever its size, and a wall clock set back across a restart (kernel time frozen,
budgets not enforced). Real mounts (tests/daemon.py), real users (tests/unixusers.py), a Runtime on a
fake clock.
"""
import glob
import json
import os
import signal
import subprocess
import tracemalloc

import pytest

from apeinxfs.kernel.events import Chunk, Step, Submit, Tick
from apeinxfs.kernel.spec import TaskSpec
from apeinxfs.nodes.tree import Tree
from daemon import Daemon, sim_config
from test_journal_runtime import open_runtime
from unixusers import SYSTEM_PYTHON, as_user, shared_mount, users_of_test

SLOW_SIM = sim_config(100)  # a task of 1000 tokens runs for 100 s: it is still there when looked at
MIB = 1 << 20


# -- D1: the journal deleted under a running daemon ------------------------------------------------------------

@pytest.mark.mount
@pytest.mark.xfail(strict=True, reason="redteam4 D1: a journal deleted under the running daemon is not noticed: "
                                       "writes are acknowledged into the unlinked file, /health says ok, and the "
                                       "next start has none of them (journal.py keeps the open connection)")
def test_writes_acknowledged_after_the_journal_was_deleted_survive_a_clean_restart(tmp_path):
    """After journal.db (and its -wal, -shm) is removed, a submit is either refused or still there after a
    clean SIGTERM and restart."""
    with Daemon(tmp_path / "ai", tmp_path / "state", SLOW_SIM) as daemon:
        first = daemon.submit("name=before max_tokens=1000")
        for path in glob.glob(os.path.join(daemon.state_dir, "journal.db*")):
            os.unlink(path)
        try:
            second = daemon.submit("name=after max_tokens=1000")
        except OSError:  # refused (EIO, EROFS, ...): the daemon saw it could not journal it
            second = None
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(20) == 0
        daemon.start()
        kept = set(os.listdir(daemon.path("tasks")))
        assert {str(first)} | ({str(second)} if second else set()) <= kept, daemon.log_tail()


# -- D2: open show files pin a rendered copy each, with no bound per uid ----------------------------------------

USERS = {"mallory": 23401}
HOLD = 300  # descriptors held: under the 1024 a user's process may have by default
HOLDER = r"""
import json, os, sys, time
top = sys.argv[1]
with open(top + "/ctl/submit", "r+b", buffering=0) as ctl:
    ctl.write(json.dumps({"name": "big", "max_tokens": 1000, "prompt": "x" * (1 << 20)}).encode() + b"\n")
    pid = int(ctl.read(64))
fds = []
for _ in range(int(sys.argv[2])):
    fds.append(os.open(f"{top}/tasks/{pid}/prompt", os.O_RDONLY))
    time.sleep(0.005)  # the sim's steps change the kernel between opens: each open renders anew
print(len(fds), flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def users():
    """Mallory, an ordinary user, deleted afterwards whatever happened."""
    yield from users_of_test("aprt4_", USERS, "REDTEAM4 USER TESTS ARE")


def rss_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS:"))


@pytest.mark.mount
@pytest.mark.xfail(strict=True, reason="redteam4 D2: every open of a show file keeps a rendered copy "
                                       "(fs.py open -> tree.open_snapshot) with no bound per uid: one user "
                                       "holding 300 descriptors on its 1 MiB prompt grows the daemon by 300 MiB")
def test_one_user_holding_open_show_files_cannot_grow_the_daemon_without_bound(users, tmp_path):
    """Mallory submits a task with a 1 MiB prompt and opens its prompt file 300 times (opens past a limit
    may be refused): the daemon grows by less than 64 MiB."""
    with shared_mount("apeinx-redteam4-", tmp_path / "state", sim_config(2)) as daemon:
        before = rss_mib(daemon.proc.pid)
        holder = subprocess.Popen(as_user(users["mallory"], [SYSTEM_PYTHON, "-c", HOLDER, daemon.mountpoint,
                                                             str(HOLD)]),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            held = holder.stdout.readline()
            grown = rss_mib(daemon.proc.pid) - before
        finally:
            holder.stdin.close()
            holder.wait(30)
        assert grown < 64, f"{held.strip()} descriptors held; the daemon grew by {grown} MiB"
