"""The `openai` driver: runs the kernel's tasks on an OpenAI-compatible HTTP engine.

vLLM, SGLang, llama.cpp's llama-server, TGI and Ollama all serve streaming
/v1/completions and /v1/chat/completions. For each task the kernel places on a GPU this
driver opens one streaming request (the engine batches them itself), turns its
server-sent events into kernel chunks (sse.py) and hands them to the GPU's outbox
(flow.py: a task's first token at once, later ones a round at a time); when the kernel
takes a task off the GPU (kill, stop, preemption) it closes that stream, and the engine
frees the slot. A task placed again after preemption resumes: its prompt plus the text so
far, for the tokens still owed. Requests go through spares.py (connections opened ahead;
a bare HTTP/1.1 exchange, bare.py, where httpx would send straight, else httpx's
transport); once a stream's first token went out, its reads are paced. Connection failures are retried with exponential backoff (a kept-alive or
spare connection the engine had dropped at once), then the engine is reported unreachable
and the task interrupted (`Interrupted`: the kernel holds it until the engine is back and
resumes it from its text, kernel/engines.py), as is a task whose stream breaks; a request the
engine refuses (HTTP 4xx) fails its task. `observe` scrapes the engines' /metrics (scrape.py),
or, for an engine without metrics_s, probes it while the kernel holds it down. Requests are health checks too (enginestate.py): an accepted one says
ready; retries spent, unreachable (starting, after HTTP 503); HTTP 404, failed. The HTTP
side (Connection, OpenAIDriver) is shared with triton.py, which brings its own protocol.
A model with `endpoints` (kernel/endpoints.py) has one engine per GPU or group of GPUs: a task goes to
the endpoint of the GPU the kernel placed it on, and each endpoint is scraped, checked and reported
(`gpus=`) on its own; the KV tokens a scrape reads go to the kernel (`host.report_kv`, kernel/kvreport.py).
Options of a model (`[models.options]`): url (required unless the model has endpoints), engine_model (the name sent;
default the model's), api ("completions" or "chat"), timeout_s (60: the longest silence
of an engine, and the longest a stream may go without a token, from the request on: Progress), retries (3), backoff_s (0.2), metrics_s (1.0: seconds between scrapes of the
engine's /metrics; 0: none), each within the bounds below (options.py); any other option is refused. A task's sampling keys (temperature, top_p, top_k, seed, stop,
presence_penalty, frequency_penalty) go in its request under their own names.
"""
import contextlib
import functools
import logging
import math
import typing

import attrs
import httpx
import trio

from ..kernel.endpoints import redacted
from ..kernel.errors import Invalid
from ..kernel.events import Chunk, Failed, Interrupted
from ..kernel.task import State
from . import bare, flow, options, pacing, scrape, spares, sse
from .bounded import up_to

logging.getLogger("httpx").setLevel(logging.WARNING)  # not a log line per task in the daemon's log

APIS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
# Idle connections are dropped before an engine would close them (llama-server's cpp-httplib: after 5 s;
# it also closes one after each stream, though it says keep-alive: see Stale).
LIMITS = httpx.Limits(max_connections=None, keepalive_expiry=2.0)
# Once a task's first token went out, its stream pauses this long: its reader (opening the stream, reading) gets the
# daemon's one thread before the tokens behind it. Later reads are spaced by pacing.py: several tokens per read.
PACE_S = pacing.MIN_S
ERROR_BYTES = 300  # of the body of an engine's HTTP error, in its task's reason
PROBE_S = 1.0  # how often an engine without metrics_s is checked while the kernel holds it down
# The options' bounds (options.py): a day's silence, 100 retries, an hour's first backoff (doubling at each retry);
# a scrape at most every 10 ms and at least every hour.
TIMEOUT_MAX_S, RETRIES_MAX, BACKOFF_MAX_S, METRICS_MIN_S, METRICS_MAX_S = 86400.0, 100, 3600.0, 0.01, 3600.0


class Unreachable(Exception):
    """The engine could not be reached or is not ready (worth retrying)."""


class Stale(Unreachable):
    """The engine hung up before answering on a kept-alive connection it had closed (llama-server closes
    one after each stream): worth retrying at once."""


class Loading(Unreachable):
    """The engine answered HTTP 503: it is starting (loading its model) or overloaded."""


class Broken(Exception):
    """The engine answered but the request failed (not retried)."""


class NotServed(Broken):
    """The engine answered HTTP 404: it does not serve this model (or this API)."""


class StreamBroke(Broken):
    """The engine accepted the request but its answer stopped midway: the task resumes from its text."""


@attrs.frozen
class Connection:
    """Where an HTTP engine is and how patiently to reach it: the options every HTTP driver has.

    A subclass adds its protocol's options and `request`, `tally` and `events` (see Endpoint).
    `metrics_s` is 0 (no scraping) unless the protocol's engines export metrics that
    metrics.py reads, as the openai one's do; there it is an option.
    """

    driver: typing.ClassVar[str] = "openai"
    metrics_s: typing.ClassVar[float] = 0.0
    url: str = attrs.field(converter=lambda url: str(url).rstrip("/"), validator=options.engine_url)
    engine_model: str
    timeout_s: float = attrs.field(default=60.0, validator=options.seconds(0.001, TIMEOUT_MAX_S))
    retries: int = attrs.field(default=3, validator=options.count(RETRIES_MAX))
    backoff_s: float = attrs.field(default=0.2, validator=options.seconds(0, BACKOFF_MAX_S))

    @classmethod
    def of(cls, model, url: str | None = None) -> "Connection":
        """The endpoint a model's options describe (at `url`, one of its endpoints', if given)."""
        given = {"engine_model": model.name, **model.options, **({"url": url} if url else {})}
        if "url" not in given:
            raise Invalid(f"model {model.name}: the {cls.driver} driver needs options.url or endpoints")
        if (why := options.unknown(cls, given)) is not None:
            raise Invalid(f"model {model.name}: {cls.driver} options: {why}")
        try:
            return cls(**given)
        except (TypeError, ValueError) as exc:
            raise Invalid(f"model {model.name}: {cls.driver} options: {exc}") from None

    @classmethod
    def by_gpus(cls, model) -> dict:
        """{GPUs: endpoint}: one per entry of the model's `endpoints` (kernel/endpoints.py), or its options.url
        for every GPU as {(): endpoint}."""
        return {each.gpus: cls.of(model, each.url) for each in model.endpoints} or {(): cls.of(model)}


@attrs.frozen
class Endpoint(Connection):
    """An OpenAI-compatible engine for one model: what to ask it and how to read its answer."""

    api: str = attrs.field(default="completions", validator=attrs.validators.in_(APIS))
    metrics_s: float = attrs.field(default=1.0, validator=options.seconds(METRICS_MIN_S, METRICS_MAX_S, off=True))

    def request(self, task) -> tuple[str, dict]:
        """URL and body of the streaming request for what `task` still owes."""
        prompt, so_far = task.spec.prompt or task.spec.name, task.output.decode(errors="replace")
        body = {"model": self.engine_model, "max_tokens": task.spec.max_tokens - task.tokens_out,
                "stream": True, "stream_options": {"include_usage": True}, **task.spec.sampling_fields}
        if self.api == "chat":
            said = [{"role": "assistant", "content": so_far}] if so_far else []
            body["messages"] = [{"role": "user", "content": prompt}, *said]
        else:
            body["prompt"] = prompt + so_far
        return self.url + APIS[self.api], body

    def tally(self, pid: int) -> sse.Tally:
        """A fresh count of what one stream produces for task `pid`."""
        return sse.Tally(pid)

    def events(self, response):
        """The JSON events of the engine's answer."""
        return sse.events(sse.lines(response.aiter_bytes()))


class OpenAIDriver:
    """One streaming request per running task, opened and closed as the kernel's batch changes."""

    name = "openai"
    endpoint = Endpoint

    def __init__(self, models: dict):
        # name -> {gpus: Endpoint}: one per endpoint of the model, or {(): its url}
        self.endpoints = {name: self.endpoint.by_gpus(model) for name, model in models.items()}
        self.spares = spares.SpareBackend()  # shared by the GPUs: one spare connection per engine, not per GPU

    async def serve(self, gpu: int, host) -> None:
        async with spares.client(self.spares, limits=LIMITS) as client:
            await flow.run_jobs(host, gpu, functools.partial(self._start, client), self.name)

    def _start(self, client, nursery, outbox: flow.Outbox, task) -> trio.CancelScope:
        """Stream `task` in the background; cancelling the scope closes its stream."""
        return flow.spawn(nursery, outbox, task, self._run, client, outbox, task)

    async def observe(self, host) -> None:
        """Scrape each model's engine metrics every `metrics_s` seconds into the host (or, without
        metrics_s, probe it every PROBE_S while the kernel holds it down), until cancelled."""
        async with httpx.AsyncClient() as client, trio.open_nursery() as nursery:
            for name, endpoints in self.endpoints.items():
                for gpus, endpoint in endpoints.items():
                    if endpoint.metrics_s:
                        nursery.start_soon(scrape.watch, client, name, endpoint.url, endpoint.metrics_s, host, gpus)
                    else:
                        nursery.start_soon(scrape.probe, client, name, endpoint.url, PROBE_S, host, gpus)

    def _route(self, model: str, gpu: int) -> tuple[tuple, Connection]:
        """The endpoint of `model` that serves `gpu` (the kernel places its tasks on those GPUs only), and its GPUs."""
        return next((gpus, endpoint) for gpus, endpoint in self.endpoints[model].items() if not gpus or gpu in gpus)

    async def _run(self, client, outbox: flow.Outbox, task) -> None:
        ending = await self._attempts(client, task, outbox)
        if ending is not None:
            outbox.end(task, ending)

    async def _attempts(self, client, task, outbox: flow.Outbox) -> Failed | Interrupted | None:
        """Stream the task, retrying while the engine is unreachable; how it ended if not done: Interrupted
        (resumed later from its text) if the engine went away, Failed if it refused the request."""
        (gpus, endpoint), delay = self._route(task.model, outbox.gpu), 0.0
        for attempt in range(endpoint.retries + 1):
            if delay:  # no checkpoint before the first try: time to first token starts here
                await trio.sleep(delay)
            try:
                return await self._stream(client, (gpus, endpoint), task, outbox)
            except Unreachable as exc:
                last, delay = exc, 0.0 if isinstance(exc, Stale) else endpoint.backoff_s * 2 ** attempt
            except Broken as exc:
                if isinstance(exc, NotServed):
                    outbox.host.report_state(task.model, "failed", redacted(f"{endpoint.url}: {exc}"), gpus)
                ending = Interrupted if isinstance(exc, StreamBroke) else Failed
                return ending(pid=task.pid, reason=redacted(f"engine at {endpoint.url}: {exc}"))
        outbox.host.report_state(task.model, "starting" if isinstance(last, Loading) else "unreachable",
                                 redacted(f"{endpoint.url}: {last}"), gpus)
        return Interrupted(pid=task.pid, reason=redacted(f"engine at {endpoint.url} unreachable: {last}"))

    async def _stream(self, client, route: tuple[tuple, Connection], task, outbox: flow.Outbox) -> None:
        gpus, endpoint = route
        url, body = endpoint.request(task)
        tally, answered, progress = endpoint.tally(task.pid), False, Progress(endpoint.timeout_s)
        try:
            with progress.scope:
                async with spares.stream(client, url, body, endpoint.timeout_s) as response:
                    answered = True
                    await _check(response)
                    outbox.host.report_state(task.model, "ready", None, gpus)
                    if await _follow(endpoint.events(response), response, tally, outbox, task, progress):
                        return
        except (httpx.HTTPError, sse.ProtocolError) as exc:
            raise _failure(exc, answered, tally.tokens) from None
        if progress.scope.cancelled_caught:
            raise StreamBroke(f"no token for {endpoint.timeout_s} s after {tally.tokens} tokens")
        if not tally.finished:
            raise StreamBroke(f"stream ended after {tally.tokens} tokens without a finish_reason")
        outbox.put(Chunk(pid=task.pid, text="", tokens=0, final=True))


@attrs.define
class Progress:
    """A stream's deadline for its next token: `timeout_s` from the request, then from each chunk the engine's
    events make, or event that shows it at work without one (reasoning, tool calls: Tally.working) (`made`);
    bytes that make none (comments, a trickled head, a line or event that never ends)
    do not move it. `scope` is cancelled at that deadline: between timeout_s and 9/8 of it after the last
    chunk, as the deadline is moved only once an eighth of timeout_s has passed since it last was (moving a
    scope's deadline costs more than a token's parse)."""

    timeout_s: float
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    moved_at: float = -math.inf

    def __attrs_post_init__(self):
        self.made()

    def made(self) -> None:
        if (now := trio.current_time()) - self.moved_at >= self.timeout_s / 8:
            self.moved_at, self.scope.deadline = now, now + self.timeout_s * 9 / 8


async def _follow(events, response, tally: sse.Tally, outbox: flow.Outbox, task, progress: Progress) -> bool:
    """Hand each event's chunk to the outbox (each one moves the stream's `progress` deadline); once the first token went out, pause PACE_S (its reader
    goes first), then read the stream a few tokens at a time (pacing.py). True if the kernel ended `task`
    on a chunk that went out at once (its last token: the rest of the stream is not wanted, and the job
    ends here rather than cancelled at the batch's next change). Closes `events` (an async generator)
    however it ends: left to the garbage collector, trio's would spawn a task for it."""
    pace = None
    async with contextlib.aclosing(events):
        async for event in events:
            if (chunk := tally.chunk(event)) is None:
                if tally.working(event):
                    progress.made()
                continue
            progress.made()
            if not outbox.put(chunk):
                continue
            if task.state is State.EXITED:  # not PREEMPTED or STOPPED: placed again, the job must still be there
                return True
            if pace is None:
                pace = pacing.Pace(trio.current_time(), tally.tokens)
                spares.pace(response, lambda: pace.interval_s(tally.tokens, trio.current_time()))
            await trio.sleep(PACE_S)
    return False


def _failure(exc: Exception, answered: bool, tokens: int) -> Exception:
    """Unreachable (retried) if the request never reached the engine: no connection, or Stale, a
    kept-alive or spare one the engine had closed (it hangs up or resets before answering); StreamBroke
    (resumed) if the connection failed midway; Broken (the task fails) for an error the engine sent, or an
    answer that breaks HTTP or the protocol (whether or not it had answered)."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return Unreachable(scrape.describe(exc))
    malformed = isinstance(exc, (sse.ProtocolError, bare.Malformed))
    if not answered and not malformed and isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError,
                                                           httpx.WriteError)):
        return Stale(scrape.describe(exc))
    broke = Broken if malformed else StreamBroke
    return broke(f"stream broke after {tokens} tokens: {scrape.describe(exc)}")


async def _check(response) -> None:
    """Raise unless the engine accepted the request: 5xx (loading, overloaded) may pass, 4xx will not. The
    reason holds the start of the answer's body on one line: ERROR_BYTES at most are read. A compressed answer
    is not read (identity was asked: the bounds on what is read count the bytes as sent); with 200 it breaks
    the protocol."""
    coding = scrape.one_line(scrape.compressed(response))
    if response.status_code == 200 and coding:
        raise Broken(f"a compressed answer (Content-Encoding: {coding}), though identity was asked")
    if response.status_code == 200:
        return
    text = f"(a body in {coding})" if coding else (await up_to(response.aiter_bytes(), ERROR_BYTES)).decode(errors="replace")
    detail = f"HTTP {response.status_code}: {scrape.one_line(text)}"
    failures = {503: Loading, 404: NotServed}
    raise failures.get(response.status_code, Unreachable if response.status_code >= 500 else Broken)(detail)
