"""Tiers 1-2: the openai driver's protocol (drivers/sse.py) and the driver in a Runtime.

The protocol tests feed recorded event shapes of llama.cpp, vLLM and chat streams. The
runtime tests run the real kernel and driver against `FakeEngine`, a few-line
OpenAI-compatible streaming server on 127.0.0.1, on trio's real clock (sockets and an
autojump clock do not mix). The real engine is in test_engine_daemon.py.
"""
import socket
import struct
import types

import pytest
import trio

from apeinxfs.drivers import openai, sse
from apeinxfs.kernel.errors import Invalid
from apeinxfs.kernel.events import Chunk
from apeinxfs.kernel.spec import TaskSpec
from apeinxfs.kernel.task import State
from engines import free_port
from fakehttp import read_request, send_event
import daemon
import runtasks


async def lines_of(text: str):
    for line in text.split("\n"):
        yield line


async def collect(text: str) -> list[dict]:
    return [event async for event in sse.events(lines_of(text))]


async def test_sse_joins_data_lines_skips_comments_and_stops_at_done():
    """Multi-line data is one event, ': ping' comments are skipped, nothing after [DONE] is read."""
    stream = ': ping\n\ndata: {"a":\ndata: 1}\n\nevent: x\ndata: {"b": 2}\n\ndata: [DONE]\n\ndata: {"c": 3}\n\n'
    assert await collect(stream) == [{"a": 1}, {"b": 2}]


async def test_sse_error_event_raises_protocol_error():
    """An engine's {"error": ...} event fails the stream with the engine's words."""
    with pytest.raises(sse.ProtocolError, match="context too long"):
        await collect('data: {"error": {"message": "context too long"}}\n\n')


async def pieces_of(*pieces: bytes):
    for piece in pieces:
        yield piece


async def test_sse_lines_come_whole_across_pieces_and_one_over_line_max_is_refused():
    """Lines cut across pieces come whole; a line that grows past LINE_MAX without its end is a ProtocolError."""
    assert [line async for line in sse.lines(pieces_of(b"data: a", b"b\r\n\nda", b"ta: c"))] == ["data: ab", "", "data: c"]
    endless = pieces_of(b"data: ", *[b"x" * 65536] * (sse.LINE_MAX // 65536 + 1))
    with pytest.raises(sse.ProtocolError, match="a line of over"):
        [line async for line in sse.lines(endless)]


async def test_sse_an_answer_read_whole_over_event_max_is_refused():
    """A body read as one event (Triton's /generate) is its text, or a ProtocolError once past EVENT_MAX bytes."""
    assert await sse.whole(pieces_of(b'{"a":', "\"é\"}".encode())) == '{"a":"é"}'
    with pytest.raises(sse.ProtocolError, match="an answer of over"):
        await sse.whole(pieces_of(*[b"x" * 65536] * (sse.EVENT_MAX // 65536 + 1)))


def test_sse_an_event_of_data_lines_over_event_max_is_refused():
    """Data lines that never end their event are a ProtocolError once their data pass EVENT_MAX, not piled up."""
    decoder = sse.SseDecoder()
    with pytest.raises(sse.ProtocolError, match="an event of over"):
        for _ in range(sse.EVENT_MAX // 1024 + 1):
            decoder.feed("data: " + "x" * 1023)


def test_tally_counts_chunks_then_trusts_final_usage():
    """One token per text chunk, corrected by the final usage; the prompt count comes as prefill once."""
    tally = sse.Tally(pid=7)
    first = tally.chunk({"choices": [{"text": "Hel", "finish_reason": None}]})
    second = tally.chunk({"choices": [{"text": "lo", "finish_reason": None}]})
    last = tally.chunk({"choices": [{"text": "", "finish_reason": "length"}],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 3}})
    assert (first, second) == (Chunk(7, "Hel", 1), Chunk(7, "lo", 1))
    assert last == Chunk(7, "", 1, prefill=5) and tally.finish_reason == "length" and tally.tokens == 3


def test_tally_reads_chat_deltas_and_running_usage():
    """Chat deltas give the text; a cumulative usage on every chunk (vLLM) is not double counted."""
    tally = sse.Tally(pid=1)
    chunks = [tally.chunk({"choices": [{"delta": {"content": word}}],
                           "usage": {"prompt_tokens": 4, "completion_tokens": n}})
              for n, word in enumerate(["a", " b", " c"], start=1)]
    assert [(c.text, c.tokens, c.prefill) for c in chunks] == [("a", 1, 4), (" b", 1, 0), (" c", 1, 0)]
    assert tally.chunk({"choices": [{"delta": {"role": "assistant"}}]}) is None


def test_endpoint_needs_url_and_resumes_after_the_text_so_far():
    """A model without options.url or with bad retries is refused; a resumed task asks for the rest after its output."""
    model = type("Model", (), {"name": "m", "options": {}})
    with pytest.raises(Invalid, match="options.url"):
        openai.Endpoint.of(model)
    model.options = {"url": "http://e:8000/", "retries": -1}
    with pytest.raises(Invalid, match="retries"):
        openai.Endpoint.of(model)
    model.options = {"url": "http://e:8000/", "engine_model": "llama"}
    task = type("Task", (), {"spec": TaskSpec(name="t", prompt="Once", max_tokens=10), "tokens_out": 4,
                             "output": bytearray(b" upon a time")})
    url, body = openai.Endpoint.of(model).request(task)
    assert url == "http://e:8000/v1/completions"
    assert (body["prompt"], body["max_tokens"], body["model"]) == ("Once upon a time", 6, "llama")


class EndingOutbox:
    """An outbox whose every chunk goes out at once and leaves `task` in `state` (the kernel's answer)."""

    def __init__(self, task, state: State):
        self.task, self.state, self.chunks = task, state, []

    def put(self, chunk: Chunk) -> bool:
        self.chunks.append(chunk)
        self.task.state = self.state
        return True


async def test_a_stream_ends_at_the_chunk_its_task_ended_on():
    """Once the kernel ended the task on a chunk sent at once (its last token), the stream is not read further."""
    async def events():
        yield {"choices": [{"text": " w0"}]}
        raise AssertionError("read past the task's end")
    task = types.SimpleNamespace(state=State.RUNNING)
    outbox = EndingOutbox(task, State.EXITED)
    assert await openai._follow(events(), None, sse.Tally(pid=1), outbox, task, openai.Progress(5.0)) is True
    assert outbox.chunks == [Chunk(1, " w0", 1)]


@pytest.mark.parametrize("state", [State.RUNNING, State.PREEMPTED, State.STOPPED])
async def test_a_stream_whose_task_may_run_on_is_read_to_its_end(state, autojump_clock):
    """Unless the task exited on its first token, the stream is read on to its end: a task preempted or
    stopped may be placed again before its job is cancelled, and must then still have its job."""
    async def events():
        yield {"choices": [{"text": " w0"}]}
        yield {"choices": [{"text": "", "finish_reason": "stop"}], "usage": {"completion_tokens": 1}}
    task = types.SimpleNamespace(state=State.RUNNING)
    tally = sse.Tally(pid=1)
    response = types.SimpleNamespace(extensions={})  # not one of ours: not paced
    assert await openai._follow(events(), response, tally, EndingOutbox(task, state), task, openai.Progress(5.0)) is False
    assert tally.finished


class FakeEngine:
    """A tiny OpenAI-compatible server: streams max_tokens words `delay` s apart.

    `stop_after` N: it ends the text early (finish_reason stop); `cut_after` N: it hangs up (on the
    first `cuts` requests; all if None); `drop_first` N: it hangs up on the first N requests without
    answering (`reset`: with a TCP reset); `garbled` PROMPT: to that prompt, its first event's usage gives
    completion_tokens as a string, then it hangs up; `thinking` (seconds, a delta): before its words, it
    streams that delta (content null: reasoning or a tool call) every 0.05 s for that long.
    """

    def __init__(self, delay: float = 0.0, stop_after: int | None = None, cut_after: int | None = None,
                 drop_first: int = 0, reset: bool = False, cuts: int | None = None, garbled: str | None = None,
                 thinking: tuple[float, dict] = (0.0, {})):
        self.delay, self.stop_after, self.cut_after, self.drop_first = delay, stop_after, cut_after, drop_first
        self.reset, self.cuts, self.garbled, self.thinking = reset, cuts, garbled, thinking
        self.bodies, self.closed_early = [], 0
        self.port = None

    async def start(self, nursery, port: int = 0) -> "FakeEngine":
        listeners = await nursery.start(trio.serve_tcp, self.handle, port)
        self.port = listeners[0].socket.getsockname()[1]
        return self

    async def handle(self, stream) -> None:
        request = await read_request(stream)
        if request is None:  # a spare connection closed unused
            return
        if request.body is None:  # GET /metrics: this engine has none
            await stream.send_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            return
        body = request.body
        self.bodies.append(body)
        if len(self.bodies) <= self.drop_first:
            if self.reset:  # linger 0: close(2) sends RST
                stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        try:
            await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
            if self.garbled is not None and body.get("prompt") == self.garbled:
                await send_event(stream, {"choices": [{"text": " w0"}], "usage": {"completion_tokens": "1"}})
                return
            await self.think(stream)
            cut = self.cut_after is not None and (self.cuts is None or len(self.bodies) <= self.cuts)
            produced = await self.words(stream, body["max_tokens"], cut)
            if cut:
                return
            finish = "length" if produced == body["max_tokens"] else "stop"
            await send_event(stream, {"choices": [{"text": "", "finish_reason": finish}],
                                      "usage": {"prompt_tokens": 3, "completion_tokens": produced}})
            await stream.send_all(b"data: [DONE]\n\n")
        except trio.BrokenResourceError:
            self.closed_early += 1

    async def think(self, stream) -> None:
        seconds, delta = self.thinking
        for _ in range(round(seconds / 0.05)):
            await send_event(stream, {"choices": [{"delta": {"content": None, **delta}, "finish_reason": None}]})
            await trio.sleep(0.05)

    async def words(self, stream, count: int, cut: bool) -> int:
        count = min(count, self.stop_after or count, self.cut_after if cut else count)
        for index in range(count):
            await send_event(stream, {"choices": [{"text": f" w{index}", "finish_reason": None}]})
            await trio.sleep(self.delay)
        return count


def engine_config(port: int, model: dict | None = None, **options) -> str:
    return daemon.engine_config("openai", url=f"http://127.0.0.1:{port}", shape=model, **options)


async def run_tasks(tmp_path, port: int, specs: list[dict], during=None, model: dict | None = None, **options) -> list:
    """Run `specs` through a Runtime with the openai driver on `port` (`model`: keys of the model's table);
    the tasks once all have ended."""
    return await runtasks.run_tasks(tmp_path, engine_config(port, model, **options), specs, during)


async def test_tasks_stream_from_the_engine_to_done(tmp_path, nursery):
    """Two tasks get the engine's words and token counts, and exit done."""
    engine = await FakeEngine().start(nursery)
    tasks = await run_tasks(tmp_path, engine.port, [{"name": "a", "prompt": "hi", "max_tokens": 5},
                                                    {"name": "b", "max_tokens": 3}])
    assert [t.output.decode() for t in tasks] == [" w0 w1 w2 w3 w4", " w0 w1 w2"]
    assert [(t.exit, t.tokens_out) for t in tasks] == [("done", 5), ("done", 3)]
    assert sorted(b["prompt"] for b in engine.bodies) == ["b", "hi"]


async def test_tokens_spaced_under_timeout_s_keep_a_stream_going_longer_than_it(tmp_path, nursery):
    """timeout_s bounds the wait for each token, not the stream: 15 tokens 0.1 s apart with timeout_s 1.0 end done in one request."""
    engine = await FakeEngine(delay=0.1).start(nursery)
    [task] = await run_tasks(tmp_path, engine.port, [{"name": "a", "max_tokens": 15}], timeout_s=1.0, metrics_s=0)
    assert (task.exit, task.tokens_out, len(engine.bodies)) == ("done", 15, 1)  # one request: never resumed


@pytest.mark.parametrize("delta", [{"reasoning_content": "hmm"}, {"reasoning": "hmm"},
                                   {"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}])
async def test_an_engine_thinking_without_content_for_longer_than_timeout_s_is_at_work(delta, tmp_path, nursery):
    """Reasoning or tool-call deltas (content null) 0.05 s apart for 1.5 s with timeout_s 0.5 keep the stream going; they are not output."""
    engine = await FakeEngine(thinking=(1.5, delta)).start(nursery)
    [task] = await run_tasks(tmp_path, engine.port, [{"name": "a", "max_tokens": 3}], timeout_s=0.5, metrics_s=0)
    assert (task.exit, task.output.decode(), len(engine.bodies)) == ("done", " w0 w1 w2", 1)


async def test_engine_stopping_early_ends_the_task_done(tmp_path, nursery):
    """An engine that stops (end of text) before max_tokens leaves the task done with its tokens."""
    engine = await FakeEngine(stop_after=2).start(nursery)
    [task] = await run_tasks(tmp_path, engine.port, [{"name": "a", "max_tokens": 10}])
    assert (task.exit, task.tokens_out) == ("done", 2)


async def test_engine_hanging_up_before_answering_is_retried(tmp_path, nursery):
    """A request the engine hangs up on unanswered (a kept-alive connection it had closed) is sent again."""
    engine = await FakeEngine(drop_first=1).start(nursery)
    [task] = await run_tasks(tmp_path, engine.port, [{"name": "a", "max_tokens": 3}], backoff_s=60)  # no backoff
    assert (task.exit, task.tokens_out, len(engine.bodies)) == ("done", 3, 2)


async def test_engine_resetting_a_connection_before_answering_is_retried(tmp_path, nursery):
    """A request the engine resets unanswered (a spare connection it had dropped) is sent again at once."""
    engine = await FakeEngine(drop_first=1, reset=True).start(nursery)
    [task] = await run_tasks(tmp_path, engine.port, [{"name": "a", "max_tokens": 3}], backoff_s=60)  # no backoff
    assert (task.exit, task.tokens_out, len(engine.bodies)) == ("done", 3, 2)


async def test_engine_hanging_up_mid_stream_resumes_the_task(tmp_path, nursery):
    """A stream that ends without a finish_reason is asked again for the rest, after the text so far."""
    engine = await FakeEngine(cut_after=2, cuts=1).start(nursery)
    [task] = await run_tasks(tmp_path, engine.port, [{"name": "a", "prompt": "Go", "max_tokens": 5}])
    assert (task.exit, task.tokens_out, bytes(task.output)) == ("done", 5, b" w0 w1 w0 w1 w2")
    assert [(b["prompt"], b["max_tokens"]) for b in engine.bodies] == [("Go", 5), ("Go w0 w1", 3)]


async def test_engine_hanging_up_every_stream_fails_the_task_past_resume_limit(tmp_path, nursery):
    """A task whose every stream breaks fails after resume_limit resumes, saying how far the last got."""
    engine = await FakeEngine(cut_after=2).start(nursery)
    [task] = await run_tasks(tmp_path, engine.port, [{"name": "a", "max_tokens": 10}], model={"resume_limit": 2})
    assert task.exit == f"failed: engine at http://127.0.0.1:{engine.port}: stream ended after 2 tokens without a finish_reason"
    assert task.tokens_out == 6 and len(engine.bodies) == 3


async def test_kill_closes_the_engine_stream(tmp_path, nursery):
    """Killing a task mid-stream closes its HTTP stream: the engine sees the client go."""
    engine = await FakeEngine(delay=0.02).start(nursery)

    [task] = await run_tasks(tmp_path, engine.port, [{"name": "a", "max_tokens": 1000}], runtasks.kill_once_served(engine))
    assert task.exit == "killed" and engine.closed_early == 1


async def test_unreachable_engine_fails_the_task_after_engine_wait_s(tmp_path):
    """With nothing listening, the task's retries mark the engine down, and the task, held, fails after
    engine_wait_s naming the engine's URL and 'unreachable'."""
    port = free_port()
    [task] = await run_tasks(tmp_path, port, [{"name": "a", "max_tokens": 5}], model={"engine_wait_s": 0.5},
                             retries=2, backoff_s=0.01)
    assert task.exit.startswith("failed: tiny's engine down for ")
    assert f"unreachable: http://127.0.0.1:{port}" in task.exit


async def test_engine_without_metrics_is_probed_while_down_and_its_task_resumes(tmp_path, nursery):
    """With metrics_s = 0, the engine its task found unreachable is probed until it answers; the held task
    then runs to done."""
    port = free_port()

    async def during(rt, pids):
        while "tiny" not in rt.kernel.engines.down:
            await rt.wait_for("trace", 1.0)
        await FakeEngine().start(nursery, port)
    [task] = await run_tasks(tmp_path, port, [{"name": "a", "max_tokens": 5}], during, metrics_s=0, retries=1,
                             backoff_s=0.01)
    assert (task.exit, task.tokens_out) == ("done", 5)
