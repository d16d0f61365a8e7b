"""Reading what other nodes put in etcd, so that no value there can take this daemon down.

Records, task keys, settings entries and replicas in etcd were written by a node of this
version, of another version, or by a person with etcdctl. `loads` reads their JSON (too
deep a nesting is unreadable, not a RecursionError); `record_fields` checks a node record's
fields, the types and bounds the readers of a record rely on (routing, placement, /nodes);
`task_key_fields` a task key's. Whatever fails raises `Unreadable` (a ValueError) naming
what, which the readers log and skip. Not the records themselves (records.py, taskkeys.py).
The checks run on the watch path (every peer's record and live key, each put up to once a second), so they are
written for speed: bench/bench_peerdata.py measures them, tests/test_peerdata_checks.py holds them
to plain references of the same rules.
"""
import itertools
import json
import operator
import re

from ..kernel.access import UID_MAX, id_fits
from ..kernel.errors import ApeinxError
from ..kernel.spec import TaskSpec
from .prefixes import readable

MAX_COUNT = 2 ** 63  # counts, times and pids are etcd's int64
MAX_PIDS = 1_000_000  # live pids a record may name: more is not a node's (listing them would exhaust memory)
MAX_DEPTH = 64  # nesting of arrays and objects: far over any value a node writes, far under Python's stack
STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string, escapes and all (a run of plain bytes a step)
PLAIN_STRING = re.compile(rb'"[^"]*"')  # a JSON string where no backslash escapes a quote
NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
NOT_QUOTES_OR_BRACKETS = bytes(sorted(set(range(256)) - set(b'"[]{}')))
STEPS = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}
DIGITS = len(str(MAX_COUNT))  # digits of a count at most: int() of more is slow, and past 4,300 a ValueError
RANGE = re.compile(rf"(\d{{1,{DIGITS}}})(?:-(\d{{1,{DIGITS}}}))?", re.ASCII)
RANGE_BYTES = b"0123456789,-"
FIRST, LAST = operator.itemgetter(0), operator.itemgetter(-1)
LISTS_FROM = 100  # characters of pid ranges (about 10 ranges) from which reading them as JSON lists costs less
INTS = frozenset({"epoch", "seen_us", "gpus", "slots_free", "kv_pages_free", "queued", "running", "live",
                  "pid_next", "prefix_blocks"})


class Unreadable(ValueError):
    """A value in etcd this version cannot read (another version's, or written by hand)."""


def loads(data: bytes):
    """The JSON of a value in etcd; Unreadable if it is not JSON, or nested deeper than MAX_DEPTH (a bound
    every node draws alike, not Python's stack, whose depth differs between callers)."""
    if too_deep(data):
        raise Unreadable(f"nested deeper than {MAX_DEPTH}")
    try:
        return json.loads(data, parse_constant=_no_constant)
    except ValueError as exc:
        raise Unreadable(f"not JSON this version reads ({exc})") from None


def too_deep(data: bytes) -> bool:
    """Whether JSON text `data` nests deeper than MAX_DEPTH: never with MAX_DEPTH opening brackets or fewer in
    all, strings included (a count in C: most records), else as `deepest` finds."""
    return data.count(b"[") + data.count(b"{") > MAX_DEPTH and deepest(data) > MAX_DEPTH


def deepest(data: bytes) -> int:
    """How deep arrays and objects nest in JSON text `data` (brackets inside strings not counted)."""
    brackets = _outside_strings(data).translate(None, NOT_BRACKETS)
    return max(itertools.accumulate(map(STEPS.__getitem__, brackets), initial=0))


def _outside_strings(data: bytes) -> bytes:
    """`data` less its JSON strings; with no backslash in it (no escape: most values), only its quotes and
    brackets are kept first, so that the regex runs over those alone."""
    if b"\\" in data:
        return STRING.sub(b"", data)
    return PLAIN_STRING.sub(b"", data.translate(None, NOT_QUOTES_OR_BRACKETS))


def shallow(text: str) -> str:
    """`text`, JSON held in a value as a string (a settings entry's event), if nested MAX_DEPTH deep at most."""
    if too_deep(text.encode()):
        raise Unreadable(f"an event nested deeper than {MAX_DEPTH}")
    return text


def _no_constant(name: str):
    raise Unreadable(f"{name} is not a number this version reads")


def record_fields(fields: dict, known_pids: tuple[str, dict] | None = None) -> dict:
    """A node record's `fields` (those of this version), if each has the type and bounds its readers need; the
    live pids (`tasks`, `tenants`) not again if they are `known_pids`, the node's last record's, found readable."""
    for key, value in fields.items():
        if key in INTS and not (type(value) is int and 0 <= value < MAX_COUNT):
            raise Unreadable(f"{key} {str(value)[:40]!r} is not a count")
    for key in ("name", "prefixes") + (("advertise",) if fields.get("advertise") is not None else ()):
        if key in fields and type(fields[key]) is not str:
            raise Unreadable(f"{key} {str(fields[key])[:40]!r} is not a string")
    if not isinstance(fields.get("models", []), list) or not all(type(m) is str for m in fields.get("models", [])):
        raise Unreadable("models is not a list of names")
    live_pids = fields.get("tasks", ""), fields.get("tenants", {})
    if live_pids != known_pids:  # a record of a node whose live tasks did not change lists them as the last one did
        _live_pids(*live_pids)
    if not readable(fields.get("prefixes", "")):
        raise Unreadable("prefixes is not a filter of cached blocks")
    return fields


def _live_pids(tasks, tenants) -> None:
    """Unreadable unless `tasks` and each of `tenants` are pid ranges, MAX_PIDS of them at most."""
    if not isinstance(tenants, dict) or not all(type(name) is str for name in tenants):
        raise Unreadable("tenants is not an object of tenants' pid ranges")
    listed = sum(pid_count(text, f"tenant {name}'s pids") for name, text in tenants.items())
    if pid_count(tasks, "tasks") + listed > 2 * MAX_PIDS:
        raise Unreadable(f"names over {MAX_PIDS} live pids")


def pid_count(text, what: str) -> int:
    """How many pids "A-B,C" ranges name; Unreadable unless they are such ranges, ascending, of MAX_PIDS at most."""
    if type(text) is not str:
        raise Unreadable(f"{what} {str(text)[:40]!r} are not pid ranges")
    count = _counted_as_lists(text) if len(text) >= LISTS_FROM else None
    return _counted_by_parts(text, what) if count is None else count


def _counted_as_lists(text: str) -> int | None:
    """pid_count of ranges as pid_ranges writes them, read in C as JSON lists ("4-9,12" as [[4,9],[12]]); None
    for any text it does not find readable and in bounds so (a leading zero, an empty part, a refusal), which
    _counted_by_parts reads and names the fault of."""
    if not text.isascii() or text.encode().translate(None, RANGE_BYTES):
        return None
    try:
        ranges = json.loads("[[" + text.replace(",", "],[").replace("-", ",") + "]]")
    except ValueError:
        return None
    if not 1 <= min(map(len, ranges)) <= max(map(len, ranges)) <= 2:
        return None
    firsts, ends = list(map(FIRST, ranges)), list(map(LAST, ranges))
    if not (all(map(operator.le, firsts, ends)) and all(map(operator.lt, ends, firsts[1:])) and ends[-1] < MAX_COUNT):
        return None
    count = sum(ends) - sum(firsts) + len(ranges)
    return count if count <= MAX_PIDS else None


def _counted_by_parts(text: str, what: str) -> int:
    """pid_count a part at a time, naming the first part that is no range in order, or where the count
    passes MAX_PIDS."""
    count, last = 0, -1
    for part in filter(None, text.split(",")):
        found = RANGE.fullmatch(part)
        first, end = (int(found[1]), int(found[2] or found[1])) if found else (0, -1)
        if not last < first <= end < MAX_COUNT:
            raise Unreadable(f"{what}: {part[:40]!r} is not a pid range in order")
        count, last = count + end - first + 1, end
        if count > MAX_PIDS:
            raise Unreadable(f"{what} name over {MAX_PIDS} pids")
    return count


def task_key_fields(fields) -> dict:
    """A task key's `fields`, if it is an object whose fields have their types."""
    kinds = {"owner": str, "epoch": int, "uid": int, "spec": dict, "origin": str, "exited": bool}
    if not isinstance(fields, dict):
        raise Unreadable("a task key is a JSON object")
    for key, value in fields.items():
        if key in kinds and type(value) is not kinds[key]:
            raise Unreadable(f"a task key's {key} {str(value)[:40]!r} is not a {kinds[key].__name__}")
    if "uid" in fields and not id_fits(fields["uid"], UID_MAX):  # as every event's caller uid is bounded
        raise Unreadable(f"a task key's uid {str(fields['uid'])[:40]} is not an id in 0..{UID_MAX}")
    try:
        TaskSpec(**fields.get("spec", {}))  # as spec_of builds it when the task is moved or adopted
    except (ApeinxError, TypeError, ValueError, AttributeError) as exc:
        raise Unreadable(f"a task key's spec is not a task's: {str(exc)[:100]}") from None
    return fields


def replica_fields(fields) -> dict:
    """A replica's `fields`, if its tokens are a count and its output a string."""
    if not (isinstance(fields, dict) and type(fields.get("tokens")) is int and 0 <= fields["tokens"] < MAX_COUNT
            and type(fields.get("output")) is str):
        raise Unreadable("a replica is an object of a count of tokens and an output")
    return fields
