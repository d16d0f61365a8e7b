"""The `openai` driver: runs the kernel's tasks on an OpenAI-compatible HTTP engine.

vLLM, SGLang, llama.cpp's llama-server, TGI and Ollama all serve streaming
/v1/completions and /v1/chat/completions. For each task the kernel places on a GPU this
driver opens one streaming request (the engine batches them itself), turns its
server-sent events into kernel chunks (sse.py) and delivers them; when the kernel takes a
task off the GPU (kill, stop, preemption) it closes that stream, and the engine frees the
slot. A task placed again after preemption resumes: its prompt plus the text so far, for
the tokens still owed. Tokens are delivered a round (ROUND_S) at a time, a task's first at
once (Outbox). Connection failures are retried with exponential backoff, then the
task fails with `engine at URL unreachable: ...`; a stream that breaks fails its task.
Options of a model (`[models.options]`): url (required), engine_model (the name sent;
default the model's), api ("completions" or "chat"), timeout_s (60: the longest silence
of an engine), retries (3), backoff_s (0.2), metrics_s (1.0: seconds between scrapes of the
engine's /metrics, see scrape.py; 0: none).
"""
import functools
import logging

import attrs
import httpx
import trio

from ..kernel.errors import Invalid
from ..kernel.events import Chunk, Failed, Step
from ..kernel.task import State
from . import scrape, sse

logging.getLogger("httpx").setLevel(logging.WARNING)  # not a log line per task in the daemon's log

APIS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
ROUND_S = 0.01  # the shortest time between two steps of one GPU's outbox (a fast engine's tokens come 5-20 at a time)
# Idle connections are dropped before an engine would close them (llama-server's cpp-httplib: after 5 s;
# it also closes one after each stream, though it says keep-alive: see Stale).
LIMITS = httpx.Limits(max_connections=None, keepalive_expiry=2.0)


class Unreachable(Exception):
    """The engine could not be reached or is not ready (worth retrying)."""


class Stale(Unreachable):
    """The engine hung up before answering on a kept-alive connection it had closed (llama-server closes
    one after each stream): worth retrying at once."""


class Broken(Exception):
    """The engine answered but the request failed (not retried)."""


@attrs.frozen
class Endpoint:
    """Where and how to reach the engine for one model."""

    url: str = attrs.field(converter=lambda url: str(url).rstrip("/"))
    engine_model: str
    api: str = attrs.field(default="completions", validator=attrs.validators.in_(APIS))
    timeout_s: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))
    retries: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    backoff_s: float = attrs.field(default=0.2, validator=attrs.validators.ge(0))
    metrics_s: float = attrs.field(default=1.0, validator=attrs.validators.ge(0))

    @classmethod
    def of(cls, model) -> "Endpoint":
        """The endpoint a model's options describe."""
        options = {"engine_model": model.name, **model.options}
        if "url" not in options:
            raise Invalid(f"model {model.name}: the openai driver needs options.url")
        try:
            return cls(**options)
        except (TypeError, ValueError) as exc:
            raise Invalid(f"model {model.name}: openai options: {exc}") from None

    def request(self, task) -> tuple[str, dict]:
        """URL and body of the streaming request for what `task` still owes."""
        prompt, so_far = task.spec.prompt or task.spec.name, task.output.decode(errors="replace")
        body = {"model": self.engine_model, "max_tokens": task.spec.max_tokens - task.tokens_out,
                "stream": True, "stream_options": {"include_usage": True}}
        if self.api == "chat":
            said = [{"role": "assistant", "content": so_far}] if so_far else []
            body["messages"] = [{"role": "user", "content": prompt}, *said]
        else:
            body["prompt"] = prompt + so_far
        return self.url + APIS[self.api], body


class Outbox:
    """Chunks and failures of one GPU, delivered together: one kernel step per round of at least
    ROUND_S, with one chunk per task, so a fast engine's tokens are journaled and read a few at a
    time (each step is a journal commit and a wake-up of every reader). A task's first token goes
    at once, with whatever else waits: time to first token is what a reader of a new task feels."""

    def __init__(self, host, gpu: int):
        self.host, self.gpu = host, gpu
        self.chunks, self.failures = [], []
        self.ready = trio.Event()

    def put(self, chunk: Chunk, first: bool = False) -> None:
        self.chunks.append(chunk)
        if first:
            self._deliver_chunks()
        else:
            self.ready.set()

    def _deliver_chunks(self) -> None:
        chunks, self.chunks = self.chunks, []
        if chunks:
            self.host.deliver(Step(gpu=self.gpu, chunks=merged(chunks)))

    def fail(self, task, reason: str) -> None:
        self.failures.append((task, Failed(pid=task.pid, reason=reason)))
        self.ready.set()

    async def deliver_forever(self) -> None:
        while True:
            await self.ready.wait()
            self.ready = trio.Event()
            self._deliver_chunks()
            failures, self.failures = self.failures, []
            for task, failure in failures:
                if task.state is State.RUNNING:  # not if killed or preempted meanwhile
                    self.host.deliver(failure)
            await trio.sleep(ROUND_S)


def merged(chunks: list[Chunk]) -> list[Chunk]:
    """One chunk per task, in order of first appearance: its texts joined, tokens and prefill summed."""
    by_task: dict[int, list[Chunk]] = {}
    for chunk in chunks:
        by_task.setdefault(chunk.pid, []).append(chunk)
    return [Chunk(pid=pid, text="".join(c.text for c in group), tokens=sum(c.tokens for c in group),
                  prefill=sum(c.prefill for c in group), final=any(c.final for c in group))
            for pid, group in by_task.items()]


class OpenAIDriver:
    """One streaming request per running task, opened and closed as the kernel's batch changes."""

    name = "openai"

    def __init__(self, models: dict):
        self.endpoints = {name: Endpoint.of(model) for name, model in models.items()}

    async def serve(self, gpu: int, host) -> None:
        outbox, streams = Outbox(host, gpu), {}
        async with httpx.AsyncClient(limits=LIMITS) as client, \
                trio.open_nursery() as nursery:
            nursery.start_soon(outbox.deliver_forever)
            start = functools.partial(nursery.start_soon, self._run, client, outbox)
            batch = await host.next_batch(gpu)
            while True:
                self._follow(batch, streams, start)
                batch = await host.batch_changed(gpu)

    async def observe(self, host) -> None:
        """Scrape each model's engine metrics every `metrics_s` seconds into the host, until cancelled."""
        async with httpx.AsyncClient() as client, trio.open_nursery() as nursery:
            for name, endpoint in self.endpoints.items():
                if endpoint.metrics_s:
                    nursery.start_soon(scrape.watch, client, name, endpoint.url, endpoint.metrics_s, host)

    @staticmethod
    def _follow(batch: list, streams: dict, start) -> None:
        """Start a stream for each task new to the batch; cancel those of tasks that left it.

        A stream that ended stays listed until its task leaves, so it is never started twice.
        """
        for task in batch:
            if task.pid not in streams:
                streams[task.pid] = trio.CancelScope()
                start(task, streams[task.pid])
        for pid in streams.keys() - {task.pid for task in batch}:
            streams.pop(pid).cancel()

    async def _run(self, client, outbox: Outbox, task, scope: trio.CancelScope) -> None:
        with scope:
            reason = await self._attempts(client, task, outbox)
            if reason is not None:
                outbox.fail(task, reason)

    async def _attempts(self, client, task, outbox: Outbox) -> str | None:
        """Stream the task, retrying while the engine is unreachable; the failure's reason, if any."""
        endpoint, delay = self.endpoints[task.model], 0.0
        for attempt in range(endpoint.retries + 1):
            if delay:  # no checkpoint before the first try: time to first token starts here
                await trio.sleep(delay)
            try:
                return await self._stream(client, endpoint, task, outbox)
            except Unreachable as exc:
                last, delay = exc, 0.0 if isinstance(exc, Stale) else endpoint.backoff_s * 2 ** attempt
            except Broken as exc:
                return f"engine at {endpoint.url}: {exc}"
        return f"engine at {endpoint.url} unreachable: {last}"

    async def _stream(self, client, endpoint: Endpoint, task, outbox: Outbox) -> None:
        url, body = endpoint.request(task)
        tally, answered = sse.Tally(task.pid), False
        try:
            async with client.stream("POST", url, json=body, timeout=endpoint.timeout_s) as response:
                answered = True
                await _check(response)
                async for event in sse.events(response.aiter_lines()):
                    if (chunk := tally.chunk(event)) is not None:
                        outbox.put(chunk, first=tally.tokens == chunk.tokens > 0)
        except (httpx.HTTPError, sse.ProtocolError) as exc:
            raise _failure(exc, answered, tally.tokens) from None
        if tally.finish_reason is None:
            raise Broken(f"stream ended after {tally.tokens} tokens without a finish_reason")
        outbox.put(Chunk(pid=task.pid, text="", tokens=0, final=True))


def _failure(exc: Exception, answered: bool, tokens: int) -> Exception:
    """Unreachable (retried) if the request never reached the engine: no connection, or Stale, a
    kept-alive one the engine had closed (it hangs up before answering); Broken otherwise."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return Unreachable(scrape.describe(exc))
    if not answered and isinstance(exc, httpx.RemoteProtocolError):
        return Stale(scrape.describe(exc))
    return Broken(f"stream broke after {tokens} tokens: {scrape.describe(exc)}")


async def _check(response) -> None:
    """Raise unless the engine accepted the request: 5xx (loading, overloaded) may pass, 4xx will not."""
    if response.status_code == 200:
        return
    detail = f"HTTP {response.status_code}: {(await response.aread())[:300].decode(errors='replace')}"
    raise Unreachable(detail) if response.status_code >= 500 else Broken(detail)
