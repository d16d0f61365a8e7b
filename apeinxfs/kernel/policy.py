"""Policy rules: the ordered deny / allow / limit lines of /ai/ctl/policy.

parse_rule turns one line into a Rule, or raises Invalid with a reason that names the
bad token; Rule.text gives the rule back in canonical form, which parses to an equal
rule (writes mirror reads). evaluate finds the first rule that matches a Request and
says what becomes of it: no match means allow. Pure: no kernel state, no files, no
clock (the caller passes the minute of the day). Not here: skipping blank lines and
`#` comments, storing the rules, who may write them, applying a Decision to a task.
"""
import collections
import operator
import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import attrs

from .errors import Invalid
from .sampling import DEFAULT_TEMPERATURE, FLOAT_RANGES, number_text
from .spec import NAME_MAX, TOKENS_MAX

ACTIONS = ("deny", "allow", "limit")
COMPARISONS: dict[str, Callable[[int, int], bool]] = {"=": operator.eq, "!=": operator.ne, "<": operator.lt,
                                                      "<=": operator.le, ">": operator.gt, ">=": operator.ge}
NUMBER_RANGES = {"tokens": (0, TOKENS_MAX), "prio": (0, 9)}
LIMIT_RANGES: dict[str, tuple[float, float]] = {"max_tokens": (1, TOKENS_MAX), "max_prio": (0, 9),
                                                "max_temperature": FLOAT_RANGES["temperature"]}
REPEATS = {"tokens": 2, "prio": 2}  # a range: tokens>=100 tokens<1000; any other key once
_TIMES = {1: "once", 2: "twice"}
UID_MAX = 2**32 - 1
MINUTES_PER_DAY = 24 * 60
_WORD = re.compile(r"([^=!<>]+)(!=|<=|>=|=|<|>)(.*)", re.S)
_NAME = re.compile(r"[A-Za-z0-9_.-]+|\*")
_NUMBER = re.compile(r"[0-9]{1,12}")
_DECIMAL = re.compile(r"[0-9]{1,3}(\.[0-9]{1,6})?")
_CLOCK = re.compile(r"([0-9]{1,2}):([0-9]{2})")


@attrs.frozen
class Request:
    """What a rule looks at: a submission's tenant, model, max_tokens, prio, uid and minute of the day."""

    tenant: str
    model: str
    tokens: int
    prio: int
    uid: int
    minute: int  # 0..1439
    temperature: float | None = None  # None: the engine's default


@attrs.frozen
class NameCond:
    """tenant=NAMES, tenant!=NAMES, model=NAMES or model!=NAMES; the name `*` is any."""

    key: str
    op: str
    names: tuple[str, ...]

    @property
    def text(self) -> str:
        return f"{self.key}{self.op}{','.join(self.names)}"

    def matches(self, request: Request) -> bool:
        named = "*" in self.names or getattr(request, self.key) in self.names
        return named == (self.op == "=")


@attrs.frozen
class NumberCond:
    """tokens OP N or prio OP N, compared with the request's max_tokens or prio."""

    key: str
    op: str
    number: int

    @property
    def text(self) -> str:
        return f"{self.key}{self.op}{self.number}"

    def matches(self, request: Request) -> bool:
        return COMPARISONS[self.op](getattr(request, self.key), self.number)


@attrs.frozen
class UidCond:
    """uid=N[,N...]: the submitter is one of these uids."""

    key: ClassVar[str] = "uid"
    uids: tuple[int, ...]

    @property
    def text(self) -> str:
        return "uid=" + ",".join(map(str, self.uids))

    def matches(self, request: Request) -> bool:
        return request.uid in self.uids


@attrs.frozen
class TimeCond:
    """time=HH:MM-HH:MM: minutes of the day in [start, end), wrapping midnight when end < start."""

    key: ClassVar[str] = "time"
    start: int
    end: int

    @property
    def text(self) -> str:
        return f"time={_clock_text(self.start)}-{_clock_text(self.end)}"

    def matches(self, request: Request) -> bool:
        if self.start < self.end:
            return self.start <= request.minute < self.end
        return request.minute >= self.start or request.minute < self.end


Condition = NameCond | NumberCond | UidCond | TimeCond


@attrs.frozen
class Decision:
    """What the policy makes of a request: allowed or not, by which rule, with what clamped values."""

    allowed: bool
    rule: int | None  # 1-based index of the matching rule, None when none matched
    text: str | None  # that rule's canonical text
    max_tokens: int
    prio: int
    temperature: float | None = None

    @property
    def reason(self) -> str:
        """`denied by policy rule 3: deny model=big`; `allowed: no policy rule matched` without a match."""
        if self.rule is None or self.text is None:  # both None together
            return "allowed: no policy rule matched"
        verb = {"deny": "denied", "allow": "allowed", "limit": "limited"}[self.text.split()[0]]
        return f"{verb} by policy rule {self.rule}: {self.text}"


@attrs.frozen
class Rule:
    """One policy line: an action, conditions that must all hold, and a limit rule's bounds."""

    action: str
    conds: tuple[Condition, ...] = ()
    max_tokens: int | None = None
    max_prio: int | None = None
    max_temperature: float | None = None

    @property
    def text(self) -> str:
        """Canonical: lower-case action, conditions as written, then max_tokens, max_prio, max_temperature."""
        limits = [f"{key}={_limit_text(getattr(self, key))}" for key in LIMIT_RANGES if getattr(self, key) is not None]
        return " ".join([self.action, *(cond.text for cond in self.conds), *limits])

    def matches(self, request: Request) -> bool:
        return all(cond.matches(request) for cond in self.conds)

    def decide(self, index: int, request: Request) -> Decision:
        """The Decision of this rule, the `index`th, for a request it matches."""
        return Decision(allowed=self.action != "deny", rule=index, text=self.text,
                        max_tokens=_clamp(request.tokens, self.max_tokens),
                        prio=_clamp(request.prio, self.max_prio),
                        temperature=_clamp_temperature(request.temperature, self.max_temperature))


def evaluate(rules: Sequence[Rule], request: Request) -> Decision:
    """The first rule that matches decides; with none, the request is allowed unchanged."""
    for index, rule in enumerate(rules, start=1):
        if rule.matches(request):
            return rule.decide(index, request)
    return Decision(allowed=True, rule=None, text=None, max_tokens=request.tokens, prio=request.prio,
                    temperature=request.temperature)


def parse_rule(line: str) -> Rule:
    """One policy line -> Rule: `ACTION COND* LIMIT*`, fields separated by blanks."""
    words = line.split()
    if not words:
        raise Invalid("empty policy rule: expected deny, allow or limit, then conditions")
    action = _parse_action(words[0])
    first_limit = next((i for i, word in enumerate(words) if _key_of(word) in LIMIT_RANGES), len(words))
    conds = _parse_conds(words[1:first_limit])
    return Rule(action, conds, **_parse_limits(action, words[first_limit:]))


def _parse_action(word: str) -> str:
    action = word.lower() if word.isascii() else word
    if action not in ACTIONS:
        raise Invalid(f"unknown action {_shown(word)}: a rule starts with deny, allow or limit")
    return action


def _shown(text: str) -> str:
    """A token quoted for a reason, cut at 40 characters."""
    return repr(text[:40])


def _key_of(word: str) -> str:
    return re.split(r"[=!<>]", word, maxsplit=1)[0]


def _split_word(word: str) -> tuple[str, str, str]:
    """`tokens>=100` -> ('tokens', '>=', '100')."""
    match = _WORD.fullmatch(word)
    if not match:
        raise Invalid(f"expected KEY=VALUE or KEY OP N, not {_shown(word)}")
    return match[1], match[2], match[3]


def _parse_conds(words: list[str]) -> tuple[Condition, ...]:
    seen: collections.Counter[str] = collections.Counter()
    conds = []
    for word in words:
        cond = _parse_cond(word)
        seen[cond.key] += 1
        allowed = REPEATS.get(cond.key, 1)
        if seen[cond.key] > allowed:
            raise Invalid(f"{_shown(word)}: {cond.key} may appear only {_TIMES[allowed]} in a rule")
        conds.append(cond)
    return tuple(conds)


def _parse_cond(word: str) -> Condition:
    key, op, value = _split_word(word)
    if key not in _CONDITIONS:
        raise Invalid(f"unknown key {_shown(key)} in {_shown(word)}: "
                      f"expected one of {', '.join(_CONDITIONS)}, {', '.join(LIMIT_RANGES)}")
    ops, build = _CONDITIONS[key]
    if op not in ops:
        raise Invalid(f"{_shown(word)}: {key} takes {' or '.join(ops)}, not {op}")
    return build(word, key, op, value)


def _parse_limits(action: str, words: list[str]) -> dict[str, Any]:
    """The trailing max_tokens=N / max_prio=N words, as keyword arguments of Rule (an int or float by key)."""
    if action != "limit" and words:
        raise Invalid(f"{_shown(words[0])}: only a limit rule takes max_tokens=, max_prio= or max_temperature=")
    if action == "limit" and not words:
        raise Invalid("a limit rule needs max_tokens=N, max_prio=N or max_temperature=X (or several) after its conditions")
    limits: dict[str, float] = {}
    for word in words:
        key, value = _split_limit(word)
        if key in limits:
            raise Invalid(f"{_shown(word)}: {key} given twice")
        parse = _decimal if key == "max_temperature" else _number
        limits[key] = parse(word, value, *LIMIT_RANGES[key])
    return limits


def _split_limit(word: str) -> tuple[str, str]:
    key, op, value = _split_word(word)
    if key not in LIMIT_RANGES:
        raise Invalid(f"{_shown(word)} after a limit: conditions come first, then max_tokens=N, max_prio=N, max_temperature=X")
    if op != "=":
        raise Invalid(f"{_shown(word)}: {key} takes =, not {op}")
    return key, value


def _number(word: str, text: str, low: float, high: float) -> int:
    if not _NUMBER.fullmatch(text) or not low <= int(text) <= high:
        raise Invalid(f"bad number {_shown(text)} in {_shown(word)}: expected an integer {low}..{high}")
    return int(text)


def _decimal(word: str, text: str, low: float, high: float) -> float:
    if not _DECIMAL.fullmatch(text) or not low <= float(text) <= high:
        raise Invalid(f"bad number {_shown(text)} in {_shown(word)}: "
                      f"expected a number {number_text(low)}..{number_text(high)}")
    return float(text)


def _names(word: str, text: str) -> tuple[str, ...]:
    names = tuple(text.split(","))
    for name in names:
        if not _NAME.fullmatch(name) or len(name) > NAME_MAX:
            raise Invalid(f"bad name {_shown(name)} in {_shown(word)}: "
                          f"a name is 1..{NAME_MAX} of A-Z a-z 0-9 _ . - or * for any")
    return names


def _minute(word: str, text: str) -> int:
    match = _CLOCK.fullmatch(text)
    if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise Invalid(f"bad time {_shown(text)} in {_shown(word)}: expected HH:MM, 00:00..23:59")
    return int(match.group(1)) * 60 + int(match.group(2))


def _clamp(value: int, bound: int | None) -> int:
    return value if bound is None else min(value, bound)


def _clamp_temperature(value: float | None, bound: float | None) -> float | None:
    """At most `bound`; an unset temperature counts as DEFAULT_TEMPERATURE, so a bound below that sets it."""
    if bound is None or (value is None and bound >= DEFAULT_TEMPERATURE):
        return value
    return min(DEFAULT_TEMPERATURE if value is None else value, bound)


def _limit_text(value: float) -> str:
    return number_text(value) if isinstance(value, float) else str(value)


def _clock_text(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _name_cond(word: str, key: str, op: str, value: str) -> NameCond:
    return NameCond(key, op, _names(word, value))


def _number_cond(word: str, key: str, op: str, value: str) -> NumberCond:
    return NumberCond(key, op, _number(word, value, *NUMBER_RANGES[key]))


def _uid_cond(word: str, _key: str, _op: str, value: str) -> UidCond:
    return UidCond(tuple(_number(word, uid, 0, UID_MAX) for uid in value.split(",")))


def _time_cond(word: str, _key: str, _op: str, value: str) -> TimeCond:
    start, dash, end = value.partition("-")
    if not dash:
        raise Invalid(f"bad window {_shown(value)} in {_shown(word)}: expected HH:MM-HH:MM")
    window = TimeCond(_minute(word, start), _minute(word, end))
    if window.start == window.end:
        raise Invalid(f"empty window {_shown(value)} in {_shown(word)}: start and end must differ")
    return window


_CONDITIONS: dict[str, tuple[tuple[str, ...], Callable[[str, str, str, str], Condition]]] = {
    "tenant": (("=", "!="), _name_cond),
    "model": (("=", "!="), _name_cond),
    "tokens": (tuple(COMPARISONS), _number_cond),
    "prio": (tuple(COMPARISONS), _number_cond),
    "time": (("=",), _time_cond),
    "uid": (("=",), _uid_cond),
}
