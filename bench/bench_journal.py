"""Journal rows and bytes per task: what a run of small tasks leaves in STATE_DIR (issue 15 item 4).

A real daemon with the fast sim config (tests/daemon.py: 2 GPUs of 8 slots, 2 ms decode
steps) runs BENCH_JOURNAL_TASKS (default 2,000) tasks of 32 tokens, submitted 100 per
write(2); once all have exited it is unmounted, and the journal's rows (by kind) and the
size of `journal.db*` are counted, per task. Targets: under 2 rows and under 2,000 bytes
a task. With one row per engine step (before progress was journaled in batches) the
same run took 5.0 rows and 3,219 bytes a task.
"""
import collections
import glob
import os
import sqlite3
import sys

from common import apeinxfs_mount, verdict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from daemon import FAST_CONFIG, poll_until  # noqa: E402 - tests/ is on the path (common.py puts it there too)

TASKS = int(os.environ.get("BENCH_JOURNAL_TASKS", "2000"))
PER_WRITE = 100
ROWS_TARGET = 2
BYTES_TARGET = 2000


def exited(daemon) -> int:
    with open(daemon.path("metrics")) as file:
        line = next(line for line in file if line.startswith('apeinx_tasks{state="exited"}'))
    return int(line.split()[1])


def submit_all(daemon) -> None:
    for first in range(0, TASKS, PER_WRITE):
        lines = "".join(f'name=t{i} max_tokens=32 prompt="task {i}"\n' for i in range(first, first + PER_WRITE))
        with open(daemon.path("ctl", "submit"), "wb", buffering=0) as ctl:
            ctl.write(lines.encode())


def journal_figures(state_dir: str) -> tuple[collections.Counter, int, int]:
    """Rows by kind, trace rows, and the bytes of journal.db and its WAL."""
    with sqlite3.connect(os.path.join(state_dir, "journal.db")) as db:
        kinds = collections.Counter(dict(db.execute("SELECT kind, count(*) FROM journal GROUP BY kind")))
        traces = db.execute("SELECT count(*) FROM trace").fetchone()[0]
    size = sum(os.path.getsize(path) for path in glob.glob(os.path.join(state_dir, "journal.db*")))
    return kinds, traces, size


def archive_bytes(state_dir: str) -> int:
    return sum(os.path.getsize(path) for path in glob.glob(os.path.join(state_dir, "trace", "*")))


def main() -> int:
    with apeinxfs_mount(FAST_CONFIG, "journal") as daemon:
        submit_all(daemon)
        poll_until(lambda: exited(daemon) >= TASKS, 600, "every task exits")
        daemon.stop()
        kinds, traces, size = journal_figures(daemon.state_dir)
        archived = archive_bytes(daemon.state_dir)
    rows = sum(kinds.values())
    print(f"{TASKS} tasks of 32 tokens: {rows} journal rows ({dict(kinds.most_common())}), {traces} trace rows, "
          f"{size} bytes of journal.db*")
    print(f"per task: {rows / TASKS:.2f} rows, {size / TASKS:.0f} bytes; trace archive {archived / TASKS:.0f} bytes")
    rows_ok = verdict("journal rows per task", rows / TASKS, ROWS_TARGET, higher_is_better=False)
    bytes_ok = verdict("journal bytes per task", size / TASKS, BYTES_TARGET, " B", higher_is_better=False)
    return 0 if rows_ok and bytes_ok else 2


if __name__ == "__main__":
    sys.exit(main())
