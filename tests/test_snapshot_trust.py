"""Tier 1: a snapshot file handed over or planted in a state dir builds no object but the kernel's, and reads
within bounded memory.

A state's pickle may name only what state.names holds, by exact module and name (no dotted
name, no module attribute it imported), and take no attribute but the kernel's bound methods
(state.METHODS); a snapshot's name must be a regular file, not a link or a FIFO, its header
line and inflated state bounded (snapshots.HEADER_MAX, statefile.INFLATE_RATIO). Each is refused in
words as a damaged snapshot. The previous release's own bytes still load.
"""
import copy
import decimal
import os
import pathlib
import zlib

import attrs
import pytest

from apeinxfs import snapshots, statefile
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


def writable(found: object) -> dict[str, object]:
    """What a BUILD could set on `found`: its __dict__ and the attributes pickle or a call reads of it."""
    kept = {name: getattr(found, name, None) for name in ("__module__", "__defaults__", "__kwdefaults__", "__code__")}
    return kept | dict(getattr(found, "__dict__", {}))


BUILDS = {
    "slots": b"N}(" + text("__module__") + text("this") + text("planted") + b"K\x01u\x86b",  # setattr on the object
    "dict": b"}" + text("planted") + b"K\x01sb",  # into its __dict__
}


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("module, name", sorted(state.names()))
def test_a_build_on_what_a_state_names_is_refused_and_changes_nothing(module, name, build):
    """BUILD on a class or function that find_class gives (pickle's setattr on it, for the whole process: the
    reviewer's Tenancy sandbox check replaced, a __module__ that made every later snapshot import a module) is
    refused before the state is looked at, and leaves it as it was."""
    found = state.names()[(module, name)]
    before = writable(found)
    with pytest.raises(LayoutError) as refused:
        decode(b"\x80\x04" + named(module, name) + BUILDS[build] + b".")
    assert "not a kernel" not in str(refused.value)
    assert writable(found) == before


def test_a_kernel_state_given_to_a_function_is_refused():
    """The Kernel's reducer, called by a state on a function, is refused: it would fill the function's __dict__."""
    key = state.names()[(state.PACKAGE + ".sched", "_pid")]
    before = writable(key)
    with pytest.raises(LayoutError, match="gives a kernel's fields to a function"):
        decode(b"\x80\x04" + named(state.PACKAGE + ".state", "_set_kernel_state") + named(state.PACKAGE + ".sched",
               "_pid") + b"}" + text("__setstate__") + b"Ns\x86R.")
    assert writable(key) == before


@pytest.mark.parametrize("flags, loads", [(0, True), (32, True), (128, False)])
def test_a_pattern_loads_with_the_flags_a_kernel_pattern_has_only(flags, loads):
    """re._compile as an old snapshot's trace pattern names it compiles one; with re.DEBUG (it prints the parse on
    stdout) it is refused."""
    with pytest.raises(LayoutError, match="is a Pattern, not a kernel" if loads else "compiles a pattern with flags"):
        decode(b"\x80\x04" + named("re", "_compile") + text("a+") + b"J" + flags.to_bytes(4, "little") + b"\x86R.")


def planted(change) -> bytes:
    """lived_kernel's state with `change` made to it as a planted pickle makes it: past the attrs validators."""
    kernel = lived_kernel()
    change(kernel)
    return state.encode(kernel)


def renamed_tenant(kernel: Kernel) -> None:
    tenant = kernel.tenancy.tenants.pop("default")
    object.__setattr__(tenant, "name", "a/b")
    kernel.tenancy.tenants["a/b"] = tenant


def task_moved(kernel: Kernel) -> None:
    kernel.tasks[2].pid = 3


def priced_past_decimal(kernel: Kernel) -> None:
    """The first model's price set past decimal precision, on copies: the config's records are shared with other
    kernels of this process, which must not see it."""
    model = next(iter(kernel.models.values()))
    price = copy.copy(model.price)
    object.__setattr__(price, "gpu_second", decimal.Decimal("9E+999999999"))
    kernel.models._models[model.name] = attrs.evolve(model, price=price)


@pytest.mark.parametrize("change, refused", [
    pytest.param(renamed_tenant, "tenant 'a/b' may not hold", id="a-tenant-name-with-a-slash"),
    pytest.param(task_moved, "task 2 is not a pid", id="a-task-under-another-pid"),
    pytest.param(priced_past_decimal, "a price must be a number from 0", id="a-price-past-decimal-precision"),
])
def test_a_state_holding_what_a_validator_refuses_is_refused(change, refused):
    """A name that would be a directory of the tree, a pid not its task's, a price the bill cannot round: pickle
    built them without their validators, and decode refuses them after loading."""
    with pytest.raises(LayoutError, match=f"holds what the kernel refuses: {refused}"):
        decode(planted(change))


def written(tmp_path, state_bytes: bytes) -> str:
    """A snapshot of `state_bytes` at row 1 in tmp_path/snapshots; its path."""
    return snapshots.write(str(tmp_path / "snapshots"), 1, 0, 0, {}, {}, state_bytes)


def test_a_snapshot_name_that_is_a_symbolic_link_is_not_read(tmp_path):
    """A snapshot name that links to a whole snapshot elsewhere is damaged, named as a link: a link is followed
    to /dev/zero or a FIFO as readily."""
    os.symlink(written(tmp_path, b"state"), tmp_path / "snapshot-000000000002.snap")
    with pytest.raises(snapshots.Damaged, match="a symbolic link"):
        snapshots.Snapshot.read(str(tmp_path / "snapshot-000000000002.snap"))


def test_a_snapshot_name_that_is_a_fifo_is_not_waited_on(tmp_path):
    """A FIFO under a snapshot's name is damaged, as no regular file, without waiting for a writer."""
    os.mkfifo(tmp_path / "snapshot-000000000001.snap")
    with pytest.raises(snapshots.Damaged, match=r"not a regular file \(mode p"):
        snapshots.Snapshot.read(str(tmp_path / "snapshot-000000000001.snap"))


def test_a_header_line_past_its_bound_is_not_read_whole(tmp_path):
    """A file whose first line runs past HEADER_MAX bytes is damaged, its line read only to the bound."""
    path = tmp_path / "snapshot-000000000001.snap"
    path.write_bytes(snapshots.MAGIC.encode() + b" " + b"x" * snapshots.HEADER_MAX)
    with pytest.raises(snapshots.Damaged, match=f"header line is longer than {snapshots.HEADER_MAX} bytes"):
        snapshots.Snapshot.read(str(path))


def test_a_state_that_inflates_past_its_bound_is_damaged(tmp_path):
    """A state of INFLATE_FLOOR + 1 MiB zero bytes (a zlib bomb: it compresses some thousand times) is damaged,
    in words, and not inflated past the bound."""
    bomb = bytes(statefile.INFLATE_FLOOR + (1 << 20))
    snapshot = snapshots.Snapshot.read(written(tmp_path, bomb))
    assert snapshot.length * statefile.INFLATE_RATIO < len(bomb)
    with pytest.raises(snapshots.Damaged, match=f"inflates past {statefile.INFLATE_FLOOR} bytes"):
        snapshot.state()


def test_a_small_state_inflates_whatever_its_ratio(tmp_path):
    """A state under INFLATE_FLOOR is read whole however well it compresses: the ratio bounds only large ones."""
    small = bytes(1 << 20)
    snapshot = snapshots.Snapshot.read(written(tmp_path, small))
    assert len(small) > snapshot.length * statefile.INFLATE_RATIO and snapshot.state() == small


def test_a_state_cut_short_inside_its_stream_is_damaged(tmp_path):
    """Compressed bytes whose stream does not end (checksummed as they are) are damaged, not half a state."""
    path, packed = tmp_path / "snapshot-000000000001.snap", zlib.compress(os.urandom(4096))[:-10]
    header = f'{{"seq":1,"time_us":0,"trace_seq":0,"config":{{}},"layout":{{}},"length":{len(packed)},' \
             f'"crc":{zlib.crc32(packed)},"row_crc":null}}'
    path.write_bytes(f"{snapshots.MAGIC} {zlib.crc32(header.encode()):08x} {header}\n".encode() + packed)
    with pytest.raises(snapshots.Damaged, match="cut short"):
        snapshots.Snapshot.read(str(path)).state()
