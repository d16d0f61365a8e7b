"""Scraping an engine's metrics over HTTP, every second or so: the I/O around metrics.py.

`watch` polls one engine's GET /metrics (and, for llama-server builds without a KV gauge,
GET /slots) and hands each `Observation` to the host (`host.observe(model, observation)`),
which keeps it beside the kernel: observations are not kernel state and are never
journaled; but the tokens its KV cache holds go to `host.report_kv`, which journals them for the
kernel's books when they change (kernel/kvreport.py); a report the kernel refuses (negative, over 1000 times what
its GPUs hold) or counts as full (more than they hold) is that engine's scrape error, logged once for a run of such
reports, never the end of the loop scraping every model. The GET sends the URL's credentials; the source shown
hides them. A failed scrape
is an observation too (its error, no reading), so /models/NAME/engine says why there are no numbers, and the
model's LastError too; a body over BODY_MAX is such an error, not read on, and a body is parsed and its samples
gathered a slice at a time (PARSE_CHARS, GATHER_WORK), the daemon's other work running between the slices. Each
scrape is also a health check
(enginestate.py): an engine that answers is ready, even without metrics; HTTP 503 means it is
still loading (starting); no answer, unreachable. An engine not scraped is `probe`d instead while
the kernel holds it down (kernel/engines.py). Parsing is metrics.py's: what an engine sent is its fault only as
metrics.Unreadable (said where metrics.py finds it) or an HTTP error; anything else raised there is a daemon
bug, not caught here: it ends the driver's observe loop, whose supervisor keeps it as a Bug row (/ai/health)
and starts the loop again.
"""
import json
import logging

import attrs
import httpx
import trio

from ..kernel.endpoints import redacted
from ..kernel.errors import Invalid
from . import metrics
from .bounded import up_to

BODY_MAX = 1 << 20  # bytes of a /metrics read at most: vLLM's and SGLang's are well under 200 KB
IDENTITY = {"Accept-Encoding": "identity"}  # asked on every request to an engine: a body's bound counts the bytes sent
PARSE_CHARS = 32_000  # characters of /metrics parsed between two checkpoints: about 6 ms of the daemon's thread for
# label-heavy lines, 9 ms for short ones (sample lines of 15 characters); a slice ends at a line's end (one longer line
# is one slice)
GATHER_WORK = 10_000  # samples and labels gathered into Gauges between two checkpoints: about 7 ms

log = logging.getLogger(__name__)


async def watch(client: httpx.AsyncClient, model: str, url: str, interval_s: float, host, gpus: tuple = ()) -> None:
    """Scrape the engine at `url` for `model` (its endpoint on `gpus`; empty: its one engine) every
    `interval_s` seconds, until cancelled; the KV tokens it reports go to the kernel too."""
    host.observe(model, metrics.Observation(source=redacted(f"{url}/metrics")), gpus)  # not scraped yet
    refused = False  # its KV reports are refused: logged as they start to be, again once one was taken
    while True:
        observation, state = await scrape(client, url, timeout_s=max(2.0, 2 * interval_s))
        observation = _report_kv(host, model, gpus, observation)
        if observation.reading is not None:  # read: its KV report taken, or refused (the error)
            if observation.error and not refused:
                log.warning("model %s: %s", model, observation.error)
            refused = bool(observation.error)
        host.observe(model, observation, gpus)
        host.report_state(model, state, observation.error and f"{observation.source}: {observation.error}", gpus)
        await trio.sleep(interval_s)


def _report_kv(host, model: str, gpus: tuple, observation: metrics.Observation) -> metrics.Observation:
    """Hand the KV tokens of `observation` to the kernel; the observation, with the reason as its error if refused
    or counted as full (more than its GPUs hold)."""
    if observation.reading is not None and observation.reading.kv_tokens is not None:
        try:
            beyond_room = host.report_kv(model, gpus, observation.reading.kv_tokens)
        except Invalid as exc:
            return attrs.evolve(observation, error=f"its KV report is refused: {exc.reason}")
        return attrs.evolve(observation, error=beyond_room)
    return observation


async def scrape(client: httpx.AsyncClient, url: str, timeout_s: float) -> tuple[metrics.Observation, str]:
    """One scrape of the engine at `url`: its reading, or the reason there is none; and the engine's state."""
    source = redacted(f"{url}/metrics")
    try:
        reading = metrics.reading_of(await gathered(await parsed(await body_of(client, f"{url}/metrics", timeout_s))))
        if metrics.wants_slots(reading):
            return await _with_slots(client, url, metrics.Observation(source=source, reading=reading), timeout_s), "ready"
    except (httpx.HTTPError, metrics.Unreadable) as exc:  # the engine's faults; any other is a daemon bug
        return metrics.Observation(source=source, error=describe(exc)), state_of(exc)
    return metrics.Observation(source=source, reading=reading), "ready"


async def body_of(client: httpx.AsyncClient, source: str, timeout_s: float) -> str:
    """The text at `source` (GET), read up to BODY_MAX bytes: more is Unreadable, not held; so is a compressed
    body (identity is asked: a bound on decompressed pieces would hold only after each was decompressed whole)."""
    async with client.stream("GET", source, timeout=timeout_s, headers=IDENTITY) as response:
        response.raise_for_status()
        if coding := compressed(response):
            raise metrics.Unreadable(f"a compressed body (Content-Encoding: {one_line(coding)}), though identity was asked")
        body = await up_to(response.aiter_raw(), BODY_MAX, metrics.Unreadable(f"the body is over {BODY_MAX} bytes"))
    return body.decode("utf-8", "replace")


async def parsed(text: str) -> list[metrics.Sample]:
    """The samples of `text`, parsed a slice of whole lines of about PARSE_CHARS characters at a time, with a
    checkpoint after each: the daemon's other tasks run between them."""
    samples, at, first = [], 0, 1  # first: the line number of the slice's first line
    while at < len(text):
        end = text.find("\n", at + PARSE_CHARS) + 1 or len(text)
        lines = text[at:end].splitlines()
        samples += metrics.parse_lines(lines, first)
        at, first = end, first + len(lines)
        await trio.lowlevel.checkpoint()
    return samples


async def gathered(samples: list[metrics.Sample]) -> metrics.Gauges:
    """`samples` by name (metrics.Gauges), gathered a slice of about GATHER_WORK samples and labels at a time,
    with a checkpoint after each."""
    gauges, at = metrics.Gauges(), 0
    while at < len(samples):
        end, work = at, 0
        while end < len(samples) and work < GATHER_WORK:
            work, end = work + 1 + len(samples[end].labels), end + 1
        gauges.add(samples[at:end])
        at = end
        await trio.lowlevel.checkpoint()
    return gauges


async def answers(client: httpx.AsyncClient, source: str, timeout_s: float) -> None:
    """GET `source` (identity asked, as every request to an engine) and close it unread: its status is all that
    counts (HTTPError for none or an error status), so an endless or compressed body costs nothing."""
    async with client.stream("GET", source, timeout=timeout_s, headers=IDENTITY) as response:
        response.raise_for_status()


async def probe(client: httpx.AsyncClient, model: str, url: str, interval_s: float, host, gpus: tuple = ()) -> None:
    """For an engine not scraped: every `interval_s` seconds while the kernel holds `model` (its endpoint on
    `gpus`) down (`host.engine_down`), check whether the engine at `url` answers again (GET /health; any
    answer but 503 will do), until cancelled. No request is sent to a down engine otherwise."""
    while True:
        await trio.sleep(interval_s)
        if host.engine_down(model, gpus):
            try:
                await answers(client, f"{url}/health", max(2.0, 2 * interval_s))
            except httpx.HTTPError as exc:
                state = state_of(exc)
                host.report_state(model, state, None if state == "ready" else redacted(f"{url}/health: {describe(exc)}"),
                                  gpus)
            else:
                host.report_state(model, "ready", None, gpus)


def compressed(response) -> str:
    """The content coding of an engine's answer if it is not identity (it compressed though asked not to), else ""."""
    coding = response.headers.get("content-encoding", "").strip()
    return "" if coding.lower() in ("", "identity") else coding


def state_of(exc: Exception) -> str:
    """What a failed scrape says of the engine: loading (HTTP 503), not there (no answer), else it answered."""
    if isinstance(exc, httpx.HTTPStatusError):
        return "starting" if exc.response.status_code == 503 else "ready"
    return "unreachable" if isinstance(exc, httpx.TransportError) else "ready"


async def _with_slots(client, url: str, observation: metrics.Observation, timeout_s: float) -> metrics.Observation:
    """`observation` of /metrics with KV figures from llama-server's /slots; none if it was started without
    --slots. An unreadable /slots (over BODY_MAX: a build with slots debug puts every slot's prompt and text
    there) means no slot figures, said as the observation's error: /metrics's figures still count."""
    try:
        slots = _json(await body_of(client, f"{url}/slots", timeout_s))
        return attrs.evolve(observation, reading=metrics.with_slots(observation.reading, slots))
    except httpx.HTTPStatusError:
        return observation
    except metrics.Unreadable as exc:
        return attrs.evolve(observation, error=f"no slot figures: {exc}")


def _json(text: str):
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise metrics.Unreadable("/slots is not JSON") from None


def describe(exc: Exception) -> str:
    """An exception in words, on one line: its message (any URL in it without credentials), or its type when it
    has none."""
    return redacted(one_line(str(exc))) or type(exc).__name__


def one_line(text: str) -> str:
    """An engine's text fit for a reason or a status line: one line, each character that is not printable
    (line ends, tabs, terminal escapes) and the backslash written as Python writes it in a string (\\n, \\t,
    \\x1b, \\\\), so an engine's own `\\n` (two characters) is not read as a line end."""
    return "".join(c if c.isprintable() and c != "\\" else c.encode("unicode_escape").decode("ascii") for c in text)
