"""Snapshots: what one costs, what it saves at restart, and the journal left behind (issue 15 item 3).

In process, for each N of BENCH_SNAPSHOT_TASKS (default 1,000, 10,000, 40,000): a kernel
of the fast sim config runs N tiny tasks to their exit; then
- encode: the state as bytes (kernel/state.py), in process (what a snapshot at unmount costs);
- fork: what the daemon's trio thread stops for while a forked child encodes and writes the
  file (compaction.fork_writer), and how long the child takes;
- load: read, check, decompress and decode the file (what a restart does first);
against the baseline of the same run: replaying its journal rows into a fresh kernel
(what a restart did without a snapshot), as the ratio load / replay.

Then a real daemon (as deployed, `[retention] tasks = 1000`, `trace_lines = 20000`) gets
BENCH_SNAPSHOT_DAEMON tiny tasks (default 43,000, in two rounds: 3,000 then the rest, as
issue 15's acceptance): the journal files' bytes and the snapshots once all have exited,
then the time of the mount after an unmount (which writes a last snapshot) and after a
kill -9; targets are the acceptance's, printed as PASS/MISS.
"""
import glob
import os
import sys
import tempfile
import time

from common import apeinxfs_mount, verdict

from apeinxfs import config as config_mod
from apeinxfs import snapshots
from apeinxfs.compaction import boot_config, fork_writer
from apeinxfs.kernel import Kernel
from apeinxfs.kernel import events as ev
from apeinxfs.kernel.spec import TaskSpec
from apeinxfs.kernel.state import decode, encode, layout
from daemon import FAST_CONFIG, poll_until

SIZES = [int(n) for n in os.environ.get("BENCH_SNAPSHOT_TASKS", "1000,10000,40000").split(",")]
DAEMON_TASKS = int(os.environ.get("BENCH_SNAPSHOT_DAEMON", "43000"))
FIRST_ROUND = 3000
PER_WRITE = 1000
ACCEPTANCE = FAST_CONFIG + "[retention]\ntasks = 1000\ntrace_lines = 20000\n"  # issue 15's acceptance
JOURNAL_TARGET = 16 << 20
RESTART_TARGET_S = 2.0


def fast_config():
    """The fast sim config keeping every task and trace line: the state of N tasks is all of them."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as file:
        file.write(FAST_CONFIG + "[retention]\ntasks = 1000000\ntrace_lines = 10000000\n")
        file.flush()
        return config_mod.load(file.name, "/nonexistent", use_nvml=False).kernel


def tiny_run(config, tasks: int) -> list[tuple[int, ev.Event]]:
    """The events of `tasks` tiny tasks run to their exit on `config`'s GPUs, with their times."""
    kernel, events, now = Kernel(config), [], 0
    def commit(event):
        events.append((now, event))
        kernel.apply(event, now)
    for pid in range(tasks):
        commit(ev.Submit(spec=TaskSpec(name=f"t{pid}", max_tokens=3, prompt=f"task {pid}"), uid=1000))
    while kernel.tasks.count(kernel.tasks[1].state.EXITED) < tasks:
        now += 2000
        for gpu in range(len(kernel.gpus)):
            batch = kernel.batch(gpu)
            if batch:
                commit(ev.Step(gpu=gpu, chunks=[ev.Chunk(pid=t.pid, text=" w", tokens=1,
                                                         prefill=0 if t.prefilled else 3) for t in batch]))
    return events


def replayed(config, events) -> Kernel:
    kernel = Kernel(config)
    for time_us, event in events:
        kernel.apply(ev.from_row(*ev.to_row(event)), time_us)
    return kernel


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def in_process(config, tasks: int, directory: str) -> float:
    """Print one size's figures; the ratio load / replay."""
    events = tiny_run(config, tasks)
    kernel, replay_s = timed(replayed, config, events)
    data, encode_s = timed(encode, kernel)
    header = (len(events), kernel.now_us, kernel.trace.seq, boot_config(config), layout(config))
    child, fork_s = timed(fork_writer, directory, header, kernel)
    _, child_s = timed(os.waitpid, child, 0)
    path = snapshots.publish(os.path.join(directory, f"snapshot-{len(events):012d}.snap.tmp"))
    restored, load_s = timed(lambda: decode(snapshots.Snapshot.read(path).state()))
    assert len(restored.tasks) == tasks
    print(f"{tasks:>6} tasks ({len(events)} events): state {len(data) / 1e6:.1f} MB, "
          f"file {os.path.getsize(path) / 1e6:.2f} MB; encode {encode_s * 1000:.0f} ms; the daemon's stall, a fork: {fork_s * 1000:.1f} ms, then the child "
          f"encodes and writes in {(fork_s + child_s) * 1000:.0f} ms; load {load_s * 1000:.0f} ms; replaying the "
          f"journal instead {replay_s * 1000:.0f} ms (load/replay {load_s / replay_s:.2f})")
    os.unlink(path)
    return load_s / replay_s


def submit(daemon, first: int, count: int) -> None:
    for start in range(first, first + count, PER_WRITE):
        lines = "".join(f'name=t{i} max_tokens=3 prompt="task {i}"\n' for i in range(start, min(start + PER_WRITE,
                                                                                                 first + count)))
        with open(daemon.path("ctl", "submit"), "wb", buffering=0) as ctl:
            ctl.write(lines.encode())


def ended(daemon) -> int:
    """Tasks that have exited, those kept and those retention reaped."""
    with open(daemon.path("metrics")) as file:
        lines = [line.split() for line in file if line.startswith(('apeinx_tasks{state="exited"}',
                                                                    "apeinx_tasks_reaped_total "))]
    return sum(int(value) for _, value in lines)


def journal_bytes(state_dir: str) -> int:
    return sum(os.path.getsize(path) for path in glob.glob(os.path.join(state_dir, "journal.db*")))


def timed_mount(daemon) -> float:
    start = time.perf_counter()
    daemon.start()
    return time.perf_counter() - start


def through_a_daemon() -> tuple[int, float]:
    """Journal bytes after DAEMON_TASKS tiny tasks, and the mount's seconds after an unmount."""
    with apeinxfs_mount(ACCEPTANCE, "snapshot") as daemon:
        for first, count in ((0, FIRST_ROUND), (FIRST_ROUND, DAEMON_TASKS - FIRST_ROUND)):
            submit(daemon, first, count)
            poll_until(lambda: ended(daemon) >= first + count, 900, "every task exits")
        time.sleep(2)  # the progress timer's last rows
        size = journal_bytes(daemon.state_dir)
        files = snapshots.paths(os.path.join(daemon.state_dir, "snapshots"))
        sizes = [os.path.getsize(path) for path in files]
        start = time.perf_counter()
        daemon.stop()
        unmount_s = time.perf_counter() - start
        mount_s = timed_mount(daemon)
        daemon.kill9()
        crashed_s = timed_mount(daemon)
        print(f"daemon, {DAEMON_TASKS} tiny tasks: journal.db* {size / 2**20:.1f} MiB; snapshots "
              f"{[os.path.basename(path) for path in files]} of {[round(s / 2**20, 1) for s in sizes]} MiB; "
              f"unmount {unmount_s:.2f} s, then mount {mount_s:.2f} s; after kill -9, mount {crashed_s:.2f} s")
    return size, mount_s


def main() -> int:
    config = fast_config()
    with tempfile.TemporaryDirectory(prefix="apeinx-snap-") as directory:
        ratios = [in_process(config, tasks, directory) for tasks in SIZES]
    print(f"load / replay: {', '.join(f'{r:.2f}' for r in ratios)}")
    size, restart_s = through_a_daemon()
    journal_ok = verdict("journal.db* after the run", size / 2**20, JOURNAL_TARGET / 2**20, " MiB",
                         higher_is_better=False)
    restart_ok = verdict("mount after an unmount", restart_s, RESTART_TARGET_S, " s", higher_is_better=False)
    return 0 if journal_ok and restart_ok else 2


if __name__ == "__main__":
    sys.exit(main())
