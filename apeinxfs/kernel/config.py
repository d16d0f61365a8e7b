"""What the kernel is booted with: models, GPUs, KV page size, scheduler policy.

Frozen attrs records with validators; apeinxfs/config.py builds them from TOML. Driver
knobs live in each model's `options` and are the driver's to validate.
"""
import attrs

from .errors import Invalid
from .kvmem import bytes_per_token
from .sched import POLICIES

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}
MIB = 1 << 20


def _positive(_inst, attribute, value):
    if type(value) is not int or value <= 0:
        raise Invalid(f"{attribute.name} must be a positive integer, not {value!r}")


def _one_of(choices):
    def check(_inst, attribute, value):
        if value not in choices:
            raise Invalid(f"{attribute.name} must be one of {', '.join(sorted(choices))}, not {value!r}")
    return check


@attrs.frozen
class ModelConfig:
    """A model: its driver, context length and KV shape (for bytes per token)."""

    name: str
    driver: str = "sim"
    context: int = attrs.field(default=32768, validator=_positive)
    layers: int = attrs.field(default=32, validator=_positive)
    kv_heads: int = attrs.field(default=8, validator=_positive)
    head_dim: int = attrs.field(default=128, validator=_positive)
    dtype: str = attrs.field(default="fp16", validator=_one_of(DTYPE_BYTES))
    options: dict = attrs.field(factory=dict, converter=dict)

    @property
    def token_bytes(self) -> int:
        return bytes_per_token(self.layers, self.kv_heads, self.head_dim, DTYPE_BYTES[self.dtype])


@attrs.frozen
class GpuConfig:
    """One GPU, real or simulated: its memory, the part given to KV, its batch slots."""

    index: int
    name: str = "sim-gpu"
    memory_mib: int = attrs.field(default=24576, validator=_positive)
    kv_mib: int = attrs.field(default=16384, validator=_positive)
    slots: int = attrs.field(default=8, validator=_positive)
    simulated: bool = True


@attrs.frozen
class KernelConfig:
    """Everything the kernel needs to boot."""

    models: tuple = attrs.field(converter=tuple)
    gpus: tuple = attrs.field(converter=tuple)
    page_mib: int = attrs.field(default=64, validator=_positive)
    policy: str = attrs.field(default="fair", validator=_one_of(POLICIES))
    node: str = "local"

    def __attrs_post_init__(self):
        if not self.models:
            raise Invalid("at least one model is needed")
        if not self.gpus:
            raise Invalid("at least one GPU, real or simulated, is needed")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise Invalid("model names must be unique")

    @property
    def page_bytes(self) -> int:
        return self.page_mib * MIB
