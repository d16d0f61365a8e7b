"""A model's engine endpoints, each bound to GPU indices: one engine per GPU (or per tensor-parallel group).

`endpoints = [{url = "...", gpus = [0]}, {url = "...", gpus = [1]}]` in a model's table: a task of
the model runs only on those GPUs, and its driver sends it to the endpoint of the GPU the kernel
placed it on. A model without endpoints (one `url` option, or a driver without URLs: sim,
llamacpp) runs on every GPU. Here: the record, its validation (a table of url and gpus, no GPU
twice, not beside `options.url`, GPUs that exist), which GPUs a model may run on, and a URL's credentials hidden (`redacted`). Not here:
which endpoint is down (engines.py), what its engine reports of its KV (kvreport.py), how the
driver reaches it (drivers/openai.py).
"""
from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from .errors import Invalid

# A URL is `SCHEME://` (a letter starting a word, then letters, digits, `+.-`), then its authority up to the first
# of `/?#` or a space. Its userinfo runs to the last `@` of the authority, as urlsplit and httpx read it; but not to
# an `@GPU` ending the URL (`endpoints=URL@0+1,URL@2` of ctl/models): `@`, GPU indices, then `,`, a space or the end.
_SCHEME_CHARS = frozenset(string.ascii_letters + string.digits + "+.-")
_SCHEME_FIRST = frozenset(string.ascii_letters)
_AUTHORITY_END = re.compile(r"[/?#\s]")
_GPU_ENDING = re.compile(r"[0-9+]+(?:[,\s]|$)")


def _url(_inst: object, _attribute: "attrs.Attribute[Any]", value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"an endpoint's url must be a non-empty text, not {value!r}")


def _gpus(value: Any) -> tuple[int, ...]:
    """GPU indices: a non-empty list of integers >= 0, none twice."""
    if (not isinstance(value, (list, tuple)) or not value
            or any(type(gpu) is not int or gpu < 0 for gpu in value)):
        raise Invalid(f"an endpoint's gpus must be a non-empty list of GPU indices (integers >= 0), not {value!r}")
    if len(set(value)) != len(value):
        raise Invalid(f"an endpoint's gpus list a GPU twice: {list(value)}")
    return tuple(value)


@attrs.frozen
class EndpointConfig:
    """One engine serving a model on GPUs `gpus`, at `url`."""

    url: str = attrs.field(validator=_url)
    gpus: tuple[int, ...] = attrs.field(converter=_gpus)

    @property
    def label(self) -> str:
        """`URL gpus=0,1`: the endpoint in words (trace lines, status)."""
        return f"{redacted(self.url)} gpus={gpus_text(self.gpus)}"


def redacted(text: str) -> str:
    """`text` with each URL's userinfo (`user:password@`) shown as `***@`: what renders or journals an engine's
    URL, or a reason that may hold one, passes it here. In time linear in `text`: each `://` is looked at once,
    with the scheme before it and the authority after it (which end where the next `://` starts)."""
    if "@" not in text or "://" not in text:
        return text
    parts, done, colon = [], 0, text.find("://")
    while colon >= 0:
        userinfo_end = _userinfo_end(text, colon) if _scheme_before(text, colon) else 0
        if userinfo_end > 0:
            parts += [text[done:colon + 3], "***@"]
            done = userinfo_end
        colon = text.find("://", colon + 3)
    return "".join(parts) + text[done:]


def _scheme_before(text: str, colon: int) -> bool:
    """Whether a scheme ends at `colon` (its `://`): in the run of scheme characters before it, a letter that
    starts a word (after none of `\\w`, as the pattern `\\b` reads it)."""
    start = colon
    while start > 0 and text[start - 1] in _SCHEME_CHARS:
        start -= 1
        if text[start] in _SCHEME_FIRST and (start == 0 or not _is_word(text[start - 1])):
            return True
    return False


def _is_word(char: str) -> bool:
    """`\\w` of a str pattern: a letter or digit of any script, or `_`."""
    return char.isalnum() or char == "_"


def _userinfo_end(text: str, colon: int) -> int:
    """Where the userinfo of the URL whose `://` is at `colon` ends (after its `@`); 0 without one."""
    start = colon + 3
    found = _AUTHORITY_END.search(text, start)
    at = text.rfind("@", start, found.start() if found else len(text))
    while at >= 0 and _GPU_ENDING.match(text, at + 1):
        at = text.rfind("@", start, at)
    return at + 1


def gpus_text(gpus: Iterable[int]) -> str:
    return ",".join(map(str, gpus))


def endpoints_of(value: Any) -> tuple[EndpointConfig, ...]:
    """A model's `endpoints`: a list of `{url, gpus}` tables (or records)."""
    if not isinstance(value, (list, tuple)):
        raise Invalid(f"endpoints must be a list of {{url = \"...\", gpus = [N, ...]}} tables, not {value!r}")
    return tuple(item if isinstance(item, EndpointConfig) else _endpoint(item) for item in value)


def _endpoint(item: Any) -> EndpointConfig:
    if not isinstance(item, Mapping) or set(item) != {"url", "gpus"}:
        raise Invalid(f"an endpoint is a table {{url = \"...\", gpus = [N, ...]}} with those two keys, not {item!r}")
    return EndpointConfig(url=item["url"], gpus=item["gpus"])


def check_endpoints(model: str, endpoints: tuple[EndpointConfig, ...], options: Mapping[str, Any]) -> None:
    """Refuse endpoints beside `options.url`, and a GPU bound to two of them."""
    if endpoints and "url" in options:
        raise Invalid(f"model {model}: give either options.url (one engine for every GPU) or endpoints "
                      "(one engine per GPU or group of GPUs), not both")
    bound: dict[int, str] = {}
    for endpoint in endpoints:
        for gpu in endpoint.gpus:
            if gpu in bound:
                raise Invalid(f"model {model}: GPU {gpu} is bound to two endpoints, {bound[gpu]} and "
                              f"{redacted(endpoint.url)}")
            bound[gpu] = redacted(endpoint.url)


def check_gpus_exist(model: str, endpoints: tuple[EndpointConfig, ...], count: int) -> None:
    """Refuse an endpoint bound to a GPU this node does not have (`count` GPUs: 0 to count-1)."""
    for endpoint in endpoints:
        missing = [gpu for gpu in endpoint.gpus if gpu >= count]
        if missing:
            raise Invalid(f"model {model}: endpoint {redacted(endpoint.url)} is bound to GPU {missing[0]}, but there are "
                          f"{count} GPUs (0 to {count - 1})")


def served_gpus(endpoints: tuple[EndpointConfig, ...]) -> frozenset[int] | None:
    """The GPUs a model with these endpoints runs on; None (every GPU) without endpoints."""
    return frozenset(gpu for endpoint in endpoints for gpu in endpoint.gpus) if endpoints else None
