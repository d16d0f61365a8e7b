"""Scraping an engine's metrics over HTTP, every second or so: the I/O around metrics.py.

`watch` polls one engine's GET /metrics (and, for llama-server builds without a KV gauge,
GET /slots) and hands each `Observation` to the host (`host.observe(model, observation)`),
which keeps it beside the kernel: observations are not kernel state and are never
journaled; but the tokens its KV cache holds go to `host.report_kv`, which journals them for the
kernel's books when they change (kernel/kvreport.py); a report the kernel refuses (negative, more than its GPUs
hold) is that engine's scrape error, logged once, never the end of the loop scraping every model. A failed scrape
is an observation too (its error, no reading), so /models/NAME/engine says why there are no numbers, and the
model's LastError too; a body over BODY_MAX is such an error, not read on, and a body is parsed a slice at a
time (PARSE_LINES), the daemon's other work running between the slices. Each scrape is also a health check
(enginestate.py): an engine that answers is ready, even without metrics; HTTP 503 means it is
still loading (starting); no answer, unreachable. An engine not scraped is `probe`d instead while
the kernel holds it down (kernel/engines.py). Parsing is metrics.py's.
"""
import json
import logging

import attrs
import httpx
import trio

from ..kernel.endpoints import redacted
from ..kernel.errors import Invalid
from . import metrics

BODY_MAX = 1 << 20  # bytes of a /metrics read at most: vLLM's and SGLang's are well under 200 KB
PARSE_LINES = 2000  # lines of /metrics parsed between two checkpoints (about 10 ms of the daemon's thread)

log = logging.getLogger(__name__)


async def watch(client: httpx.AsyncClient, model: str, url: str, interval_s: float, host, gpus: tuple = ()) -> None:
    """Scrape the engine at `url` for `model` (its endpoint on `gpus`; empty: its one engine) every
    `interval_s` seconds, until cancelled; the KV tokens it reports go to the kernel too."""
    host.observe(model, metrics.Observation(source=redacted(f"{url}/metrics")), gpus)  # not scraped yet
    refused = None
    while True:
        observation, state = await scrape(client, url, timeout_s=max(2.0, 2 * interval_s))
        observation = _report_kv(host, model, gpus, observation)
        if observation.error != refused and observation.reading is not None:  # a KV report refused, or taken again
            refused = observation.error
            if refused:
                log.warning("model %s: %s", model, refused)
        host.observe(model, observation, gpus)
        host.report_state(model, state, observation.error and f"{observation.source}: {observation.error}", gpus)
        await trio.sleep(interval_s)


def _report_kv(host, model: str, gpus: tuple, observation: metrics.Observation) -> metrics.Observation:
    """Hand the KV tokens of `observation` to the kernel; the observation, with the reason as its error if refused."""
    if observation.reading is not None and observation.reading.kv_tokens is not None:
        try:
            host.report_kv(model, gpus, observation.reading.kv_tokens)
        except Invalid as exc:
            return attrs.evolve(observation, error=f"its KV report is refused: {exc.reason}")
    return observation


async def scrape(client: httpx.AsyncClient, url: str, timeout_s: float) -> tuple[metrics.Observation, str]:
    """One scrape of the engine at `url`: its reading, or the reason there is none; and the engine's state."""
    source = redacted(f"{url}/metrics")
    try:
        reading = metrics.read(await parsed(await body_of(client, source, timeout_s)))
        if metrics.wants_slots(reading):
            reading = await _with_slots(client, url, reading, timeout_s)
    except (httpx.HTTPError, metrics.Unreadable) as exc:
        return metrics.Observation(source=source, error=describe(exc)), state_of(exc)
    return metrics.Observation(source=source, reading=reading), "ready"


async def body_of(client: httpx.AsyncClient, source: str, timeout_s: float) -> str:
    """The text at `source` (GET), read up to BODY_MAX bytes: more is Unreadable, not held."""
    async with client.stream("GET", source, timeout=timeout_s) as response:
        response.raise_for_status()
        body = bytearray()
        async for piece in response.aiter_bytes():
            body += piece
            if len(body) > BODY_MAX:
                raise metrics.Unreadable(f"the body is over {BODY_MAX} bytes")
    return body.decode("utf-8", "replace")


async def parsed(text: str) -> list[metrics.Sample]:
    """The samples of `text`, parsed PARSE_LINES lines at a time, with a checkpoint after each: the
    daemon's other tasks run between them."""
    lines, samples = text.splitlines(), []
    for at in range(0, len(lines), PARSE_LINES):
        samples += metrics.parse_lines(lines[at:at + PARSE_LINES], at + 1)
        await trio.lowlevel.checkpoint()
    return samples


async def probe(client: httpx.AsyncClient, model: str, url: str, interval_s: float, host, gpus: tuple = ()) -> None:
    """For an engine not scraped: every `interval_s` seconds while the kernel holds `model` (its endpoint on
    `gpus`) down (`host.engine_down`), check whether the engine at `url` answers again (GET /health; any
    answer but 503 will do), until cancelled. No request is sent to a down engine otherwise."""
    while True:
        await trio.sleep(interval_s)
        if host.engine_down(model, gpus):
            try:
                (await client.get(f"{url}/health", timeout=max(2.0, 2 * interval_s))).raise_for_status()
            except httpx.HTTPError as exc:
                state = state_of(exc)
                host.report_state(model, state, None if state == "ready" else redacted(f"{url}/health: {describe(exc)}"),
                                  gpus)
            else:
                host.report_state(model, "ready", None, gpus)


def state_of(exc: Exception) -> str:
    """What a failed scrape says of the engine: loading (HTTP 503), not there (no answer), else it answered."""
    if isinstance(exc, httpx.HTTPStatusError):
        return "starting" if exc.response.status_code == 503 else "ready"
    return "unreachable" if isinstance(exc, httpx.TransportError) else "ready"


async def _with_slots(client, url: str, reading: metrics.Reading, timeout_s: float) -> metrics.Reading:
    """KV figures from llama-server's /slots; none if it was started without --slots."""
    try:
        text = await body_of(client, f"{url}/slots", timeout_s)
    except httpx.HTTPStatusError:
        return reading
    try:
        slots = json.loads(text)
    except (ValueError, RecursionError):
        raise metrics.Unreadable("/slots is not JSON") from None
    return metrics.with_slots(reading, slots)


def describe(exc: Exception) -> str:
    """An exception in words, on one line: its message (any URL in it without credentials), or its type when it
    has none."""
    return redacted(one_line(str(exc))) or type(exc).__name__


def one_line(text: str) -> str:
    """An engine's text fit for a reason or a status line: one line, each character that is not printable
    (line ends, tabs, terminal escapes) written as Python writes it in a string (\\n, \\t, \\x1b)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
