"""Tier 1: a snapshot file handed over or planted in a state dir builds no object but the kernel's, and reads
within bounded memory.

A state's pickle may name only what state.names holds, by exact module and name (no dotted
name, no module attribute it imported), and take no attribute but the kernel's bound methods
(state.METHODS); a snapshot's name must be a regular file, not a link or a FIFO, its header
line and inflated state bounded (snapshots.HEADER_MAX, INFLATE_RATIO). Each is refused in
words as a damaged snapshot. The previous release's own bytes still load.
"""
import pathlib

import pytest

from apeinxfs.kernel import Kernel, migrations, state
from apeinxfs.kernel.invariants import check_invariants
from apeinxfs.kernel.state import LayoutError, decode
from kernel_machine import kernel_config
from test_migrations import PREVIOUS, lived_kernel

DATA = pathlib.Path(__file__).parent / "data"


def text(value: str) -> bytes:
    """A protocol-4 SHORT_BINUNICODE of `value`."""
    return b"\x8c" + bytes([len(value.encode())]) + value.encode()


def named(module: str, name: str) -> bytes:
    """A protocol-4 STACK_GLOBAL of module and name."""
    return text(module) + text(name) + b"\x93"


def test_a_state_the_previous_release_wrote_with_its_own_code_loads():
    """The bytes 7958f78's state.encode wrote of lived_kernel load, migrated, with the same tasks and whole books."""
    loaded = migrations.load((DATA / "state-7958f78.pickle").read_bytes(), PREVIOUS, state.layout(lived_kernel().config))
    check_invariants(loaded)
    assert sorted(loaded.tasks) == sorted(lived_kernel().tasks) == [2, 3, 5, 6, 7]


@pytest.mark.parametrize("module, name", [
    pytest.param(state.PACKAGE + ".state", "pickle.loads", id="dotted-name-through-a-kernel-module"),
    pytest.param(state.PACKAGE + ".state", "pickle", id="a-module-a-kernel-module-imports"),
    pytest.param(state.PACKAGE + ".kernel", "Kernel", id="a-kernel-class-no-snapshot-names"),
    pytest.param("builtins", "eval", id="eval"),
    pytest.param("builtins", "__import__", id="import"),
    pytest.param("posix", "system", id="system"),
])
def test_a_state_naming_what_no_snapshot_holds_is_refused(module, name):
    """A pickle naming something outside state.names is refused in words at the name, before any call."""
    with pytest.raises(LayoutError, match=f"names {module}.{name}, which is not the kernel's"):
        decode(b"\x80\x04" + named(module, name) + b")R.")


@pytest.mark.parametrize("owner, attribute", [
    pytest.param(named(state.PACKAGE + ".lazyheap", "LazyHeap"), "__init__", id="a-class-function"),
    pytest.param(named(state.PACKAGE + ".lazyheap", "LazyHeap") + b")\x81", "__dict__", id="an-instance-field"),
    pytest.param(named("collections", "OrderedDict") + b")R", "pop", id="a-method-of-no-kernel-object"),
])
def test_a_state_taking_an_attribute_but_a_kernel_bound_method_is_refused(owner, attribute):
    """getattr, as a pickle's bound method calls it, takes only METHODS: a function's globals are not reached."""
    with pytest.raises(LayoutError, match=f"takes {attribute} of a .*, which is not a bound method of the kernel's"):
        decode(b"\x80\x04" + named("builtins", "getattr") + owner + text(attribute) + b"\x86R.")


def test_every_class_a_kernel_reaches_may_be_loaded():
    """Each class in the layout of the kernel machine's config but the Kernel (built by state._bare_kernel) is in
    state.names: a plain class added to the kernel's state must be added to PLAIN too, and this names it."""
    allowed = {f"{module}.{name}" for module, name in state.names()} | {state.class_name(Kernel)}
    assert sorted(set(state.layout(kernel_config())) - allowed) == []
