"""Tier 4: backfill on a real mount driven by shell tools: with model a's GPUs full, a task of model b,
bound to other GPUs, runs at once instead of waiting behind a's queued task (kernel/moves.py)."""
import subprocess

import pytest

from daemon import Daemon, poll_until

pytestmark = pytest.mark.mount

SIM_OPTIONS = """[models.options]
decode_step_ms = 50
batch_step_ms = 0.1
prefill_tokens_per_s = 100000
"""
TWO_MODELS = f"""
[gpus]
simulated = 4
slots = 1
[[models]]
name = "a"
endpoints = [{{url = "http://127.0.0.1:9", gpus = [0]}}, {{url = "http://127.0.0.1:9", gpus = [1]}}]
{SIM_OPTIONS}
[[models]]
name = "b"
endpoints = [{{url = "http://127.0.0.1:9", gpus = [2]}}, {{url = "http://127.0.0.1:9", gpus = [3]}}]
{SIM_OPTIONS}
"""
LONG = "max_tokens=5000"  # 250 s at 50 ms a token: runs for the whole test


def sh(script: str) -> str:
    """Run `script` under sh; its stdout (a failure raises, with its stderr)."""
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True, timeout=30).stdout


def state(ai: Daemon, pid: int) -> str:
    """The task's `State:` line, read with grep."""
    return sh(f"grep '^State:' {ai.path('tasks', str(pid), 'status')}").split(maxsplit=1)[1].strip()


def test_a_task_of_b_runs_while_a_s_gpus_are_full(tmp_path):
    """Three long tasks of a on its two one-slot GPUs (the third queued), then one of b: b's task reaches
    `running` on GPU 2 or 3 while a's third task stays queued, and its dispatch line says it was backfilled."""
    with Daemon(tmp_path / "ai", tmp_path / "state", config_text=TWO_MODELS) as ai:
        submit = ai.path("ctl", "submit")
        sh("".join(f"echo 'name=a{n} model=a {LONG}' > {submit}\n" for n in range(3)))
        poll_until(lambda: [state(ai, pid) for pid in (1, 2)] == ["R (running)"] * 2, 20, "a's tasks running")
        sh(f"echo 'name=b1 model=b {LONG}' > {submit}")
        poll_until(lambda: state(ai, 4) == "R (running)", 20, "b's task running")
        assert state(ai, 3) == "Q (queued)"
        line = sh(f"grep ',dispatch,4,' {ai.path('trace', 'events')}")
        assert "backfill past pid 3 (its GPUs are full)" in line
        gpu = sh(f"grep '^Gpu:' {ai.path('tasks', '4', 'status')}").split()[1]
        assert gpu in ("2", "3")
