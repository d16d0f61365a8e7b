"""Tier 2: a bug in a driver fails (a task's job) or restarts (its serve) what it is in, not the daemon.

A real Runtime (journal, kernel, the openai driver) against test_openai_driver's FakeEngine, or the
llamacpp driver with test_llamacpp_driver's FakeLlama. An openai job's bug is injected where one would be: an
engine's answer the parser does not foresee (completion_tokens as a string, which sse.check_shape refuses as the
engine's fault) meets a check_shape that did not foresee it either and raises TypeError.
No input is known that makes run_jobs itself raise outside a job, so that bug is injected at the one
place run_jobs calls between batches: `Outbox.take_interrupted` raises in its second call, as a bug in
it would, and works after.
"""
from apeinxfs.drivers import flow, llamacpp, sse
from runtasks import run_tasks
from test_llamacpp_driver import CONFIG as LLAMA_CONFIG, FakeLlama
from test_openai_driver import FakeEngine, engine_config



def unforeseeing(event: dict) -> None:
    """sse.check_shape as it would be had it not foreseen a token count that is a string: it raises TypeError."""
    (event.get("usage") or {}).get("completion_tokens", 0) + 1


PARSE_LINE = unforeseeing.__code__.co_firstlineno + 2  # where the garbled answer raises


def keeping_runtime(kept: list):
    """A `during` for run_tasks that keeps the runtime in `kept`."""
    async def during(rt, pids):
        kept.append(rt)
    return during


async def test_a_bug_in_one_tasks_job_fails_that_task_and_the_others_go_on(tmp_path, nursery, monkeypatch):
    """The engine garbles task a's answer: a fails naming the bug's type and place, b (same GPU, streaming
    meanwhile) is done, and the supervisor counts the bug once as driver.openai.job."""
    monkeypatch.setattr(sse, "check_shape", unforeseeing)
    engine = await FakeEngine(delay=0.01, garbled="bad").start(nursery)
    kept: list = []
    bad, good = await run_tasks(tmp_path, engine_config(engine.port), [
        {"name": "a", "prompt": "bad", "max_tokens": 5}, {"name": "b", "prompt": "good", "max_tokens": 20}],
        keeping_runtime(kept))
    assert bad.exit == f"failed: driver bug: TypeError at test_driver_bugs.py:{PARSE_LINE}"
    assert (good.exit, good.tokens_out, good.gpu) == ("done", 20, bad.gpu)
    bug = kept[0].supervisor.bugs["driver.openai.job"]
    assert (bug.error, bug.times, bug.outcome) == ("TypeError", 1, "its task failed")
    assert kept[0].supervisor.show().startswith("Bug:\tdriver.openai.job: TypeError at test_driver_bugs.py:")


async def test_a_bug_in_serve_outside_a_job_restarts_it_and_its_task_resumes_after_its_text(
        tmp_path, nursery, monkeypatch):
    """run_jobs fails between batches: the GPU's serve is started again (driver.openai.serve counted once),
    and the task streaming then resumes in a new request after the text it has, to its max_tokens."""
    real, calls = flow.Outbox.take_interrupted, []

    def failing(outbox):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("a bug between batches")
        return real(outbox)
    monkeypatch.setattr(flow.Outbox, "take_interrupted", failing)
    engine = await FakeEngine(delay=0.02).start(nursery)
    kept: list = []
    short, long = await run_tasks(tmp_path, engine_config(engine.port), [
        {"name": "a", "prompt": "short", "max_tokens": 2}, {"name": "b", "prompt": "long", "max_tokens": 30}],
        keeping_runtime(kept))
    assert [(t.exit, t.tokens_out) for t in (short, long)] == [("done", 2), ("done", 30)]
    output = long.output.decode()
    assert len(output.split()) == 30
    resumed = [body for body in engine.bodies if body["prompt"].startswith("long")][1:]
    assert resumed, "the long task was asked again"
    for body in resumed:
        so_far = body["prompt"].removeprefix("long")
        assert output.startswith(so_far) and body["max_tokens"] == 30 - len(so_far.split())
    assert kept[0].supervisor.bugs["driver.openai.serve"].times == 1


async def test_a_bug_in_a_llamacpp_job_fails_that_task_and_the_next_one_runs(tmp_path, monkeypatch):
    """Building the first generation fails (`Job.of` raises in its first call, injected as a bug in it
    would be; the engine's own failures are caught in its thread): its task fails naming the bug, the other
    task on the model runs to done, and the supervisor counts driver.llamacpp.job once."""
    real, calls = llamacpp.Job.of.__func__, []

    def failing(cls, task):
        calls.append(task.pid)
        if len(calls) == 1:
            raise ValueError("a bug in Job.of")
        return real(cls, task)
    monkeypatch.setattr(llamacpp.Job, "of", classmethod(failing))
    await one_of_two_llamacpp_tasks_fails(tmp_path, monkeypatch, calls)


async def test_a_bug_handing_a_llamacpp_token_over_fails_that_task_and_the_next_one_runs(tmp_path, monkeypatch):
    """The hand-over of the first generation's first token to the outbox fails (Outbox.put raises once,
    injected as a bug there would be): it runs in a run_sync_soon callback, outside any job, where a bug
    ended trio itself (TrioInternalError); now that task fails naming the bug and stops generating, the other
    task runs to done, and the supervisor counts driver.llamacpp.job once."""
    real, failed = flow.Outbox.put, []

    def failing(self, chunk):
        if not failed:
            failed.append(chunk.pid)
            raise ValueError("a bug in the hand-over")
        return real(self, chunk)
    monkeypatch.setattr(flow.Outbox, "put", failing)
    await one_of_two_llamacpp_tasks_fails(tmp_path, monkeypatch, failed)


async def one_of_two_llamacpp_tasks_fails(tmp_path, monkeypatch, failed: list) -> None:
    """Run two 5-token tasks on FakeLlama with a bug injected (`failed` gets the pid it hit first): that task
    fails naming the bug, the other runs to done, and the supervisor counts driver.llamacpp.job once."""
    monkeypatch.setattr(llamacpp, "open_llama", lambda options: FakeLlama())
    kept: list = []
    tasks = await run_tasks(tmp_path, LLAMA_CONFIG, [{"name": "a", "max_tokens": 5}, {"name": "b", "max_tokens": 5}],
                            keeping_runtime(kept))
    [broken], [fine] = [t for t in tasks if t.pid == failed[0]], [t for t in tasks if t.pid != failed[0]]
    assert broken.exit.startswith("failed: driver bug: ValueError at test_driver_bugs.py:")
    assert (fine.exit, fine.tokens_out) == ("done", 5)
    assert kept[0].supervisor.bugs["driver.llamacpp.job"].times == 1
