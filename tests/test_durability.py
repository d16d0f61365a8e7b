"""Acceptance: state survives kill -9 and a clean remount (docs/apeinxfs.5.md: nothing acknowledged is lost).

A writer submits 1,000 tasks while the daemon runs them; the daemon is killed with
SIGKILL mid-run and restarted on the same state directory and (stale) mountpoint. The
checks read only the mounted tree: /tasks, /metrics, /trace/events, each task's files.
Not tested here: power loss (the journal is fsync'd at the WAL's NORMAL level only).
"""
import csv
import errno
import io
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from apeinxfs.drivers.sim import word
from daemon import Daemon, poll_until

pytestmark = pytest.mark.mount

TASKS = 1000
KILL_AMID = 700  # the daemon dies while tasks after this one are being submitted
BATCH = 10
DEAD_MOUNT = {errno.ENOTCONN, errno.ECONNABORTED}


# -- the workload: 1,000 named tasks whose output is known in advance ---------------

def name_of(index: int) -> str:
    return f"t{index:04d}"


def tokens_of(index: int) -> int:
    return 20 + index * 37 % 61


def prompt_of(index: int) -> str:
    return "" if index % 3 == 0 else f"prompt {index}"


def submit_line(index: int) -> bytes:
    """The seed, key=value and JSON forms in turn; all name their prompt's text."""
    name, tokens = name_of(index), tokens_of(index)
    if index % 3 == 0:
        return f"{name} {tokens} 5\n".encode()
    if index % 3 == 1:
        return f'name={name} max_tokens={tokens} prompt="{prompt_of(index)}"\n'.encode()
    return (json.dumps({"name": name, "max_tokens": tokens, "prompt": prompt_of(index)}) + "\n").encode()


def expected_output(index: int) -> bytes:
    """The sim driver's text for this task: deterministic in the prompt (else the name) and token index."""
    return "".join(word(0, prompt_of(index) or name_of(index), k) for k in range(tokens_of(index))).encode()


# -- reading the tree ---------------------------------------------------------------------

def read(daemon: Daemon, *parts) -> str:
    with open(daemon.path(*parts)) as file:
        return file.read()


def metric(daemon: Daemon, sample: str) -> int:
    """The value of one sample of /metrics, e.g. 'apeinx_tasks{state="exited"}'."""
    found = re.search(rf"^{re.escape(sample)} (\S+)$", read(daemon, "metrics"), re.M)
    return int(float(found.group(1))) if found else 0


def task_names(daemon: Daemon) -> dict[int, str]:
    """pid -> Name of every task in /tasks."""
    names = {}
    for entry in os.listdir(daemon.path("tasks")):
        names[int(entry)] = re.search(r"^Name:\t(.*)$", read(daemon, "tasks", entry, "status"), re.M).group(1)
    return names


def trace_rows(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def restart(daemon: Daemon) -> None:
    """Start again on the same state dir and (stale) mountpoint; start() waits until it answers."""
    daemon.start()
    assert "ctl/submit" in read(daemon, "README")


# -- the writer -----------------------------------------------------------------------------

class Writer:
    """Submits tasks in batches of ten: single-line writes or one multi-line write, rw fd."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon
        self.acked: dict[str, int] = {}
        self.in_flight: list[str] = []

    def submit(self, indexes: list[int]) -> None:
        """Submit the given tasks; stop quietly at the first sign of a dead mount."""
        try:
            for start in range(0, len(indexes), BATCH):
                batch = indexes[start:start + BATCH]
                (self._one_write if start // BATCH % 2 else self._line_by_line)(batch)
            self.in_flight = []
        except OSError as exc:
            assert exc.errno in DEAD_MOUNT, exc

    def _line_by_line(self, batch: list[int]) -> None:
        fd = os.open(self.daemon.path("ctl", "submit"), os.O_RDWR)
        for index in batch:
            self._acknowledge(fd, [index], submit_line(index))
        os.close(fd)

    def _one_write(self, batch: list[int]) -> None:
        fd = os.open(self.daemon.path("ctl", "submit"), os.O_RDWR)
        self._acknowledge(fd, batch, b"".join(submit_line(i) for i in batch))
        os.close(fd)

    def _acknowledge(self, fd: int, batch: list[int], data: bytes) -> None:
        self.in_flight = [name_of(i) for i in batch]
        assert os.write(fd, data) == len(data)
        pids = [int(pid) for pid in os.read(fd, 65536).split()]
        assert len(pids) == len(batch)
        self.acked.update(zip(self.in_flight, pids))


# -- kill -9 during a 1,000-task run --------------------------------------------------------

def kill_mid_run(daemon: Daemon, writer: Writer) -> tuple[str, dict[int, bytes]]:
    """Submit 700 tasks; once some are done and some queued, SIGKILL while the rest go in."""
    with ThreadPoolExecutor(1) as pool:
        writer.submit(list(range(KILL_AMID)))
        poll_until(lambda: metric(daemon, 'apeinx_tasks{state="exited"}') >= 20
                   and metric(daemon, 'apeinx_tasks{state="queued"}') >= 20, 60, "done and queued tasks")
        outputs = done_outputs(daemon)
        trace_before = read(daemon, "trace", "events")
        submitting = pool.submit(writer.submit, list(range(KILL_AMID, TASKS)))
        poll_until(lambda: len(writer.acked) > KILL_AMID, 30, "the writer to go on")
        daemon.kill9()
        submitting.result(30)
    return trace_before, outputs


def done_outputs(daemon: Daemon) -> dict[int, bytes]:
    """Output of a few tasks that have exited, keyed by pid."""
    outputs = {}
    for entry in sorted(os.listdir(daemon.path("tasks")), key=int)[:200]:
        if "Exit:\tdone" in read(daemon, "tasks", entry, "status"):
            with open(daemon.path("tasks", entry, "output"), "rb") as file:
                outputs[int(entry)] = file.read()
        if len(outputs) == 5:
            break
    assert outputs, "no task was done before the kill"
    return outputs


def check_nothing_lost(daemon: Daemon, writer: Writer) -> dict[int, str]:
    """Acknowledged tasks kept their pids; an unacknowledged write is all there or all gone."""
    names = task_names(daemon)
    by_name = {name: pid for pid, name in names.items()}
    assert len(by_name) == len(names), "a task name appears twice"
    assert sorted(names) == list(range(1, len(names) + 1)), "pids are not 1..N"
    for name, pid in writer.acked.items():
        assert by_name.get(name) == pid, f"acknowledged {name} (pid {pid}) is missing or moved"
    unacked = set(by_name) - set(writer.acked)
    assert unacked in (set(), set(writer.in_flight)), f"unacknowledged tasks: {sorted(unacked)[:5]}"
    return names


def running_at_restart(rows: list[dict]) -> set[int]:
    """Pids on a GPU when the trace reached its restart line."""
    running = set()
    for row in rows:
        if row["type"] == "restart":
            return running
        if row["type"] == "dispatch":
            running.add(int(row["pid"]))
        elif row["type"] in ("preempt", "exit", "stop"):
            running.discard(int(row["pid"]))
    raise AssertionError("no restart line in the trace")


def check_trace(daemon: Daemon, trace_before: str) -> None:
    """The trace is the old one plus new lines; seq has no gap or repeat; running tasks requeued."""
    trace_after = read(daemon, "trace", "events")
    assert trace_after.startswith(trace_before), "lines seen before the kill changed"
    rows = trace_rows(trace_after)
    assert [int(r["seq"]) for r in rows] == list(range(1, len(rows) + 1))
    assert [r["type"] for r in rows].count("restart") == 1
    running = running_at_restart(rows)
    assert running, "no task was running at the kill"
    for pid in running:
        assert ",requeue," in read(daemon, "tasks", str(pid), "events"), f"task {pid} not requeued"


def test_kill9_mid_run_loses_nothing(tmp_path):
    """After kill -9 mid-run and a restart, every acknowledged task is there once and all finish."""
    with Daemon(tmp_path / "ai", tmp_path / "state") as daemon:
        writer = Writer(daemon)
        trace_before, outputs = kill_mid_run(daemon, writer)
        restart(daemon)
        names = check_nothing_lost(daemon, writer)
        check_trace(daemon, trace_before)
        for pid, output in outputs.items():
            with open(daemon.path("tasks", str(pid), "output"), "rb") as file:
                assert file.read() == output, f"output of done task {pid} changed"
        writer.submit([i for i in range(TASKS) if name_of(i) not in set(names.values())])
        assert writer.in_flight == []
        check_all_done(daemon)


def check_all_done(daemon: Daemon) -> None:
    """All 1,000 tasks, pids 1..1000, end `done` with exactly the text the sim generates."""
    poll_until(lambda: metric(daemon, 'apeinx_tasks{state="exited"}') == TASKS, 120, "every task to exit")
    names = task_names(daemon)
    assert sorted(names) == list(range(1, TASKS + 1))
    assert sorted(names.values()) == [name_of(i) for i in range(TASKS)]
    for pid, name in names.items():
        assert read(daemon, "tasks", str(pid), "wait") == "done\n", f"task {pid} did not end done"
        with open(daemon.path("tasks", str(pid), "output"), "rb") as file:
            assert file.read() == expected_output(int(name[1:])), f"output of {name} (pid {pid}) is wrong"


# -- a clean unmount and remount ------------------------------------------------------------

def test_remount_replays_outputs_and_timelines(tmp_path):
    """Output, events and /replay/PID read before a clean unmount are the same after remount."""
    with Daemon(tmp_path / "ai", tmp_path / "state") as daemon:
        with open(daemon.path("ctl", "submit"), "wb") as submit:
            submit.write(b"".join(submit_line(i) for i in range(3)))
        files = [("tasks", str(pid), leaf) for pid in (1, 2, 3) for leaf in ("wait", "output", "events")]
        before = {parts: read(daemon, *parts) for parts in files + [("replay", "2")]}
        daemon.stop()
        daemon.start()
        after = {parts: read(daemon, *parts) for parts in before}
        assert after == before
        assert before[("tasks", "2", "output")] == expected_output(1).decode()
        assert "restart" in [r["type"] for r in trace_rows(read(daemon, "trace", "events"))]
