"""Validators of the drivers' options (`[models.options]`): engine URLs, seconds and counts, each within bounds.

Each raises ValueError naming the option and saying what it must be; a driver's `of` adds the model's name
(openai.Connection.of). Bounds keep a typo from meaning for ever: an infinite timeout, 1e20 retries, a scrape
every nanosecond. `unknown` names an option the driver has no field for. No I/O here.
"""
import math
import urllib.parse
from collections.abc import Callable
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


def seconds(least: float, most: float, off: bool = False) -> Callable[[object, "attrs.Attribute[Any]", Any], None]:
    """A validator: a number of seconds (not a bool) from `least` to `most`; or 0 too where `off` (0: not at all)."""
    def check(_inst: object, attribute: "attrs.Attribute[Any]", value: Any) -> None:
        number = type(value) in (int, float) and math.isfinite(value)
        if not (number and (least <= value <= most or off and value == 0)):
            zero = "0 (none) or " if off else ""
            raise ValueError(f"{attribute.name} must be {zero}a number of seconds from {least:g} to {most:g}, "
                             f"not {value!r}")
    return check


def count(most: int) -> Callable[[object, "attrs.Attribute[Any]", Any], None]:
    """A validator: an integer (not a bool) from 0 to `most`."""
    def check(_inst: object, attribute: "attrs.Attribute[Any]", value: Any) -> None:
        if type(value) is not int or not 0 <= value <= most:
            raise ValueError(f"{attribute.name} must be an integer from 0 to {most}, not {value!r}")
    return check


def unknown(cls: type, given: dict) -> str | None:
    """Why `given` has an option `cls` (an attrs class) does not take, naming those it does; None if it has none."""
    known = [field.name for field in attrs.fields(cls)]
    extra = sorted(set(given) - set(known))
    return f"no option {extra[0]!r} (its options: {', '.join(known)})" if extra else None
