"""The simulated node's configuration: command-line options on top of defaults.toml.

`build_config(options, workload)` gives the daemon's own Config (the `sim` model of the
defaults with the asked decode step, N simulated GPUs with a KV pool of the asked tokens
in pages of the asked size, the policy, the workload's tenants and weights) and the TOML
text that rebuilds it through apeinxfs.config, written next to a kept journal.
"""
import json
import math
import tomllib
from importlib import resources

import attrs

from .. import config as config_mod
from ..kernel.config import MIB, ModelConfig
from ..kernel.errors import Invalid
from .workload import Workload


def _at_least(low: float, strictly: bool = False):
    def check(_inst, attribute, value):
        if value is not None and not (value > low if strictly else value >= low):
            relation = "more than" if strictly else "at least"
            raise Invalid(f"--{attribute.name.replace('_', '-')} must be {relation} {low:g}, not {value:g}")
    return check


@attrs.frozen
class Options:
    """The command line's knobs; None takes the value of apeinxfs/defaults.toml."""

    policy: str | None = None
    gpus: int | None = attrs.field(default=None, validator=_at_least(1))
    slots: int | None = attrs.field(default=None, validator=_at_least(1))
    kv_tokens: int | None = attrs.field(default=None, validator=_at_least(1))
    page_tokens: int = attrs.field(default=16, validator=_at_least(1))
    step_ms: float | None = attrs.field(default=None, validator=_at_least(0))
    until: float | None = attrs.field(default=None, validator=_at_least(0))
    window: float = attrs.field(default=60.0, validator=_at_least(0, strictly=True))
    state_dir: str | None = None
    trace: str | None = None


def load_defaults() -> dict:
    return tomllib.loads(resources.files("apeinxfs").joinpath("defaults.toml").read_text())


def overrides(options: Options, workload: Workload, defaults: dict) -> dict:
    """The config sections that turn the defaults into this run's config."""
    model = dict(defaults["models"][0])
    model["options"] = dict(model.get("options", {}))
    if options.step_ms is not None:
        model["options"]["decode_step_ms"] = options.step_ms
    page_mib, kv_mib = _kv_sizes(options, ModelConfig(**model).token_bytes, defaults)
    gpus = {"simulated": options.gpus or defaults["gpus"]["simulated"], "kv_mib": kv_mib,
            "memory_mib": max(kv_mib, defaults["gpus"]["memory_mib"]),
            "slots": options.slots or defaults["gpus"]["slots"]}
    return {"kv": {"page_mib": page_mib}, "gpus": gpus, "models": [model],
            "scheduler": {"policy": options.policy or defaults["scheduler"]["policy"]},
            "tenants": [{"name": t, "weight": w} for t, w in sorted(workload.weights.items())]}


def _kv_sizes(options: Options, token_bytes: int, defaults: dict) -> tuple[int, int]:
    """(page_mib, kv_mib): a page of `page_tokens` tokens and a pool of `kv_tokens` (rounded up)."""
    page_bytes = options.page_tokens * token_bytes
    if page_bytes % MIB:
        raise Invalid(f"--page-tokens {options.page_tokens}: pages are whole MiB and a token takes "
                      f"{token_bytes} bytes; use a multiple of {MIB // math.gcd(MIB, token_bytes)}")
    kv_bytes = options.kv_tokens * token_bytes if options.kv_tokens else defaults["gpus"]["kv_mib"] * MIB
    if kv_bytes < page_bytes:
        raise Invalid(f"--kv-tokens {options.kv_tokens} is less than one page of {options.page_tokens} tokens")
    return page_bytes // MIB, math.ceil(kv_bytes / MIB)


def build_config(options: Options, workload: Workload) -> tuple:
    """The daemon's Config for this run (no NVML: every GPU is simulated), and its TOML."""
    defaults = load_defaults()
    sections = overrides(options, workload, defaults)
    config = config_mod.build(config_mod.merge(defaults, sections), options.state_dir or "", use_nvml=False)
    return config, to_toml(sections)


def to_toml(sections: dict) -> str:
    """A config file that `apeinxfs.config.load` turns back into the same config."""
    lines = []
    for name, section in sections.items():
        for table in section if isinstance(section, list) else [section]:
            lines.append(f"[[{name}]]" if isinstance(section, list) else f"[{name}]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in table.items() if not isinstance(value, dict)]
            for key, value in table.items():
                if isinstance(value, dict):
                    lines += [f"[{name}.{key}]"] + [f"{k} = {json.dumps(v)}" for k, v in value.items()]
    return "\n".join(lines) + "\n"


