"""Tiers 1-2: the triton driver against a RECORDED exchange, since no TensorRT-LLM runs here.

The exchange below is what TensorRT-LLM's `ensemble` model behind Triton's HTTP generate
extension sends for one request, written from Triton's extension_generate.md (SSE `data:`
responses, `{"error": ...}` objects) and TensorRT-LLM's ensemble config.pbtxt (its
inputs and outputs, num_input_tokens / num_output_tokens per response), not captured
from a live server. `TritonFake`, a tiny server on 127.0.0.1, replays it; the runtime
tests run the real kernel and driver on trio's real clock.
"""
import json
import math

import pytest
import trio

from apeinxfs.drivers import sse, triton
from apeinxfs.kernel.errors import Invalid
from apeinxfs.kernel.events import TOKENS_MAX, Chunk
from apeinxfs.kernel.spec import TaskSpec
from fakehttp import read_request, send_event
import runtasks
from daemon import engine_config


def response(text: str, input_tokens: int = 6, output_tokens: int = 1) -> dict:
    """One response of the ensemble, as Triton's generate extension renders its output tensors."""
    return {"batch_index": 0, "context_logits": 0.0, "cum_log_probs": 0.0, "generation_logits": 0.0,
            "model_name": "ensemble", "model_version": "1", "num_input_tokens": input_tokens,
            "num_output_tokens": output_tokens, "output_log_probs": [0.0] * output_tokens, "sequence_index": 0,
            "text_output": text}


RECORDED_REQUEST = {"text_input": "What is machine learning?", "max_tokens": 4, "stream": True,
                    "exclude_input_in_output": True, "return_num_input_tokens": True,
                    "return_num_output_tokens": True}
RECORDED_STREAM = [response(" Machine"), response(" learning"), response(" is"), response(" a")]
RECORDED_ANSWER = response(" Machine learning is a", output_tokens=4)


class TritonFake:
    """Replays the recorded exchange on /v2/models/ensemble/generate_stream (SSE) and .../generate (JSON).

    `delay` s between responses; `error_after` N: an error response after N; `status`: an
    HTTP error before inference; `stream`: the responses streamed in place of the recorded ones. `requests` are what it was sent; `closed_early` counts
    clients that went away mid-stream.
    """

    def __init__(self, delay: float = 0.0, error_after: int | None = None, status: int = 200, repeat: int = 1,
                 stream: list[dict] = RECORDED_STREAM):
        self.delay, self.error_after, self.status, self.repeat = delay, error_after, status, repeat
        self.stream = stream
        self.requests, self.closed_early = [], 0
        self.url = None

    async def start(self, nursery) -> "TritonFake":
        listeners = await nursery.start(trio.serve_tcp, self.handle, 0)
        self.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        return self

    async def handle(self, stream) -> None:
        request = await read_request(stream)
        if request is None:  # a spare connection closed unused
            return
        self.requests.append(request)
        try:
            if self.status != 200:
                await answer(stream, self.status, "application/json", json.dumps({"error": "model not ready"}))
            elif request.path.endswith("/generate_stream"):
                await answer(stream, 200, "text/event-stream; charset=utf-8", "")
                await self.replay(stream)
            else:
                await answer(stream, 200, "application/json", json.dumps(RECORDED_ANSWER))
        except trio.BrokenResourceError:
            self.closed_early += 1

    async def replay(self, stream) -> None:
        for index, event in enumerate(self.stream * self.repeat):
            if index == self.error_after:
                await send_event(stream, {"error": "in-flight batching failed"})
                return
            await send_event(stream, event)
            await trio.sleep(self.delay)


async def answer(stream, status: int, content_type: str, body: str) -> None:
    head = f"HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\nconnection: close\r\n"
    length = f"content-length: {len(body)}\r\n" if not content_type.startswith("text/event-stream") else ""
    await stream.send_all(f"{head}{length}\r\n{body}".encode())


def model(**options):
    return type("Model", (), {"name": "ensemble", "options": {"url": "http://t:8000/", **options}})


def test_request_asks_for_what_the_task_still_owes_with_token_counts():
    """The body carries the prompt plus the text so far, the tokens still owed, streaming, counts and extra fields."""
    task = type("Task", (), {"spec": TaskSpec(name="t", prompt="What is", max_tokens=10), "tokens_out": 3,
                             "output": bytearray(b" machine")})
    url, body = triton.TritonEndpoint.of(model(extra={"temperature": 0.5})).request(task)
    assert url == "http://t:8000/v2/models/ensemble/generate_stream"
    assert body == {"text_input": "What is machine", "max_tokens": 7, "stream": True, "exclude_input_in_output": True,
                    "return_num_input_tokens": True, "return_num_output_tokens": True, "temperature": 0.5}


def test_options_need_url_and_counts_without_streaming():
    """No url is refused; /generate without token counts is refused, since its answer would count nothing;
    metrics_s is refused, since Triton's metrics are not read."""
    with pytest.raises(Invalid, match="triton driver needs options.url"):
        triton.TritonEndpoint.of(type("Model", (), {"name": "m", "options": {}}))
    with pytest.raises(Invalid, match="stream = false needs token_counts"):
        triton.TritonEndpoint.of(model(stream=False, token_counts=False))
    with pytest.raises(Invalid, match="metrics_s"):
        triton.TritonEndpoint.of(model(metrics_s=1.0))
    assert triton.TritonEndpoint.of(model()).metrics_s == 0


def test_tally_takes_the_engines_counts_or_one_token_per_response():
    """num_output_tokens counts a response's tokens, num_input_tokens is the prefill once; without them, one per text."""
    tally = triton.Tally(pid=4)
    assert tally.chunk(response(" a b", output_tokens=2)) == Chunk(4, " a b", 2, prefill=6)
    assert tally.chunk(response(" c")) == Chunk(4, " c", 1)
    assert tally.chunk({"text_output": " d"}) == Chunk(4, " d", 1) and tally.tokens == 4
    assert tally.chunk({"model_name": "ensemble", "text_output": ""}) is None


@pytest.mark.parametrize("counts", [{"num_output_tokens": float("inf")}, {"num_output_tokens": 1.5},
                                    {"num_input_tokens": -1}, {"num_output_tokens": True}])
def test_tally_refuses_counts_that_are_not_token_counts(counts):
    """A num_output_tokens or num_input_tokens that is not an int in 0..TOKENS_MAX is a ProtocolError naming it."""
    with pytest.raises(sse.ProtocolError, match=f"usage {next(iter(counts))} .* is not a token count"):
        triton.Tally(pid=4).chunk({"text_output": " a", **counts})


def test_tally_refuses_a_total_past_the_bound_so_a_rounds_merged_chunks_stay_a_count():
    """Two responses of TOKENS_MAX tokens each: the second is a ProtocolError (the engine's fault), not a chunk
    that flow.merged would sum past what the kernel's Chunk takes."""
    tally = triton.Tally(pid=4)
    assert tally.chunk({"text_output": " a", "num_output_tokens": TOKENS_MAX}) == Chunk(4, " a", TOKENS_MAX)
    with pytest.raises(sse.ProtocolError, match=f"tokens add up past {TOKENS_MAX}"):
        tally.chunk({"text_output": " b", "num_output_tokens": TOKENS_MAX})


@pytest.mark.parametrize("field", ["tokens", "prefill"])
@pytest.mark.parametrize("value", [math.inf, 1.5, -1, TOKENS_MAX + 1])
def test_a_chunk_counts_only_tokens_in_range(field, value):
    """The kernel's Chunk refuses a count that is not an int in 0..TOKENS_MAX, whichever driver made it."""
    with pytest.raises(Invalid, match=f"{field} .* is not a token count in 0..{TOKENS_MAX}"):
        Chunk(**{"pid": 4, "text": " a", "tokens": 1, field: value})


def config(url: str, **options) -> str:
    return engine_config("triton", name="ensemble", url=url, **{"retries": 0, **options})


async def run_tasks(tmp_path, url: str, specs: list[dict], during=None, **options) -> list:
    """Run `specs` through a Runtime with the triton driver at `url`; the tasks once all have ended."""
    return await runtasks.run_tasks(tmp_path, config(url, **options), [{"model": "ensemble", **s} for s in specs],
                                    during)


ASK = {"name": "ml", "prompt": "What is machine learning?", "max_tokens": 4}


async def test_streamed_answer_becomes_the_tasks_text_and_counts(tmp_path, nursery):
    """The recorded request is what the driver sends; the recorded stream is the task's text and tokens; it ends done."""
    fake = await TritonFake().start(nursery)
    [task] = await run_tasks(tmp_path, fake.url, [ASK])
    assert [(r.method, r.path, r.body) for r in fake.requests] == [
        ("POST", "/v2/models/ensemble/generate_stream", RECORDED_REQUEST)]
    assert (task.exit, task.tokens_out, bytes(task.output)) == ("done", 4, b" Machine learning is a")


async def test_generate_without_streaming_takes_the_one_answer(tmp_path, nursery):
    """With stream = false the driver POSTs /generate and the answer's text and token count end the task done."""
    fake = await TritonFake().start(nursery)
    [task] = await run_tasks(tmp_path, fake.url, [ASK], stream=False)
    assert [(r.path, r.body["stream"]) for r in fake.requests] == [("/v2/models/ensemble/generate", False)]
    assert (task.exit, task.tokens_out, bytes(task.output)) == ("done", 4, b" Machine learning is a")


async def test_stream_ending_before_max_tokens_ends_the_task_done(tmp_path, nursery):
    """A stream that ends cleanly (TensorRT-LLM reached end_id) leaves the task done with the tokens it got."""
    fake = await TritonFake().start(nursery)
    [task] = await run_tasks(tmp_path, fake.url, [{**ASK, "max_tokens": 100}])
    assert (task.exit, task.tokens_out) == ("done", 4)


async def test_error_response_mid_stream_fails_the_task(tmp_path, nursery):
    """An {"error": ...} response in the stream fails the task with Triton's words and how far it got."""
    fake = await TritonFake(error_after=2).start(nursery)
    [task] = await run_tasks(tmp_path, fake.url, [ASK])
    assert task.exit == f'failed: engine at {fake.url}: stream broke after 2 tokens: engine error: "in-flight batching failed"'


@pytest.mark.parametrize("sent, words", [({"num_output_tokens": "1"}, "usage num_output_tokens 1 is not a token count"),
                                         ({"text_output": 5}, "text_output is not a string: 5"),
                                         ({"text_output": [" a"]}, 'text_output is not a string: [" a"]')])
async def test_a_response_out_of_shape_fails_the_task_as_the_engines_fault(sent, words, tmp_path, nursery):
    """A response whose text is no string or whose count is no count fails the task naming it, not as a driver bug."""
    fake = await TritonFake(stream=[RECORDED_STREAM[0], sent]).start(nursery)
    [task] = await run_tasks(tmp_path, fake.url, [ASK])
    assert task.exit.startswith(f"failed: engine at {fake.url}: stream broke after 1 tokens: {words}")


async def test_http_error_before_inference_fails_the_task(tmp_path, nursery):
    """A 400 with Triton's JSON error object fails the task with the status and the error."""
    fake = await TritonFake(status=400).start(nursery)
    [task] = await run_tasks(tmp_path, fake.url, [ASK])
    assert task.exit == f'failed: engine at {fake.url}: HTTP 400: {{"error": "model not ready"}}'


async def test_kill_closes_the_triton_stream(tmp_path, nursery):
    """Killing a task mid-stream closes its HTTP stream: the server sees the client go."""
    fake = await TritonFake(delay=0.02, repeat=250).start(nursery)

    [task] = await run_tasks(tmp_path, fake.url, [{**ASK, "max_tokens": 1000}], runtasks.kill_once_served(fake))
    assert task.exit == "killed" and fake.closed_early == 1 and task.tokens_out < 1000
