"""Kill a daemon at random moments under writers, and check that nothing acknowledged was lost.

Used by bench/chaos.py (the soak) and tests/test_chaos.py (a short run). `Chaos` runs one
daemon on a fast sim config whose [retention] and snapshot intervals are small (snapshots,
journal compaction, task retention and archive rotation happen every few seconds), and
WRITERS writer processes (`write_forever`) that submit single and multi-line writes, kill and
re-prioritise their own tasks, and append each acknowledged write (write(2) returned) to their
own log. Each round it waits a seeded random time and then ends the daemon: kill -9, SIGTERM,
or kill -9 aimed at a snapshot being written (a `.tmp` in STATE_DIR/snapshots). It starts it
again and checks (`check`) what the logs held at the kill against the trace archive (every
trace line exactly once, STATE_DIR/trace/): each acknowledged submit has its pid and name, each
acknowledged kill ended its task `killed`, each acknowledged prio has its line, no pid was given
twice; the archive's last seq is not past the restarted daemon's trace seq; /health has no Bug row,
the daemon logged no broken invariant (the daemon checks them after every commit: tests/daemon.py
turns that on) and did not find the archive ahead of the journal at the start; and every `verify_every` rounds and at the
end, `replay --verify` passes.
It is not a power-cut test: the machine's page cache survives every kill here.
"""
import collections
import errno
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import time

import attrs

from apeinxfs import archive
from daemon import APEINXFS, Daemon, sim_config

CONFIG = sim_config(2).replace("slots = 8", "slots = 32") + """
[retention]
tasks = 200
task_age_s = 5
trace_lines = 2000
trace_file_bytes = 262144
audit_lines = 100
snapshot_rows = 300
snapshot_s = 2
"""
TOKENS = (2, 2, 2, 10, 40, 1000)  # most end at once, some live long enough to be killed
BACKLOG = 64  # a writer waits while more tasks than this wait for a slot: the state stays small
UNACKNOWLEDGED = "?"  # a submit's pid in a log when the write returned and its reply could not be read


# -- the writers: each in its own process, each with its own log ------------------------------------------------

def write_forever(mountpoint: str, log_path: str, seed: int, stop) -> None:
    """Submit, kill and re-prioritise until `stop` is set, logging what each acknowledged write did."""
    rng, own, count = random.Random(seed), [], 0
    with open(log_path, "a", buffering=1) as log:
        while not stop.is_set():
            try:
                count = act(mountpoint, rng, own, count, log)
            except OSError as exc:
                log.write(f"error {errno.errorcode.get(exc.errno, exc.errno)}\n")
                time.sleep(0.02)
            time.sleep(rng.uniform(0, 0.01))


def act(mountpoint: str, rng: random.Random, own: list, count: int, log) -> int:
    """One write: a submit of 1 line (most), of 2-6 lines, a kill or a prio of one of the writer's recent tasks."""
    choice = rng.random()
    if choice < 0.75 or not own:
        wait_for_room(mountpoint)
        lines = 1 if choice < 0.5 else rng.randint(2, 6)
        names = [f"{os.path.basename(log.name)}-{count + i}" for i in range(lines)]
        own.extend(submit(mountpoint, rng, names, log))
        return count + lines
    pid = rng.choice(own[-20:])
    if choice < 0.88:
        command(os.path.join(mountpoint, "ctl", "kill"), f"{pid}\n", f"kill {pid}", log)
    else:
        prio = rng.randint(0, 9)
        command(os.path.join(mountpoint, "tasks", str(pid), "ctl"), f"prio {prio}\n", f"prio {pid} {prio}", log)
    return count


def wait_for_room(mountpoint: str) -> None:
    """Sleep while more than BACKLOG tasks wait (memory/meminfo's TasksWaiting)."""
    while True:
        with open(os.path.join(mountpoint, "memory", "meminfo")) as meminfo:
            waiting = next(int(line.split()[1]) for line in meminfo if line.startswith("TasksWaiting:"))
        if waiting <= BACKLOG:
            return
        time.sleep(0.05)


def submit(mountpoint: str, rng: random.Random, names: list[str], log) -> list[int]:
    """Submit `names` in one write on a read-write fd; log each with its pid (UNACKNOWLEDGED if the reply was lost)."""
    text = "".join(f"name={name} max_tokens={rng.choice(TOKENS)} prio={rng.randint(0, 9)}\n" for name in names)
    fd = os.open(os.path.join(mountpoint, "ctl", "submit"), os.O_RDWR)
    try:
        os.write(fd, text.encode())
        try:
            pids = os.read(fd, 65536).split()
        except OSError:
            pids = []
    finally:
        close_quietly(fd)
    replied = [p.decode() for p in pids] if len(pids) == len(names) else [UNACKNOWLEDGED] * len(names)
    log.write("".join(f"submit {name} {pid}\n" for name, pid in zip(names, replied)))
    return [int(p) for p in replied if p != UNACKNOWLEDGED]


def command(path: str, text: str, record: str, log) -> None:
    """Write `text` to a command file; log `record` once the write returned."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
        log.write(record + "\n")
    finally:
        close_quietly(fd)


def close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:  # the daemon died after the write: what the write did is logged already
        pass


# -- what was acknowledged, and what the daemon kept -------------------------------------------------------------

@attrs.define
class Acknowledged:
    """The writes the writers' logs hold: submits (name -> pid or UNACKNOWLEDGED), kills, prios."""

    submits: dict[str, str] = attrs.Factory(dict)
    kills: set[int] = attrs.Factory(set)
    prios: set[tuple[int, int]] = attrs.Factory(set)
    errors: collections.Counter = attrs.Factory(collections.Counter)

    def add(self, line: str) -> None:
        what, *rest = line.split()
        if what == "submit":
            self.submits[rest[0]] = rest[1]
        elif what == "kill":
            self.kills.add(int(rest[0]))
        elif what == "prio":
            self.prios.add((int(rest[0]), int(rest[1])))
        else:
            self.errors[rest[0]] += 1

    def count(self) -> int:
        return len(self.submits) + len(self.kills) + len(self.prios)


def acknowledged(logs: dict[str, int]) -> Acknowledged:
    """The records of each log up to its offset (its size at the kill): whole lines only."""
    found = Acknowledged()
    for path, size in logs.items():
        with open(path) as file:
            text = file.read(size)
        for line in text[:text.rfind("\n") + 1].splitlines():
            found.add(line)
    return found


@attrs.define
class Kept:
    """What the trace archive holds: name -> pid of each submit, pids ended killed, (pid, prio) set; seqs."""

    submits: dict[str, int] = attrs.Factory(dict)
    killed: set[int] = attrs.Factory(set)
    prios: set[tuple[int, int]] = attrs.Factory(set)
    pids: collections.Counter = attrs.Factory(collections.Counter)
    seqs: list[int] = attrs.Factory(list)

    def add(self, row: bytes) -> None:
        seq, _, kind, pid, rest = row.split(b",", 4)
        self.seqs.append(int(seq))
        if kind == b"submit":
            self.submits[re.search(rb'"name=(\S+)', rest).group(1).decode()] = int(pid)
            self.pids[int(pid)] += 1
        elif kind == b"exit" and b'"killed' in rest:
            self.killed.add(int(pid))
        elif kind == b"prio":
            self.prios.add((int(pid), int(re.search(rb'"prio=(\d+)', rest).group(1))))


def kept(state_dir: str) -> Kept:
    """The trace archive's lines, but a last one a live daemon is writing."""
    found = Kept()
    for line in archive.lines(os.path.join(state_dir, "trace")):
        if line.endswith(b"\n"):
            found.add(line)
    return found


def losses(acked: Acknowledged, held: Kept) -> list[str]:
    """Each acknowledged write the archive does not show, each pid given twice, each gap or repeat of seq."""
    lost = [f"submit {name} (pid {pid}) missing or with another pid ({held.submits.get(name)})"
            for name, pid in acked.submits.items()
            if name not in held.submits or pid not in (UNACKNOWLEDGED, str(held.submits[name]))]
    lost += [f"kill {pid} acknowledged, the task did not end killed" for pid in acked.kills - held.killed]
    lost += [f"prio {pid} {prio} acknowledged, no such prio line" for pid, prio in acked.prios - held.prios]
    lost += [f"pid {pid} given {times} times" for pid, times in held.pids.items() if times > 1]
    if held.seqs != list(range(1, len(held.seqs) + 1)):
        lost.append(f"the archive's seqs are not 1..{len(held.seqs)} (a line missing or twice)")
    return lost


def behind(held: Kept, trace_seq: int) -> list[str]:
    """The archive read past `trace_seq`, the daemon's trace seq read after it: the restarted daemon's journal
    lacks rows whose lines the archive kept (in compressed files, which a start cannot cut), so new lines at
    those seqs are skipped and the archive still shows the lost rows."""
    last = held.seqs[-1] if held.seqs else 0
    return [f"the archive's last seq {last} is past the daemon's trace seq {trace_seq}"] if last > trace_seq else []


LOGGED_PROBLEMS = ("InvariantError", "Traceback", "ahead of the journal")  # the last: a start found rows lost


def logged_problems(text: str) -> list[str]:
    """The lines of the daemon's log `text` that show a broken invariant, a crash, or the archive found ahead
    of the journal at a start (acknowledged rows gone from the journal: archive.py catch_up)."""
    return [line.strip() for line in text.splitlines() if any(mark in line for mark in LOGGED_PROBLEMS)]


# -- the daemon: killed at random, started again, checked ---------------------------------------------------------

@attrs.define
class Tally:
    """What a run did and found."""

    rounds: int = 0
    ends: collections.Counter = attrs.Factory(collections.Counter)  # kill9, term, aimed (and where it hit)
    checked: int = 0  # acknowledged writes checked at the last check
    problems: list[str] = attrs.Factory(list)
    errors: collections.Counter = attrs.Factory(collections.Counter)

    def line(self) -> str:
        return (f"rounds {self.rounds}  ends {dict(self.ends)}  acknowledged writes checked {self.checked}  "
                f"writers' failed writes {dict(self.errors)}  problems {len(self.problems)}")


class Chaos:
    """One daemon in `tmp` under `writers` writer processes, ended at random (`seed`) and checked each round."""

    def __init__(self, tmp: str, seed: int, writers: int, verify_every: int):
        self.rng, self.tally, self.verify_every = random.Random(seed), Tally(), verify_every
        self.daemon = Daemon(os.path.join(tmp, "ai"), os.path.join(tmp, "state"), CONFIG)
        self.logs = [os.path.join(tmp, f"w{i}") for i in range(writers)]
        self.seeds = [seed * 1000 + i for i in range(writers)]
        self.context = multiprocessing.get_context("fork")  # the writers need no imports of their own
        self.stop = self.context.Event()
        self.procs: list = []
        self.log_read = 0  # how much of daemon.log `healthy` has read

    def __enter__(self) -> "Chaos":
        self.daemon.start()
        for log, seed in zip(self.logs, self.seeds):
            open(log, "a").close()
            proc = self.context.Process(target=write_forever, args=(self.daemon.mountpoint, log, seed, self.stop))
            proc.start()
            self.procs.append(proc)
        return self

    def __exit__(self, *exc) -> None:
        self.stop_writers()
        self.daemon.stop()

    def stop_writers(self) -> None:
        """Tell the writers to stop and wait for each (killed if it has not ended in 30 s)."""
        self.stop.set()
        for proc in self.procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def round(self) -> None:
        """Wait a random while, end the daemon, start it again, check what was acknowledged until it ended."""
        time.sleep(self.rng.uniform(0.3, 2.5))
        how = self.rng.choices(["kill9", "term", "aimed"], [6, 2, 2])[0]
        {"kill9": self.daemon.kill9, "term": self.terminate, "aimed": self.aimed}[how]()
        self.tally.ends[how] += 1
        at_end = {log: os.path.getsize(log) for log in self.logs}
        self.daemon.start(timeout=60)
        self.tally.rounds += 1
        self.check(at_end, verify=self.tally.rounds % self.verify_every == 0)

    def terminate(self) -> None:
        self.daemon.proc.send_signal(signal.SIGTERM)
        self.daemon.proc.wait(60)

    def aimed(self) -> None:
        """kill -9 as soon as a temp file shows in snapshots/ (a snapshot being written: compaction follows) or
        trace/ (a full file being compressed), or after 5 s."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (hit := self.writing()):
            time.sleep(0.01)
        self.daemon.kill9()
        self.tally.ends[f"aimed-hit-{hit}" if hit else "aimed-missed"] += 1

    def writing(self) -> str:
        """The folder of STATE_DIR in which a temp file is being written, or ''."""
        for folder in ("snapshots", "trace"):
            if any(name.endswith(".tmp") for name in listing(os.path.join(self.daemon.state_dir, folder))):
                return folder
        return ""

    def check(self, logs: dict[str, int], verify: bool) -> None:
        """Every write acknowledged in `logs` (path -> bytes) against the archive; health, invariants; with
        `verify`, `replay --verify` too (the slowest check: seconds, more as the journal and archive grow)."""
        acked, held = acknowledged(logs), kept(self.daemon.state_dir)
        problems = (losses(acked, held) + behind(held, self.trace_seq()) + self.healthy()
                    + (self.verified() if verify else []))
        self.tally.checked, self.tally.errors = acked.count(), acked.errors
        self.tally.problems += [f"round {self.tally.rounds}: {problem}" for problem in problems]

    def verified(self) -> list[str]:
        done = subprocess.run(APEINXFS + ["replay", "--verify", self.daemon.state_dir], capture_output=True, text=True)
        return [] if done.returncode == 0 else [f"replay --verify exited {done.returncode}: {done.stdout[-500:]}"]

    def healthy(self) -> list[str]:
        with open(self.daemon.path("health")) as file:
            bugs = [line.strip() for line in file if line.startswith("Bug:")]
        with open(os.path.join(self.daemon.state_dir, "daemon.log"), "rb") as file:
            file.seek(self.log_read)
            data = file.read()
        self.log_read += len(data)
        return bugs + logged_problems(data.decode(errors="replace"))[:3]

    def trace_seq(self) -> int:
        """The daemon's trace seq now: the seq of the last line of trace/events (0 if it keeps none)."""
        with open(self.daemon.path("trace", "events"), "rb") as file:
            last = file.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
        return int(last.split(b",", 1)[0]) if last[:1].isdigit() else 0

    def finish(self) -> None:
        """Stop the writers, stop the daemon cleanly, start it again, and check every write acknowledged."""
        self.stop_writers()
        self.daemon.stop()
        self.daemon.start(timeout=60)
        self.check({log: os.path.getsize(log) for log in self.logs}, verify=True)


def listing(directory: str) -> list[str]:
    try:
        return os.listdir(directory)
    except FileNotFoundError:
        return []


def run(tmp: str, seed: int, rounds: int, writers: int, verify_every: int, out=sys.stdout) -> Tally:
    """`rounds` rounds of Chaos (`replay --verify` every `verify_every`), then the final check; a line per
    round to `out`."""
    with Chaos(tmp, seed, writers, verify_every) as chaos:
        for _ in range(rounds):
            chaos.round()
            print(chaos.tally.line(), file=out, flush=True)
        chaos.finish()
    return chaos.tally
