"""Tiers 3-4: `[limits]` through a real mount, driven by shell tools (the tiers below: test_limits.py)."""
import errno
import os
import subprocess

import pytest

from daemon import Daemon, sim_config
from test_shell import write_rw


@pytest.fixture
def limited(tmp_path):
    """A mount whose writes hold at most 10 lines, with at most 12 live tasks, whose tasks take 50 ms a token."""
    with Daemon(tmp_path / "ai", tmp_path / "state",
                config_text=sim_config(50) + "\n[limits]\nwrite_lines = 10\nlive_tasks = 12\n") as running:
        yield running


def sh(script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)


def test_a_write_over_write_lines_fails_with_its_words_and_runs_nothing(limited):
    """`yes | head -n 11 | cat > ctl/submit` fails E2BIG, the reply says to split it, and no task exists."""
    submit = limited.path("ctl", "submit")
    done = sh(f"yes 'name=x max_tokens=1000' | head -n 11 | cat > {submit}")
    assert done.returncode != 0 and "Argument list too long" in done.stderr
    failure, reply = write_rw(submit, "name=x max_tokens=1000\n" * 10 + "name=x max_tokens=1000")
    assert failure == errno.E2BIG and b"at most 10 lines (limits.write_lines), not 11: split it" in reply
    assert os.listdir(limited.path("tasks")) == []
    rejects = sh(f"grep -c 'reject.*limits.write_lines' {limited.path('trace', 'events')}").stdout
    assert rejects.strip() == "2"


def test_a_submit_past_live_tasks_is_eagain_naming_the_key(limited):
    """12 tasks of minutes run; a 13th submit fails EAGAIN and its reply names limits.live_tasks."""
    submit = limited.path("ctl", "submit")
    assert sh(f"yes 'name=x max_tokens=4000' | head -n 6 | cat > {submit}").returncode == 0
    assert sh(f"yes 'name=x max_tokens=4000' | head -n 6 | cat > {submit}").returncode == 0
    failure, reply = write_rw(submit, "name=x max_tokens=4000")
    assert failure == errno.EAGAIN and b"limits.live_tasks" in reply
    assert len(os.listdir(limited.path("tasks"))) == 12
