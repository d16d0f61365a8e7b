"""Configuration: the embedded defaults (defaults.toml) merged with an optional TOML file.

Produces a frozen `Config`: the kernel's config plus the daemon's own settings. GPUs
come from NVML when an NVIDIA driver is present (drivers/nvml.py), else simulated ones.
Unknown keys are refused at start, naming the key.
"""
import os
import time
import tomllib
from importlib import resources

import attrs

from .cluster import settings as cluster_settings
from .drivers import nvml
from .kernel.config import (AccessConfig, GpuConfig, KernelConfig, KernelLimits, MemoryRetention, ModelConfig, SchedConfig,
                            at_least)
from .kernel.errors import Invalid
from .nodes import buffers, openfiles
from .kernel.tenant_config import check_new_name, parse_seconds, tenant_from_dict

SECTIONS = {
    "daemon": {"node", "max_waiters", "max_waiters_per_uid", "state_dir", "check_invariants"},
    "kv": {"page_mib"},
    "scheduler": {"policy", "input_cost", "output_cost", "preempt_gap", "slice_tokens", "min_run_tokens", "kv_preempt_limit", "deadline_boost_s",
                  "pressure_cost", "kv_watermark"},
    "gpus": {"simulated", "memory_mib", "kv_mib", "kv_fraction", "slots"},
    "access": {"admin_uids", "admin_gids", "unmapped"},
    "billing": {"period"},
    "retention": {"trace_bytes", "trace_file_bytes", "tasks", "task_age_s", "trace_lines", "snapshot_rows",
                  "snapshot_s", "audit_lines", "audit_bytes"},
    "limits": {"live_tasks", "write_lines", "pending_bytes", "open_bytes"},
    "cluster": cluster_settings.KEYS,
}
LISTS = ("models", "tenants")
KERNEL_RETENTION = {"tasks", "task_age_s", "trace_lines", "audit_lines"}  # the [retention] keys the kernel applies
KERNEL_LIMITS = {"live_tasks"}  # the [limits] keys the kernel applies
SIMULATED_MAX = 1024  # simulated GPUs: more is a typo (each is a KV pool, a run queue, a driver loop)


def _positive(_config, attribute, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise Invalid(f"config: daemon.{attribute.name} must be a positive integer, not {value!r}")


def _seconds(_config, attribute, value) -> None:
    if type(value) not in (int, float) or not 0 < value < float("inf"):
        raise Invalid(f"config: retention.{attribute.name} must be a number of seconds > 0, not {value!r}")


@attrs.frozen
class Retention:
    """What the daemon keeps on disk, `[retention]`: the trace and audit archives' files (archive.py) by size, in
    bytes; how often a snapshot lets the journal drop its older rows (compaction.py). (The section's
    other keys, what stays in memory, are the kernel's MemoryRetention.)"""

    trace_file_bytes: int = attrs.field(default=64 << 20, validator=attrs.validators.gt(0))
    trace_bytes: int = attrs.field(default=0, validator=attrs.validators.ge(0))  # all files together; 0: no limit
    audit_bytes: int = attrs.field(default=0, validator=attrs.validators.ge(0))  # the audit archive's, the same
    # a snapshot every snapshot_rows journal rows, or snapshot_s seconds if a row came since
    snapshot_rows: int = attrs.field(default=1000, validator=[attrs.validators.instance_of(int),
                                                               attrs.validators.gt(0)])
    snapshot_s: float = attrs.field(default=300.0, validator=_seconds)


@attrs.frozen
class Limits:
    """What one write may hold, `[limits]`: its lines (a write is parsed and admitted in one go on the daemon's
    only thread), the unfinished lines one uid's open ctl descriptors buffer, and the distinct snapshots its open
    show files hold, in bytes. (The section's live_tasks is the kernel's KernelLimits.)"""

    write_lines: int = attrs.field(default=buffers.WRITE_LINES, validator=at_least("limits", 1))
    pending_bytes: int = attrs.field(default=buffers.PENDING_BYTES, validator=at_least("limits", 1))
    open_bytes: int = attrs.field(default=openfiles.OPEN_BYTES, validator=at_least("limits", 1))


@attrs.frozen
class Config:
    """The daemon's settings and the kernel's boot config."""

    kernel: KernelConfig
    state_dir: str
    max_waiters: int
    max_waiters_per_uid: int = attrs.field(validator=_positive)
    gpu_source: str
    check_invariants: bool = False  # check the kernel's invariants after every commit (slower: for tests)
    retention: Retention = Retention()
    limits: Limits = Limits()
    cluster: cluster_settings.ClusterSettings | None = None  # None: a single node (no [cluster] etcd)


def default_state_dir() -> str:
    """/var/lib/apeinxfs for root, else $XDG_STATE_HOME/apeinxfs."""
    if os.geteuid() == 0:
        return "/var/lib/apeinxfs"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.path.join(base, "apeinxfs")


def load(path: str | None = None, state_dir: str | None = None, use_nvml: bool = True) -> Config:
    """Defaults, overridden by the TOML file at `path`, then by `state_dir`."""
    raw = tomllib.loads(resources.files("apeinxfs").joinpath("defaults.toml").read_text())
    if path:
        raw = merge(raw, read_toml(path))
    return build(raw, state_dir, use_nvml)


def read_toml(path: str) -> dict:
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise Invalid(f"config {path}: {exc}") from None


def merge(base: dict, override: dict) -> dict:
    """Override `base` section by section; a `models` list replaces the default one."""
    merged = dict(base)
    for section, value in override.items():
        if section not in SECTIONS and section not in LISTS:
            raise Invalid(f"config: unknown section [{section}]")
        if section in LISTS:
            merged[section] = value
            continue
        unknown = set(value) - SECTIONS[section]
        if unknown:
            raise Invalid(f"config: unknown key {section}.{sorted(unknown)[0]}")
        merged[section] = {**base.get(section, {}), **value}
    return merged


def build(raw: dict, state_dir: str | None, use_nvml: bool) -> Config:
    daemon = raw["daemon"]
    gpus, source = _gpus(raw["gpus"], use_nvml)
    cluster = cluster_settings.settings_of(raw.get("cluster", {}), daemon["node"])
    try:
        models = [ModelConfig(**m) for m in raw["models"]]
        tenants = [tenant_from_dict(t) for t in raw.get("tenants") or [{"name": "default"}]]
        for tenant in tenants:
            check_new_name(tenant.name)
        period = raw["billing"]["period"]
        kept, limits = raw.get("retention", {}), raw.get("limits", {})
        kernel = KernelConfig(models=models, gpus=gpus, page_mib=raw["kv"]["page_mib"],
                              sched=SchedConfig(**raw["scheduler"]), tenants=tenants, node=daemon["node"],
                              access=AccessConfig(**raw["access"], owner_uid=os.getuid()),
                              billing_period_s=parse_seconds(period, "billing.period") if isinstance(period, str)
                              else period, utc_offset_s=time.localtime().tm_gmtoff,
                              pid_blocks=cluster is not None,
                              retention=MemoryRetention(**{k: v for k, v in kept.items() if k in KERNEL_RETENTION}),
                              limits=KernelLimits(**{k: v for k, v in limits.items() if k in KERNEL_LIMITS}))
        retention = Retention(**{key: value for key, value in kept.items() if key not in KERNEL_RETENTION})
    except (TypeError, ValueError) as exc:
        raise Invalid(f"config: {exc}") from None
    return Config(kernel=kernel, state_dir=state_dir or daemon.get("state_dir") or default_state_dir(),
                  max_waiters=daemon["max_waiters"],
                  max_waiters_per_uid=daemon["max_waiters_per_uid"], gpu_source=source, retention=retention,
                  limits=Limits(**{key: value for key, value in limits.items() if key not in KERNEL_LIMITS}), cluster=cluster,
                  check_invariants=_boolean(daemon["check_invariants"], "daemon.check_invariants"))


def _boolean(value, key: str) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"config: {key} must be true or false, not {value!r}")
    return value


def _gpus(section: dict, use_nvml: bool) -> tuple[list[GpuConfig], str]:
    found, why = nvml.discover() if use_nvml else ([], "NVML not asked for")
    if found:
        gpus = [GpuConfig(index=g.index, name=g.name, memory_mib=g.memory_mib, simulated=False,
                          kv_mib=max(1, int(g.memory_mib * section["kv_fraction"])), slots=section["slots"])
                for g in found]
        which = ", ".join(f"{g.index} {g.name} ({g.memory_mib} MiB)" for g in found)
        return gpus, f"{len(gpus)} NVIDIA GPU(s) found through NVML: {which}"
    simulated = section["simulated"]
    if type(simulated) is not int or not 0 <= simulated <= SIMULATED_MAX:
        raise Invalid(f"config: gpus.simulated must be an integer from 0 to {SIMULATED_MAX}, not {simulated!r}")
    gpus = [GpuConfig(index=i, memory_mib=section["memory_mib"], kv_mib=section["kv_mib"], slots=section["slots"])
            for i in range(simulated)]
    return gpus, f"no NVIDIA GPU ({why}): {len(gpus)} simulated GPU(s) from config"
