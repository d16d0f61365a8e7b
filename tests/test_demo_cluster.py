"""scripts/demo-cluster end to end: a 3-member etcd, three nodes, 12 placed tasks, every one waited
for from another node, everything stopped and removed."""
import os
import re
import subprocess

import pytest

from daemon import FUSE_READY

pytestmark = [pytest.mark.mount, pytest.mark.slow,
              pytest.mark.skipif(not FUSE_READY, reason="*** needs /dev/fuse and fusermount3: DEMO SKIPPED ***")]

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "demo-cluster")


def test_the_cluster_demo_places_tasks_on_every_node_and_leaves_nothing_behind(tmp_path):
    """Every task ends done as read on node b, each of a, b and c ran some, and the script's temporary
    directory (mountpoints, etcd's data) is gone with nothing left mounted."""
    result = subprocess.run([SCRIPT], env={**os.environ, "TMPDIR": str(tmp_path)}, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ran = re.findall(r"^  [0-9]+ +(\S+) +ran on ([abc])$", result.stdout, re.M)
    assert len(ran) == 12 and {how for how, _ in ran} == {"done"} and {node for _, node in ran} == {"a", "b", "c"}
    assert os.listdir(tmp_path) == []
    assert str(tmp_path) not in open("/proc/mounts").read()
