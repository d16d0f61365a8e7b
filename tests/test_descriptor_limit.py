"""The daemon's start raising its soft RLIMIT_NOFILE (mount.raise_descriptor_limit) where the kernel refuses it.
The kernel's answers are faked (getrlimit: a soft limit below the hard one; setrlimit: EPERM, as for a hard
limit above a lowered fs.nr_open): lowering fs.nr_open would change the whole machine."""
import errno
import logging
import resource

from apeinxfs import mount

SOFT, HARD = 256, 4096


def limits_below_hard(resource_id):
    """getrlimit(2) of a process started under a soft limit below its hard one."""
    return SOFT, HARD


def refuse_setrlimit(resource_id, limits):
    """setrlimit(2) as the kernel answers a hard limit above fs.nr_open: EPERM."""
    raise PermissionError(errno.EPERM, "Operation not permitted")


def test_a_refused_raise_is_a_warning_and_the_soft_limit_stays(monkeypatch, caplog):
    """Where setrlimit is refused EPERM, the start goes on under the soft limit and says so in a warning."""
    monkeypatch.setattr(resource, "getrlimit", limits_below_hard)
    monkeypatch.setattr(resource, "setrlimit", refuse_setrlimit)
    with caplog.at_level(logging.WARNING, logger="apeinxfs"):
        limit = mount.raise_descriptor_limit()
    assert limit == SOFT and "cannot raise the soft limit 256 to the hard 4096" in caplog.text
