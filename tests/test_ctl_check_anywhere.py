"""Tier 2: ctl/submit's dry run of a split write (nodes/ctl.py `check_anywhere`) on a Runtime without FUSE:
its refusal is the one ctl/submit's own command gives the same write on a single node (role, lines named with
blank lines counted, REFUSED_MAX; neither journals it: the write's handle does, test_rejects.py), and a child of a task on another node is seen
as the caller would see that task there."""
import errno

import pytest

from apeinxfs import config as config_mod
from apeinxfs.journal import Journal
from apeinxfs.kernel.errors import ApeinxError
from apeinxfs.kernel.grammar import parse_submit
from apeinxfs.kernel.submits import Anywhere
from apeinxfs.nodes import ctl
from apeinxfs.nodes.base import Caller
from apeinxfs.runtime import Runtime

CONFIG = ('[gpus]\nsimulated = 1\nslots = 8\n[[models]]\nname = "sim"\n'
          '[[tenants]]\nname = "default"\n[[tenants]]\nname = "t"\n[[tenants]]\nname = "u"\n')
USER, VIEWER = Caller(uid=1001, role="user", tenant="t"), Caller(uid=1002, role="viewer", tenant="t")
GOOD, BAD = "model=sim max_tokens=10 prompt=x", "model=ghost max_tokens=10"
REMOTE = 900  # a live task on another node


@pytest.fixture
def rt(tmp_path):
    (tmp_path / "config.toml").write_text(CONFIG)
    return Runtime(config_mod.load(str(tmp_path / "config.toml"), str(tmp_path), use_nvml=False),
                   Journal(str(tmp_path / "journal.db")))


def dry_run(rt, lines: list[str], caller, parents=None) -> ApeinxError | None:
    """The dry run's refusal of the write of `lines` ("" a blank one), or None if it passes."""
    specs = {index: parse_submit(line, caller.tenant) for index, line in enumerate(lines) if line}
    try:
        ctl.check_anywhere(rt, specs, len(lines), caller, Anywhere(parents=parents or {}))
    except ApeinxError as exc:
        return exc
    return None


def single_node(rt, lines: list[str], caller) -> ApeinxError:
    """ctl/submit's refusal of the same write on this node alone."""
    with pytest.raises(ApeinxError) as caught:
        ctl.submit(rt)([line.encode() for line in lines], caller)
    return caught.value


@pytest.mark.parametrize("lines, caller", [
    (["", GOOD, "", BAD], USER),  # a line named with the blank lines before it counted
    (["", BAD], USER),  # a lone line of a write of two: still `line 2`
    ([GOOD, BAD], VIEWER),  # a viewer may not submit: EACCES
    ([BAD] * 25, USER),  # REFUSED_MAX refused lines, then the rest not checked
])
def test_the_dry_run_refuses_a_write_as_a_single_node_does(rt, lines, caller):
    """The dry run's errno, reason and replies are those of ctl/submit's own command for the same write; nothing
    is submitted."""
    checked = dry_run(rt, lines, caller)
    assert checked is not None
    alone = single_node(rt, lines, caller)
    assert (checked.errno, checked.reason, checked.reply()) == (alone.errno, alone.reason, alone.reply())
    assert list(rt.kernel.tasks) == []


def test_the_dry_run_caps_the_refused_lines_at_refused_max(rt):
    """25 refused lines: REFUSED_MAX replies and one saying the rest were not checked."""
    replies = dry_run(rt, [BAD] * 25, USER).reply()
    assert len(replies) == ctl.REFUSED_MAX + 1
    assert replies[-1] == f"error: lines 21..25: not checked ({ctl.REFUSED_MAX} lines refused already)"


def test_a_child_of_another_tenants_remote_task_does_not_exist_for_a_user(rt):
    """A user of t writing a child of a task of u on another node gets ENOENT `no task` at its line, as on that
    node; a child of t's remote task passes; an admin may write a child of u's."""
    exc = dry_run(rt, [GOOD, "", f"parent={REMOTE} max_tokens=10"], USER, {REMOTE: "u"})
    assert exc is not None and (exc.errno, exc.reply()) == (errno.ENOENT, [f"error: line 3: no task {REMOTE}"])
    assert dry_run(rt, [GOOD, f"parent={REMOTE} max_tokens=10"], USER, {REMOTE: "t"}) is None
    assert dry_run(rt, [GOOD, f"parent={REMOTE} max_tokens=10"], Caller(), {REMOTE: "u"}) is None
