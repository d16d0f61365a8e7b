"""Tier 3-4: retention on a real daemon, driven with shell tools (issue 15's acceptance).

With few tasks and trace lines kept: `ls /tasks` lists at most the kept tasks, `cat` of a
reaped task's files and `wait` answer ENOENT, `replay/PID` shows it from the trace archive,
`tail -f /trace/events` follows the ring across its drops, each line once. The acceptance
run (slow): with `tasks = 1000` and `trace_lines = 20000` on the fast sim config, 3,000 then
40,000 tasks leave at most 1,000 entries and 20,000 trace lines, the daemon's RSS within
10 MiB of what it was after 3,000, pid 1's `submit` line in STATE_DIR/trace/, journal files of
at most 16 MiB (compacted behind snapshots), a task done after a remount, and a journal that
`apeinxfs replay --verify` passes.
"""
import csv
import io
import subprocess
import time

import pytest

from daemon import APEINXFS, FAST_CONFIG, Daemon, poll_until
from test_bounded_mount import zgrep

pytestmark = pytest.mark.mount

KEEP_FEW = FAST_CONFIG + "[retention]\ntasks = 5\ntrace_lines = 200\n"
MIB = 1 << 20


def submit_many(daemon: Daemon, names: list[str], per_write: int = 1000) -> None:
    """Submit one task of 2 tokens per name, `per_write` lines to a write(2)."""
    with open(daemon.path("ctl", "submit"), "wb", buffering=0) as ctl:
        for start in range(0, len(names), per_write):
            lines = "".join(f"name={name} max_tokens=2\n" for name in names[start:start + per_write])
            assert ctl.write(lines.encode()) == len(lines)


def all_done(daemon: Daemon) -> bool:
    """No task running or waiting (from memory/meminfo)."""
    with open(daemon.path("memory", "meminfo")) as meminfo:
        counts = dict(line.split()[:2] for line in meminfo)
    return counts["TasksRunning:"] == counts["TasksWaiting:"] == "0"


def shell(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)


def test_reaped_tasks_are_enoent_to_shell_tools_and_replay_comes_from_the_archive(tmp_path):
    """Of 30 finished tasks `ls` lists the 5 that exited last; cat of pid 1's status and wait says No such file; replay/1
    shows its timeline from the archive; trace/events holds at most 200 lines."""
    with Daemon(tmp_path / "ai", tmp_path / "state", KEEP_FEW) as daemon:
        submit_many(daemon, [f"t{index}" for index in range(30)])
        poll_until(lambda: all_done(daemon), 60, "all tasks done")
        listed = shell(f"ls {daemon.path('tasks')}").stdout.split()
        status, wait = shell(f"cat {daemon.path('tasks', '1', 'status')}"), shell(f"cat {daemon.path('tasks', '1', 'wait')}")
        replay = shell(f"cat {daemon.path('replay', '1')}")
        events = shell(f"wc -l < {daemon.path('trace', 'events')}")
    assert len(listed) == 5 and "1" not in listed and all(pid.isdigit() and int(pid) <= 30 for pid in listed)
    assert status.returncode == wait.returncode == 1 and "No such file or directory" in status.stderr + wait.stderr
    assert replay.stdout.startswith("pid 1 t0 model=sim tenant=default exit=done\n") and " submit " in replay.stdout
    assert 1 < int(events.stdout) <= 201


def test_tail_f_follows_the_trace_across_the_ring_each_line_once(tmp_path):
    """`tail -f` of trace/events (200 lines kept) sees every line of 20 rounds of tasks, about 500
    lines, in seq order with none twice: each round is shown before the next is submitted."""
    with Daemon(tmp_path / "ai", tmp_path / "state", KEEP_FEW) as daemon:
        out = open(tmp_path / "tail.out", "w+")
        tail = subprocess.Popen(["tail", "-s", "0.1", "-n", "+1", "-f", daemon.path("trace", "events")], stdout=out)
        try:
            for round_ in range(20):
                submit_many(daemon, [f"r{round_}t{index}" for index in range(5)])
                poll_until(lambda: all_done(daemon), 30, "the round is done")
                last = (round_ + 1) * 5
                poll_until(lambda: f",exit,{last}," in (tmp_path / "tail.out").read_text(), 30, "tail shows the round")
            with open(daemon.path("metrics")) as metrics:
                written = next(int(line.split()[1]) for line in metrics if line.startswith("apeinx_trace_events_total"))
        finally:
            tail.terminate()
            tail.wait(10)
            out.close()
    rows = list(csv.DictReader(io.StringIO((tmp_path / "tail.out").read_text())))
    seqs = [int(row["seq"]) for row in rows]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 2 * 200 and seqs[-1] <= written


def read_rss(pid: int) -> int:
    """VmRSS of process `pid`, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


def run_round(daemon: Daemon, prefix: str, count: int, per_write: int = 1000) -> None:
    """Submit `count` tasks `per_write` at a time, each write once the tasks before it are done."""
    for start in range(0, count, per_write):
        submit_many(daemon, [f"{prefix}{index}" for index in range(start, min(count, start + per_write))], per_write)
        poll_until(lambda: all_done(daemon), 300, f"tasks {prefix}{start}.. done")


ACCEPTANCE = FAST_CONFIG + "[retention]\ntasks = 1000\ntrace_lines = 20000\n" \
    "[daemon]\ncheck_invariants = false\n"  # O(state) per commit: replay --verify checks them after every row


@pytest.mark.slow
def test_acceptance_43000_tasks_in_bounded_memory(tmp_path):
    """Issue 15: after 3,000 then 40,000 tasks, `ls /tasks` has at most 1,000 entries, trace/events at
    most 20,000 lines, RSS grew by under 10 MiB, journal.db* is at most 16 MiB, a task after a remount
    is done, zgrep finds pid 1's submit in the archive and `replay --verify` passes."""
    state, timings = tmp_path / "state", {}
    with Daemon(tmp_path / "ai", state, ACCEPTANCE) as daemon:
        start = time.monotonic()
        run_round(daemon, "a", 3000)
        rss_3000, timings["3,000 tasks"] = read_rss(daemon.proc.pid), time.monotonic() - start
        run_round(daemon, "b", 40000)
        rss_43000, timings["40,000 tasks"] = read_rss(daemon.proc.pid), time.monotonic() - start - timings["3,000 tasks"]
        start_ls = time.monotonic()
        listed = shell(f"ls {daemon.path('tasks')} | wc -l").stdout
        timings["ls /tasks"] = time.monotonic() - start_ls
        events = shell(f"tail -n +2 {daemon.path('trace', 'events')} | wc -l").stdout
    journal = sum(path.stat().st_size for path in state.glob("journal.db*"))
    with Daemon(tmp_path / "ai", state, ACCEPTANCE) as again:  # from the snapshot written at the unmount
        pid = again.submit("after 3 5")
        poll_until(lambda: again.status(pid)["Exit"] == "done", 60, "a task after the remount is done")
    start = time.monotonic()
    verified = subprocess.run(APEINXFS + ["replay", "--verify", str(state)], capture_output=True, text=True,
                              timeout=3600)
    timings["replay --verify"] = time.monotonic() - start
    print(f"retention acceptance: RSS {rss_3000 / MIB:.1f} -> {rss_43000 / MIB:.1f} MiB; journal {journal / MIB:.1f} MiB; "
          + "; ".join(f"{what} {seconds:.1f}s" for what, seconds in timings.items()))
    assert int(listed) <= 1000 and int(events) <= 20000
    assert rss_43000 - rss_3000 < 10 * MIB and journal <= 16 * MIB
    assert len(zgrep(r"^1,[0-9]+,submit,1,", str(state))) == 1
    assert verified.returncode == 0, verified.stdout + verified.stderr
