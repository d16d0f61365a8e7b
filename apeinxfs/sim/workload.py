"""Workload CSV files for `apeinxfs sim`: parsing, validation and synthetic prompts.

A workload is a CSV file with the header
`arrival_s,tenant,name,prompt_tokens,output_tokens,prio,deadline_s,parent,weight` and the
optional columns `prefix_group,prefix_tokens`, in any order. Every cell may be empty and
then takes its default (see `DEFAULTS` and docs/simulator.md). A bad cell is refused with
an `Invalid` naming its line. This module only reads files and makes prompts; running
them is engine.py's job.
"""
import csv
import itertools
from collections.abc import Iterator
from typing import TextIO

import attrs

from ..kernel.config import TenantConfig
from ..kernel.errors import ApeinxError, Invalid
from ..kernel.spec import DEADLINE_MAX_US, PROMPT_MAX, TaskSpec

COLUMNS = ("arrival_s", "tenant", "name", "prompt_tokens", "output_tokens", "prio", "deadline_s", "parent",
           "weight")
OPTIONAL = ("prefix_group", "prefix_tokens")
DEFAULT_TENANT = "default"
DEFAULT_WEIGHT = 100
# The most tokens a prompt within the 1 MiB limit can hold: BOS and PROMPT_MAX // 2 one-letter words with a
# space between each two. A row claiming more is refused at parse, before `prompt` spells it out; one at or near
# it can still spell a prompt a few bytes over (its first words, `gN` and `rL`, are longer), refused by the kernel.
PROMPT_TOKENS_MAX = PROMPT_MAX // 2 + 1
# The longest line read: every column's cell at csv's field limit, and room for quotes, commas and the line end.
# A longer line is refused with its number before csv reads it whole.
LINE_MAX = csv.field_size_limit() * len(COLUMNS + OPTIONAL) + 1024
ARRIVAL_MAX_S = DEADLINE_MAX_US / 1e6  # 30 days, as a deadline: the fairness meter samples its grid up to it


@attrs.frozen
class Request:
    """One row: a task to submit at `arrival_s`, its parent's row name and shared prefix."""

    line: int
    arrival_s: float
    spec: TaskSpec
    prompt_tokens: int
    parent: str | None = None
    prefix_group: str | None = None
    prefix_tokens: int = 0


@attrs.frozen
class Workload:
    """The requests in submission order (by arrival, then line) and each tenant's weight."""

    requests: tuple
    weights: dict

    @property
    def tenants(self) -> list[str]:
        return sorted(self.weights)


def load(path: str) -> Workload:
    """Read and check a workload file (UTF-8 text, with or without a byte order mark)."""
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as file:
            return parse(_lines(file, f"workload {path}"), f"workload {path}")
    except OSError as exc:
        raise Invalid(f"workload {path}: {exc.strerror}") from None


def _lines(file: TextIO, source: str) -> Iterator[str]:
    """Each line of a file read with errors="surrogateescape", read to LINE_MAX characters: a longer one, or one
    that holds bytes that are not UTF-8 (escaped as surrogates), is refused with its number."""
    for number in itertools.count(1):
        line = file.readline(LINE_MAX + 1)
        if not line:
            return
        if len(line) > LINE_MAX:
            raise Invalid(f"{source} line {number}: longer than {LINE_MAX:,} characters")
        _check_utf8(line, f"{source} line {number}")
        yield line


def _check_utf8(line: str, where: str) -> None:
    """Invalid, naming the first byte, if `line` (read with errors="surrogateescape") holds bytes not UTF-8."""
    try:
        line.encode()
    except UnicodeEncodeError as exc:
        raise Invalid(f"{where}: not UTF-8 text (byte {ord(line[exc.start]) - 0xdc00:#04x} at column "
                      f"{exc.start + 1})") from None


def parse(lines, source: str = "workload") -> Workload:
    """A workload from CSV text lines; `source` names it in errors."""
    reader = csv.DictReader(lines)
    try:
        return _rows(reader, source)
    except csv.Error as exc:  # a cell over csv's field limit; DictReader's own line_num lags a failed row
        raise Invalid(f"{source} line {reader.reader.line_num}: {exc}") from None


def _rows(reader: csv.DictReader, source: str) -> Workload:
    _check_header(reader.fieldnames, source)
    by_name, weights = {}, {}
    for row in reader:
        try:
            if None in row or None in row.values():
                raise Invalid(f"expected {len(reader.fieldnames)} cells")
            request = _request(row, reader.line_num, by_name)
            _set_weight(weights, request.spec.tenant, row["weight"])
        except ApeinxError as exc:
            raise Invalid(f"{source} line {reader.line_num}: {exc.reason}") from None
        by_name[request.spec.name] = request
    if not by_name:
        raise Invalid(f"{source}: no requests")
    requests = sorted(by_name.values(), key=lambda r: (r.arrival_s, r.line))
    return Workload(tuple(requests), {r.spec.tenant: weights.get(r.spec.tenant, DEFAULT_WEIGHT) for r in requests})


def _check_header(fields, source: str) -> None:
    if not fields:
        raise Invalid(f"{source}: empty file; the header is {','.join(COLUMNS)}")
    missing = [c for c in COLUMNS if c not in fields]
    unknown = [c for c in fields if c not in COLUMNS + OPTIONAL]
    if missing or unknown:
        problem = f"missing column {missing[0]}" if missing else f"unknown column {unknown[0]!r}"
        raise Invalid(f"{source} line 1: {problem}; the header is {','.join(COLUMNS)}[,{','.join(OPTIONAL)}]")


def _request(row: dict, line: int, earlier: dict) -> Request:
    """One row as a Request; `earlier` maps the names of the rows before it to their Request."""
    parent = row["parent"].strip() or None
    tenant = _tenant(row["tenant"].strip(), parent, earlier)
    name = row["name"].strip() or f"task-{line}"
    if name in earlier:
        raise Invalid(f"name {name!r} is already used on line {earlier[name].line}; names must be unique")
    arrival = _number(row["arrival_s"], "arrival_s", 0.0, high=ARRIVAL_MAX_S)
    if parent and earlier[parent].arrival_s > arrival:
        raise Invalid(f"arrives before its parent {parent!r}")
    deadline = _number(row["deadline_s"], "deadline_s", None)
    prompt_tokens = _integer(row["prompt_tokens"], "prompt_tokens", 1, low=1, high=PROMPT_TOKENS_MAX)
    spec = TaskSpec(name=name, max_tokens=_integer(row["output_tokens"], "output_tokens", 256, low=1),
                    prio=_integer(row["prio"], "prio", 5), tenant=tenant,
                    deadline_us=None if deadline is None else round(deadline * 1e6))
    group, shared = _prefix(row, prompt_tokens)
    return Request(line=line, arrival_s=arrival, spec=spec, prompt_tokens=prompt_tokens, parent=parent,
                   prefix_group=group, prefix_tokens=shared)


def _tenant(tenant: str, parent: str | None, earlier: dict) -> str:
    """The row's tenant; a child takes its parent's, and may not name another."""
    if parent is None:
        return tenant or DEFAULT_TENANT
    if parent not in earlier:
        raise Invalid(f"parent {parent!r} is not the name of an earlier row")
    inherited = earlier[parent].spec.tenant
    if tenant and tenant != inherited:
        raise Invalid(f"tenant {tenant!r} differs from its parent's ({inherited!r}); a child inherits it")
    return inherited


def _prefix(row: dict, prompt_tokens: int) -> tuple[str | None, int]:
    group = (row.get("prefix_group") or "").strip() or None
    shared = _integer(row.get("prefix_tokens") or "", "prefix_tokens", 0)
    if (group is None) != (shared == 0):
        raise Invalid("prefix_group and a positive prefix_tokens go together")
    if shared > prompt_tokens:
        raise Invalid(f"prefix_tokens ({shared}) exceeds prompt_tokens ({prompt_tokens})")
    return group, shared


def _set_weight(weights: dict, tenant: str, cell: str) -> None:
    if not cell.strip():
        return
    weight = TenantConfig(tenant, _integer(cell, "weight", None)).weight
    if weights.setdefault(tenant, weight) != weight:
        raise Invalid(f"weight {weight} for tenant {tenant!r} contradicts the earlier {weights[tenant]}")


def _number(cell: str, column: str, default, high: float = float("inf")):
    if not cell.strip():
        return default
    try:
        value = float(cell)
    except ValueError:
        raise Invalid(f"{column} must be a number of seconds, not {cell!r}") from None
    if not value >= 0 or value == float("inf"):
        raise Invalid(f"{column} must be a finite number >= 0, not {cell!r}")
    if value > high:
        raise Invalid(f"{column} must be at most {high:,.0f} s, not {cell.strip()}")
    return value


def _integer(cell: str, column: str, default, low: int = 0, high: int | None = None):
    if not cell.strip():
        return default
    try:
        value = int(cell)
    except ValueError:
        raise Invalid(f"{column} must be an integer, not {cell!r}") from None
    if value < low:
        raise Invalid(f"{column} must be at least {low}, not {value}")
    if high is not None and value > high:
        raise Invalid(f"{column} must be at most {high}, not {value}")
    return value


def prompt(request: Request, groups: dict) -> str:
    """Text of `request.prompt_tokens` tokens (BOS plus one per word, as the kernel counts).

    The first `prefix_tokens` tokens are the same for every request of its prefix group
    (numbered by `groups`, which this call extends): `gN y y ...`. The rest starts with a
    word naming the row, `rLINE x x ...`, so no other prompt has those tokens in those
    places (the prefix cache hashes chains of blocks: after the first difference, every
    later block differs too). One-letter words keep a long prompt under the 1 MiB prompt limit of docs/apeinxfs.5.md.
    """
    shared = max(request.prefix_tokens - 1, 0)
    own = request.prompt_tokens - 1 - shared
    head = [groups.setdefault(request.prefix_group, f"g{len(groups)}")] + ["y"] * (shared - 1) if shared else []
    tail = [f"r{request.line}"] + ["x"] * (own - 1) if own else []
    return " ".join(head + tail)
