"""The `triton` driver: runs the kernel's tasks on TensorRT-LLM behind NVIDIA Triton's HTTP generate extension.

For each task placed on a GPU it POSTs /v2/models/ENGINE_MODEL/generate_stream with
`text_input` (the prompt plus the text so far, so a preempted task resumes),
`max_tokens` (the tokens still owed), `stream: true`, `exclude_input_in_output: true`
and, unless token_counts is off, `return_num_input_tokens` / `return_num_output_tokens`
(inputs of TensorRT-LLM's ensemble model). Triton answers with server-sent events, one
`data: {...}` JSON response per step: its `text_output` is the text it adds, its
`num_output_tokens` the tokens of that response and `num_input_tokens` the prompt's
count (the first chunk's prefill). Without counts, a response with text is one token.
A stream that ends cleanly ends the task `done` (TensorRT-LLM's end_id can end it short
of max_tokens); an `{"error": "..."}` response or an HTTP error fails it, a connection cut
midway interrupts it (it resumes from its text, as with openai.py). With `stream = false` it POSTs /generate instead and takes the one JSON answer,
which then needs token_counts. Killing, stopping or preempting a task closes its stream:
Triton's HTTP frontend cancels a generate request whose client went away.

The HTTP side (connections, retries with backoff, timeouts, the `failed: engine at URL
...` reasons) is the openai driver's (openai.py), which this one extends with Triton's
request and answer. Options (`[models.options]`): url (required, Triton's HTTP port,
e.g. http://127.0.0.1:8000), engine_model (the Triton model; default the model's name;
TensorRT-LLM's is usually `ensemble`), stream (true), token_counts (true), extra (a
table of more request fields, e.g. `{temperature = 0.7, end_id = 2}`; a task's own sampling
keys override it: temperature, top_p, top_k, presence_penalty, frequency_penalty, and seed
as `random_seed`, stop as `stop_words`), timeout_s,
retries, backoff_s (as openai; not metrics_s: Triton's own metrics, on another port,
are not read, so `observe` scrapes nothing). Triton's generate extension is provisional.

NOT RUN AGAINST A REAL SERVER: no TensorRT-LLM runs on the machines this was written on.
tests/test_triton_driver.py serves a recorded exchange, written from Triton's generate
extension documentation and TensorRT-LLM's ensemble model configuration, from a tiny
in-process server.
"""
import typing

import attrs

from ..kernel.events import Chunk
from . import openai, sse

SAMPLING_NAMES = {"seed": "random_seed", "stop": "stop_words"}  # the ensemble's inputs; the rest keep their names


def check_shape(response: dict) -> None:
    """Raise ProtocolError, naming what Triton sent, unless `response`'s text_output is a string (absent or null:
    no text); its counts are sse.count's to check."""
    if type(text := response.get("text_output")) not in sse.STRING:
        raise sse.ProtocolError(f"text_output is not a string: {sse.excerpt(text)}")


@attrs.define
class Tally:
    """What one Triton answer has produced so far for task `pid`, and the chunk each response adds.

    Triton says nothing special at the end, so an answer that ends is finished; one cut
    short breaks the HTTP stream, which the openai driver reports.
    """

    pid: int
    tokens: int = 0
    prompt_tokens: int | None = None
    finished: typing.ClassVar[bool] = True

    def working(self, response: dict) -> bool:
        """Never: a Triton response that makes no chunk shows no work."""
        return False

    def chunk(self, response: dict) -> Chunk | None:
        """The chunk for one response, or None when it adds nothing."""
        check_shape(response)
        text = response.get("text_output") or ""
        tokens = sse.count(response, "num_output_tokens")
        tokens = int(bool(text)) if tokens is None else tokens
        prefill = 0
        if self.prompt_tokens is None and response.get("num_input_tokens") is not None:
            prefill = self.prompt_tokens = sse.count(response, "num_input_tokens")
        if not (text or tokens or prefill):
            return None
        self.tokens = sse.counted(self.tokens, tokens)
        return Chunk(pid=self.pid, text=text, tokens=tokens, prefill=prefill)


@attrs.frozen
class TritonEndpoint(openai.Connection):
    """A Triton model behind the generate extension: what to ask it and how to read its answer."""

    driver: typing.ClassVar[str] = "triton"
    stream: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    token_counts: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    extra: dict = attrs.field(factory=dict, converter=dict)

    def __attrs_post_init__(self):
        if not (self.stream or self.token_counts):
            raise ValueError("stream = false needs token_counts: a /generate answer says nothing else of its tokens")

    def request(self, task) -> tuple[str, dict]:
        """URL and body of the request for what `task` still owes."""
        text = (task.spec.prompt or task.spec.name) + task.output.decode(errors="replace")
        body = {"text_input": text, "max_tokens": task.spec.max_tokens - task.tokens_out, "stream": self.stream,
                "exclude_input_in_output": True, **self.extra,
                **{SAMPLING_NAMES.get(key, key): value for key, value in task.spec.sampling_fields.items()}}
        if self.token_counts:
            body |= {"return_num_input_tokens": True, "return_num_output_tokens": True}
        route = "generate_stream" if self.stream else "generate"
        return f"{self.url}/v2/models/{self.engine_model}/{route}", body

    def tally(self, pid: int) -> Tally:
        return Tally(pid)

    def events(self, response):
        """The JSON responses of Triton's answer: server-sent events, or /generate's one object."""
        return sse.events(sse.lines(response.aiter_bytes())) if self.stream else _one_answer(response)


async def _one_answer(response):
    yield sse.decode(await sse.whole(response.aiter_bytes()))


class TritonDriver(openai.OpenAIDriver):
    """The openai driver's requests, retries and failures, speaking Triton's generate extension."""

    name = "triton"
    endpoint = TritonEndpoint
