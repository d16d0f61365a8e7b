"""Shared fixtures: a real mounted daemon per test (tier 3-4) with fast sim speeds."""
import pytest

from daemon import FUSE_READY, Daemon


def pytest_collection_modifyitems(config, items):
    if FUSE_READY:
        return
    print("\n*** /dev/fuse or fusermount3 missing: REAL-MOUNT TESTS ARE SKIPPED ***\n")
    for item in items:
        if "mount" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="no /dev/fuse or fusermount3 on this machine"))


@pytest.fixture
def daemon(tmp_path):
    """A live mount at tmp_path/ai with its own state directory; unmounted afterwards."""
    with Daemon(tmp_path / "ai", tmp_path / "state") as running:
        yield running
