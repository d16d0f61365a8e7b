"""Compare two kernels' whole state, field by field, naming the first place they differ.

Generic, like the snapshot codec (apeinxfs/kernel/state.py): it walks every object reachable
from the kernels (their __dict__ and slots, containers, bound methods' owners, closures),
so a field no snapshot carried shows up as a difference here. Dicts compare in order
(their order is iteration order, which the kernel's decisions may follow); sets as sets. A
functools.cached_property's value is left out: a memo of the fields, filled at first use.
"""
import array
import collections
import functools
import types

ATOMS = (int, float, str, bytes, bool, type(None), complex, array.array, bytearray)


def state_difference(left, right) -> str:
    """'' when the object graphs under `left` and `right` hold the same state, else the first difference."""
    seen, stack = set(), [("kernel", left, right)]
    while stack:
        path, a, b = stack.pop()
        if type(a) is not type(b):
            return f"{path}: a {type(a).__name__} and a {type(b).__name__}"
        if isinstance(a, ATOMS) or a is b:
            if a != b and a is not b:
                return f"{path}: {a!r:.200} != {b!r:.200}"
            continue
        if (id(a), id(b)) in seen:
            continue
        seen.add((id(a), id(b)))
        children = _children(path, a, b)
        if children == "":  # alike, with nothing under them to compare
            continue
        if isinstance(children, str):
            return children
        stack.extend(reversed(children))
    return ""


def _children(path: str, a, b) -> list | str:
    """(path, left, right) of the parts to compare next, or the difference already found."""
    if isinstance(a, (set, frozenset)):
        return "" if a == b else f"{path}: sets differ by {sorted(map(repr, a ^ b))[:5]}"
    if isinstance(a, dict):
        if list(a) != list(b):
            return f"{path}: keys {list(a)[:8]}... != {list(b)[:8]}..."
        return [(f"{path}[{key!r}]", a[key], b[key]) for key in a]
    if isinstance(a, (list, tuple, collections.deque)):
        if len(a) != len(b):
            return f"{path}: {len(a)} items != {len(b)}"
        return [(f"{path}[{n}]", x, y) for n, (x, y) in enumerate(zip(a, b))]
    if isinstance(a, types.MethodType):
        return [(f"{path}.__func__", a.__func__, b.__func__), (f"{path}.__self__", a.__self__, b.__self__)]
    if isinstance(a, types.FunctionType):
        if a.__code__ is not b.__code__:
            return f"{path}: functions {a.__qualname__} and {b.__qualname__}"
        cells = zip(a.__closure__ or (), b.__closure__ or ())
        return [(f"{path}.<cell {n}>", x.cell_contents, y.cell_contents) for n, (x, y) in enumerate(cells)]
    fields_a, fields_b = _fields(a), _fields(b)
    if fields_a is None:
        return "" if a == b else f"{path}: {a!r:.200} != {b!r:.200}"
    if list(fields_a) != list(fields_b):
        return f"{path}: fields {list(fields_a)} != {list(fields_b)}"
    return [(f"{path}.{name}", fields_a[name], fields_b[name]) for name in fields_a]


def _fields(item) -> dict | None:
    """An object's fields (its __dict__ and slots, sorted by name), or None for a value compared by ==."""
    slots = [name for cls in type(item).__mro__ for name in getattr(cls, "__slots__", ())]
    if not slots and not hasattr(item, "__dict__") or isinstance(item, type):
        return None
    fields = {name: getattr(item, name) for name in slots if name != "__weakref__" and hasattr(item, name)}
    own = {name: value for name, value in getattr(item, "__dict__", {}).items() if not _memo(type(item), name)}
    return dict(sorted({**fields, **own}.items()))


def _memo(cls: type, name: str) -> bool:
    """Whether `name` is a functools.cached_property of `cls`: derived from the fields, filled at first use."""
    return isinstance(getattr(cls, name, None), functools.cached_property)
