"""Tiers 1-2: the llamacpp driver's logic with `FakeLlama`, an object with the few methods of
`llama_cpp.Llama` the driver calls; no llama-cpp-python needed.

Tier 1 drives `generate` (the worker thread's loop) directly; tier 2 runs the real kernel
and driver in a Runtime on trio's real clock (worker threads and an autojump clock do not
mix), with `open_llama` replaced by the fake. The real library is in
test_llamacpp_engine.py.
"""
import threading
import time

import pytest
import trio

from apeinxfs.drivers import llamacpp
from apeinxfs.kernel.errors import Invalid
from apeinxfs.kernel.events import Chunk, Control, Kill, Submit
from apeinxfs.kernel.spec import TaskCommand, TaskSpec
from test_journal_runtime import open_runtime
import runtasks
from daemon import engine_config

EOS = 0


class FakeLlama:
    """Tokens are bytes (id = byte + 1, EOS = 0); it generates `script` ids, then the byte 'x' for ever.

    `delay` s per token; `busy` counts generations running at once, `most_busy` the highest
    count seen, `closed` the generations whose generator was closed; `seeds` and `samplings`
    what each generation was given.
    """

    def __init__(self, script: list[int] = (), delay: float = 0.0, n_ctx: int = 8192):
        self.script, self.delay, self.context_size = list(script), delay, n_ctx
        self.busy = self.most_busy = self.closed = 0
        self.contexts, self.seeds, self.samplings = [], [], []

    def set_seed(self, seed: int) -> None:
        self.seeds.append(seed)

    def tokenize(self, text: bytes) -> list[int]:
        return [byte + 1 for byte in text]

    def detokenize(self, tokens: list[int]) -> bytes:
        return bytes(token - 1 for token in tokens)

    def n_ctx(self) -> int:
        return self.context_size

    def token_eos(self) -> int:
        return EOS

    def token_bos(self) -> int:
        return 256

    def generate(self, tokens: list[int], **sampling):
        self.contexts.append(list(tokens))
        self.samplings.append(sampling)
        self.busy += 1
        self.most_busy = max(self.most_busy, self.busy)
        try:
            yield from self.script
            while True:
                time.sleep(self.delay)
                yield ord("x") + 1
        finally:
            self.busy -= 1
            self.closed += 1


def run_generate(llama, text: bytes, budget: int, stop=None) -> list[Chunk]:
    chunks = []
    llamacpp.generate(llama, llamacpp.Job(7, text, budget), stop or threading.Event(), chunks.append)
    return chunks


def test_generate_counts_one_token_per_chunk_and_the_prompt_once():
    """Each sampled token is one chunk; the first also carries the prompt's token count; the budget ends it."""
    chunks = run_generate(FakeLlama(script=[ord("h") + 1, ord("i") + 1]), b"say", budget=4)
    assert chunks == [Chunk(7, "h", 1, prefill=3), Chunk(7, "i", 1), Chunk(7, "x", 1), Chunk(7, "x", 1)]


def test_generate_joins_utf8_split_across_tokens_and_replaces_bad_bytes():
    """A character whose bytes come in two tokens appears whole, with the second; a stray byte becomes U+FFFD."""
    euro = "€".encode()
    script = [euro[0] + 1, euro[1] + 1, euro[2] + 1, 0xFF + 1]
    chunks = run_generate(FakeLlama(script=script), b"p", budget=4)
    assert [c.text for c in chunks] == ["", "", "€", "\ufffd"] and sum(c.tokens for c in chunks) == 4


def test_generate_ends_done_at_the_models_end_of_text():
    """The end-of-sequence token ends the text early: a final chunk that counts no token."""
    chunks = run_generate(FakeLlama(script=[ord("a") + 1, EOS]), b"p", budget=10)
    assert chunks == [Chunk(7, "a", 1, prefill=1), Chunk(7, "", 0, final=True)]


def test_generate_stops_between_tokens_and_closes_the_generation():
    """A set stop event ends the loop at the next token, which is not emitted, and the generator is closed."""
    llama, stop, chunks = FakeLlama(), threading.Event(), []

    def emit(chunk):
        chunks.append(chunk)
        if len(chunks) == 3:
            stop.set()
    llamacpp.generate(llama, llamacpp.Job(7, b"p", 1000), stop, emit)
    assert len(chunks) == 3 and llama.closed == 1


def test_a_job_that_does_not_fit_in_n_ctx_fails_before_generating():
    """Prompt tokens plus the tokens owed beyond n_ctx fail at once, saying by how much, instead of filling up."""
    llama = FakeLlama(n_ctx=10)
    with pytest.raises(ValueError, match="context full: 4 tokens of prompt and 7 to generate exceed n_ctx 10"):
        run_generate(llama, b"four", budget=7)
    assert llama.contexts == []


def test_empty_prompt_starts_from_the_beginning_of_sequence_token():
    """A context that tokenizes to nothing is given the BOS token, so the model has something to continue."""
    llama = FakeLlama()
    run_generate(llama, b"", budget=1)
    assert llama.contexts == [[256]]


def test_options_need_model_path_and_default_n_ctx_to_the_models_context():
    """No model_path or a bad n_threads is refused at start; n_ctx is the model's context unless given."""
    model = type("Model", (), {"name": "m", "context": 2048, "options": {}})
    with pytest.raises(Invalid, match="options.model_path"):
        llamacpp.Options.of(model)
    model.options = {"model_path": "/m.gguf", "n_threads": 0}
    with pytest.raises(Invalid, match="n_threads"):
        llamacpp.Options.of(model)
    model.options = {"model_path": "/m.gguf", "seed": 3}
    assert llamacpp.Options.of(model).llama_arguments() == {"model_path": "/m.gguf", "n_ctx": 2048, "seed": 3}


def test_n_gpu_layers_needs_a_build_that_offloads(monkeypatch):
    """n_gpu_layers is refused, saying why, where llama.cpp cannot offload, and passed to Llama where it can;
    0 needs no GPU, and below -1 is no layer count."""
    model = type("Model", (), {"name": "m", "context": 64, "options": {"model_path": "/m.gguf", "n_gpu_layers": 99}})
    monkeypatch.setattr(llamacpp, "gpu_offload_supported", lambda: False)
    with pytest.raises(Invalid, match="model m: n_gpu_layers 99 needs llama.cpp built with GPU support"):
        llamacpp.Options.of(model)
    model.options = {"model_path": "/m.gguf", "n_gpu_layers": 0}
    assert llamacpp.Options.of(model).n_gpu_layers == 0
    model.options = {"model_path": "/m.gguf", "n_gpu_layers": -2}
    with pytest.raises(Invalid, match=r"n_gpu_layers must be an integer, -1 \(all\) or more"):
        llamacpp.Options.of(model)
    monkeypatch.setattr(llamacpp, "gpu_offload_supported", lambda: True)
    model.options = {"model_path": "/m.gguf", "n_gpu_layers": -1}
    assert llamacpp.Options.of(model).llama_arguments()["n_gpu_layers"] == -1


def test_job_resumes_after_the_text_so_far():
    """A task placed again asks for its prompt plus its output, for the tokens still owed."""
    task = type("Task", (), {"pid": 3, "spec": TaskSpec(name="t", prompt="Once", max_tokens=10), "tokens_out": 4,
                             "output": bytearray(b" upon")})
    assert llamacpp.Job.of(task) == llamacpp.Job(3, b"Once upon", 6)


CONFIG = engine_config("llamacpp", model_path="/nowhere/tiny.gguf")


@pytest.fixture
def fake(monkeypatch):
    """The FakeLlama every model of the driver loads (one per test)."""
    llama = FakeLlama(delay=0.001)
    monkeypatch.setattr(llamacpp, "open_llama", lambda options: llama)
    return llama


async def run_tasks(tmp_path, specs: list[dict], during=None) -> list:
    """Run `specs` through a Runtime with the llamacpp driver; the tasks once all have ended."""
    return await runtasks.run_tasks(tmp_path, CONFIG, specs, during)


async def test_concurrent_tasks_all_complete_one_generation_at_a_time(tmp_path, fake):
    """Four tasks on four slots all end done with their tokens, and the model never runs two at once."""
    tasks = await run_tasks(tmp_path, [{"name": f"t{n}", "prompt": f"task {n}", "max_tokens": 50} for n in range(4)])
    assert [(t.exit, t.tokens_out, bytes(t.output)) for t in tasks] == [("done", 50, b"x" * 50)] * 4
    assert fake.most_busy == 1
    assert sorted(fake.contexts) == sorted([byte + 1 for byte in f"task {n}".encode()] for n in range(4))


async def test_kill_stops_the_generation_at_the_next_token(tmp_path, fake):
    """Killing a task mid-generation closes its generator, and no token of it is delivered afterwards."""
    fake.delay = 0.01  # 40 s for the whole budget: only a stopped generation closes within the 5 s below

    async def kill_after_some_tokens(rt, pids):
        while rt.kernel.tasks[pids[0]].tokens_out < 5:
            await rt.wait_for(pids[0], 1.0)
        rt.commit([Kill(pid=pids[0], uid=1000)])
        killed_at = rt.kernel.tasks[pids[0]].tokens_out
        with trio.fail_after(5):
            while not fake.closed:
                await trio.sleep(0.01)
        await trio.sleep(0.05)
        assert rt.kernel.tasks[pids[0]].tokens_out == killed_at

    [task] = await run_tasks(tmp_path, [{"name": "a", "max_tokens": 4000}], kill_after_some_tokens)
    assert task.exit == "killed" and fake.busy == 0 and 5 <= task.tokens_out < 4000


async def test_stopped_task_resumes_after_its_text_for_the_tokens_still_owed(tmp_path, fake):
    """stop ends the generation; cont runs it again on the prompt plus the output so far, up to max_tokens in all."""
    fake.delay = 0.01

    async def stop_then_cont(rt, pids):
        while rt.kernel.tasks[pids[0]].tokens_out < 3:
            await rt.wait_for(pids[0], 1.0)
        rt.commit([Control(pid=pids[0], command=TaskCommand("stop"), uid=1000)])
        with trio.fail_after(5):
            while fake.busy:
                await trio.sleep(0.01)
        rt.commit([Control(pid=pids[0], command=TaskCommand("cont"), uid=1000)])

    [task] = await run_tasks(tmp_path, [{"name": "a", "prompt": "go", "max_tokens": 40}], stop_then_cont)
    first, again = fake.contexts
    assert (task.exit, task.tokens_out, bytes(task.output)) == ("done", 40, b"x" * 40)
    assert first == [ord("g") + 1, ord("o") + 1] and again == first + [ord("x") + 1] * (len(again) - 2)
    assert 3 <= len(again) - 2 < 40


async def test_a_model_that_cannot_load_fails_the_task_and_the_next_one_runs(tmp_path, monkeypatch):
    """A load error fails the task with llama.cpp's words; a later task tries again and runs."""
    attempts = []

    def open_once_broken(options):
        attempts.append(options.model_path)
        if len(attempts) == 1:
            raise ValueError(f"Model path does not exist: {options.model_path}")
        return FakeLlama()
    monkeypatch.setattr(llamacpp, "open_llama", open_once_broken)
    later = []

    async def submit_another_after_the_failure(rt, pids):
        while not rt.kernel.tasks[pids[0]].done:
            await rt.wait_for(pids[0], 1.0)
        later.append(rt.commit([Submit(spec=TaskSpec(name="b", max_tokens=5), uid=1000)])[0])
        while not rt.kernel.tasks[later[0]].done:
            await rt.wait_for(later[0], 1.0)
        later[0] = rt.kernel.tasks[later[0]]

    [broken] = await run_tasks(tmp_path, [{"name": "a", "max_tokens": 5}], submit_another_after_the_failure)
    assert broken.exit == "failed: llama.cpp: Model path does not exist: /nowhere/tiny.gguf"
    assert (later[0].exit, later[0].tokens_out, len(attempts)) == ("done", 5, 2)


async def test_missing_llama_cpp_python_says_how_to_install_it(monkeypatch):
    """Without llama-cpp-python, loading fails with the pip command that installs the extra."""
    monkeypatch.setattr(llamacpp.metadata, "version", lambda name: (_ for _ in ()).throw(
        llamacpp.metadata.PackageNotFoundError(name)))
    with pytest.raises(llamacpp.Unavailable, match=r"pip install 'apeinxfs\[llamacpp\]'"):
        llamacpp.open_llama(llamacpp.Options(model_path="/m.gguf", n_ctx=64))


async def test_daemon_shutdown_stops_a_running_generation(tmp_path, fake):
    """Cancelling the runtime (unmount, SIGTERM) mid-generation stops the worker thread instead of waiting it out."""
    fake.delay = 0.01  # 40 s for the whole budget
    with open_runtime(tmp_path, CONFIG) as rt:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                await nursery.start(rt.run)
                pid = rt.commit([Submit(spec=TaskSpec(name="a", max_tokens=4000), uid=1000)])[0]
                while rt.kernel.tasks[pid].tokens_out < 5:
                    await rt.wait_for(pid, 1.0)
                nursery.cancel_scope.cancel()
    assert (fake.closed, fake.busy) == (1, 0)
