"""Tiers 1-2: the one error boundary (fs.py `guarded`, base.py CommandHandle.write) and setattr.

Parsers take ASCII digits only and refuse lone surrogates; a refused or failed write leaves
the descriptor empty and usable, applies none of its lines, and a line over the limit
refuses its whole write (and the rest a caller writes after a short count); a bug is EIO
with one log line, rate-limited per uid; chmod, chown and utime are EPERM, truncation to 0
is a no-op. Real-mount and fuzz checks: tests/test_fuzz.py.
"""
import errno
import logging
import os
import subprocess
import types

import pytest

from apeinxfs.kernel import grammar
from apeinxfs.kernel.errors import Invalid
from apeinxfs.kernel.tenant_config import Quota, set_in_group
from apeinxfs.nodes.base import LINE_MAX
from apeinxfs.nodes.buffers import WRITE_LINES
from apeinxfs.nodes.ctl import REFUSED_MAX
from test_fs_ops import ctx, fuse_errno, inode_of, open_path, ops  # noqa: F401  (ops: a fixture)

SURROGATE_LINE = b'{"name":"x","max_tokens":5,"prompt":"\\ud800"}\n'
GOOD = b"good 5 5\n"


def fields(*set_):
    """What pyfuse3 passes as `fields` to setattr: which attributes change."""
    names = ("mode", "uid", "gid", "size", "atime", "mtime", "ctime")
    return types.SimpleNamespace(**{f"update_{name}": name in set_ for name in names})


def attr(size=0):
    return types.SimpleNamespace(st_size=size, st_mode=0o777, st_uid=0, st_gid=0)


def names(ops) -> list[str]:
    return [task.spec.name for task in ops.rt.kernel.tasks.values()]


# -- tier 1: the parsers -------------------------------------------------------------------------

@pytest.mark.parametrize("line", ["x \u0661\u0662 5", "x 12 \u0665", "name=x max_tokens=\uff11\uff12",
                                  "x 5 5 \u0663\u0660s", "x 5 5 \u0663.5s"])
def test_submit_numbers_are_ascii_digits(line):
    """Arabic-Indic or full-width digits are not numbers, though Python's int() takes them."""
    with pytest.raises(Invalid):
        grammar.parse_submit(line)


def test_other_numbers_are_ascii_digits():
    """Pids, prio and tenant settings refuse non-ASCII digits too."""
    for parse in (lambda: grammar.parse_pid("\u0661\u0662"), lambda: grammar.parse_task_command("prio \u0665"),
                  lambda: set_in_group(Quota(), "tasks \u0661\u0662"), lambda: grammar.parse_duration_us("\u0663")):
        with pytest.raises(Invalid):
            parse()


@pytest.mark.parametrize("prompt", ['"\\ud800"', '"a\\udfffb"', '["\\udc00"]', '{"k": "\\ud800"}'])
def test_lone_surrogates_in_json_are_invalid(prompt):
    """A JSON escape that makes a lone surrogate anywhere is EINVAL with a reason, not a crash later."""
    with pytest.raises(Invalid, match="surrogate"):
        grammar.parse_submit('{"name": "x", "prompt": ' + prompt + "}")


def test_a_surrogate_pair_is_text():
    """An escaped pair is one character, and fine."""
    assert grammar.parse_submit('{"name": "x", "prompt": "\\ud83d\\ude00"}').prompt == "\U0001F600"


@pytest.mark.parametrize("depth", [50, 5000, 100_000])
def test_deep_json_is_invalid(depth):
    """Nesting past the recursion limit is EINVAL like any bad JSON."""
    with pytest.raises(Invalid):
        grammar.parse_submit('{"name": ' + "[" * depth + "]" * depth + "}")


# -- tier 2: writes through Operations ----------------------------------------------------------

async def test_lone_surrogate_then_a_good_line_on_the_same_fd(ops):
    """The surrogate line is EINVAL with its reason in the reply; the same fd then submits."""
    fh = await open_path(ops, "/ctl/submit", os.O_RDWR)
    assert await fuse_errno(lambda: ops.write(fh, 0, SURROGATE_LINE)) == errno.EINVAL
    assert (await ops.read(fh, 0, 4096)).startswith(b"error: lone surrogate")
    assert await ops.write(fh, 0, GOOD) == len(GOOD)
    assert (await ops.read(fh, 0, 4096)).strip().isdigit() and names(ops) == ["good"]


async def test_a_refusal_empties_the_buffer(ops):
    """A partial line written before a refused write is dropped with it: the next line starts afresh."""
    fh = await open_path(ops, "/ctl/submit", os.O_WRONLY)
    await ops.write(fh, 0, b"first 5")
    assert await fuse_errno(lambda: ops.write(fh, 0, b" x\n")) == errno.EINVAL
    assert await ops.write(fh, 0, GOOD) == len(GOOD)
    assert names(ops) == ["good"]


async def test_one_refused_line_applies_none(ops):
    """A write whose second line is refused applies neither."""
    fh = await open_path(ops, "/ctl/submit", os.O_RDWR)
    assert await fuse_errno(lambda: ops.write(fh, 0, b"a 5 5\nb x 5\nc 5 5\n")) == errno.EINVAL
    assert await ops.read(fh, 0, 4096) == b"error: line 2: TOKENS must be an integer, not 'x'\n"
    assert names(ops) == []


async def test_a_flood_of_junk_lines_stops_at_refused_max(ops):
    """Junk lines up to the write's line limit (limits.write_lines; a longer write is E2BIG unread) are checked
    only up to REFUSED_MAX refusals: a short reply, no task."""
    fh = await open_path(ops, "/ctl/submit", os.O_RDWR)
    junk = WRITE_LINES - 2
    assert await fuse_errno(lambda: ops.write(fh, 0, b"ok 5 5\n\n" + b"x\n" * junk)) == errno.EINVAL
    reply = (await ops.read(fh, 0, 1 << 16)).decode().splitlines()
    assert len(reply) == REFUSED_MAX + 1 and reply[0].startswith("error: line 3: ")
    assert reply[-1] == f"error: lines {REFUSED_MAX + 3}..{junk + 2}: not checked ({REFUSED_MAX} lines refused already)"
    assert names(ops) == []


async def test_an_over_long_tail_refuses_the_whole_write(ops):
    """Complete good lines followed by an unterminated line over the limit: nothing is applied."""
    fh = await open_path(ops, "/ctl/submit", os.O_WRONLY)
    assert await fuse_errno(lambda: ops.write(fh, 0, GOOD + b" " * (LINE_MAX + 1))) == errno.EINVAL
    assert names(ops) == []


async def test_the_rest_of_an_over_long_line_is_refused(ops):
    """After pieces of a line pass the limit, the rest (which starts with the refused piece, as after
    a short count) is refused too; a new line on the same fd then runs."""
    fh = await open_path(ops, "/ctl/submit", os.O_WRONLY)
    piece = b"x 5 5 " * (1 << 16)
    for _ in range(LINE_MAX // len(piece)):
        await ops.write(fh, 0, piece)
    assert await fuse_errno(lambda: ops.write(fh, 0, piece)) == errno.EINVAL
    assert await fuse_errno(lambda: ops.write(fh, 0, piece + b"x 5 5\n")) == errno.EINVAL
    assert await fuse_errno(lambda: ops.write(fh, 0, piece[:10])) == errno.EINVAL
    assert await ops.write(fh, 0, GOOD) == len(GOOD)
    assert names(ops) == ["good"]


async def test_a_bug_is_eio_logged_once_per_burst_and_leaves_the_fd_usable(ops, monkeypatch, caplog):
    """A handler bug is EIO with one log line, no traceback; a flood from one uid logs a burst only."""
    fh = await open_path(ops, "/ctl/submit", os.O_RDWR)
    node = ops.handles[fh].node
    real = node.run
    monkeypatch.setattr(node, "run", lambda lines, caller: 1 / 0)
    with caplog.at_level(logging.ERROR, logger="apeinxfs.fs"):
        for _ in range(50):
            assert await fuse_errno(lambda: ops.write(fh, 0, GOOD)) == errno.EIO
    assert await ops.read(fh, 0, 4096) == b"error: internal error in the daemon (logged)\n"
    bugs = [r for r in caplog.records if "ZeroDivisionError" in r.getMessage()]
    assert len(bugs) == ops.bug_log.burst and all(r.exc_info is None for r in bugs)
    assert "uid 1000" in ops.bug_log.limit.windows and ops.bug_log.limit.windows["uid 1000"].suppressed == 50 - len(bugs)
    monkeypatch.setattr(node, "run", real)
    assert await ops.write(fh, 0, GOOD) == len(GOOD) and names(ops) == ["good"]


# -- tier 2: setattr --------------------------------------------------------------------------------

@pytest.mark.parametrize("change", ["mode", "uid", "gid", "atime", "mtime"])
@pytest.mark.parametrize("path", ["/ctl/submit", "/README", "/tasks"])
async def test_chmod_chown_utime_are_eperm(ops, change, path):
    """chmod, chown and utime of any file or directory fail with EPERM."""
    inode = await inode_of(ops, path)
    assert await fuse_errno(lambda: ops.setattr(inode, attr(), fields(change), None, ctx())) == errno.EPERM


@pytest.mark.parametrize("path", ["/ctl/submit", "/ctl/kill"])
async def test_truncation_to_zero_of_a_ctl_file_is_a_no_op(ops, path):
    """truncate(2) to 0 (with the mtime it also sets) of a writable ctl file succeeds and changes nothing."""
    inode = await inode_of(ops, path)
    assert (await ops.setattr(inode, attr(0), fields("size", "mtime"), None, ctx())).st_ino == inode


async def test_other_truncations_are_refused(ops):
    """Truncating to a size other than 0 is EPERM; truncating a read-only file is EACCES."""
    submit, readme = await inode_of(ops, "/ctl/submit"), await inode_of(ops, "/README")
    assert await fuse_errno(lambda: ops.setattr(submit, attr(5), fields("size"), None, ctx())) == errno.EPERM
    assert await fuse_errno(lambda: ops.setattr(readme, attr(0), fields("size"), None, ctx())) == errno.EACCES


# -- tiers 3-4: a real mount and shell tools ------------------------------------------------------

def shell(command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)


@pytest.mark.mount
def test_chmod_chown_touch_fail_and_echo_still_submits(daemon):
    """On the mount, chmod, chown and touch of tree files fail with EPERM; `echo x > ctl/submit`,
    `truncate -s 0` and `: >` of a ctl file still work."""
    submit = daemon.path("ctl", "submit")
    for command in (f"chmod 600 {submit}", f"chown 1:1 {daemon.path('README')}", f"touch {submit}",
                    f"chmod 700 {daemon.path('tasks')}"):
        done = shell(command)
        assert done.returncode != 0 and "Operation not permitted" in done.stderr, (command, done.stderr)
    assert os.stat(submit).st_mode & 0o777 == 0o666
    for command in (f"echo 'shell 5 5' > {submit}", f"truncate -s 0 {submit}", f": > {submit}"):
        assert shell(command).returncode == 0, command
    assert "Operation not permitted" in shell(f"truncate -s 3 {submit}").stderr
    assert [daemon.status(int(pid))["Name"] for pid in os.listdir(daemon.path("tasks"))] == ["shell"]


@pytest.mark.mount
def test_a_line_over_the_limit_is_einval_for_cat_and_python(daemon, tmp_path):
    """A 3 MiB line fails with EINVAL through cat and through a Python file (whose write(2) first
    returns a short count; the rest it writes is refused); nothing runs, and the fd submits next."""
    big = tmp_path / "big"
    big.write_bytes(b" " * (3 << 20) + b"big 5 5\n")
    done = shell(f"cat {big} > {daemon.path('ctl', 'submit')}")
    assert done.returncode != 0 and "Invalid argument" in done.stderr, done.stderr
    with open(daemon.path("ctl", "submit"), "r+b") as ctl:
        with pytest.raises(OSError) as refused:
            ctl.write(big.read_bytes())
            ctl.flush()
        assert refused.value.errno == errno.EINVAL
        ctl.write(GOOD)
        ctl.flush()
        assert ctl.read(64).strip().isdigit()
    assert [daemon.status(int(pid))["Name"] for pid in os.listdir(daemon.path("tasks"))] == ["good"]


@pytest.mark.mount
def test_lone_surrogate_on_a_real_fd(daemon):
    """Issue 14's line: EINVAL with its reason on the fd, which then submits a good line."""
    fd = os.open(daemon.path("ctl", "submit"), os.O_RDWR)
    try:
        with pytest.raises(OSError) as refused:
            os.write(fd, SURROGATE_LINE)
        assert refused.value.errno == errno.EINVAL
        assert os.read(fd, 4096).startswith(b"error: lone surrogate")
        assert os.write(fd, GOOD) == len(GOOD) and os.read(fd, 64).strip().isdigit()
    finally:
        os.close(fd)
    assert daemon.proc.poll() is None and "Traceback" not in daemon.log_tail()
