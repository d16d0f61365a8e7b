"""The OpenAI-compatible streaming protocol, without I/O: server-sent events to kernel chunks.

`SseDecoder` turns the lines of a `text/event-stream` into each event's data; `Tally`
turns the JSON events of one streaming completion (/v1/completions or
/v1/chat/completions) into `Chunk`s for one task: one token per chunk with text, made
exact by the engine's `usage` wherever it sends one (vLLM with continuous usage stats on
every chunk; llama.cpp, SGLang and OpenAI in the last), and the prompt's token count as
`prefill` once the engine has told it. `lines` splits a body's bytes into lines. What breaks the
protocol is a ProtocolError, the engine's fault (its task fails naming it): a line over LINE_MAX,
an event over EVENT_MAX, JSON that is not an object, an event not in the shape a Tally reads
(check_shape), a usage count that is not an int in 0..TOKENS_MAX. No HTTP here: see openai.py.
"""
import contextlib
import json

import attrs

from ..kernel.access import id_fits
from ..kernel.events import TOKENS_MAX, Chunk
from .bounded import up_to

DONE = "[DONE]"
USAGE_COUNTS = ("completion_tokens", "prompt_tokens")
NUMBER, STRING = {int, float, type(None)}, {str, type(None)}  # the types of a count, a text (each may be null)
LINE_MAX = 1 << 20  # bytes of one line of a stream at most: an engine's event for a few tokens is well under
EVENT_MAX = 1 << 20  # characters of one event's data at most (bytes of an answer that is one event)


class ProtocolError(Exception):
    """The engine sent something that is not an OpenAI-compatible stream."""


class SseDecoder:
    """Lines in, event data out: `feed` returns an event's data when the blank line ending it comes; an
    event's data over EVENT_MAX is a ProtocolError."""

    def __init__(self):
        self.data: list[str] = []
        self.size = 0

    def feed(self, line: str) -> str | None:
        if not line:
            data, self.data, self.size = self.data, [], 0
            return "\n".join(data) if data else None
        field, _, value = line.partition(":")
        if field == "data":
            self.data.append(value.removeprefix(" "))
            self.size += len(value) + 1  # its line end in the joined data
            if self.size > EVENT_MAX:
                raise ProtocolError(f"an event of over {EVENT_MAX} characters of data")
        return None  # comments (": ping"), event:, id:, retry: carry nothing we use


async def lines(pieces):
    """The lines of a body's bytes (`pieces`, an async generator, closed here) as text (UTF-8), without their
    line ends (\\n or \\r\\n); a line over LINE_MAX bytes is a ProtocolError. Linear in the bytes read: the
    pieces of an unfinished line are joined once, when its end comes."""
    parts: list[bytes] = []  # of the line not yet ended
    size = 0
    async with contextlib.aclosing(pieces):
        async for piece in pieces:
            if b"\n" in piece:
                *ended, last = b"".join([*parts, piece]).split(b"\n")
                parts, size = [last], len(last)
                for line in ended:
                    yield _text(line)
            else:
                parts.append(piece)
                size += len(piece)
            if size > LINE_MAX:
                raise ProtocolError(f"a line of over {LINE_MAX} bytes")
    if size:
        yield _text(b"".join(parts))


async def whole(pieces) -> str:
    """A body's bytes (`pieces`, an async generator, closed here) as text: an answer that is one event, whose
    data over EVENT_MAX bytes is a ProtocolError, not read on."""
    body = await up_to(pieces, EVENT_MAX, ProtocolError(f"an answer of over {EVENT_MAX} bytes"))
    return body.decode("utf-8", "replace")


def _text(line: bytes) -> str:
    return line.removesuffix(b"\r").decode("utf-8", "replace")


async def events(lines):
    """The JSON events of an SSE line stream (an async generator, closed here), up to `[DONE]` or the end
    of the stream."""
    decoder = SseDecoder()
    async with contextlib.aclosing(lines):  # not left to the garbage collector (trio's spawns a task for it)
        async for line in lines:
            data = decoder.feed(line)
            if data == DONE:
                return
            if data is not None:
                yield decode(data)
    if (data := decoder.feed("")) not in (None, DONE):
        yield decode(data)


def decode(data: str) -> dict:
    try:
        event = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        raise ProtocolError(f"not JSON: {data[:200]!r}") from None
    if not isinstance(event, dict):
        raise ProtocolError(f"not a JSON object: {data[:200]!r}")
    if "error" in event:
        raise ProtocolError(f"engine error: {json.dumps(event['error'])[:300]}")
    return event


def text_of(choice: dict) -> str:
    """The text a choice adds: `text` for completions, `delta.content` for chat."""
    delta = choice.get("delta") or {}
    return choice.get("text") or delta.get("content") or ""


def working(choice: dict) -> bool:
    """Whether a choice shows the engine at work without text for the task's output: a delta with anything
    but its role, e.g. reasoning (`reasoning_content`, llama-server and older vLLM; `reasoning`, newer vLLM)
    or `tool_calls` while content is null. A role-only delta (a chat stream's first) is no work."""
    delta = choice.get("delta") or {}
    return any(value for name, value in delta.items() if name != "role")


def check_shape(event: dict) -> None:
    """Raise ProtocolError, naming what the engine sent, unless `event` has the shape a Tally reads: `choices`
    a list of objects whose text, delta.content and finish_reason are strings, `usage` an object whose token
    counts are numbers (each may be absent or null; whether a number is a count is Tally's to say). Types are
    compared exactly (`type(x) in`): a bool is no count, and it costs an event less than isinstance."""
    choices, usage = event.get("choices") or [], event.get("usage") or {}
    if type(choices) is not list:
        raise ProtocolError(f"choices is not a list of objects: {excerpt(choices)}")
    for choice in choices:
        _check_choice(choice)
    if type(usage) is not dict:
        raise ProtocolError(f"usage is not an object: {excerpt(usage)}")
    for name in USAGE_COUNTS:
        if type(value := usage.get(name)) not in NUMBER:
            raise ProtocolError(f"usage.{name} is not a number: {excerpt(value)}")


def _check_choice(choice) -> None:
    if type(choice) is not dict:
        raise ProtocolError(f"choices is not a list of objects: {excerpt(choice)}")
    if type(delta := choice.get("delta") or {}) is not dict:
        raise ProtocolError(f"delta is not an object: {excerpt(delta)}")
    for name, value in (("text", choice.get("text")), ("delta.content", delta.get("content")),
                        ("finish_reason", choice.get("finish_reason"))):
        if type(value) not in STRING:
            raise ProtocolError(f"{name} is not a string: {excerpt(value)}")


def excerpt(value) -> str:
    """The start of `value` as JSON, for a ProtocolError's reason."""
    return json.dumps(value)[:100]


@attrs.define
class Tally:
    """What one task's stream has produced so far, and the chunk each new event adds."""

    pid: int
    tokens: int = 0
    prompt_tokens: int | None = None
    finish_reason: str | None = None

    @property
    def finished(self) -> bool:
        """Whether the engine said why the stream ended (else it was cut short)."""
        return self.finish_reason is not None

    def working(self, event: dict) -> bool:
        """Whether an event that made no chunk still shows the engine at work (see `working`); its shape checked."""
        return any(working(choice) for choice in event.get("choices") or [])

    def chunk(self, event: dict) -> Chunk | None:
        """The chunk for one event, or None when it adds nothing."""
        check_shape(event)
        choices = event.get("choices") or []
        text = "".join(text_of(c) for c in choices)
        self.finish_reason = next((c["finish_reason"] for c in choices if c.get("finish_reason")), self.finish_reason)
        usage = event.get("usage") or {}
        tokens = int(bool(text))
        if (completion := count(usage, "completion_tokens")) is not None:
            tokens = max(0, completion - self.tokens)
        prefill = self._prefill(usage)
        if not (text or tokens or prefill):
            return None
        self.tokens = counted(self.tokens, tokens)
        return Chunk(pid=self.pid, text=text, tokens=tokens, prefill=prefill)

    def _prefill(self, usage: dict) -> int:
        """The prompt's token count, the first time the engine gives it."""
        if self.prompt_tokens is not None or usage.get("prompt_tokens") is None:
            return 0
        self.prompt_tokens = count(usage, "prompt_tokens")
        return self.prompt_tokens


def count(usage: dict, key: str) -> int | None:
    """The token count `key` of an engine's usage, None if it says none; ProtocolError unless an int in
    0..TOKENS_MAX (Infinity, 1.5 or a negative count would corrupt the books: kernel/events.py Chunk)."""
    value = usage.get(key)
    if value is not None and not id_fits(value, TOKENS_MAX):
        raise ProtocolError(f"usage {key} {str(value)[:40]} is not a token count in 0..{TOKENS_MAX}")
    return value


def counted(total: int, tokens: int) -> int:
    """A stream's `total` tokens and `tokens` more; ProtocolError past TOKENS_MAX, so that the chunks of one task
    that flow.merged sums in a round stay a count the kernel's Chunk takes."""
    if total + tokens > TOKENS_MAX:
        raise ProtocolError(f"its stream's tokens add up past {TOKENS_MAX}")
    return total + tokens
