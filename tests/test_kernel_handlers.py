"""Tier 1: the kernel's {event type: (check, apply)} table covers every event kind and no other."""
import errno

import pytest

from apeinxfs.kernel import Kernel
from apeinxfs.kernel import events as ev
from apeinxfs.kernel.config import GpuConfig, KernelConfig, ModelConfig
from apeinxfs.kernel.errors import ApeinxError


def make_kernel() -> Kernel:
    """A kernel with one model and one GPU."""
    return Kernel(KernelConfig(models=[ModelConfig(name="sim")], gpus=[GpuConfig(index=0)]))


def test_table_covers_every_event_kind():
    """The handler table's event types are exactly the kinds of events.py."""
    assert set(make_kernel().handlers) == set(ev.KINDS.values())


def test_every_handler_is_callable():
    """Each entry pairs a callable check with a callable apply."""
    for kind, (check, apply) in make_kernel().handlers.items():
        assert callable(check) and callable(apply), kind


def test_check_refuses_an_unknown_event_with_einval():
    """An object that is no kind of event is refused with EINVAL, naming its type."""
    with pytest.raises(ApeinxError) as refused:
        make_kernel().check(object())
    assert refused.value.errno == errno.EINVAL and "object is not a kernel event" in refused.value.reason


def test_a_subclass_of_an_event_is_not_an_event():
    """Dispatch is by exact type: a subclass of Tick is refused, not taken for a Tick."""
    class Lookalike(ev.Tick):
        pass

    with pytest.raises(ApeinxError):
        make_kernel().check(Lookalike())
