"""Shared fixtures: a real mounted daemon per test (tier 3-4) with fast sim speeds."""
import itertools

import pytest

from apeinxfs.kernel import Kernel
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


@pytest.fixture(autouse=True)
def kernel_invariants(request, monkeypatch):
    """Every in-process kernel checks its invariants after every event it applies, or after every
    Nth in a test marked invariants_every(N) (N = 0: the test checks them itself)."""
    marker = request.node.get_closest_marker("invariants_every")
    every = marker.args[0] if marker else 1
    if not every:
        return
    apply, applied = Kernel.apply, itertools.count(1)

    def apply_and_check(kernel, event, now_us):
        result = apply(kernel, event, now_us)
        if next(applied) % every == 0:
            kernel.check_invariants()
        return result

    monkeypatch.setattr(Kernel, "apply", apply_and_check)
