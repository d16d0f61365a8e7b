"""Tier 1: the kernel's shape stays as issue 13 set it: small modules, a small coordinator, no mixins."""
import ast
import pathlib

import apeinxfs.kernel
from apeinxfs.kernel import Kernel
from apeinxfs.kernel.lazyheap import LazyHeap

KERNEL_DIR = pathlib.Path(apeinxfs.kernel.__file__).parent


def test_no_kernel_module_is_over_400_lines():
    """Every module of apeinxfs/kernel/ has at most 400 lines."""
    sizes = {path.name: len(path.read_text().splitlines()) for path in KERNEL_DIR.glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 400} == {}


def test_the_kernel_class_is_under_250_lines_and_has_no_bases():
    """`Kernel` is a coordinator under 250 lines, not a class built of mixins."""
    tree = ast.parse((KERNEL_DIR / "kernel.py").read_text())
    kernel = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Kernel")
    assert kernel.end_lineno - kernel.lineno + 1 < 250 and kernel.bases == []
    assert Kernel.__mro__ == (Kernel, object)


def test_lazy_heap_is_not_a_dict():
    """A LazyHeap changes only through set and discard: it is no dict whose update() could bypass its heap."""
    heap = LazyHeap()
    heap.set("a", (1, "a"))
    assert not isinstance(heap, dict) and not hasattr(heap, "update") and heap.peek() == "a"
