"""The text grammar of the ctl files: submit lines (three forms), kill and task ctl lines.

Pure functions from one decoded line to a validated record (kernel/spec.py), raising
Invalid with a reason a person can act on. No state: nothing here knows which models,
tenants or pids exist.
"""
import json
import re
from collections.abc import Collection, Iterable
from typing import Any

from .errors import Invalid
from .sampling import FLOAT_RANGES, KEYS as SAMPLING_KEYS, Sampling, SamplingValue
from .spec import TaskCommand, TaskSpec

SUBMIT_KEYS = {"name", "max_tokens", "prio", "model", "tenant", "deadline", "prompt", "parent", *SAMPLING_KEYS}
_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(us|ms|s|m|h|d)?")  # ASCII digits only: \\d takes any script's
_UNIT_US = {"us": 1, "ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}
_INT = re.compile(r"[+-]?[0-9]{1,12}")
_NUMBER = re.compile(r"[+-]?[0-9]{1,12}(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?")  # a float's repr fits
_VALUE_END = re.compile(r"\s|$")
_SPACE = re.compile(r"\s")
_QUOTE_OR_ESCAPE = re.compile(r'["\\]')

# TaskSpec's keyword arguments as read from a line or a JSON object: any type until its
# validators have checked them (they raise Invalid naming the key).
SpecArgs = dict[str, Any]


def parse_duration_us(text: str) -> int:
    """`30`, `30s`, `500ms`, `2m`, `1.5h`, `1d` -> microseconds (a bare number is seconds)."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise Invalid(f"bad duration {text!r}: use 30, 30s, 500ms or 2m")
    value = float(match.group(1)) * _UNIT_US[match.group(2) or "s"]
    if not 0 < value < 1e15:
        raise Invalid(f"duration {text!r} out of range")
    return max(1, round(value))


def parse_int(text: str, what: str) -> int:
    """A decimal integer, or Invalid naming `what`."""
    if not _INT.fullmatch(text):
        raise Invalid(f"{what} must be an integer, not {text[:40]!r}")
    return int(text)


def parse_number(text: str, what: str) -> float:
    """A decimal number (`0`, `0.7`, `-1.5`, `1e-05`, ASCII digits only), or Invalid naming `what`."""
    if not _NUMBER.fullmatch(text):
        raise Invalid(f"{what} must be a number, not {text[:40]!r}")
    return float(text)


def parse_submit(line: str, tenant: str | None = None) -> TaskSpec:
    """One submit line in any of the three forms of docs/apeinxfs.5.md; a task without a parent that
    names no tenant gets `tenant` (built once, not again with it: a spec's validators are half a submit's
    parse)."""
    line = line.strip()
    if line.startswith("{"):
        return _from_json(line, tenant)
    first = (line.split(None, 1) or [""])[0]
    if "=" in first:
        return _from_pairs(split_pairs(line, repeatable=("stop",)), tenant)
    return _from_seed(line.split(), tenant)


def _from_seed(fields: list[str], tenant: str | None = None) -> TaskSpec:
    if len(fields) not in (3, 4):
        raise Invalid("expected NAME TOKENS PRIORITY [DEADLINE] or key=value pairs or a JSON object")
    deadline = parse_duration_us(fields[3]) if len(fields) == 4 else None
    return TaskSpec(name=fields[0], max_tokens=parse_int(fields[1], "TOKENS"),
                    prio=parse_int(fields[2], "PRIORITY"), deadline_us=deadline, tenant=tenant)


def _with_tenant(kwargs: SpecArgs, tenant: str | None) -> SpecArgs:
    """The arguments with `tenant` unless they name one or a parent (a child runs in its parent's)."""
    if kwargs.get("tenant") is None and kwargs.get("parent") is None:
        kwargs["tenant"] = tenant
    return kwargs


def _from_pairs(pairs: dict[str, str], tenant: str | None = None) -> TaskSpec:
    kwargs: SpecArgs = {}
    for key, value in pairs.items():
        if key in ("max_tokens", "prio", "parent"):
            kwargs[key] = parse_int(value, key)
        elif key == "deadline":
            kwargs["deadline_us"] = parse_duration_us(value)
        elif key in SAMPLING_KEYS:
            kwargs[key] = _sampling_value(key, value)
        else:
            kwargs[key] = value
    kwargs.setdefault("name", "task")
    return TaskSpec(**_with_sampling(_with_tenant(kwargs, tenant)))


def _sampling_value(key: str, value: str) -> SamplingValue:
    """A sampling key's value of the key=value form: stop strings split at `|`, numbers parsed."""
    if key == "stop":
        return value.split("|")
    return parse_number(value, key) if key in FLOAT_RANGES else parse_int(value, key)


def _with_sampling(kwargs: SpecArgs) -> SpecArgs:
    """TaskSpec's keyword arguments with the sampling keys among them gathered into one Sampling."""
    sampling = {key: kwargs.pop(key) for key in SAMPLING_KEYS if key in kwargs}
    return {**kwargs, "sampling": Sampling(**sampling) if sampling else None}


def _from_json(line: str, tenant: str | None = None) -> TaskSpec:
    try:
        obj = json.loads(line, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise Invalid("bad JSON: nested too deep") from None
    except ValueError as exc:  # Python's own words for a number of too many digits name its internals
        raise Invalid("bad JSON: a number of over 4300 digits" if "Exceeds the limit" in str(exc)
                      else f"bad JSON: {exc}") from None
    _require_unicode(obj)
    if not isinstance(obj, dict):
        raise Invalid("a JSON submit must be one object")
    _reject_unknown(obj)
    if "deadline" in obj:
        obj["deadline_us"] = _json_deadline(obj.pop("deadline"))
    obj.setdefault("name", "task")
    return TaskSpec(**_with_sampling(_with_tenant(obj, tenant)))


def _require_unicode(obj: object) -> None:
    """JSON's \\uD800-\\uDFFF escapes can make lone surrogates, which are not text: Invalid."""
    try:
        json.dumps(obj, ensure_ascii=False).encode()
    except UnicodeEncodeError as exc:
        raise Invalid(f"lone surrogate {exc.object[exc.start:exc.end]!r} in a JSON string: "
                      "text must be valid Unicode (escape a pair, or write the character itself)") from None
    except RecursionError:
        raise Invalid("bad JSON: nested too deeply") from None


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object whose keys are each given once, as in the key=value form."""
    obj: dict[str, object] = {}
    for key, value in pairs:
        if key in obj:
            raise Invalid(f"key {key!r} given twice")
        obj[key] = value
    return obj


def _json_deadline(value: object) -> int:
    if isinstance(value, str):
        return parse_duration_us(value)
    if (type(value) is int or type(value) is float) and 0 < value < 1e9:
        return max(1, round(value * 1_000_000))
    raise Invalid("deadline must be a number of seconds or a duration like \"30s\"")


def _reject_unknown(keys: Iterable[str], known: Collection[str] = SUBMIT_KEYS) -> None:
    unknown = sorted(set(keys) - set(known))
    if unknown:
        raise Invalid(f"unknown key {unknown[0]!r}: known keys are {', '.join(sorted(known))}")


def split_pairs(line: str, known: Collection[str] | None = SUBMIT_KEYS,
                repeatable: Collection[str] = ()) -> dict[str, str]:
    """`a=1 b="x y"` -> {'a': '1', 'b': 'x y'}, with \\n \\t \\" \\\\ escapes in quotes; keys among `known` (None: any).

    A key in `repeatable` may be given again: its values are joined with `|`."""
    pairs: dict[str, str] = {}
    pos = 0
    while pos < len(line):
        if line[pos].isspace():
            pos += 1
            continue
        key, value, pos = _one_pair(line, pos)
        if key in pairs and key not in repeatable:
            raise Invalid(f"key {key!r} given twice")
        pairs[key] = f"{pairs[key]}|{value}" if key in pairs else value
    if known is not None:
        _reject_unknown(pairs, known)
    return pairs


def _one_pair(line: str, pos: int) -> tuple[str, str, int]:
    eq = line.find("=", pos)
    space = _SPACE.search(line, pos)  # not line[pos:]: a copy per pair is quadratic
    if eq < 0 or (space and space.start() < eq):
        raise Invalid(f"expected key=value at {line[pos:pos + 20]!r}")
    key, pos = line[pos:eq], eq + 1
    if pos < len(line) and line[pos] == '"':
        value, pos = _quoted(line, pos + 1)
    else:
        end_match = _VALUE_END.search(line, pos)
        assert end_match is not None  # `$` matches at the end of the line at the latest
        end = end_match.start()
        value, pos = line[pos:end], end
        if '"' in value:
            raise Invalid(f"stray quote in value of {key!r}")
    return key, value, pos


def _quoted(line: str, pos: int) -> tuple[str, int]:
    """The value of a quoted one that starts at `pos` (after its quote), and where it ends; the text
    between a quote or escape and the next is copied whole, not a character at a time."""
    out: list[str] = []
    while (found := _QUOTE_OR_ESCAPE.search(line, pos)) is not None:
        at = found.start()
        out.append(line[pos:at])
        if line[at] == '"':
            if at + 1 < len(line) and not line[at + 1].isspace():
                raise Invalid("a closing quote must end the value")
            return "".join(out), at + 1
        escape = line[at + 1:at + 2]
        if escape not in _ESCAPES:
            raise Invalid(f"unknown escape \\{escape} (use \\n \\t \\\" \\\\)")
        out.append(_ESCAPES[escape])
        pos = at + 2
    raise Invalid("unterminated quoted value")


def parse_pid(line: str) -> int:
    """A line naming one pid, as written to /ctl/kill."""
    fields = line.split()
    if len(fields) != 1:
        raise Invalid("expected one PID")
    if not (fields[0].isascii() and fields[0].isdigit() and len(fields[0]) <= 12) or int(fields[0]) == 0:
        raise Invalid(f"PID must be a positive integer of digits only, not {fields[0][:40]!r}")
    return int(fields[0])


def parse_task_command(line: str) -> TaskCommand:
    """A line written to /tasks/PID/ctl."""
    fields = line.split()
    if not fields or len(fields) > 2:
        raise Invalid("expected kill | stop | cont | prio N")
    arg = parse_int(fields[1], "prio") if len(fields) == 2 else None
    return TaskCommand(verb=fields[0], arg=arg)
