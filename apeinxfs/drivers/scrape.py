"""Scraping an engine's metrics over HTTP, every second or so: the I/O around metrics.py.

`watch` polls one engine's GET /metrics (and, for llama-server builds without a KV gauge,
GET /slots) and hands each `Observation` to the host (`host.observe(model, observation)`),
which keeps it beside the kernel: observations are not kernel state and are never
journaled. A failed scrape is an observation too (its error, no reading), so
/models/NAME/engine says why there are no numbers. Parsing is metrics.py's.
"""
import httpx
import trio

from . import metrics


async def watch(client: httpx.AsyncClient, model: str, url: str, interval_s: float, host) -> None:
    """Scrape the engine at `url` for `model` every `interval_s` seconds, until cancelled."""
    host.observe(model, metrics.Observation(source=f"{url}/metrics"))  # not scraped yet
    while True:
        host.observe(model, await scrape(client, url, timeout_s=max(2.0, 2 * interval_s)))
        await trio.sleep(interval_s)


async def scrape(client: httpx.AsyncClient, url: str, timeout_s: float) -> metrics.Observation:
    """One scrape of the engine at `url`: its reading, or the reason there is none."""
    source = f"{url}/metrics"
    try:
        response = await client.get(source, timeout=timeout_s)
        response.raise_for_status()
        reading = metrics.read(metrics.parse(response.text))
        if metrics.wants_slots(reading):
            reading = await _with_slots(client, url, reading, timeout_s)
    except (httpx.HTTPError, metrics.Unreadable) as exc:
        return metrics.Observation(source=source, error=describe(exc))
    return metrics.Observation(source=source, reading=reading)


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
    """An exception in words: its message, or its type when it has none."""
    return str(exc) or type(exc).__name__
