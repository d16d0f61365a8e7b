"""The KV books reconciled with what the engines report: `EngineKV` events, and GPUs held from placement.

The kernel counts KV pages (memory.py); the engines hold the real caches. A scrape of an engine
(llama.cpp's /slots or metrics, vLLM's kv_cache_usage_perc times its cache config, SGLang's
used tokens: drivers/metrics.py) says how many tokens its KV cache holds, and the daemon
journals an `EngineKV(model, gpus, tokens)` when the pages they take change (runtime.py). The
pages an engine reports are compared with the books' used pages (tasks' private pages and
cached blocks) of its GPUs together: one GPU for an endpoint of one GPU, its group for a
tensor-parallel engine (which shards its KV over the group, while the books hold each task on
one GPU of it), every GPU for the one engine of a model without endpoints (gpus empty). While
an engine reports more, its GPUs are held (`KVManager.held`, which placement honours: no task is
placed there), with an `engine-kv` trace line when one is held and when it is released. It is
decided again at each report (so a GPU stays held until a report agrees) and when a model is
removed; the pool file shows each GPU's share of the reports (`engine_view`, rounded up).
Pure: no I/O, times and values come from the events.
"""
from __future__ import annotations

from collections.abc import Iterator

import attrs

from . import events as ev
from .endpoints import gpus_text
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
        self._decide()

    def forget(self, model: str) -> None:
        """A model removed: its engines' reports go, and the GPUs they held are decided again."""
        for key in [key for key in self.reports if key[0] == model]:
            del self.reports[key]
        self._decide()

    def _every_gpu(self) -> tuple[int, ...]:
        return tuple(range(len(self.kv.pools)))

    def engine_view(self, gpu: int) -> tuple[int, int] | None:
        """(pages, tokens) the engines report on `gpu`, their shares summed; None if none reported."""
        shares = [(_share(report.pages, len(gpus)), _share(report.tokens, len(gpus)))
                  for (_, gpus), report in self.reports.items() if gpu in gpus]
        return (sum(p for p, _ in shares), sum(t for _, t in shares)) if shares else None

    def _decide(self) -> None:
        """Hold the GPUs of each engine that reports more pages in use than the books of its GPUs together
        (a tensor-parallel engine shards its KV over them, while the books hold each task on one GPU);
        release those no engine reports more on."""
        held, over = self.kv.held, dict[int, str]()
        for (_, gpus), report in self.reports.items():
            books = sum(self.kv.pools[gpu].pages_used for gpu in gpus)
            if report.pages > books:
                for gpu in gpus:
                    over.setdefault(gpu, f"engines report {report.pages} KV pages in use on gpus "
                                         f"{gpus_text(gpus)}, the books {books}")
        for gpu in sorted(over.keys() ^ held.keys()):
            if gpu in over:
                held[gpu] = over[gpu]
                self._host.emit("engine-kv", None, f"{held[gpu]}: no task is placed here until they agree", gpu)
            else:
                del held[gpu]
                self._host.emit("engine-kv", None, "the engines' KV reports agree with the books: "
                                                   "tasks are placed here again", gpu)

    def index_problems(self) -> Iterator[str]:
        """What disagrees (for invariants.py): a report of a model not served or of a GPU not there; a
        held GPU that no report covers."""
        count = len(self.kv.pools)
        for model, gpus in self.reports:
            if model not in self._models or not gpus or any(not 0 <= gpu < count for gpu in gpus):
                yield f"engine KV report of {model} on gpus {list(gpus)}: no such model or GPU"
        covered = {gpu for _, gpus in self.reports for gpu in gpus}
        if not self.kv.held.keys() <= covered:
            yield f"GPUs {sorted(self.kv.held.keys() - covered)} are held with no engine report on them"
