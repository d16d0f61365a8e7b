"""Runtime drivers: the engines that run tasks, and GPU discovery.

A driver is looked up by the name in a model's config (`driver = "sim"`), so the kernel
and the daemon never import one directly. See base.py for the interface.
"""
import importlib

import attrs

from ..kernel.errors import Invalid
from .options import clamped

KNOWN = {"sim": "apeinxfs.drivers.sim:SimDriver", "openai": "apeinxfs.drivers.openai:OpenAIDriver",
         "llamacpp": "apeinxfs.drivers.llamacpp:LlamaCppDriver", "triton": "apeinxfs.drivers.triton:TritonDriver"}


def load(name: str):
    """The driver class registered as `name`."""
    if name not in KNOWN:
        raise Invalid(f"unknown driver {name!r}: known drivers are {', '.join(sorted(KNOWN))}")
    module, _, cls = KNOWN[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def kept(driver: type, models: dict) -> tuple[dict, dict]:
    """`models` (of the driver class `driver`) as models kept in the journal are built (enginehost.py): each number
    out of the bounds of the driver's options (its `endpoint` class, where it has one) set to the nearest bound
    (options.clamped); and {name: words} of those so set. The configuration and `ctl/models add` refuse them."""
    kind, built, said = getattr(driver, "endpoint", None), dict(models), {}
    for name, model in models.items() if kind is not None else ():
        options, words = clamped(kind, model.options)
        if words:
            built[name], said[name] = attrs.evolve(model, options=options), "; ".join(words)
    return built, said
