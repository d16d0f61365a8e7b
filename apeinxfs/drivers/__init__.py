"""Runtime drivers: the engines that run tasks, and GPU discovery.

A driver is looked up by the name in a model's config (`driver = "sim"`), so the kernel
and the daemon never import one directly. See base.py for the interface.
"""
import importlib

from ..kernel.errors import Invalid

KNOWN = {"sim": "apeinxfs.drivers.sim:SimDriver", "openai": "apeinxfs.drivers.openai:OpenAIDriver",
         "llamacpp": "apeinxfs.drivers.llamacpp:LlamaCppDriver", "triton": "apeinxfs.drivers.triton:TritonDriver"}


def load(name: str):
    """The driver class registered as `name`."""
    if name not in KNOWN:
        raise Invalid(f"unknown driver {name!r}: known drivers are {', '.join(sorted(KNOWN))}")
    module, _, cls = KNOWN[name].partition(":")
    return getattr(importlib.import_module(module), cls)
