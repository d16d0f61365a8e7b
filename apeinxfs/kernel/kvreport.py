"""The KV books reconciled with what the engines report: `EngineKV` events, and GPUs held from placement.

The kernel counts KV pages (memory.py); the engines hold the real caches. A scrape of an engine
(llama.cpp's /slots or metrics, vLLM's kv_cache_usage_perc times its cache config, SGLang's
used tokens: drivers/metrics.py) says how many tokens its KV cache holds, and the daemon
journals an `EngineKV(model, gpus, tokens)` when the pages they take change (runtime.py). The
report of an engine on several GPUs (a tensor-parallel group) is spread evenly over them, its
pages rounded up on each; the one engine of a model without endpoints (gpus empty) is spread
over every GPU. On each GPU a report covers, the sum of the engines' reports there is compared
with the books' used pages (tasks' private pages and cached blocks): while the engines report
more, the GPU is held (`KVManager.held`, which placement honours: no task is placed there), with
an `engine-kv` trace line when it is held and when it is released. It is decided again at each
report of that GPU (so a GPU stays held until a report agrees) and when a model is removed.
Pure: no I/O, times and values come from the events.
"""
from __future__ import annotations

from collections.abc import Iterable

import attrs

from . import events as ev
from .errors import Invalid
from .kvmem import pages_for
from .memory import KVManager
from .models import Models
from .seams import Host


@attrs.frozen
class Report:
    """An engine's last report: the tokens its KV cache holds, and the pages they take."""

    tokens: int
    pages: int


def _share(amount: int, parts: int) -> int:
    return -(-amount // parts)


class KVReports:
    """The engines' last KV reports by (model, GPUs), and holding the GPUs where they exceed the books."""

    def __init__(self, kv: KVManager, models: Models, host: Host):
        self.kv, self._models, self._host = kv, models, host
        self.reports: dict[tuple[str, tuple[int, ...]], Report] = {}

    def check(self, event: ev.EngineKV) -> None:
        count = len(self.kv.pools)
        if type(event.tokens) is not int or event.tokens < 0 or any(not 0 <= gpu < count for gpu in event.gpus):
            raise Invalid(f"an engine's KV report of {event.tokens!r} tokens on gpus {list(event.gpus)}: tokens "
                          f"must be an integer >= 0 and GPUs 0 to {count - 1}")

    def pages_of(self, model: str, tokens: int) -> int:
        """The pages `tokens` tokens of `model` take (the daemon journals a report when they change)."""
        return pages_for(tokens, self._models[model].token_bytes, self.kv.page_bytes)

    def last(self, model: str, gpus: tuple[int, ...]) -> Report | None:
        """The last report of `model`'s engine on `gpus` (as the event named them)."""
        return self.reports.get((model, gpus or self._every_gpu()))

    def record(self, event: ev.EngineKV) -> None:
        if event.model not in self._models:  # removed since the scrape
            return
        gpus = event.gpus or self._every_gpu()
        self.reports[event.model, gpus] = Report(event.tokens, self.pages_of(event.model, event.tokens))
        self._decide(gpus)

    def forget(self, model: str) -> None:
        """A model removed: its engines' reports go, and the GPUs they covered are decided again."""
        gone = [key for key in self.reports if key[0] == model]
        for key in gone:
            del self.reports[key]
        self._decide(sorted({gpu for _, gpus in gone for gpu in gpus}))

    def _every_gpu(self) -> tuple[int, ...]:
        return tuple(range(len(self.kv.pools)))

    def engine_view(self, gpu: int) -> tuple[int, int] | None:
        """(pages, tokens) the engines report on `gpu`, their shares summed; None if none reported."""
        shares = [(_share(report.pages, len(gpus)), _share(report.tokens, len(gpus)))
                  for (_, gpus), report in self.reports.items() if gpu in gpus]
        return (sum(p for p, _ in shares), sum(t for _, t in shares)) if shares else None

    def _decide(self, gpus: Iterable[int]) -> None:
        """Hold each of `gpus` where the engines report more pages in use than the books; release it where not."""
        held = self.kv.held
        for gpu in gpus:
            engine, books = (self.engine_view(gpu) or (0, 0))[0], self.kv.pools[gpu].pages_used
            if (engine > books) == (gpu in held):
                continue
            if engine > books:
                held[gpu] = f"engines report {engine} KV pages in use, the books {books}"
                self._host.emit("engine-kv", None, f"{held[gpu]}: no task is placed here until they agree", gpu)
            else:
                del held[gpu]
                self._host.emit("engine-kv", None, f"engines report {engine} KV pages in use, the books {books}: "
                                                   "tasks are placed here again", gpu)

    def index_problems(self) -> Iterable[str]:
        """What disagrees (for invariants.py): a report of a model not served or of a GPU not there; a
        held GPU that no report covers."""
        count = len(self.kv.pools)
        for model, gpus in self.reports:
            if model not in self._models or not gpus or any(not 0 <= gpu < count for gpu in gpus):
                yield f"engine KV report of {model} on gpus {list(gpus)}: no such model or GPU"
        covered = {gpu for _, gpus in self.reports for gpu in gpus}
        if not self.kv.held.keys() <= covered:
            yield f"GPUs {sorted(self.kv.held.keys() - covered)} are held with no engine report on them"
