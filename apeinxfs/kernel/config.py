"""What the kernel is booted with: models, GPUs, KV page size, scheduler policy.

Frozen attrs records with validators; apeinxfs/config.py builds them from TOML. Driver
knobs live in each model's `options` and are the driver's to validate.
"""
import decimal
import functools
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import attrs

from .endpoints import EndpointConfig, check_endpoints, check_gpus_exist, endpoints_of, served_gpus
from .errors import Invalid
from .kvmem import bytes_per_token
from .sched import POLICIES
from .spec import Validator
from .tenant_config import TenantConfig, tenant_from_dict

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}
MIB = 1 << 20
SLOTS_MAX = 4096  # batch slots of one GPU: more is a typo (the scheduler walks them at each event)


def _positive(_inst: object, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if type(value) is not int or value <= 0:
        raise Invalid(f"{attribute.name} must be a positive integer, not {value!r}")


def _non_negative(_inst: object, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise Invalid(f"{attribute.name} must be a number >= 0, not {value!r}")


def _count(_inst: object, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if type(value) is not int or value < 0:
        raise Invalid(f"{attribute.name} must be an integer >= 0, not {value!r}")


def _one_of(choices: Collection[str]) -> Validator:
    def check(_inst: object, attribute: "attrs.Attribute[Any]", value: Any) -> None:
        if value not in choices:
            raise Invalid(f"{attribute.name} must be one of {', '.join(sorted(choices))}, not {value!r}")
    return check


PRICE_MAX = decimal.Decimal(10) ** 12  # a bill of it stays within decimal's 28 digits: 9E+999999999 is a number


def _price(value: decimal.Decimal | float | str) -> decimal.Decimal:
    """A price as an exact decimal (TOML floats go through their shortest text form)."""
    try:
        price = decimal.Decimal(str(value))
    except decimal.InvalidOperation:
        raise Invalid(f"a price must be a number, not {value!r}") from None
    if not price.is_finite() or not 0 <= price < PRICE_MAX:
        raise Invalid(f"a price must be a number from 0 up to (not including) {PRICE_MAX}, not {str(value)[:40]}")
    return price


@attrs.frozen
class Price:
    """What a model costs: per 1k input and output tokens, per GPU-second, per KV page-second."""

    input_per_1k: decimal.Decimal = attrs.field(default=decimal.Decimal(0), converter=_price)
    output_per_1k: decimal.Decimal = attrs.field(default=decimal.Decimal(0), converter=_price)
    gpu_second: decimal.Decimal = attrs.field(default=decimal.Decimal(0), converter=_price)
    kv_page_second: decimal.Decimal = attrs.field(default=decimal.Decimal(0), converter=_price)


def _options(value: Mapping[str, Any]) -> dict[str, Any]:
    """A model's driver options, as a dict of their own (the driver checks them)."""
    return dict(value)


def _price_table(value: Price | Mapping[str, Any]) -> Price:
    return value if isinstance(value, Price) else Price(**value)


@attrs.frozen(slots=False)  # a slotted attrs class with a cached_property gets a __getattr__, and then
class ModelConfig:  # every attribute read of it takes CPython's slow generic path
    """A model: its driver, context length and KV shape (for bytes per token)."""

    name: str
    driver: str = "sim"
    context: int = attrs.field(default=32768, validator=_positive)
    layers: int = attrs.field(default=32, validator=_positive)
    kv_heads: int = attrs.field(default=8, validator=_positive)
    head_dim: int = attrs.field(default=128, validator=_positive)
    dtype: str = attrs.field(default="fp16", validator=_one_of(DTYPE_BYTES))
    options: dict[str, Any] = attrs.field(factory=dict, converter=_options)
    price: Price = attrs.field(factory=Price, converter=_price_table)
    # While its engine is unreachable (engines.py): how long its queued tasks wait, how often one resumes
    engine_wait_s: float = attrs.field(default=300.0, validator=_non_negative)
    resume_limit: int = attrs.field(default=3, validator=_count)
    # One engine per GPU or group of GPUs (endpoints.py); none: one engine (options.url) for every GPU
    endpoints: tuple[EndpointConfig, ...] = attrs.field(default=(), converter=endpoints_of)

    def __attrs_post_init__(self) -> None:
        check_endpoints(self.name, self.endpoints, self.options)

    @functools.cached_property
    def token_bytes(self) -> int:
        return bytes_per_token(self.layers, self.kv_heads, self.head_dim, DTYPE_BYTES[self.dtype])

    @functools.cached_property
    def gpu_set(self) -> frozenset[int] | None:
        """The GPUs its endpoints are bound to; None: every GPU."""
        return served_gpus(self.endpoints)


@attrs.frozen
class GpuConfig:
    """One GPU, real or simulated: its memory, the part given to KV, its batch slots."""

    index: int
    name: str = "sim-gpu"
    memory_mib: int = attrs.field(default=24576, validator=_positive)
    kv_mib: int = attrs.field(default=16384, validator=_positive)
    slots: int = attrs.field(default=8, validator=_positive)
    simulated: bool = True

    @slots.validator
    def _few_slots(self, attribute: "attrs.Attribute[int]", value: int) -> None:
        if value > SLOTS_MAX:
            raise Invalid(f"slots must be at most {SLOTS_MAX}, not {value!r}")


def _fraction(_inst: object, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
        raise Invalid(f"{attribute.name} must be a number from 0 up to (not including) 1, not {value!r}")


@attrs.frozen
class SchedConfig:
    """Scheduler knobs: policy, token costs, preemption threshold and hysteresis."""

    policy: str = attrs.field(default="fair", validator=_one_of(POLICIES))
    input_cost: float = attrs.field(default=1.0, validator=_non_negative)
    output_cost: float = attrs.field(default=2.0, validator=_non_negative)
    preempt_gap: float = attrs.field(default=3.0, validator=_non_negative)
    slice_tokens: int = attrs.field(default=256, validator=_positive)
    min_run_tokens: int = attrs.field(default=16, validator=_non_negative)
    kv_preempt_limit: int = attrs.field(default=3, validator=_non_negative)
    deadline_boost_s: float = attrs.field(default=5.0, validator=_non_negative)
    pressure_cost: float = attrs.field(default=1.0, validator=_non_negative)
    kv_watermark: float = attrs.field(default=0.05, validator=_fraction)


def at_least(section: str, least: int) -> Validator:
    """A validator of a `[section]` key: an integer (not a bool) >= `least`."""
    def check(_inst: object, attribute: "attrs.Attribute[Any]", value: Any) -> None:
        if type(value) is not int or value < least:
            raise Invalid(f"{section}.{attribute.name} must be an integer >= {least}, not {value!r}")
    return check


def _age(_inst: object, attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < float("inf"):
        raise Invalid(f"retention.{attribute.name} must be a number of seconds >= 0, not {value!r}")


@attrs.frozen
class MemoryRetention:
    """What the kernel keeps in memory (`[retention]`): exited tasks, by count and by age, trace and audit
    lines. What it forgets stays in the trace and audit archives and the bills (retention.py)."""

    tasks: int = attrs.field(default=10000, validator=at_least("retention", 0))  # exited tasks kept in /tasks
    task_age_s: float = attrs.field(default=3600, validator=_age)  # exited tasks older than this go
    trace_lines: int = attrs.field(default=100000, validator=at_least("retention", 1))  # lines of /trace/events and its views
    audit_lines: int = attrs.field(default=10000, validator=at_least("retention", 1))  # lines of /trace/audit

    @property
    def task_age_us(self) -> int:
        return int(self.task_age_s * 1_000_000)


@attrs.frozen
class KernelLimits:
    """What the kernel holds at most (`[limits]`): live tasks on this node, as cgroup pids.max (a submit past
    it is EAGAIN). The section's other keys bound what a write may hold (the daemon's Limits)."""

    live_tasks: int = attrs.field(default=100000, validator=at_least("limits", 1))


ROLES = ("user", "viewer", "none")


@attrs.frozen
class AccessConfig:
    """Who is an admin besides root and the daemon's owner, and what callers in no tenant may do."""

    admin_uids: tuple[int, ...] = attrs.field(default=(), converter=tuple[int, ...])
    admin_gids: tuple[int, ...] = attrs.field(default=(), converter=tuple[int, ...])
    unmapped: str = attrs.field(default="user", validator=_one_of(ROLES))
    owner_uid: int = 0


def _tenants(value: Iterable[TenantConfig | Mapping[str, Any]]) -> tuple[TenantConfig, ...]:
    return tuple(t if isinstance(t, TenantConfig) else tenant_from_dict(t) for t in value)


@attrs.frozen
class KernelConfig:
    """Everything the kernel needs to boot."""

    models: tuple[ModelConfig, ...] = attrs.field(converter=tuple[ModelConfig, ...])
    gpus: tuple[GpuConfig, ...] = attrs.field(converter=tuple[GpuConfig, ...])
    page_mib: int = attrs.field(default=64, validator=_positive)
    sched: SchedConfig = attrs.Factory(SchedConfig)
    tenants: tuple[TenantConfig, ...] = attrs.field(default=(TenantConfig("default"),), converter=_tenants)
    node: str = "local"
    access: AccessConfig = attrs.Factory(AccessConfig)
    billing_period_s: int = attrs.field(default=86400, validator=_positive)
    utc_offset_s: int = 0  # the daemon's time zone at boot: policy `time=` windows are local time
    retention: MemoryRetention = attrs.Factory(MemoryRetention)
    limits: KernelLimits = attrs.Factory(KernelLimits)
    pid_blocks: bool = False  # pids come in blocks the cluster grants (PidBlock events); else 1, 2, 3...

    @property
    def policy(self) -> str:
        return self.sched.policy

    def __attrs_post_init__(self) -> None:
        if not self.models:
            raise Invalid("at least one model is needed")
        if not self.gpus:
            raise Invalid("at least one GPU, real or simulated, is needed")
        for kind, items in (("model", self.models), ("tenant", self.tenants)):
            names = [item.name for item in items]
            if len(set(names)) != len(names):
                raise Invalid(f"{kind} names must be unique")
        for model in self.models:
            check_gpus_exist(model.name, model.endpoints, len(self.gpus))

    @property
    def page_bytes(self) -> int:
        return self.page_mib * MIB


NESTED_LISTS = {"models": ModelConfig, "gpus": GpuConfig, "tenants": TenantConfig}
NESTED = {"sched": SchedConfig, "access": AccessConfig, "retention": MemoryRetention, "limits": KernelLimits}


def kernel_config_from_dict(data: Mapping[str, Any]) -> KernelConfig:
    """The KernelConfig that `attrs.asdict` turned into `data` (the journal's boot record)."""
    lists = {key: [record(**item) for item in data[key]] for key, record in NESTED_LISTS.items() if key in data}
    nested = {key: record(**data[key]) for key, record in NESTED.items() if key in data}
    return KernelConfig(**{**data, **lists, **nested})
