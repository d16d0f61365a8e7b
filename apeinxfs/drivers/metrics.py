"""Engine metrics, without I/O: an engine's Prometheus text (and llama.cpp's /slots) as one `Reading`.

`parse` reads the Prometheus text exposition format into samples, `Gauges` gathers them by name;
`reading_of` recognises the engine by its names and takes what the kernel's views want from it:

- vLLM: usage `vllm:kv_cache_usage_perc` (older: `gpu_cache_usage_perc`); tokens = usage x
  capacity, capacity = `vllm:cache_config_info`'s num_gpu_blocks x block_size; requests
  `num_requests_running`, `num_requests_waiting`.
- SGLang: usage `sglang:token_usage`; tokens `num_used_tokens`, capacity
  `max_total_num_tokens`; requests `num_running_reqs`, `num_queue_reqs`.
- llama.cpp: usage `llamacpp:kv_cache_usage_ratio` and tokens `kv_cache_tokens` (older
  builds) or /slots; requests `requests_processing`, `requests_deferred`.

Current llama-server builds export no KV gauge: `with_slots` takes it from GET /slots (the
tokens held by the slots that are processing a request, over all slots' n_ctx; an idle
slot's tokens are a cache the next request may overwrite, like vLLM's free cached blocks).
Several series of one gauge are summed (vLLM's data-parallel `engine`s, SGLang's
`dp_rank`s; a usage is averaged), except the copies SGLang prints per tensor, pipeline and
expert rank of one engine, which count once. Every count is read through `figure`: a whole number
bounded by FIGURE_MAX, whatever the engine sent. No HTTP here: see scrape.py.
"""
import math
import re
import typing

import attrs

REPLICA_LABELS = frozenset({"tp_rank", "pp_rank", "moe_ep_rank"})
_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?[ \t]+(\S+)(?:[ \t]+-?\d+)?[ \t]*")
_LABEL = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\]|\\.)*)"[ \t]*(?:,|$)')
FIGURE_MAX = 2**53  # the largest count kept: a float holds every integer up to it; no KV cache is near
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


class Unreadable(Exception):
    """The text is not the Prometheus exposition format, or /slots is not llama.cpp's."""


@attrs.frozen
class Sample:
    """One line of the exposition: a metric name, its labels, its value."""

    name: str
    labels: dict
    value: float


@attrs.frozen
class Reading:
    """What an engine says of itself at one scrape; None where it does not say."""

    engine: str
    kv_usage: float | None = None
    kv_tokens: int | None = None
    kv_capacity: int | None = None
    running: int | None = None
    waiting: int | None = None


@attrs.frozen
class Observation:
    """The last scrape of one model's engine: where from, what it read (or why not), when."""

    source: str
    reading: Reading | None = None
    error: str | None = None
    at_us: int = 0


def parse(text: str) -> list[Sample]:
    """The samples of a Prometheus text exposition; comments and HELP/TYPE lines are skipped."""
    return parse_lines(text.splitlines(), 1)


def parse_lines(lines: list[str], first: int) -> list[Sample]:
    """The samples of `lines` of an exposition, the first of them its line number `first`."""
    samples = []
    for number, line in enumerate(lines, first):
        if line.strip() and not line.lstrip().startswith("#"):
            samples.append(_sample(line, number))
    return samples


def _sample(line: str, number: int) -> Sample:
    match = _SAMPLE.fullmatch(line.strip())
    try:
        return Sample(match[1], _labels(match[2] or ""), float(match[3]))
    except (TypeError, ValueError):
        raise Unreadable(f"line {number} is not a Prometheus sample: {line[:120]!r}") from None


def _labels(text: str) -> dict:
    labels, at = {}, 0
    while at < len(text.rstrip(" \t,")):
        match = _LABEL.match(text, at)
        if match is None:
            raise ValueError(text)
        labels[match[1]] = re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m[0]], match[2])
        at = match.end()
    return labels


class Gauges:
    """The samples of one scrape by name, with the sums and means the readers need; `add` takes more of them
    (a scrape adds its samples a slice at a time)."""

    def __init__(self, samples: typing.Iterable[Sample] = ()):
        self.by_name: dict[str, dict] = {}
        self.add(samples)

    def add(self, samples: typing.Iterable[Sample]) -> None:
        for sample in samples:
            engine = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in REPLICA_LABELS))
            series = self.by_name.setdefault(sample.name, {})
            series[engine] = max(series.get(engine, -math.inf), sample.value)

    def values(self, name: str) -> list[float]:
        return [v for v in self.by_name.get(name, {}).values() if math.isfinite(v)]

    def total(self, name: str) -> int | None:
        values = self.values(name)
        return figure(sum(values)) if values else None

    def mean(self, name: str) -> float | None:
        values = self.values(name)
        return sum(values) / len(values) if values else None

    def label_rows(self, name: str) -> list[dict]:
        return [dict(labels) for labels in self.by_name.get(name, {})]


def engine_of(names) -> str:
    """vllm, sglang or llamacpp: the first of their prefixes found in the metric `names`; else `unknown`."""
    prefixes = {name.partition(":")[0] for name in names if ":" in name}
    return next((engine for engine in READERS if engine in prefixes), "unknown")


def reading_of(gauges: Gauges) -> Reading:
    """What the engine of these gauges says of its KV cache and requests; Unreadable if its KV usage is not a
    fraction 0 to 1 (a usage of 50 would be 50 caches' tokens) or its capacity is negative."""
    engine = engine_of(gauges.by_name)
    reading = READERS[engine](gauges) if engine in READERS else Reading(engine)
    if reading.kv_usage is not None and not 0 <= reading.kv_usage <= 1:
        raise Unreadable(f"its KV cache usage of {reading.kv_usage:g} is not a fraction 0 to 1")
    if reading.kv_capacity is not None and reading.kv_capacity < 0:  # combine's weights: they must not sum to 0
        raise Unreadable(f"its KV cache capacity of {reading.kv_capacity} tokens is negative")
    return reading


def _vllm(gauges: Gauges) -> Reading:
    usage = _first(gauges.mean("vllm:kv_cache_usage_perc"), gauges.mean("vllm:gpu_cache_usage_perc"))
    capacity = _vllm_capacity(gauges)
    tokens = figure(usage * capacity) if usage is not None and capacity else None
    return Reading("vllm", usage, tokens, capacity, gauges.total("vllm:num_requests_running"),
                   gauges.total("vllm:num_requests_waiting"))


def _vllm_capacity(gauges: Gauges) -> int | None:
    """Tokens in all engines' KV caches: num_gpu_blocks x block_size of each `cache_config_info`."""
    sizes = [figure(row.get("num_gpu_blocks"), 0) * figure(row.get("block_size"), 0)
             for row in gauges.label_rows("vllm:cache_config_info")]
    return figure(sum(sizes)) if sizes and all(sizes) else None


def _sglang(gauges: Gauges) -> Reading:
    return Reading("sglang", gauges.mean("sglang:token_usage"), gauges.total("sglang:num_used_tokens"),
                   gauges.total("sglang:max_total_num_tokens"), gauges.total("sglang:num_running_reqs"),
                   gauges.total("sglang:num_queue_reqs"))


def _llamacpp(gauges: Gauges) -> Reading:
    usage, tokens = gauges.mean("llamacpp:kv_cache_usage_ratio"), gauges.total("llamacpp:kv_cache_tokens")
    capacity = figure(tokens / usage) if usage and tokens is not None else None
    return Reading("llamacpp", usage, tokens, capacity, gauges.total("llamacpp:requests_processing"),
                   gauges.total("llamacpp:requests_deferred"))


READERS = {"vllm": _vllm, "sglang": _sglang, "llamacpp": _llamacpp}


def wants_slots(reading: Reading) -> bool:
    """Whether the KV figures must come from llama-server's /slots (its /metrics has none)."""
    return reading.engine == "llamacpp" and reading.kv_usage is None


def with_slots(reading: Reading, slots) -> Reading:
    """The reading with llama-server's /slots (its JSON) as the KV figures."""
    if not isinstance(slots, list) or not all(isinstance(s, dict) and "n_ctx" in s for s in slots):
        raise Unreadable("/slots is not a list of llama.cpp slots")
    capacity = figure(sum(figure(s["n_ctx"], 0) for s in slots))
    tokens = figure(sum(figure(s.get("n_prompt_tokens"), 0) for s in slots if s.get("is_processing")))
    return attrs.evolve(reading, kv_tokens=tokens, kv_capacity=capacity,
                        kv_usage=tokens / capacity if capacity else None)


def combine(readings: list[Reading]) -> Reading:
    """All engines as one: tokens, capacity and requests summed; usage weighted by capacity when all say it."""
    usages = [r for r in readings if r.kv_usage is not None]
    weights = [r.kv_capacity for r in usages]
    usage = (sum(r.kv_usage * w for r, w in zip(usages, weights)) / sum(weights) if usages and all(weights)
             else sum(r.kv_usage for r in usages) / len(usages) if usages else None)
    return Reading("all", usage, *(sum(getattr(r, key) or 0 for r in readings)
                                   for key in ("kv_tokens", "kv_capacity", "running", "waiting")))


def together(observations: list[Observation]) -> Observation:
    """A model's endpoints' last scrapes as one: their sources, readings combined (named by their engine
    when all are one kind), errors joined, the oldest time."""
    readings = [o.reading for o in observations if o.reading is not None]
    reading = combine(readings) if readings else None
    if reading is not None and len({r.engine for r in readings}) == 1:
        reading = attrs.evolve(reading, engine=readings[0].engine)
    errors = [f"{o.source}: {o.error}" for o in observations if o.error]
    return Observation(source=",".join(o.source for o in observations), reading=reading,
                       error="; ".join(errors) or None, at_us=min(o.at_us for o in observations))


def _first(*values):
    return next((v for v in values if v is not None), None)


def figure(value, low: int = -FIGURE_MAX) -> int:
    """`value` (a number, a label's text, a JSON value) as a whole number `low` to FIGURE_MAX, 0 if it is none:
    whatever an engine sends (1e308, inf, "1e999", a product or quotient of those) is read without raising. A
    gauge keeps its sign (the kernel refuses a negative KV report, saying so); a label's or a slot's count is 0 up."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return 0
    return 0 if math.isnan(number) else round(min(max(number, low), FIGURE_MAX))
