"""A tenant's settings: members, weight, quota, budget and sandbox, as frozen records.

Each group is also a cgroup-style file under /tenants/NAME/ (`KEY VALUE` lines, `max`
for unlimited, writes mirror reads): `KEYS` of each record says how a key reads and
parses. Config TOML and the journal build the same records with `tenant_from_dict`; a name
new in the config or /ctl/tenants is also held to `check_new_name`, history is not.
What the settings do (admission, holds, ledgers) is tenancy.py's; who a caller is,
access.py's.
"""
import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, Protocol, TypeVar

import attrs

from .errors import Invalid
from .grammar import parse_duration_us, parse_int
from .ledger import Limit
from .spec import Validator, check_entry_name, check_name

US = 1_000_000

# How one key of a group reads and parses in its file: show(value) and parse(text, key). The value
# is read and set by the key's name, so its type is known per key only (the record's validators check it).
KeyFormat = tuple[Callable[[Any], str], Callable[[str, str], Any]]


class Group(attrs.AttrsInstance, Protocol):
    """A group of settings: a record whose KEYS say how each key reads and parses."""

    KEYS: ClassVar[dict[str, KeyFormat]]


def _limit(low: int, high: int) -> Validator:
    """An optional integer in low..high; None means `max` (unlimited)."""
    def check(_inst: object, attribute: "attrs.Attribute[int | None]", value: Any) -> None:
        if value is not None and (type(value) is not int or not low <= value <= high):
            raise Invalid(f"{attribute.name} must be an integer in {low}..{high} or max, not {value!r}")
    return check


def _window(_inst: object, attribute: "attrs.Attribute[int]", value: int | None) -> None:
    """A ledger's window: seconds in 1..366 days; never `max` (a ledger needs one to reset)."""
    if type(value) is not int or not 1 <= value <= 366 * 86400:
        raise Invalid(f"{attribute.name} must be a duration of 1s..366d, not {'max' if value is None else repr(value)}")


def _ids(value: Iterable[int]) -> tuple[int, ...]:
    ids = tuple(value)
    if any(type(i) is not int or not 0 <= i < 2**32 for i in ids):
        raise Invalid(f"uids and gids must be integers in 0..{2**32 - 1}, not {list(ids)!r}")
    return ids


def _names(value: Iterable[str]) -> tuple[str, ...]:
    names = tuple(value)
    for name in names:
        check_name("model")(None, None, name)
    return names


# -- how a value reads and parses in a file ----------------------------------------------

def show_limit(value: int | None) -> str:
    return "max" if value is None else str(value)


def parse_limit(text: str, what: str) -> int | None:
    return None if text == "max" else parse_int(text, what)


def show_seconds(value: int | None) -> str:
    return "max" if value is None else f"{value}s"


def parse_seconds(text: str, what: str) -> int | None:
    if text == "max":
        return None
    seconds = parse_duration_us(text) // US
    if seconds < 1:
        raise Invalid(f"{what} must be at least one second, not {text!r}")
    return seconds


def show_list(values: Iterable[int]) -> str:
    return ",".join(map(str, values)) or "-"


def parse_ids(text: str, what: str) -> tuple[int, ...]:
    return () if text == "-" else _ids(parse_int(part, what) for part in text.split(","))


def parse_names(text: str, what: str) -> tuple[str, ...]:
    return () if text in ("-", "*") else _names(text.split(","))


def show_names(values: Iterable[str]) -> str:
    return ",".join(values) or "*"


# -- the records ---------------------------------------------------------------------------

@attrs.frozen
class Members:
    """Who belongs to the tenant: users (may submit and act on its tasks) and viewers (read only)."""

    uids: tuple[int, ...] = attrs.field(default=(), converter=_ids)
    gids: tuple[int, ...] = attrs.field(default=(), converter=_ids)
    viewer_uids: tuple[int, ...] = attrs.field(default=(), converter=_ids)
    viewer_gids: tuple[int, ...] = attrs.field(default=(), converter=_ids)

    KEYS: ClassVar[dict[str, KeyFormat]] = {
        "uids": (show_list, parse_ids), "gids": (show_list, parse_ids),
        "viewer_uids": (show_list, parse_ids), "viewer_gids": (show_list, parse_ids)}


@attrs.frozen(slots=False)  # a slotted attrs class with a cached_property gets a __getattr__, and then
class Quota:  # every attribute read of it takes CPython's slow generic path
    """Hard limits: tokens per window, live tasks, KV pages held, percent of batch slots."""

    tokens: int | None = attrs.field(default=None, validator=_limit(1, 10**12))
    window: int = attrs.field(default=60, validator=_window)
    tasks: int | None = attrs.field(default=None, validator=_limit(1, 10**7))
    kv_pages: int | None = attrs.field(default=None, validator=_limit(1, 10**9))
    gpu: int | None = attrs.field(default=None, validator=_limit(1, 100))

    KEYS: ClassVar[dict[str, KeyFormat]] = {
        "tokens": (show_limit, parse_limit), "window": (show_seconds, parse_seconds),
        "tasks": (show_limit, parse_limit), "kv_pages": (show_limit, parse_limit),
        "gpu": (show_limit, parse_limit)}

    @functools.cached_property
    def limit(self) -> Limit:
        """The token ledger's terms (built once per record: every token served is charged)."""
        return Limit(self.tokens, self.window)


@attrs.frozen(slots=False)  # a slotted attrs class with a cached_property gets a __getattr__, and then
class Budget:  # every attribute read of it takes CPython's slow generic path
    """Tokens per window that may be overdrawn by `overdraw` percent, paid back in the next window."""

    tokens: int | None = attrs.field(default=None, validator=_limit(1, 10**15))
    window: int = attrs.field(default=86400, validator=_window)
    overdraw: int = attrs.field(default=10, validator=_limit(0, 100))

    KEYS: ClassVar[dict[str, KeyFormat]] = {
        "tokens": (show_limit, parse_limit), "window": (show_seconds, parse_seconds),
        "overdraw": (str, lambda text, what: parse_int(text, what))}

    @functools.cached_property
    def limit(self) -> Limit:
        """The token ledger's terms (built once per record: every token served is charged)."""
        return Limit(self.tokens, self.window, self.overdraw)


@attrs.frozen
class Sandbox:
    """Per-task limits: the most tokens one task may ask for, its wall time, the models it may use."""

    max_tokens: int | None = attrs.field(default=None, validator=_limit(1, 10**7))
    max_wall: int | None = attrs.field(default=None, validator=_limit(1, 366 * 86400))
    models: tuple[str, ...] = attrs.field(default=(), converter=_names)

    KEYS: ClassVar[dict[str, KeyFormat]] = {
        "max_tokens": (show_limit, parse_limit), "max_wall": (show_seconds, parse_seconds),
        "models": (show_names, parse_names)}


G = TypeVar("G", Members, Quota, Budget, Sandbox)  # one of the groups


def _weight(_inst: object, attribute: "attrs.Attribute[int]", value: Any) -> None:
    if type(value) is not int or not 1 <= value <= 10000:
        raise Invalid(f"{attribute.name} must be an integer in 1..10000 (cgroup weight), not {value!r}")


def _record(cls: type[G], value: G | Mapping[str, Any]) -> G:
    """A record, or the dict of one (TOML tables, journal rows, durations as text) as one."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise Invalid(f"{cls.__name__.lower()} must be a table, not {value!r}")
    return record_from_dict(cls, value)


def record_from_dict(cls: type[G], data: Mapping[str, Any]) -> G:
    """A record from its keys; text values parse as in the files (`max`, `1d`)."""
    unknown = set(data) - set(cls.KEYS)
    if unknown:
        raise Invalid(f"unknown {cls.__name__.lower()} key {sorted(unknown)[0]!r}: one of {', '.join(cls.KEYS)}")
    return cls(**{key: cls.KEYS[key][1](value, key) if isinstance(value, str) else value
                  for key, value in data.items()})


# The converters of TenantConfig's groups (attrs and mypy take a converter by its name).
def _members(value: Members | Mapping[str, Any]) -> Members:
    return _record(Members, value)


def _quota(value: Quota | Mapping[str, Any]) -> Quota:
    return _record(Quota, value)


def _budget(value: Budget | Mapping[str, Any]) -> Budget:
    return _record(Budget, value)


def _sandbox(value: Sandbox | Mapping[str, Any]) -> Sandbox:
    return _record(Sandbox, value)


@attrs.frozen
class TenantConfig:
    """A tenant: its name, cgroup-style weight (1..10000, default 100) and the groups above."""

    name: str = attrs.field(validator=check_name("tenant"))  # and check_new_name where one is made now
    weight: int = attrs.field(default=100, validator=_weight)
    members: Members = attrs.field(factory=Members, converter=_members)
    quota: Quota = attrs.field(factory=Quota, converter=_quota)
    budget: Budget = attrs.field(factory=Budget, converter=_budget)
    sandbox: Sandbox = attrs.field(factory=Sandbox, converter=_sandbox)


GROUPS: dict[str, type[Group]] = {"members": Members, "quota": Quota, "budget": Budget, "sandbox": Sandbox}


def check_new_name(name: str) -> None:
    """The rule for a tenant made now (the config, /ctl/tenants): not `.` or `..`, which name directories of
    the tree (Invalid). Not for one the journal or a snapshot holds from before the rule: it is kept."""
    check_entry_name("tenant")(None, None, name)


def tenant_from_dict(data: Mapping[str, Any]) -> TenantConfig:
    """A tenant from a TOML table or journal row; unknown keys are refused by name."""
    unknown = set(data) - {"name", "weight", *GROUPS}
    if unknown:
        raise Invalid(f"unknown tenant key {sorted(unknown)[0]!r}")
    return TenantConfig(**data)


def show_group(record: Group) -> str:
    """A group as its file reads: `KEY VALUE` lines."""
    return "".join(f"{key} {show(getattr(record, key))}\n" for key, (show, _) in type(record).KEYS.items())


def set_in_group(record: G, line: str) -> G:
    """The record with one `KEY VALUE` line written to its file applied."""
    key, _, value = line.strip().partition(" ")
    keys = type(record).KEYS
    if key not in keys or not value.strip():
        raise Invalid(f"expected KEY VALUE with KEY one of {', '.join(keys)}, not {line.strip()[:60]!r}")
    return attrs.evolve(record, **{key: keys[key][1](value.strip(), key)})
