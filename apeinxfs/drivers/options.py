"""Validators of the drivers' options (`[models.options]`): engine URLs, seconds and counts, each within bounds.

Each raises ValueError naming the option and saying what it must be; a driver's `of` adds the model's name
(openai.Connection.of). Bounds keep a typo from meaning for ever: an infinite timeout, 1e20 retries, a scrape
every nanosecond. `unknown` names an option the driver has no field for. `clamped` sets the numbers out of their
bounds to the nearest one, for a model kept in the journal from before the bounds (enginehost.py). No I/O here.
"""
import math
import urllib.parse
from typing import Any

import attrs


SCHEMES = ("http", "https")


def engine_url(_inst: object, attribute: "attrs.Attribute[Any]", value: str) -> None:
    """An http:// or https:// URL with a host, and a port 1 to 65535 if it gives one; a refused one is shown
    without what is before its last `@` (credentials, even where it has no scheme to find them by)."""
    parts = urllib.parse.urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in SCHEMES or not parts.hostname or port is not None and not 1 <= port <= 65535:
        raise ValueError(f"{attribute.name} must be an http:// or https:// URL with a host (and a port 1 to "
                         f"65535), not {_without_userinfo(value)!r}")


def _without_userinfo(url: str) -> str:
    return "***@" + url.rpartition("@")[2] if "@" in url else url


@attrs.frozen
class Bounds:
    """A validator: a number (not a bool) from `least` to `most`, an integer where `whole`; or 0 too where `off` (0: not
    at all). `nearest` is the bound a number of its kind out of them is clamped to (`clamped`)."""

    least: float
    most: float
    whole: bool = False
    off: bool = False

    def __call__(self, _inst: object, attribute: "attrs.Attribute[Any]", value: Any) -> None:
        if not (self._number(value) and _finite(value) and self._within(value)):
            raise ValueError(self._words(attribute.name, value))

    def nearest(self, value: Any) -> float | None:
        """The bound nearest `value` if it is a number of its kind out of them (infinities too); else None."""
        if not self._number(value) or _nan(value) or _finite(value) and self._within(value):
            return None
        return min(max(value, self.least), self.most)

    def _number(self, value: Any) -> bool:
        return type(value) is int if self.whole else type(value) in (int, float)

    def _within(self, value: float) -> bool:
        return self.least <= value <= self.most or self.off and value == 0

    def _words(self, name: str, value: Any) -> str:
        if self.whole:
            return f"{name} must be an integer from {self.least} to {self.most}, not {value!r}"
        zero = "0 (none) or " if self.off else ""
        return f"{name} must be {zero}a number of seconds from {self.least:g} to {self.most:g}, not {value!r}"


def _finite(value: float) -> bool:
    """Whether a number is finite: an int always is (math.isfinite converts it to a float: past 1e308 it overflows)."""
    return type(value) is int or math.isfinite(value)


def _nan(value: float) -> bool:
    return type(value) is float and math.isnan(value)


def _shown(value: float) -> str:
    """A number in words: an int whole (`{:g}` converts it to a float: past 1e308 it overflows), a float as `{:g}`."""
    return str(value) if type(value) is int else f"{value:g}"


def seconds(least: float, most: float, off: bool = False) -> Bounds:
    """A validator: a number of seconds (not a bool) from `least` to `most`; or 0 too where `off` (0: not at all)."""
    return Bounds(least, most, off=off)


def count(most: int) -> Bounds:
    """A validator: an integer (not a bool) from 0 to `most`."""
    return Bounds(0, most, whole=True)


def clamped(cls: type, given: dict) -> tuple[dict, list[str]]:
    """`given` (a model's options) with each number of its kind out of the Bounds of `cls`'s option of its name set to
    the nearest bound, and in words each one so set (`retries 200 clamped to 100 (the bound)`). The rest is left as
    given, for `cls` to take or refuse."""
    kept, words = dict(given), []
    for field in attrs.fields(cls):
        value = given.get(field.name)
        bound = field.validator.nearest(value) if isinstance(field.validator, Bounds) else None
        if bound is not None:
            kept[field.name] = bound
            words.append(f"{field.name} {_shown(value)} clamped to {_shown(bound)} (the bound)")
    return kept, words


def unknown(cls: type, given: dict) -> str | None:
    """Why `given` has an option `cls` (an attrs class) does not take, naming those it does; None if it has none."""
    known = [field.name for field in attrs.fields(cls)]
    extra = sorted(set(given) - set(known))
    return f"no option {extra[0]!r} (its options: {', '.join(known)})" if extra else None
