"""The `sim` driver: a model of an LLM engine that takes real time and makes real text.

It behaves like a continuous-batching engine: a step decodes one token for each sequence
in the GPU's batch and takes `decode_step_ms` plus `batch_step_ms` for each extra
sequence; a sequence new to the batch (or resumed after preemption) is first prefilled at
`prefill_tokens_per_s`, all but the tokens whose KV the kernel found in place
(`cached_tokens`: shared prefix blocks, or a context swapped back in); its chunk reports the
whole context as prefilled, cached tokens included, as a real engine counts its request's
prompt (by the kernel's estimate: the sim has no tokenizer, so its bills stand at it). KV
grows by one token per step and the kernel accounts it. The text comes from a deterministic generator
seeded by the prompt (or, for a task with none, its name) and a seed: the task's `seed`
if it gave one, else the model's `seed` option; so the same prompt and seed give the same
words, and another seed other words. Other sampling keys change nothing here.
"""
import functools
import hashlib

import attrs
import trio

from ..kernel.errors import Invalid
from ..kernel.events import Chunk, Step

WORDS = (
    "the a of to and in is that it for on with as was by this be are at from or an "
    "model token memory page cache kernel task queue batch prompt context engine GPU "
    "fair share weight tenant budget trace replay stream wait schedule decode prefill "
    "attention layer head value key vector tensor matrix compute latency throughput "
    "request response system process file mount read write open close signal state "
    "runs serves holds keeps grows moves waits yields returns counts measures splits "
    "quickly slowly fairly cleanly again always never often first next last every "
    "small large full empty warm cold new old fast slow long short clear real"
).split()


@attrs.frozen
class EngineModel:
    """Speeds of the simulated engine for one model (its `[models.options]`)."""

    prefill_tokens_per_s: float = 8000.0
    decode_step_ms: float = 20.0
    batch_step_ms: float = 0.5
    seed: int = 0
    swap_gbps: float = 16.0  # the host link the kernel weighs swap against recompute by (memory.py)

    def __attrs_post_init__(self):
        if min(self.prefill_tokens_per_s, self.swap_gbps) <= 0 or self.decode_step_ms < 0 or self.batch_step_ms < 0:
            raise Invalid("sim options: rates must be positive and step times not negative")

    def step_seconds(self, batch_size: int, prefill_tokens: int) -> float:
        """Time of one step: decode grows with the batch, prefill with its tokens."""
        decode = self.decode_step_ms + self.batch_step_ms * (batch_size - 1)
        return decode / 1000 + prefill_tokens / self.prefill_tokens_per_s


@functools.lru_cache(maxsize=1024)
def _seeded(seed: int, prompt: str):
    """A blake2b fed with what every word of `prompt` hashes first: copied per word, not rehashed."""
    return hashlib.blake2b(f"{seed}\0{prompt}\0".encode(), digest_size=4)


def word(seed: int, prompt: str, index: int) -> str:
    """Token `index` of the text generated for `prompt`: a word with its leading space.

    Chosen by blake2b(f"{seed}\\0{prompt}\\0{index}"), 4 bytes, little-endian."""
    hasher = _seeded(seed, prompt).copy()
    hasher.update(str(index).encode())
    value = int.from_bytes(hasher.digest(), "little")
    text = WORDS[value % len(WORDS)]
    if index == 0 or value % 13 == 0:
        text = text.capitalize()
    return (" " if index else "") + text + ("." if value % 11 == 0 else "")


def _next_word(engine: EngineModel, task) -> str:
    """The task's next word: seeded by its own `seed` if it gave one, else by its model's."""
    spec = task.spec
    seed = spec.sampling.seed if spec.sampling and spec.sampling.seed is not None else engine.seed
    return word(seed, spec.prompt or spec.name, task.tokens_out)


class SimDriver:
    """Drives the batch on one GPU with the speeds of each task's model."""

    name = "sim"

    def __init__(self, models: dict):
        try:
            self.engines = {name: EngineModel(**m.options) for name, m in models.items()}
        except TypeError as exc:
            raise Invalid(f"sim options: {exc}") from None

    def plan(self, batch: list) -> tuple[float, list[Chunk]]:
        """The duration of the next step and what it yields for each task."""
        engines, chunks, prefill, slowest = self.engines, [], 0, None
        for task in batch:
            engine = engines[task.model]
            if slowest is None or engine.decode_step_ms > slowest.decode_step_ms:
                slowest = engine
            counted = 0 if task.prefilled else task.context_tokens  # reported: its whole request, cached or not
            if counted:
                prefill += counted - task.cached_tokens  # computed: what the kernel found no KV for
            chunks.append(Chunk(task.pid, _next_word(engine, task), 1, counted))
        return slowest.step_seconds(len(batch), prefill), chunks

    async def serve(self, gpu: int, host) -> None:
        for name in self.engines:  # a simulated engine is ready once its driver runs
            host.report_state(name, "ready")
        while True:
            batch = await host.next_batch(gpu)
            seconds, chunks = self.plan(batch)
            await trio.sleep(seconds)
            host.deliver(Step(gpu=gpu, chunks=chunks))
