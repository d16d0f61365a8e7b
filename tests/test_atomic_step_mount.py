"""Tier 3: a real daemon whose kernel step meets a bug serving one task's chunk loses no other task's text.

The fault is injected as test_supervise_mount.py does, through a launcher (BUGGY_CHARGE) that makes the run
queue's charge of a chunk raise KeyError for the task of prompt `bad` at its third token, as a bug in it
would (depending on the kernel's state only: a replay of the rows before it meets it no more than the
live kernel did). The sim engine steps the three tasks of one GPU together: `bad` fails naming the bug,
the other two stream their whole text with no gap (the runtime rolled the kernel back to its journal and
served the step again without `bad`'s chunk), `trace/events` has their exits (the ring the tree holds kept
through the rollback), /ai/health has the Bug row, and `apeinxfs replay --verify` passes on the state
directory once the daemon stopped.
"""
import subprocess

import pytest

from apeinxfs.drivers.sim import word
from daemon import FUSE_READY, sim_config
from test_supervise_mount import FaultyDaemon, health_rows
from test_verify_mount import replay_verify

pytestmark = [pytest.mark.mount, pytest.mark.skipif(not FUSE_READY, reason="needs /dev/fuse and fusermount3")]

BUGGY_CHARGE = """
import sys
from apeinxfs.cli import main
from apeinxfs.kernel.runqueue import RunQueue
charge = RunQueue.charge
def buggy(self, task, gpu, chunk):
    if task.spec.prompt == "bad" and task.tokens_out >= 3:
        raise KeyError("a bug in charge")
    return charge(self, task, gpu, chunk)
RunQueue.charge = buggy
sys.exit(main())
"""
TOKENS = 40


def test_a_bug_in_one_tasks_step_leaves_the_others_text_whole_and_the_journal_verified(tmp_path):
    """Task `bad` fails at its third token naming the kernel bug; `one` and `two`, stepped with it, read their
    whole text, word for word the sim engine's; verify passes after the daemon stopped."""
    config = sim_config(2).replace("simulated = 2", "simulated = 1")
    with FaultyDaemon(tmp_path, BUGGY_CHARGE, config_text=config) as daemon:
        pids = {prompt: daemon.submit(f"max_tokens={TOKENS} prompt={prompt}") for prompt in ("one", "bad", "two")}
        for prompt in ("one", "two"):
            stream = subprocess.run(["cat", daemon.path("tasks", str(pids[prompt]), "stream")], capture_output=True,
                                    timeout=20, check=True)
            assert stream.stdout.decode() == "".join(word(0, prompt, index) for index in range(TOKENS))
            assert daemon.status(pids[prompt])["Exit"] == "done"
        assert daemon.status(pids["bad"])["Exit"].startswith("failed: kernel bug: KeyError at <string>:")
        with open(daemon.path("trace", "events")) as events:  # the trace ring the tree holds, grown after the bug
            exits = [line for line in events if f",exit,{pids['two']}," in line]
        assert len(exits) == 1 and "done" in exits[0]
        row = health_rows(daemon)[1]
        assert row.startswith("Bug:\tkernel.step: KeyError at <string>:") and row.endswith("; its task failed)")
        assert daemon.proc.poll() is None
    verified = replay_verify(tmp_path / "state")
    assert verified.returncode == 0, verified.stdout + verified.stderr
