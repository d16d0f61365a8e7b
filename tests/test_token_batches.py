"""Tiers 1-2: cheap tokens (issue 16 item 4): a stream's reads are paced, and what one read brings is one step.

`pacing.Pace` is pure. The driver tests run the real kernel and the openai driver against a
fake engine (test_openai_driver.py's) that sends many events in one write, on trio's real
clock, and record the steps the runtime applies.
"""
import pytest
import trio

from apeinxfs import runtime
from apeinxfs.drivers import pacing
from fakehttp import send_event
from test_openai_driver import FakeEngine, run_tasks

BURST = 40


def test_a_stream_reads_every_few_tokens_at_its_rate_within_bounds():
    """No token seen since the first: the shortest interval; then TOKENS_PER_READ tokens' time, clamped."""
    pace = pacing.Pace(started_s=10.0, tokens_then=1)
    assert pace.interval_s(1, 10.5) == pacing.MIN_S
    assert pace.interval_s(1 + 100, 10.5) == pytest.approx(pacing.TOKENS_PER_READ * 0.005)  # 200 tokens/s
    assert pace.interval_s(1 + 10_000, 10.5) == pacing.MIN_S  # a fast engine
    assert pace.interval_s(1 + 2, 11.0) == pacing.MAX_S  # a slow one: never more than MAX_S late


class BurstEngine(FakeEngine):
    """Sends its first word, waits, then all the others in one write: many events in one read."""

    async def words(self, stream, count: int, cut: bool) -> int:
        await send_event(stream, {"choices": [{"text": " w0", "finish_reason": None}]})
        await trio.sleep(0.05)
        events = b"".join(f'data: {{"choices": [{{"text": " w{index}"}}]}}\n\n'.encode() for index in range(1, count))
        await stream.send_all(events)
        return count


@pytest.fixture
def steps(monkeypatch) -> list:
    """Every engine step the runtime applies, recorded."""
    applied, progress = [], runtime.Runtime.progress

    def recording(self, step):
        applied.append(step)
        return progress(self, step)
    monkeypatch.setattr(runtime.Runtime, "progress", recording)
    return applied


async def test_events_that_arrive_in_one_read_become_one_step_with_exact_text_and_tokens(tmp_path, nursery, steps):
    """The first token goes alone; the 39 words written at once are one chunk of one step, their text
    joined in order and 39 tokens; the task ends with every word and the engine's count."""
    engine = await BurstEngine().start(nursery)
    [task] = await run_tasks(tmp_path, engine.port, [{"name": "b", "max_tokens": BURST}])
    chunks = [chunk for step in steps for chunk in step.chunks if chunk.pid == task.pid]
    burst = next(chunk for chunk in chunks if " w1 " in chunk.text)
    assert chunks[0].text == " w0"
    assert (burst.text, burst.tokens) == ("".join(f" w{index}" for index in range(1, BURST)), BURST - 1)
    assert len(chunks) <= 3  # the first token, the burst, the end (usage and final, maybe with the burst)
    words = "".join(f" w{index}" for index in range(BURST))
    assert (task.exit, task.tokens_out, task.output.decode()) == ("done", BURST, words)
