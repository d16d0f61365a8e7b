"""Scraping an engine's metrics over HTTP, every second or so: the I/O around metrics.py.

`watch` polls one engine's GET /metrics (and, for llama-server builds without a KV gauge,
GET /slots) and hands each `Observation` to the host (`host.observe(model, observation)`),
which keeps it beside the kernel: observations are not kernel state and are never
journaled; but the tokens its KV cache holds go to `host.report_kv`, which journals them for the
kernel's books when they change (kernel/kvreport.py); a report the kernel refuses (negative, more than its GPUs
hold) is that engine's scrape error, logged once, never the end of the loop scraping every model. A failed scrape
is an observation too (its error, no reading), so /models/NAME/engine says why there are no numbers, and the
model's LastError too. Each scrape is also a health check
(enginestate.py): an engine that answers is ready, even without metrics; HTTP 503 means it is
still loading (starting); no answer, unreachable. An engine not scraped is `probe`d instead while
the kernel holds it down (kernel/engines.py). Parsing is metrics.py's.
"""
import logging

import attrs
import httpx
import trio

from ..kernel.endpoints import redacted
from ..kernel.errors import Invalid
from . import metrics

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
        response = await client.get(source, timeout=timeout_s)
        response.raise_for_status()
        reading = metrics.read(metrics.parse(response.text))
        if metrics.wants_slots(reading):
            reading = await _with_slots(client, url, reading, timeout_s)
    except (httpx.HTTPError, metrics.Unreadable) as exc:
        return metrics.Observation(source=source, error=describe(exc)), state_of(exc)
    return metrics.Observation(source=source, reading=reading), "ready"


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
    response = await client.get(f"{url}/slots", timeout=timeout_s)
    if response.status_code != 200:
        return reading
    try:
        slots = response.json()
    except ValueError:
        raise metrics.Unreadable("/slots is not JSON") from None
    return metrics.with_slots(reading, slots)


def describe(exc: Exception) -> str:
    """An exception in words: its message (any URL in it without credentials), or its type when it has none."""
    return redacted(str(exc)) or type(exc).__name__
