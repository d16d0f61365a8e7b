"""Smoke tests of the real engine the suite builds: llama-server on the tiny model.

They check what the openai driver relies on, straight over HTTP: streaming completions
that run to max_tokens with usage in the last chunk, four slots, Prometheus metrics; and
the driver in a Runtime (no mount) on the chat API, which the daemon tests do not use.
"""
import json

import httpx
import pytest

from engines import llama_server, llama_server_binary, tiny_model  # noqa: F401 (fixtures)
from test_openai_driver import run_tasks

pytestmark = [pytest.mark.engine, pytest.mark.slow]


def stream_completion(url: str, body: dict) -> list[dict]:
    """The JSON events of one streaming POST /v1/completions."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    return [json.loads(line[6:]) for line in lines if line != "data: [DONE]"]


def test_stream_runs_to_max_tokens_with_usage_last(llama_server):
    """A streamed completion yields text and ends with usage saying max_tokens were generated."""
    events = stream_completion(llama_server.url, {"prompt": "the kernel reads a file", "max_tokens": 48})
    text = "".join(choice["text"] for event in events for choice in event.get("choices", []))
    usage = events[-1]["usage"]
    assert text and usage["completion_tokens"] == 48 and usage["prompt_tokens"] > 0


def test_four_slots_and_llamacpp_metrics(llama_server):
    """The server has 4 slots and exports llamacpp: metrics after a request."""
    stream_completion(llama_server.url, {"prompt": "a small model", "max_tokens": 4})
    assert len(llama_server.get("/slots").json()) == 4
    assert "llamacpp:tokens_predicted_total" in llama_server.get("/metrics").text


async def test_driver_streams_a_chat_completion_to_done(llama_server, tmp_path):
    """Through /v1/chat/completions the task gets the engine's text and exactly max_tokens tokens."""
    [task] = await run_tasks(tmp_path, llama_server.port, [{"name": "chat", "prompt": "hi", "max_tokens": 40}],
                             api="chat")
    assert (task.exit, task.tokens_out) == ("done", 40) and task.output
