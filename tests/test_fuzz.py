"""Fuzz tier: hypothesis over every writable file, at the nodes tier and on a real mount.

Each example writes one input (bytes, bad UTF-8, lone surrogates, non-ASCII digits, huge
numbers, deep JSON, lines over the limit, the three submit forms, each file's own
grammar), split into a stream of writes, to one writable file. Every write either succeeds
or fails with an errno of the table in docs/apeinxfs.5.md (ERRORS) and says why (`error:`
reply, or a `reject` line in the trace); then the same descriptor takes a good line; the
daemon stays up and every pid it acknowledged still exists. `World` is what each tier
provides: Operations called directly (many examples), or os.open/os.write on a live mount
(a bounded number). bench/bench_fuzz.py runs the same examples and counts them per second.
"""
import csv
import errno
import io
import itertools
import json
import os
import re
import types
from collections import Counter

import pyfuse3
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from apeinxfs.fs import Operations
from apeinxfs.kernel.sampling import KEYS as SAMPLING_KEYS
from apeinxfs.nodes.base import Command, Dir, Setting
from apeinxfs.nodes.tree import Tree
from daemon import Daemon
from test_bad_input import (HUGE, JSON_LINE, JUNK, LIVE_TASK, NUMBER, PID, QUOTED, SLOW_CONFIG, SUBMIT_TEXT, TASK_COMMAND,
                            VALID, WORD, lines_of)
from test_journal_runtime import open_runtime

ALLOWED = {errno.EINVAL, errno.ENOENT, errno.EACCES, errno.EDQUOT, errno.EEXIST, errno.ENOSPC, errno.EBUSY, errno.E2BIG}
CONFIG = SLOW_CONFIG + '[[tenants]]\nname = "default"\n[[tenants]]\nname = "fz"\n'  # fz: whose files are fuzzed
CHECKS = dict(deadline=None, suppress_health_check=list(HealthCheck))


# -- inputs -------------------------------------------------------------------------------------------

def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` as the stream of writes that cutting it at `cuts` gives (partial lines included)."""
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a] or [data]


def pieces(data_strategy):
    """A strategy of inputs as streams of one to four writes."""
    return data_strategy.flatmap(lambda data: st.lists(st.integers(0, 1 << 30), max_size=3).map(
        lambda cuts: split(data, cuts)))


VALUE = st.one_of(NUMBER, WORD, QUOTED, st.sampled_from(["max", "-", "*", "1,2", "0,4294967296", "30s", "1d", "sim"]))
NON_ASCII_DIGITS = st.text(st.characters(categories=["Nd"], min_codepoint=0x80), min_size=1, max_size=6)
HUGE_NUMBER = st.integers(13, 6000).map(lambda digits: "9" * digits)
SURROGATE = st.integers(0xD800, 0xDFFF).map(lambda code: f"\\u{code:04x}")
ODD_NUMBERS = st.one_of(NON_ASCII_DIGITS, HUGE_NUMBER)
SUBMIT_EXTRA = st.one_of(
    st.builds('{{"name": "s{}", "max_tokens": 5, "prompt": "{}"}}'.format, st.integers(0, 9), SURROGATE),
    st.builds('{{"name": "{}", "max_tokens": 5}}'.format, SURROGATE),
    st.builds('{{"name": "n", "max_tokens": {}, "prio": {}}}'.format, HUGE_NUMBER, st.integers(0, 9)),
    st.builds("{} {} {}".format, WORD, ODD_NUMBERS, ODD_NUMBERS),
    st.builds("name=n max_tokens={} deadline={}".format, ODD_NUMBERS, ODD_NUMBERS),
    st.integers(500, 50_000).map(lambda depth: '{"name": "d", "prompt": ' + "{" * depth + "}" * depth + "}"),
    st.builds("name=n {}={}".format, st.sampled_from(SAMPLING_KEYS),
              st.one_of(VALUE, ODD_NUMBERS, st.sampled_from(["1e999", "nan", "-0", "a|", "|", "0.5"]))),
    st.builds('{{"name": "n", "{}": {}}}'.format, st.sampled_from(SAMPLING_KEYS),
              st.one_of(HUGE_NUMBER, st.sampled_from(["NaN", "-1e999", "[]", "[1]", "{}", "true", '"x"', "0.5"]))),
)


def words(*parts) -> st.SearchStrategy:
    """Lines of 1..5 words, each from one of `parts`."""
    return st.lists(st.one_of(*parts), min_size=1, max_size=5).map(" ".join)


def pairs_of(keys: list[str]) -> st.SearchStrategy:
    return st.builds("{}={}".format, st.one_of(st.sampled_from(keys), WORD), st.one_of(VALUE, ODD_NUMBERS))


def setting_lines(keys: list[str]) -> st.SearchStrategy:
    return st.builds("{} {}".format, st.one_of(st.sampled_from(keys), WORD), st.one_of(VALUE, ODD_NUMBERS))


NAME = st.one_of(st.sampled_from(["fz", "default", "t1", "", "a,b", "x/y", "fz2"]), WORD)
TENANT_LINE = words(st.sampled_from(["add", "remove", "ADD"]), NAME,
                    pairs_of(["weight", "uids", "gids", "viewer_uids", "viewer_gids"]))
MODEL_LINE = words(st.sampled_from(["add", "remove"]), st.sampled_from(["fzm", "m1", "x y"]), WORD,
                   pairs_of(["driver", "context", "layers", "kv_heads", "head_dim", "dtype", "decode_step_ms"]),
                   st.sampled_from(["driver=sim", "driver=nope", "driver=", "context=0"])).filter(
    lambda line: not re.search(r"\bsim\b", line.replace("driver=sim", "")))  # never `remove sim`: the tests need it
RULE_LINE = words(st.sampled_from(["deny", "allow", "limit", "DENY"]),
                  st.builds("{}{}{}".format, st.sampled_from(["tenant", "model", "tokens", "prio", "time", "uid",
                                                              "max_tokens", "max_prio", "max_temperature", "x", ""]),
                            st.sampled_from(["=", "!=", "<", ">=", ""]), st.one_of(VALUE, ODD_NUMBERS)))
GOOD_SETTING = {"members": b"viewer_uids -\n", "quota": b"tasks max\n", "budget": b"tokens max\n",
                "sandbox": b"max_tokens max\n"}
GROUP_KEYS = {"members": ["uids", "gids", "viewer_uids", "viewer_gids"],
              "quota": ["tokens", "window", "tasks", "kv_pages", "gpu"],
              "budget": ["tokens", "window", "overdraw"], "sandbox": ["max_tokens", "max_wall", "models"]}


def inputs(own_lines) -> st.SearchStrategy:
    """A file's inputs: lines of its own grammar, junk, odd numbers (huge lines: HUGE_CASES)."""
    return pieces(st.one_of(lines_of(own_lines), lines_of(ODD_NUMBERS), JUNK))


# file (PID: the live task, NAME: the tenant fz) -> (its inputs, the good line that must work afterwards)
TARGETS = {
    "/ctl/submit": (pieces(st.one_of(lines_of(SUBMIT_TEXT), lines_of(VALID), lines_of(SUBMIT_EXTRA),
                                     lines_of(JSON_LINE), JUNK)), lambda world: b"fz-ok 1 5\n"),
    "/ctl/kill": (inputs(PID), lambda world: b"%d\n" % world.submit(b"victim 1 5\n")),
    "/ctl/tenants": (inputs(TENANT_LINE), lambda world: b"add fzt%d\n" % next(world.serial)),
    "/ctl/models": (inputs(MODEL_LINE), lambda world: b"add fzm%d driver=sim\n" % next(world.serial)),
    "/ctl/policy": (inputs(RULE_LINE), lambda world: b"allow tenant=default\n"),
    "/sched/policy": (inputs(st.one_of(st.sampled_from(["fair", "vtc", "fcfs", "greedy"]), WORD)),
                      lambda world: b"fair\n"),
    "/tasks/PID/ctl": (inputs(TASK_COMMAND), lambda world: b"prio 5\n"),
    "/tenants/NAME/weight": (inputs(st.one_of(NUMBER, WORD)), lambda world: b"100\n"),
    **{f"/tenants/NAME/{group}": (inputs(setting_lines(keys)), lambda world, group=group: GOOD_SETTING[group])
       for group, keys in GROUP_KEYS.items()},
}


CASES = st.sampled_from(sorted(TARGETS)).flatmap(lambda target: st.tuples(st.just(target), TARGETS[target][0]))
HUGE_CASES = st.tuples(st.sampled_from(sorted(TARGETS)), pieces(HUGE))  # 1-3 MiB each: fewer examples
KNOWN_CASES = [  # the inputs of issue 14, tried first at both tiers
    ("/ctl/submit", [b'{"name":"x","max_tokens":5,"prompt":"\\ud800"}\n']),
    ("/ctl/submit", [b" " * (3 << 20) + b"job 5 5\n"]),  # over the limit in one write(2): a short count, then the rest
    ("/ctl/submit", [b"x 5 5 " * 200_000, b"x 5 5\n"]),  # over the limit across writes
    ("/ctl/submit", ["x \u0661\u0662 5\n".encode(), b"name=x max_tokens=" + b"9" * 5000 + b"\n"]),
    ("/ctl/submit", [b'{"name": "d", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"]),
    ("/ctl/kill", ["\u0661\u0662\n".encode()]),
    ("/tenants/NAME/quota", ["tasks \uff11\n".encode()]),
]


def known(test):
    """`test` with KNOWN_CASES as explicit examples."""
    for case in KNOWN_CASES:
        test = example(case=case)(test)
    return test



def writable_paths(node, path: str = "") -> set[str]:
    """Every file of the tree that takes writes, with pids and tenant names as PID and NAME."""
    if isinstance(node, (Command, Setting)):
        return {re.sub(r"^/tenants/[^/]+/", "/tenants/NAME/", re.sub(r"^/tasks/\d+/", "/tasks/PID/", path))}
    if not isinstance(node, Dir):
        return set()
    return set().union(*[writable_paths(child, f"{path}/{name}") for name, child in node.entries()])


# -- one example, whatever the tier ------------------------------------------------------------------

# (file, data) written with O_TRUNC after an input to a target, so that the next input's good line works
REPAIRS = {
    "/ctl/policy": [("/ctl/policy", b"")],  # nothing written: no rules (a deny rule would refuse all)
    "/ctl/tenants": [("/ctl/tenants", b"add fz\n"), ("/tenants/fz/members", b"uids -\ngids -\n")],
    "/tenants/NAME/members": [("/tenants/fz/members", b"uids -\ngids -\n")],  # root a member: fz's quota
}


def fuzz_one(world, target: str, writes: list[bytes]) -> None:
    """Write the input as a stream of writes, then a blank and a good line on the same descriptor."""
    world.repair(target)
    fd = world.open(world.resolve(target))
    try:
        for data in writes:
            write_and_check(world, fd, target, data)
        assert world.write(fd, b"\n") in ALLOWED | {None}
        good = TARGETS[target][1](world)
        code = world.write(fd, good)
        assert code is None or (target == "/tasks/PID/ctl" and code == errno.EBUSY and not world.live()), (
            f"{good!r} after {writes!r}: {errno.errorcode.get(code, code)}")
    finally:
        world.close(fd)
    check_state(world)


def write_and_check(world, fd, target: str, data: bytes) -> None:
    """One write: success or an errno of the table with a reason; a submit's pids are acknowledged."""
    code = world.write(fd, data)
    reply = world.reply(fd)
    event(f"{target}: {errno.errorcode.get(code, 'ok')}")
    world.table[target, code] += 1
    assert code is None or code in ALLOWED, f"{errno.errorcode.get(code, code)} for {data[:200]!r}"
    if code is not None:
        assert world.said_why(reply), f"no reason for {errno.errorcode[code]} on {data[:200]!r}"
    elif target == "/ctl/submit":
        world.acknowledged.update(int(line) for line in reply.splitlines() if line.isdigit())


def check_state(world) -> None:
    """After each input: the daemon is up and every pid it acknowledged exists. The kernel's own
    consistency checks (check_invariants(), from the kernel-trust issue) belong here too."""
    assert world.up()
    assert not world.missing(world.acknowledged), "acknowledged pids gone"


class World:
    """What both tiers share: the tally, the acknowledged pids, the live task, the fix-ups."""

    def __init__(self):
        self.table: Counter = Counter()
        self.acknowledged: set[int] = set()
        self.serial = itertools.count(1)
        self.last_target = None
        self.live_pid = self.submit(LIVE_TASK)

    def submit(self, line: bytes) -> int:
        fd = self.open("/ctl/submit")
        assert self.write(fd, line) is None
        pid = int(self.reply(fd))
        self.close(fd)
        self.acknowledged.add(pid)
        return pid

    def resolve(self, target: str) -> str:
        return target.replace("PID", str(self.live_pid)).replace("NAME", "fz")

    def repair(self, target: str) -> None:
        """Undo what the last input may have done that would make the good line of this one fail:
        a killed live task, a deny rule, tenant fz removed or root made its member."""
        if not self.live():
            self.live_pid = self.submit(LIVE_TASK)
        for path, data in REPAIRS.get(self.last_target, []):
            fd = self.open(path, os.O_TRUNC)
            self.write(fd, data)
            self.close(fd)
        self.last_target = target

    def said_why(self, reply: bytes | None) -> bool:
        """Whether the refusal of the last write says why: an `error: REASON` reply."""
        return reply is not None and reply.startswith(b"error: ") and len(reply) > len(b"error: \n")


# -- tier 2: Operations called directly ------------------------------------------------------------------

def admin_ctx():
    return types.SimpleNamespace(uid=os.getuid(), gid=os.getgid(), pid=os.getpid(), umask=0o022)


class NodesWorld(World):
    """Operations over a runtime with no engine running: handles, not descriptors."""

    def __init__(self, ops: Operations):
        self.ops = ops
        super().__init__()

    def call(self, method, *args):
        """Run one request to its end (none of these ever waits, so no trio loop is needed: a
        trio.run per request would take most of the time); its result, or its FUSEError."""
        request = method(*args)
        try:
            request.send(None)
        except StopIteration as done:
            return done.value
        except pyfuse3.FUSEError as exc:
            return exc
        request.close()
        raise AssertionError(f"{method.__name__} waited")

    def inode(self, path: str) -> int:
        inode = 1
        for name in filter(None, path.split("/")):
            inode = self.call(self.ops.lookup, inode, name.encode(), admin_ctx()).st_ino
        return inode

    def open(self, path: str, flags: int = 0) -> int:
        inode = self.inode(path)
        readable = self.ops.tree.node(inode).mode & 0o444
        return self.call(self.ops.open, inode, (os.O_RDWR if readable else os.O_WRONLY) | flags, admin_ctx()).fh

    def write(self, fh, data: bytes):
        done = self.call(self.ops.write, fh, 0, data)
        return done.errno if isinstance(done, pyfuse3.FUSEError) else None

    def reply(self, fh) -> bytes:
        return self.call(self.ops.read, fh, 0, 1 << 16)

    def close(self, fh) -> None:
        self.call(self.ops.release, fh)

    def live(self) -> bool:
        return self.ops.rt.kernel.tasks[self.live_pid].exit is None

    def up(self) -> bool:
        """No daemon at this tier: every handle was released (none left behind by a refusal)."""
        return not self.ops.handles

    def missing(self, pids: set[int]) -> set[int]:
        return pids - self.ops.rt.kernel.tasks.keys()


@pytest.fixture(scope="module")
def nodes_world(tmp_path_factory):
    with open_runtime(tmp_path_factory.mktemp("fuzz-nodes"), CONFIG) as runtime:
        yield NodesWorld(Operations(Tree(runtime)))


def test_targets_are_every_writable_file(nodes_world):
    """The fuzz covers every file of the tree that takes writes, and nothing else."""
    assert writable_paths(nodes_world.ops.tree.root) == set(TARGETS)


@settings(max_examples=1500, **CHECKS)
@given(case=CASES)
@known
def test_nodes_tier_fuzz(nodes_world, case):
    """Many inputs to every writable file through Operations: errno from the table, a reason, a usable handle."""
    fuzz_one(nodes_world, *case)


@settings(max_examples=60, **CHECKS)
@given(case=HUGE_CASES)
def test_nodes_tier_huge_lines(nodes_world, case):
    """Lines around and over the limit, to every writable file, in one or several writes."""
    fuzz_one(nodes_world, *case)


# -- tier 3: a real mount ----------------------------------------------------------------------------------

class MountWorld(World):
    """os.open, os.write and os.read on a live mount; reasons of write-only files from the trace."""

    def __init__(self, daemon: Daemon):
        self.daemon, self.readable = daemon, {}
        self.trace = os.open(daemon.path("trace", "events"), os.O_RDONLY)
        self.header, self.trace_at = os.pread(self.trace, 1 << 16, 0).split(b"\n", 1)[0].decode(), 0
        super().__init__()

    def open(self, path: str, flags: int = 0) -> int:
        full = self.daemon.mountpoint + path
        readable = bool(os.stat(full).st_mode & 0o444)
        fd = os.open(full, (os.O_RDWR if readable else os.O_WRONLY) | flags)
        self.readable[fd] = readable
        return fd

    def write(self, fd: int, data: bytes):
        """write(2) until all is written, as cat and Python's files do; the errno that stopped it."""
        self.trace_at = os.fstat(self.trace).st_size
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:
            return exc.errno
        return None

    def reply(self, fd: int) -> bytes | None:
        return os.read(fd, 1 << 16) if self.readable[fd] else None

    def said_why(self, reply: bytes | None) -> bool:
        """The reply if the file is readable, else a `reject` line with a reason in the trace."""
        if reply is not None:
            return super().said_why(reply)
        rows = csv.DictReader(io.StringIO(self.header + "\n" + self.new_trace()))
        return any(row["type"] == "reject" and row["detail"] for row in rows)

    def new_trace(self) -> str:
        data = b""
        while chunk := os.pread(self.trace, 1 << 20, self.trace_at + len(data)):
            data += chunk
        return data.decode()

    def close(self, fd: int) -> None:
        self.readable.pop(fd)
        os.close(fd)

    def live(self) -> bool:
        return self.daemon.status(self.live_pid)["Exit"] == "-"

    def up(self) -> bool:
        return self.daemon.proc.poll() is None

    def missing(self, pids: set[int]) -> set[int]:
        return pids - {int(name) for name in os.listdir(self.daemon.path("tasks"))}


@pytest.fixture(scope="module")
def mount_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-mount")
    with Daemon(root / "ai", root / "state", config_text=CONFIG) as daemon:
        world = MountWorld(daemon)
        yield world
        os.close(world.trace)


@pytest.mark.mount
@settings(max_examples=200, **CHECKS)
@given(case=CASES)
@known
def test_mount_tier_fuzz(mount_world, case):
    """A bounded number of inputs through real descriptors: the same checks, and the daemon stays up."""
    fuzz_one(mount_world, *case)


@pytest.mark.mount
@settings(max_examples=20, **CHECKS)
@given(case=HUGE_CASES)
def test_mount_tier_huge_lines(mount_world, case):
    """Lines around and over the limit through real descriptors: write(2) may return a short count,
    and then the rest is refused, as cat or a Python file would see it."""
    fuzz_one(mount_world, *case)
