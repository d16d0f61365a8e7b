"""Acceptance: random and malformed writes to every writable file (docs/apeinxfs.5.md, ERRORS).

Hypothesis writes thousands of lines (binary, invalid UTF-8, huge, unterminated,
unicode, control characters, key=value and JSON with wrong types, bad seed forms, pids
that do not exist) to /ctl/submit, /ctl/kill and /tasks/PID/ctl of a live and an exited
task, each with os.open/os.write/os.close. Every write either succeeds (and then each
non-blank submit line is exactly one new task) or fails with an errno docs/apeinxfs.5.md names;
close never fails: an unterminated last line runs at the last close, and the trace alone
says whether it was refused. Every refusal leaves one `reject` line in the trace (its per-uid rate lifted); the
daemon never dies. Not covered:
permissions (EACCES/EPERM) and quotas (EDQUOT), which need other users and tenants.
"""
import errno
import json
import os
import re

import attrs
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from daemon import Daemon, poll_until

pytestmark = pytest.mark.mount

ALLOWED = {errno.EINVAL, errno.ENOENT, errno.ENOSPC, errno.EBUSY, errno.E2BIG}  # E2BIG: over limits.write_lines
MiB = 1 << 20
SLOW_CONFIG = """
[gpus]
simulated = 2
slots = 8
kv_mib = 512
[[models]]
name = "sim"
context = 32768
[models.options]
decode_step_ms = 200
[limits]
reject_lines = 1000000  # every refusal's reject line is counted here (the default limits each uid's rate)
"""
LIVE_TASK = b"live 3000 5\n"  # 8 KV pages per GPU: a context over 4096 tokens is ENOSPC
CHECKS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- what one write did -----------------------------------------------------------------

@attrs.frozen
class Outcome:
    """How os.write and os.close of one attempt ended (errno None: success)."""

    data: bytes = attrs.field(repr=lambda data: f"{data[:120]!r}... ({len(data)} bytes)")
    written: int
    write_errno: int | None
    close_errno: int | None
    reply: bytes

    @property
    def summary(self) -> str:
        """For hypothesis' statistics: how the write and the close ended."""
        short = " short" if self.written < len(self.data) and self.write_errno is None else ""
        names = [errno.errorcode[code] if code else "ok" for code in (self.write_errno, self.close_errno)]
        return f"write {names[0]}{short}, close {names[1]}"

    @property
    def refusals(self) -> int:
        """A failed or short write is one refusal (the kernel turns a later chunk's error into a short count)."""
        return int(self.write_errno is not None or self.written < len(self.data))

    @property
    def tail(self) -> bytes:
        """What write(2) accepted after its last newline: run (or refused) at the last close, unless
        a later piece of the write was refused (a short count), which dropped it from the buffer."""
        return b"" if self.refusals else self.data[:self.written].split(b"\n")[-1]

    def complete_lines(self) -> list[bytes]:
        """Lines ended by a newline inside what write(2) accepted."""
        return self.data[:self.written].split(b"\n")[:-1]

    def lines_run(self, tail_refused: bool) -> int:
        """Non-blank lines the daemon ran: complete ones, and the tail at close unless it was refused."""
        ran = self.complete_lines() + ([] if tail_refused else [self.tail])
        return sum(1 for line in ran if line.decode(errors="replace").strip())


def attempt(path: str, data: bytes, rw: bool) -> Outcome:
    """os.open, os.write (once), an optional read of the reply, os.close."""
    fd = os.open(path, os.O_RDWR if rw else os.O_WRONLY)
    written, write_errno, close_errno, reply = 0, None, None, b""
    try:
        written = os.write(fd, data)
    except OSError as exc:
        write_errno = exc.errno
    if rw:
        reply = os.read(fd, 1 << 16)
    try:
        os.close(fd)
    except OSError as exc:
        close_errno = exc.errno
    return Outcome(data, written, write_errno, close_errno, reply)


# -- the daemon under test, and what it has accepted ---------------------------------------

class Probe:
    """The module's daemon, a cursor on its trace, and the tally of submits and refusals."""

    def __init__(self, daemon: Daemon):
        self.daemon = daemon
        self.trace, self.offset = os.open(daemon.path("trace", "events"), os.O_RDONLY), 0
        self.accepted = self.refused = 0
        self.live_pid = self.submit(LIVE_TASK)
        self.exited_pid = self.submit(b"gone 3000 5\n")
        assert attempt(self.ctl(self.exited_pid), b"kill\n", rw=False).refusals == 0

    def ctl(self, pid: int) -> str:
        return self.daemon.path("tasks", str(pid), "ctl")

    def submit(self, line: bytes) -> int:
        outcome = attempt(self.daemon.path("ctl", "submit"), line, rw=True)
        self.record(outcome)
        assert outcome.write_errno is None, outcome
        return int(outcome.reply)

    def path_of(self, target: str) -> str:
        """The file a target names; a killed live task is replaced first."""
        if target == "live":
            with open(self.daemon.path("tasks", str(self.live_pid), "status")) as status:
                if "Exit:\t-\n" not in status.read():
                    self.live_pid = self.submit(LIVE_TASK)
            return self.ctl(self.live_pid)
        return self.ctl(self.exited_pid) if target == "exited" else self.daemon.path("ctl", target)

    def new_trace_types(self) -> list[str]:
        """The `type` column of the trace lines written since the last call."""
        data = b""
        while chunk := os.pread(self.trace, 1 << 20, self.offset + len(data)):
            data += chunk
        self.offset += len(data)
        return [line.split(b",", 3)[2].decode() for line in data.splitlines()]

    def record(self, outcome: Outcome) -> tuple[int, int]:
        """Count the submit and reject lines the attempt left in the trace."""
        types = self.new_trace_types()
        submits, rejects = types.count("submit"), types.count("reject")
        self.accepted, self.refused = self.accepted + submits, self.refused + rejects
        return submits, rejects


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """One daemon for the whole module (slow steps, so live tasks stay live); unmounted at the end."""
    root = tmp_path_factory.mktemp("bad-input")
    with Daemon(root / "ai", root / "state", config_text=SLOW_CONFIG) as daemon:
        probe = Probe(daemon)
        yield probe
        os.close(probe.trace)


def check(probe: Probe, target: str, data: bytes, rw: bool = False) -> int:
    """Write `data` to `target`; the outcome must be success or an errno the man page names, and fully accounted.
    Returns how many refusals (`reject` trace lines) it caused."""
    outcome = attempt(probe.path_of(target), data, rw)
    submits, rejects = probe.record(outcome)
    event(outcome.summary)
    code = outcome.write_errno
    assert code is None or code in ALLOWED, f"{errno.errorcode.get(code, code)} for {data[:200]!r}"
    assert outcome.close_errno is None, outcome
    tail_refusals = rejects - outcome.refusals
    assert tail_refusals in {0, int(bool(outcome.tail))}, f"{rejects} reject lines for {outcome}"
    assert submits == (outcome.lines_run(bool(tail_refusals)) if target == "submit" else 0), outcome
    if rw:
        check_reply(outcome)
    assert probe.daemon.proc.poll() is None, probe.daemon.log_tail()
    return rejects


def check_reply(outcome: Outcome) -> None:
    """On the same fd: a pid per non-blank line written, or `error: ...` after a refusal."""
    if outcome.write_errno is not None:
        assert outcome.reply.startswith(b"error: "), outcome.reply
    elif outcome.written == len(outcome.data):
        assert len(outcome.reply.split()) == sum(1 for line in outcome.complete_lines() if line.decode().strip())


# -- strategies -------------------------------------------------------------------------------

ENDS = st.sampled_from([b"\n", b"", b"\r\n", b"\n\n", b"\n\x00"])
WORD = st.text(st.characters(codec="utf-8", exclude_characters="\n"), max_size=12)
NUMBER = st.one_of(
    st.integers(-10**15, 10**15).map(str), st.integers(0, 12).map(str),
    st.floats().map(repr), WORD,
    st.sampled_from(["", "1e3", "0x10", "+5", "-0", "\u0663", "5 5", "1_000", "NaN", "inf", "99999999999999999999"]))
DURATION = st.one_of(NUMBER, st.sampled_from(["30", "30s", "500ms", "2m", "-1s", "0", "1.5h", "s", "10us", "31d"]))
KEYS = ["name", "max_tokens", "prio", "model", "tenant", "deadline", "prompt"]
ODD_KEYS = st.sampled_from(KEYS + ["Name", "max-tokens", "", "x", "deadline_us", "prio ", "name\t"])
QUOTED = st.one_of(
    st.builds(lambda body, close: '"' + body + close, st.text(max_size=20), st.sampled_from(['"', "", '"x', '\\"'])),
    st.sampled_from(['"\\q"', '"\\"', '"a\\nb"', '"\\\\"', '"tab\\t"', '""', '"a" b"']))

BINARY = st.binary(max_size=300)
INVALID_UTF8 = st.builds(lambda a, bad, b: a + bad + b, st.binary(max_size=20),
                         st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf"]),
                         st.binary(max_size=20))
UNICODE = st.text(max_size=120)
CONTROL = st.text(st.characters(categories=["Cc", "Cf", "Zl", "Zp"]), min_size=1, max_size=20)
SEED = st.lists(st.one_of(NUMBER, WORD), min_size=1, max_size=5).map(" ".join)
VALID_SEED = st.builds("{} {} {}".format, st.from_regex(r"[a-z][a-z0-9_.-]{0,9}", fullmatch=True),
                       st.integers(1, 60), st.integers(0, 9))
PAIRS = st.lists(st.builds("{}={}".format, ODD_KEYS, st.one_of(NUMBER, WORD, QUOTED, DURATION)),
                 min_size=1, max_size=6).map(" ".join)
JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)
JSON_OBJECT = st.dictionaries(ODD_KEYS, JSON_VALUE, max_size=6)
JSON_LINE = st.one_of(
    JSON_OBJECT.map(json.dumps), JSON_VALUE.map(json.dumps),
    JSON_OBJECT.map(json.dumps).map(lambda text: text[:len(text) // 2]),
    st.integers(1, 20000).map(lambda depth: '{"name": ' + "[" * depth + "]" * depth + "}"),
    st.builds(lambda name, tokens: json.dumps({"name": name, "max_tokens": tokens}),
              st.text(max_size=10), st.integers(-5, 200000)))
TOKENS = st.one_of(st.integers(1, 60), st.integers(1, 40000))
PROMPT = st.text(max_size=40)
VALID_PAIRS = st.builds(
    'name={} max_tokens={} prio={} model={} tenant={} deadline={} prompt="{}"'.format,
    st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True), TOKENS, st.integers(0, 9),
    st.sampled_from(["sim", "nope"]), st.sampled_from(["default", "acme"]),
    st.sampled_from(["30", "30s", "500ms", "2m", "1.5h", "1us"]),
    PROMPT.map(lambda text: text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")))
VALID_JSON = st.builds(lambda name, tokens, prio, prompt: json.dumps(
    {"name": name, "max_tokens": tokens, "prio": prio, "prompt": prompt}),
    st.from_regex(r"[a-z]{1,12}", fullmatch=True), TOKENS, st.integers(0, 9), PROMPT)
VALID = st.one_of(VALID_SEED, VALID_PAIRS, VALID_JSON)
SUBMIT_TEXT = st.one_of(SEED, PAIRS, JSON_LINE, UNICODE, CONTROL)
PID = st.one_of(st.integers(-3, 10**14).map(str), st.integers(1, 40).map(str), NUMBER)
TASK_COMMAND = st.one_of(
    st.builds("{} {}".format, st.sampled_from(["kill", "stop", "cont", "prio", "Kill", "nice"]), NUMBER),
    st.sampled_from(["kill", "stop", "cont", "prio", "stop cont", "", "prio 5", "prio 10", "prio -1"]), WORD)


def lines_of(text_strategy):
    """One to four lines from `text_strategy`, UTF-8, with a random ending (maybe none)."""
    lines = st.lists(text_strategy.map(str.encode), min_size=1, max_size=4)
    return st.builds(lambda parts, end: b"\n".join(parts) + end, lines, ENDS)


JUNK = st.one_of(BINARY, INVALID_UTF8, lines_of(st.one_of(UNICODE, CONTROL, WORD, NUMBER)))


def huge(piece: bytes, size: int, end: bytes) -> bytes:
    return (piece * (size // len(piece) + 1))[:size] + end


HUGE = st.one_of(
    st.builds(huge, st.binary(min_size=1, max_size=8), st.integers(MiB - 64, 3 * MiB), ENDS),
    st.builds(huge, st.sampled_from([b" ", b"a", b"x 1 5 ", b"k=v ", b"\xff", b"\xe2\x82\xac"]),
              st.integers(MiB - 64, 3 * MiB), ENDS),
    st.builds(lambda size, end: b'{"name": "big", "prompt": "' + b"w " * (size // 2) + b'"}' + end,
              st.integers(MiB - 64, MiB + 64), ENDS))


# -- the tests --------------------------------------------------------------------------------

@settings(max_examples=2500, **CHECKS)
@given(data=st.one_of(lines_of(SUBMIT_TEXT), lines_of(VALID), JUNK), rw=st.booleans())
def test_submit_refuses_malformed_lines(probe, data, rw):
    """Random submit writes either add one task per non-blank line or fail with an errno the man page names."""
    check(probe, "submit", data, rw)


@settings(max_examples=800, **CHECKS)
@given(data=st.one_of(lines_of(PID), JUNK))
def test_kill_refuses_bad_pids(probe, data):
    """Writes to /ctl/kill kill a live task or fail with EINVAL, ENOENT or EBUSY."""
    check(probe, "kill", data)


@settings(max_examples=1500, **CHECKS)
@given(target=st.sampled_from(["live", "exited"]), data=st.one_of(lines_of(TASK_COMMAND), JUNK))
def test_task_ctl_refuses_bad_commands(probe, target, data):
    """Writes to a live or an exited task's ctl act or fail with an errno the man page names (EBUSY once exited)."""
    refusals = check(probe, target, data)
    if target == "exited":
        assert refusals or not data.decode(errors="replace").strip(), "an exited task took a command"


@settings(max_examples=60, **CHECKS)
@given(data=HUGE)
def test_huge_lines_are_refused_whole(probe, data):
    """Lines over 1 MiB never become tasks piecemeal: short write or errno, nothing half-applied."""
    check(probe, "submit", data, rw=False)


def test_state_stays_consistent(probe):
    """After all of the above, /tasks and /metrics agree with what was accepted and refused."""
    daemon = probe.daemon
    tasks = os.listdir(daemon.path("tasks"))
    assert len(tasks) == probe.accepted
    with open(daemon.path("README")) as readme:
        assert "ctl/submit" in readme.read()
    assert probe.daemon.proc.poll() is None
    metrics = poll_metrics(daemon, probe)
    states = re.findall(r'^apeinx_tasks\{state="\w+"\} (\d+)$', metrics, re.M)
    assert sum(map(int, states)) == len(tasks)


def poll_metrics(daemon: Daemon, probe: Probe) -> str:
    """/metrics once it shows every submit and refusal (it is a snapshot up to 1 s old)."""
    wanted = [f"apeinx_submits_total {probe.accepted}\n", f"apeinx_rejected_writes_total {probe.refused}\n"]

    def metrics_if_current():
        with open(daemon.path("metrics")) as file:
            metrics = file.read()
        return metrics if all(line in metrics for line in wanted) else None
    return poll_until(metrics_if_current, 10, f"/metrics to show {wanted}")
