"""The OpenAI-compatible streaming protocol, without I/O: server-sent events to kernel chunks.

`SseDecoder` turns the lines of a `text/event-stream` into each event's data; `Tally`
turns the JSON events of one streaming completion (/v1/completions or
/v1/chat/completions) into `Chunk`s for one task: one token per chunk with text, made
exact by the engine's `usage` wherever it sends one (vLLM with continuous usage stats on
every chunk; llama.cpp, SGLang and OpenAI in the last), and the prompt's token count as
`prefill` once the engine has told it; a usage count that is not an int in 0..TOKENS_MAX is a
ProtocolError (the task fails naming the engine). No HTTP here: see openai.py.
"""
import contextlib
import json

import attrs

from ..kernel.access import id_fits
from ..kernel.events import TOKENS_MAX, Chunk

DONE = "[DONE]"


class ProtocolError(Exception):
    """The engine sent something that is not an OpenAI-compatible stream."""


class SseDecoder:
    """Lines in, event data out: `feed` returns an event's data when the blank line ending it comes."""

    def __init__(self):
        self.data: list[str] = []

    def feed(self, line: str) -> str | None:
        if not line:
            data, self.data = self.data, []
            return "\n".join(data) if data else None
        field, _, value = line.partition(":")
        if field == "data":
            self.data.append(value.removeprefix(" "))
        return None  # comments (": ping"), event:, id:, retry: carry nothing we use


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
    except ValueError:
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

    def chunk(self, event: dict) -> Chunk | None:
        """The chunk for one event, or None when it adds nothing."""
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
        self.tokens += tokens
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
