"""Sampling parameters of a task: temperature, top_p, top_k, seed, stop and the two penalties.

`Sampling` is a frozen attrs record whose validators raise Invalid naming each key's range,
so one that exists is well formed; unset keys are None (the engine's default). `text`
gives the set keys back in the key=value submit form, which parses to an equal record.
Not here: the submit grammar (grammar.py), what a driver sends (each driver maps `fields`
to its engine's names), policy clamps (policy.py).
"""
from collections.abc import Sequence
from typing import Any

import attrs

from .errors import Invalid

SEED_MAX = 2**32 - 1  # llama.cpp and TensorRT-LLM take a 32-bit seed
TOP_K_MAX = 100_000
STOP_MAX = 4  # as OpenAI's API
STOP_BYTES = 256
DEFAULT_TEMPERATURE = 1.0  # what an unset temperature counts as for a policy clamp (OpenAI's default)
FLOAT_RANGES = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0),
                "presence_penalty": (-2.0, 2.0), "frequency_penalty": (-2.0, 2.0)}
INT_RANGES = {"top_k": (1, TOP_K_MAX), "seed": (0, SEED_MAX)}
KEYS = ("temperature", "top_p", "top_k", "seed", "stop", "presence_penalty", "frequency_penalty")
# A set key's value as a driver sends it: a number, or the stop strings as a list.
SamplingValue = float | int | list[str]
_QUOTES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t"}


def number_text(value: float) -> str:
    """A number as the grammar reads it back: `0`, `0.7`, `1e-05`, never `0.0`."""
    short = format(value, "g")
    return short if float(short) == value else repr(value)


def _to_float(value: object) -> object:
    """JSON's and the parser's int or float as a float; anything else (an int too large for a float too)
    is left for the validator to name."""
    if type(value) is int and abs(value) <= 2**53:
        return float(value)
    return value


def _check_float(_inst: object, attribute: "attrs.Attribute[float | None]", value: Any) -> None:
    low, high = FLOAT_RANGES[attribute.name]
    if value is not None and not (type(value) is float and low <= value <= high):  # NaN fails too
        raise Invalid(f"{attribute.name} must be a number in {number_text(low)}..{number_text(high)}, "
                      f"not {_shown(value)}")


def _check_int(_inst: object, attribute: "attrs.Attribute[int | None]", value: Any) -> None:
    low, high = INT_RANGES[attribute.name]
    if value is not None and not (type(value) is int and low <= value <= high):
        raise Invalid(f"{attribute.name} must be an integer in {low}..{high}, not {_shown(value)}")


def _shown(value: object) -> str:
    """A refused value for a reason: numbers as written (a long one cut), anything else quoted and cut at
    40 characters."""
    if type(value) is float:
        return number_text(value)
    return str(value)[:40] if type(value) is int else repr(str(value)[:40])


def _to_stops(value: str | Sequence[str]) -> object:
    """One string or a list of them, as a tuple; anything else is left for the validator to name."""
    if isinstance(value, str):
        return (value,)
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _check_stops(_inst: object, _attribute: object, value: Any) -> None:
    if not isinstance(value, tuple) or len(value) > STOP_MAX:
        raise Invalid(f"stop must be a list of at most {STOP_MAX} strings")
    for stop in value:
        if not isinstance(stop, str) or not 0 < len(stop.encode(errors="replace")) <= STOP_BYTES:
            raise Invalid(f"each stop string must be text of 1..{STOP_BYTES} bytes, not {_shown(stop)}")
        if any(not c.isprintable() and c not in "\n\t" for c in stop):
            raise Invalid(f"stop string {stop[:40]!r} may hold no control characters but newline and tab")


def _float_field() -> float | None:
    return attrs.field(default=None, converter=_to_float, validator=_check_float)


@attrs.frozen
class Sampling:
    """How the engine picks tokens; None: its default. `stop`: strings that end the text (not included)."""

    temperature: float | None = _float_field()
    top_p: float | None = _float_field()
    top_k: int | None = attrs.field(default=None, validator=_check_int)
    seed: int | None = attrs.field(default=None, validator=_check_int)
    stop: tuple[str, ...] = attrs.field(default=(), converter=_to_stops, validator=_check_stops)
    presence_penalty: float | None = _float_field()
    frequency_penalty: float | None = _float_field()

    @property
    def fields(self) -> dict[str, SamplingValue]:
        """The keys that are set, by their submit names (stop as a list): what a driver sends."""
        return {key: list(value) if key == "stop" else value
                for key in KEYS if (value := getattr(self, key)) not in (None, ())}

    @property
    def text(self) -> str:
        """The set keys as key=value pairs (`temperature=0 seed=7 stop="a b|END"`), '-' when none is."""
        pairs = [f"{key}={_value_text(value)}" for key, value in self.fields.items()]
        return " ".join(pairs) or "-"


def _value_text(value: SamplingValue) -> str:
    if isinstance(value, list):
        return _quoted("|".join(value))
    return number_text(value) if isinstance(value, float) else str(value)


def _quoted(text: str) -> str:
    """Bare when the key=value grammar reads it back so, else double-quoted with its escapes."""
    if text and not any(c.isspace() or c in '"\\' for c in text):
        return text
    return '"' + "".join(_QUOTES.get(c, c) for c in text) + '"'


def sampling_of(value: "Sampling | dict[str, Any] | None") -> "Sampling | None":
    """A TaskSpec's sampling from a record or a journal's dict; None when nothing is set."""
    if isinstance(value, dict):
        value = Sampling(**value)
    return value if value is not None and value.fields else None

