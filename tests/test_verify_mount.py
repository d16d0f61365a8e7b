"""Tier 3-4: `apeinxfs replay --verify STATE_DIR` on the state directory of a real daemon.

1,000 mixed tasks go through the mount (all three submit forms, deadlines, priorities,
children, stop/prio/cont, kills, policy switches, refused writes) while the sim engine
runs them. The command is run
as a user would, in a subprocess: beside the live daemon, after it stops, after one
journal row is altered, and after a kill -9 and a restart.
"""
import errno
import json
import os
import re
import sqlite3
import subprocess

import pytest

from daemon import APEINXFS, FAST_CONFIG, Daemon, poll_until

pytestmark = pytest.mark.mount

TASKS = 1000
WHOLE_JOURNAL = "\n[retention]\nsnapshot_rows = 1000000\n"  # no compaction: verify replays from row 1 too
BATCH = 50


def submit_line(index: int) -> str:
    """The seed, key=value and JSON forms in turn, some with a deadline or a priority."""
    name, tokens = f"v{index:04d}", 5 + index % 13
    if index % 3 == 0:
        return f"{name} {tokens} {index % 10}" + (" 30ms" if index % 7 == 0 else "")
    if index % 3 == 1:
        return f'name={name} max_tokens={tokens} prompt="prompt {index}"'
    return json.dumps({"name": name, "max_tokens": tokens, "prompt": f"p{index}", "deadline": 60})


def write_lines(daemon: Daemon, path: tuple, lines: list[str]) -> str:
    """One write(2) of `lines` to a ctl file; its reply, or the errno name if it was refused."""
    try:
        with open(daemon.path(*path), "r+b", buffering=0) as ctl:
            ctl.write("".join(line + "\n" for line in lines).encode())
            return ctl.read(1 << 20).decode()
    except OSError as exc:
        return errno.errorcode[exc.errno]


def exited(daemon: Daemon) -> int:
    with open(daemon.path("metrics")) as file:
        found = re.search(r'^apeinx_tasks\{state="exited"\} (\d+)$', file.read(), re.M)
    return int(found.group(1))


def run_mixed(daemon: Daemon, first: int, count: int) -> int:
    """Submit tasks first..first+count-1 in batches, each with a child, task ctl, a kill, a policy
    switch and refusals between; returns how many tasks were submitted."""
    submitted = 0
    for start in range(first, first + count, BATCH):
        pids = [int(p) for p in write_lines(daemon, ("ctl", "submit"),
                                            [submit_line(i) for i in range(start, start + BATCH)]).split()]
        write_lines(daemon, ("ctl", "submit"), [f"name=kid{start} max_tokens=3 parent={pids[1]}"])
        for pid in pids[::10]:
            for command in ("stop", "prio 2", "cont"):
                write_lines(daemon, ("tasks", str(pid), "ctl"), [command])
        write_lines(daemon, ("ctl", "kill"), [str(pids[7])])
        write_lines(daemon, ("sched", "policy"), [("vtc", "fair")[start // BATCH % 2]])
        assert write_lines(daemon, ("ctl", "submit"), ["no such form here at all"]) == "EINVAL"
        submitted += len(pids) + 1
    return submitted


def replay_verify(state_dir) -> subprocess.CompletedProcess:
    return subprocess.run(APEINXFS + ["replay", "--verify", str(state_dir)], capture_output=True, text=True,
                          timeout=120)


def alter_a_step(state_dir) -> int:
    """Change the texts of the chunks of a steps row in the middle of the journal; the row's seq."""
    with sqlite3.connect(os.path.join(state_dir, "journal.db")) as db:
        rows = db.execute("SELECT seq FROM journal WHERE kind = 'steps' ORDER BY seq").fetchall()
        seq = rows[len(rows) // 2][0]
        db.execute("""UPDATE journal SET body = replace(body, ',"', ',"X') WHERE seq = ?""", (seq,))
    return seq


def test_verify_a_thousand_task_daemon_run(tmp_path):
    """Verify passes beside the live daemon and after it stops, then names the one row altered."""
    state = tmp_path / "state"
    with Daemon(tmp_path / "ai", state, FAST_CONFIG + WHOLE_JOURNAL) as daemon:
        submitted = run_mixed(daemon, 0, TASKS)
        poll_until(lambda: exited(daemon) == submitted, 120, "every task exits")
        live = replay_verify(state)
    after = replay_verify(state)
    assert (live.returncode, after.returncode) == (0, 0), live.stdout + live.stderr + after.stdout + after.stderr
    assert re.match(r"OK: \d{4,} events, (\d{4,}) trace lines, identical; \1 lines of the trace archive identical"
                    r"; replayed from row 1 and from snapshot-\d{12}\.snap \(row \d+\)\n$", after.stdout)  # at unmount
    row = alter_a_step(state)
    altered = replay_verify(state)
    assert altered.returncode == 1
    assert altered.stdout.startswith(f"DIVERGED at journal row {row} (steps, time_us ")


def test_verify_after_kill9_and_restart(tmp_path):
    """After kill -9 mid-run verify passes (the lost trace tail unchecked), and again after a restart."""
    state = tmp_path / "state"
    daemon = Daemon(tmp_path / "ai", state).start()
    try:
        submitted = run_mixed(daemon, 0, TASKS // 4)
        daemon.kill9()
        crashed = replay_verify(state)
        daemon.start()
        submitted += run_mixed(daemon, TASKS // 4, TASKS // 4)
        poll_until(lambda: exited(daemon) == submitted, 120, "every task exits")
    finally:
        daemon.stop()
    restarted = replay_verify(state)
    assert (crashed.returncode, restarted.returncode) == (0, 0), crashed.stdout + restarted.stdout
    assert restarted.stdout.startswith("OK: ")
