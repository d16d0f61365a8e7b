"""The `llamacpp` driver: runs the kernel's tasks in this process with llama-cpp-python.

Each model gets one `llama_cpp.Llama`, loaded on its first task, and its generations run
in a worker thread (trio.to_thread), one at a time: a llama.cpp context is not
thread-safe, and llama-cpp-python's high-level API holds one sequence per Llama.

Tasks of a model are served ONE AT A TIME, first come first served, not round-robin:
switching a Llama to another sequence drops the KV of the one before, so every turn of a
round-robin would prefill that task's whole context again (or copy its KV state out and
back), and one Llama per slot would hold a KV cache per slot (and, offloaded, the
weights again). A task waiting for its turn holds its batch slot and gets no tokens; the
kernel's scheduler still decides which tasks hold slots, and one slot per GPU makes it
decide the order too. A task that leaves the batch (kill, stop, preemption) stops at the
next token its generation produces (a prompt's prefill runs to its end first) or never
starts; no chunk of it is delivered after that. Placed again, it resumes with its prompt
plus the text so far, for the tokens still owed (re-tokenized, so not always the same ids).

Counts are the model's: each chunk is one sampled token, the prompt's token count
(`Llama.tokenize`) comes as the first chunk's prefill, and the model's end-of-sequence
token ends the task `done` short of max_tokens. Text is the tokens' bytes decoded as
UTF-8 across token boundaries, bad bytes replaced. Failures (model file missing, a prompt
whose real token count leaves no room for the tokens owed in n_ctx) fail the task with
`failed: llama.cpp: ...`; the daemon serves on. Health (enginestate.py): ready while the
model file is there and its last load (if any) worked; failed, with the error, if not.

A task's sampling keys are llama.cpp's: temperature (as `temp`), top_p, top_k,
presence_penalty and frequency_penalty go to `Llama.generate`, its seed is set before it
runs, and its stop strings end the text before them (text that may begin one is held back
until it cannot).

Options (`[models.options]`): model_path (required, a GGUF file), n_ctx (the model's
`context`), n_threads (llama.cpp's default), seed (unset or 0: random; give one for
repeatable text; a task's own seed wins), n_gpu_layers (0: none; -1 or more than the model
has: all; refused with the reason, when the model is loaded from the configuration or
added, unless the libraries were built with GPU support:
`llama_supports_gpu_offload()`). llama-cpp-python is an optional extra (`pip install
'apeinxfs[llamacpp]'`, installed by scripts/setup without compiling llama.cpp); it loads
the shared libraries scripts/build-llama-server built, from
~/.cache/apeinxfs/llama.cpp/VERSION-cuda/bin if it made a CUDA build there, else
VERSION/bin (under $APEINXFS_CACHE if set), unless LLAMA_CPP_LIB_PATH names others.
"""
import codecs
import contextlib
import functools
import os
import threading
from importlib import metadata
from pathlib import Path

import attrs
import trio

from ..kernel.errors import Invalid
from ..kernel.events import Chunk
from . import flow


GENERATE_NAMES = {"temperature": "temp", "top_p": "top_p", "top_k": "top_k",
                  "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty"}
RANDOM_SEED = 0xFFFFFFFF  # llama.cpp's LLAMA_DEFAULT_SEED: a random seed for each generation


class Unavailable(Exception):
    """llama-cpp-python or its libraries cannot be loaded."""


def _positive_or_none(_inst, attribute, value) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be positive, not {value}")


def _layers(_inst, attribute, value) -> None:
    if value is not None and (type(value) is not int or value < -1):
        raise ValueError(f"{attribute.name} must be an integer, -1 (all) or more, not {value!r}")


@attrs.frozen
class Options:
    """How to load one model's Llama (its `[models.options]`)."""

    model_path: str = attrs.field(converter=str)
    n_ctx: int = attrs.field(validator=_positive_or_none)
    n_threads: int | None = attrs.field(default=None, validator=_positive_or_none)
    seed: int | None = None
    n_gpu_layers: int | None = attrs.field(default=None, validator=_layers)

    @classmethod
    def of(cls, model) -> "Options":
        options = {"n_ctx": model.context, **model.options}
        if getattr(model, "endpoints", ()):
            raise Invalid(f"model {model.name}: the llamacpp driver runs llama.cpp in the daemon: "
                          "it takes no endpoints")
        if "model_path" not in options:
            raise Invalid(f"model {model.name}: the llamacpp driver needs options.model_path")
        try:
            made = cls(**options)
        except (TypeError, ValueError) as exc:
            raise Invalid(f"model {model.name}: llamacpp options: {exc}") from None
        if made.n_gpu_layers:
            _check_gpu_offload(model.name, made.n_gpu_layers)
        return made

    def llama_arguments(self) -> dict:
        """Keyword arguments of `llama_cpp.Llama`, leaving unset ones to llama.cpp."""
        return {key: value for key, value in attrs.asdict(self).items() if value is not None}


def _check_gpu_offload(model: str, layers: int) -> None:
    """Refuse n_gpu_layers where llama.cpp cannot offload: it would run on the CPU without a word."""
    try:
        supported = gpu_offload_supported()
    except Unavailable as exc:
        raise Invalid(f"model {model}: n_gpu_layers {layers}: {exc}") from None
    if not supported:
        raise Invalid(f"model {model}: n_gpu_layers {layers} needs llama.cpp built with GPU support, and the "
                      f"libraries at {os.environ.get('LLAMA_CPP_LIB_PATH')} have none (scripts/build-llama-server "
                      f"builds them with CUDA where nvcc is)")


def library_dir() -> Path:
    """Where scripts/build-llama-server put llama.cpp's libraries for the installed llama-cpp-python:
    its CUDA build's if there is one, else its CPU build's."""
    cache = Path(os.environ.get("APEINXFS_CACHE") or Path.home() / ".cache" / "apeinxfs")
    version = metadata.version("llama_cpp_python")
    cuda = cache / "llama.cpp" / f"{version}-cuda" / "bin"
    return cuda if cuda.is_dir() else cache / "llama.cpp" / version / "bin"


def load_llama_cpp():
    """The llama_cpp module, on the cached libraries unless LLAMA_CPP_LIB_PATH is set."""
    try:
        os.environ.setdefault("LLAMA_CPP_LIB_PATH", str(library_dir()))
        import llama_cpp
    except (ImportError, OSError, metadata.PackageNotFoundError) as exc:
        raise Unavailable(f"cannot load llama-cpp-python ({exc}); install the extra: "
                          f"pip install 'apeinxfs[llamacpp]'; libraries from "
                          f"LLAMA_CPP_LIB_PATH={os.environ.get('LLAMA_CPP_LIB_PATH')}") from None
    return llama_cpp


def gpu_offload_supported() -> bool:
    """Whether the loaded llama.cpp can put layers on a GPU (built with CUDA, Metal, Vulkan...)."""
    return bool(load_llama_cpp().llama_supports_gpu_offload())


def open_llama(options: Options):
    """A `llama_cpp.Llama` for `options`."""
    return load_llama_cpp().Llama(verbose=False, **options.llama_arguments())


@attrs.frozen
class Job:
    """What a worker thread needs of a task, copied in trio's thread: the kernel's task is not shared."""

    pid: int
    text: bytes  # the prompt and the output so far
    budget: int  # tokens still owed
    sampling: dict = attrs.field(factory=dict)  # keyword arguments of Llama.generate
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @classmethod
    def of(cls, task) -> "Job":
        prompt, fields = (task.spec.prompt or task.spec.name).encode(), task.spec.sampling_fields
        sampling = {GENERATE_NAMES[key]: value for key, value in fields.items() if key in GENERATE_NAMES}
        return cls(task.pid, prompt + bytes(task.output), task.spec.max_tokens - task.tokens_out, sampling,
                   fields.get("seed"), tuple(fields.get("stop", ())))


class StopScan:
    """Generated text in, text to deliver out: what may begin a stop string is held back until it
    cannot; at a stop string the text ends before it and `hit` is set."""

    def __init__(self, stops: tuple[str, ...] = ()):
        self.stops, self.held, self.hit = stops, "", False

    def feed(self, text: str) -> str:
        held = self.held + text
        found = [at for at in (held.find(stop) for stop in self.stops) if at >= 0]
        if found:
            self.hit, self.held = True, ""
            return held[:min(found)]
        keep = max((n for stop in self.stops for n in range(1, len(stop)) if held.endswith(stop[:n])), default=0)
        self.held = held[len(held) - keep:]
        return held[:len(held) - keep]

    def flush(self) -> str:
        """What is held back, once the text ends without a stop string."""
        held, self.held = self.held, ""
        return held


class Pieces:
    """Sampled token ids to chunks: one token each, UTF-8 text joined across tokens, the prompt's count first."""

    def __init__(self, llama, job: Job, prompt_tokens: int):
        self.llama, self.job, self.prefill = llama, job, prompt_tokens
        self.tokens, self.ended = 0, False
        self.text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stops = StopScan(job.stop)

    @property
    def done(self) -> bool:
        return self.ended or self.tokens >= self.job.budget

    def chunk(self, token: int) -> Chunk:
        eos = token == self.llama.token_eos()
        self.tokens += not eos
        piece = b"" if eos else self.llama.detokenize([token])
        text = self.stops.feed(self.text.decode(piece, final=eos or self.tokens >= self.job.budget))
        self.ended = eos or self.stops.hit
        if self.done:
            text += self.stops.flush()
        chunk = Chunk(self.job.pid, text, int(not eos), prefill=self.prefill, final=self.ended)
        self.prefill = 0
        return chunk


def generate(llama, job: Job, stop: threading.Event, emit) -> None:
    """In a worker thread: decode `job` a token at a time and `emit` a chunk for each, until its
    budget is spent, the model ends the text, or `stop` is set (looked at between tokens)."""
    context = llama.tokenize(job.text) or [llama.token_bos()]
    if len(context) + job.budget > llama.n_ctx():
        raise ValueError(f"context full: {len(context)} tokens of prompt and {job.budget} to generate "
                         f"exceed n_ctx {llama.n_ctx()}")
    pieces = Pieces(llama, job, len(context))
    with contextlib.closing(llama.generate(context, **job.sampling)) as tokens:
        for token in tokens:
            if stop.is_set():
                return
            emit(pieces.chunk(token))
            if pieces.done:
                return


class Engine:
    """One model: its Llama, loaded on first use, and the lock its tasks take turns by (trio's is FIFO)."""

    def __init__(self, options: Options):
        self.options = options
        self.llama = None
        self.turn = trio.Lock()

    async def run(self, job: Job, stop: threading.Event, emit) -> str | None:
        """Generate `job` when its turn comes; why it failed, if it did."""
        async with self.turn:
            if not stop.is_set():
                return await in_thread(functools.partial(self._generate, job, stop, emit), stop)
        return None

    def _generate(self, job: Job, stop: threading.Event, emit) -> str | None:
        try:
            if self.llama is None:
                self.llama = open_llama(self.options)
            self.llama.set_seed(job.seed if job.seed is not None else self.options.seed or RANDOM_SEED)
            generate(self.llama, job, stop, emit)
        except Exception as exc:  # the engine's failure is the task's, not the daemon's
            return f"llama.cpp: {exc}"
        return None


async def in_thread(work, stop: threading.Event):
    """`work()` run in a worker thread; if trio cancels the caller, set `stop` and wait for it to end."""
    async def stop_when_cancelled():
        try:
            await trio.sleep_forever()
        finally:
            stop.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stop_when_cancelled)
        result = await trio.to_thread.run_sync(work)
        nursery.cancel_scope.cancel()
    return result


class Turn:
    """One task's generation: `cancel()` stops it at its next token, or before it starts."""

    def __init__(self):
        self.scope, self.stop = trio.CancelScope(), threading.Event()

    def cancel(self) -> None:
        self.stop.set()
        self.scope.cancel()

    def emitter(self, outbox: flow.Outbox, task):
        """A thread-safe `emit(chunk)` of `task`: the chunk reaches `outbox` in trio's thread, unless cancelled
        by then; a bug there fails the task and stops its generation (outbox.put_guarded)."""
        def put(chunk: Chunk) -> None:
            if not self.stop.is_set() and not outbox.put_guarded(task, chunk):
                self.stop.set()
        return functools.partial(trio.lowlevel.current_trio_token().run_sync_soon, put)


class LlamaCppDriver:
    """Each model's tasks take turns on the model's one in-process Llama."""

    name = "llamacpp"

    def __init__(self, models: dict):
        self.engines = {name: Engine(Options.of(model)) for name, model in models.items()}

    async def serve(self, gpu: int, host) -> None:
        for name, engine in self.engines.items():  # a Llama loads on its first task: until then, its file says
            if os.path.isfile(engine.options.model_path):
                host.report_state(name, "ready")
            else:
                host.report_state(name, "failed", f"model_path {engine.options.model_path}: no such file")
        await flow.run_jobs(host, gpu, self._start, self.name)

    def _start(self, nursery, outbox: flow.Outbox, task) -> Turn:
        turn = Turn()
        nursery.start_soon(outbox.guarded, task, self._run, outbox, task, turn)
        return turn

    async def _run(self, outbox: flow.Outbox, task, turn: Turn) -> None:
        with turn.scope:
            engine = self.engines[task.model]
            reason = await engine.run(Job.of(task), turn.stop, turn.emitter(outbox, task))
            if reason is not None:
                outbox.fail(task, reason)
            if engine.llama is not None:
                outbox.host.report_state(task.model, "ready")
            elif reason is not None:  # its load failed
                outbox.host.report_state(task.model, "failed", reason)
