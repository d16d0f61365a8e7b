"""Parsed, validated commands: a task submission and the per-task control verbs.

These are frozen attrs records whose validators raise Invalid, so a TaskSpec that
exists is a TaskSpec that is well formed. Whether it fits the running system (a known
model, enough KV memory) is the kernel's question, not this module's.
"""
import re
from collections.abc import Callable
from typing import Any

import attrs

from .errors import Invalid
from .sampling import Sampling, SamplingValue, sampling_of

NAME_MAX = 64
PROMPT_MAX = 1 << 20
TOKENS_MAX = 10_000_000
DEADLINE_MAX_US = 30 * 86400 * 1_000_000
DEFAULT_MAX_TOKENS = 256
DEFAULT_PRIO = 5
NAME_BANNED = re.compile(r'[\s"\\/,]')  # whitespace (str.isspace's), quotes, backslashes, slashes, commas
CTL_VERBS = ("kill", "stop", "cont", "prio")

# An attrs validator: (instance, attribute, value), raising Invalid. It is called with values of any
# type (a journal row, a JSON submit), so its value is typed as such.
Validator = Callable[[Any, Any, Any], None]


def check_name(what: str) -> Validator:
    def check(_inst: object, _attr: object, value: Any) -> None:
        if not isinstance(value, str) or not value or len(value) > NAME_MAX:
            raise Invalid(f"{what} must be 1..{NAME_MAX} characters")
        if not value.isprintable() or NAME_BANNED.search(value):  # names are trace CSV columns
            raise Invalid(f"{what} {value!r} may not hold spaces, quotes, commas, slashes or control characters")
    return check


def check_entry_name(what: str) -> Validator:
    """check_name, and not `.` or `..`: the name is also a directory's in the tree (/models/NAME, /tenants/NAME)."""
    named = check_name(what)

    def check(inst: object, attr: object, value: Any) -> None:
        named(inst, attr, value)
        if value in (".", ".."):
            raise Invalid(f"{what} {value!r} cannot be a directory name")
    return check


def _check_int(what: str, low: int, high: int) -> Validator:
    def check(_inst: object, _attr: object, value: Any) -> None:
        if type(value) is not int or not low <= value <= high:
            raise Invalid(f"{what} must be an integer in {low}..{high}, not {value!r}")
    return check


def _check_prompt(_inst: object, _attr: object, value: Any) -> None:
    if not isinstance(value, str) or len(value.encode()) > PROMPT_MAX:
        raise Invalid(f"prompt must be text of at most {PROMPT_MAX} bytes")


def _check_deadline(_inst: object, _attr: object, value: Any) -> None:
    if value is not None and (type(value) is not int or not 0 < value <= DEADLINE_MAX_US):
        raise Invalid("deadline must be positive and at most 30 days")


@attrs.frozen
class TaskSpec:
    """What a submit line asks for; the model and tenant are resolved by the kernel."""

    name: str = attrs.field(validator=check_name("name"))
    max_tokens: int = attrs.field(default=DEFAULT_MAX_TOKENS,
                                  validator=_check_int("max_tokens", 1, TOKENS_MAX))
    prio: int = attrs.field(default=DEFAULT_PRIO, validator=_check_int("prio", 0, 9))
    model: str | None = attrs.field(default=None, validator=attrs.validators.optional(check_name("model")))
    tenant: str | None = attrs.field(default=None, validator=attrs.validators.optional(check_name("tenant")))
    deadline_us: int | None = attrs.field(default=None, validator=_check_deadline)
    prompt: str = attrs.field(default="", validator=_check_prompt)
    parent: int | None = attrs.field(default=None, validator=attrs.validators.optional(
        _check_int("parent", 1, 2**62)))
    sampling: Sampling | None = attrs.field(default=None, converter=sampling_of)

    @property
    def sampling_fields(self) -> dict[str, SamplingValue]:
        """The sampling keys set for this task, by their submit names: what a driver sends."""
        return self.sampling.fields if self.sampling else {}


def _check_verb(_inst: object, _attr: object, value: Any) -> None:
    if value not in CTL_VERBS:
        raise Invalid(f"unknown command {value!r}: expected one of {', '.join(CTL_VERBS)}")


@attrs.frozen
class TaskCommand:
    """One line written to /tasks/PID/ctl: kill | stop | cont | prio N."""

    verb: str = attrs.field(validator=_check_verb)
    arg: int | None = attrs.field(default=None)

    def __attrs_post_init__(self) -> None:
        if (self.verb == "prio") != (self.arg is not None):
            raise Invalid("prio takes one integer 0..9; other commands take none")
        if self.arg is not None:
            _check_int("prio", 0, 9)(self, None, self.arg)
