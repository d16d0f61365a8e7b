"""scripts/demo end to end: set-up, mount, the 100-task workload, summary, unmount."""
import os
import re
import subprocess

import pytest

from daemon import is_mounted

pytestmark = [pytest.mark.mount, pytest.mark.slow]

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "demo")


@pytest.fixture
def demo_dirs(tmp_path):
    """A mountpoint and state directory for the demo; unmounted afterwards if it failed to."""
    mountpoint, state = tmp_path / "ai", tmp_path / "state"
    yield mountpoint, state
    if is_mounted(str(mountpoint)):
        subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)


def run_demo(mountpoint, state) -> subprocess.CompletedProcess:
    env = {**os.environ, "APEINX_MNT": str(mountpoint), "APEINX_STATE": str(state)}
    return subprocess.run([SCRIPT], env=env, capture_output=True, text=True, timeout=600)


def test_demo_runs_100_tasks_to_done_and_unmounts(demo_dirs):
    """The demo reports all 100 tasks done, a row per task type, and leaves no mount."""
    mountpoint, state = demo_dirs
    result = run_demo(mountpoint, state)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "finished: 100 of 100 tasks" in result.stdout
    assert re.search(r"^ +100 done$", result.stdout, re.M)
    assert len(re.findall(r"^  (chat|summarise|code|embed|batch|translate|classify|extract|agent|rag) +10 ",
                          result.stdout, re.M)) == 10
    assert not is_mounted(str(mountpoint))


def test_demo_runs_again_on_the_same_state(demo_dirs):
    """A second run on the same state directory works too, counting only its own tasks."""
    mountpoint, state = demo_dirs
    assert run_demo(mountpoint, state).returncode == 0
    again = run_demo(mountpoint, state)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "finished: 100 of 100 tasks" in again.stdout
    assert re.search(r"^ +101 +<- ", again.stdout, re.M)
    assert not is_mounted(str(mountpoint))
