"""The KV books reconciled with what the engines report: `EngineKV` events, and the pages they hold beyond the books.

The kernel counts KV pages (memory.py); the engines hold the real caches. A scrape of an engine
(llama.cpp's /slots or metrics, vLLM's kv_cache_usage_perc times its cache config, SGLang's
used tokens: drivers/metrics.py) says how many tokens its KV cache holds, and the daemon
journals an `EngineKV(model, gpus, tokens)` when the pages they take change (runtime.py). The
pages an engine reports are compared with the books' used pages (tasks' private pages and
cached blocks) of its GPUs together: one GPU for an endpoint of one GPU, its group for a
tensor-parallel engine (which shards its KV over the group, while the books hold each task on
one GPU of it), every GPU for the one engine of a model without endpoints (gpus empty). What an
engine reports beyond them (another client of the engine, or an engine running ahead of the
books) counts as used on its GPUs, each its share rounded up (`KVManager.unbooked`, which
placement takes off a GPU's room), with an `engine-kv` trace line when a GPU's excess appears
and when it goes. A report of more pages than its GPUs hold counts as their whole room (`counted`: the books
are an estimate, kv_fraction below what vLLM preallocates, so an honest engine under load may report more; a
full GPU stops admission there, the safe side); one of over ABSURD times that room is refused (Invalid), as one
of negative tokens. It is decided again at each report (so the excess stands until a report
changes it) and when a model is removed; the pool file shows each GPU's share of the reports
(`engine_view`, rounded up) and its unbooked pages.
Pure: no I/O, times and values come from the events.
"""
from __future__ import annotations

from collections.abc import Container, Iterator

import attrs

from . import events as ev
from .endpoints import gpus_text
from .errors import Invalid
from .kvmem import pages_for
from .memory import KVManager
from .models import Models
from .seams import Host

ABSURD = 1000  # a report of over this many times its GPUs' room is refused, not counted as full


@attrs.frozen
class Report:
    """An engine's last report: the tokens its KV cache holds, and the pages they take."""

    tokens: int
    pages: int


def _share(amount: int, parts: int) -> int:
    return -(-amount // parts)


def _beyond(pages: int, gpus: tuple[int, ...], books: int) -> str:
    return (f"engines report {pages} KV pages in use on gpus {gpus_text(gpus)}, the books {books}: "
            f"the {pages - books} more count as used here until they agree")


class KVReports:
    """The engines' last KV reports by (model, GPUs), and the pages they hold beyond the books of their GPUs."""

    def __init__(self, kv: KVManager, models: Models, host: Host):
        self.kv, self._models, self._host = kv, models, host
        self.reports: dict[tuple[str, tuple[int, ...]], Report] = {}

    def check(self, event: ev.EngineKV) -> None:
        count = len(self.kv.pools)
        if type(event.tokens) is not int or event.tokens < 0 or any(not 0 <= gpu < count for gpu in event.gpus):
            raise Invalid(f"an engine's KV report of {event.tokens!r} tokens on gpus {list(event.gpus)}: tokens "
                          f"must be an integer >= 0 and GPUs 0 to {count - 1}")
        if event.model in self._models:
            self._check_room(event.model, self._named(event.gpus), event.tokens)

    def _check_room(self, model: str, gpus: tuple[int, ...], tokens: int) -> None:
        """Refuse a report of over ABSURD times the pages the GPUs hold: no engine's, a liar's or a bug's."""
        pages, room = self._taken(model, tokens), self._room(gpus)
        if pages > ABSURD * room:
            raise Invalid(f"{tokens} KV tokens of {model} on gpus {gpus_text(gpus)} take {pages} pages, "
                          f"more than {ABSURD} times the {room} those GPUs hold")

    def _room(self, gpus: tuple[int, ...]) -> int:
        """The pages GPUs `gpus` hold (as `_named` gives them)."""
        return sum(self.kv.pools[gpu].pages_total for gpu in gpus)

    def _taken(self, model: str, tokens: int) -> int:
        return pages_for(tokens, self._models[model].token_bytes, self.kv.page_bytes)

    def pages_of(self, model: str, gpus: tuple[int, ...], tokens: int) -> int:
        """The pages `tokens` tokens of `model`'s engine on `gpus` (none: every GPU) count for (the daemon journals
        a report when they change): what they take, at most the GPUs' room."""
        return min(self._taken(model, tokens), self._room(self._named(gpus)))

    def beyond_room(self, model: str, gpus: tuple[int, ...], tokens: int) -> str | None:
        """In words, if a report of `tokens` takes more pages than its GPUs hold (counted as full); else None."""
        pages, room = self._taken(model, tokens), self._room(self._named(gpus))
        return (f"its KV report of {tokens} tokens takes {pages} pages, more than the {room} its GPUs hold here: "
                f"counted as full") if pages > room else None

    def last(self, model: str, gpus: tuple[int, ...]) -> Report | None:
        """The last report of `model`'s engine on `gpus` (as the event named them)."""
        return self.reports.get((model, self._named(gpus)))

    def holding(self, models: Container[str]) -> list[tuple[str, tuple[int, ...]]]:
        """The (model, GPUs) of the engines of `models` whose last report holds tokens."""
        return [key for key, report in self.reports.items() if key[0] in models and report.tokens]

    def record(self, event: ev.EngineKV) -> None:
        if event.model not in self._models:  # removed since the scrape
            return
        report = Report(event.tokens, self.pages_of(event.model, event.gpus, event.tokens))
        self.reports[event.model, self._named(event.gpus)] = report
        self._decide()

    def forget(self, model: str) -> None:
        """A model removed: its engines' reports go, and the pages they held beyond the books with them."""
        for key in [key for key in self.reports if key[0] == model]:
            del self.reports[key]
        self._decide()

    def _named(self, gpus: tuple[int, ...]) -> tuple[int, ...]:
        """The GPUs an engine's report names: `gpus`, or every GPU where it names none."""
        return gpus or tuple(range(len(self.kv.pools)))

    def engine_view(self, gpu: int) -> tuple[int, int] | None:
        """(pages, tokens) the engines report on `gpu`, their shares summed; None if none reported."""
        shares = [(_share(report.pages, len(gpus)), _share(report.tokens, len(gpus)))
                  for (_, gpus), report in self.reports.items() if gpu in gpus]
        return (sum(p for p, _ in shares), sum(t for _, t in shares)) if shares else None

    def stale(self) -> bool:
        """Whether the pages counted beyond the books would differ if decided now: the books moved since the
        last report, or a snapshot of an older version counted none. A report is then worth journaling even
        where its own pages did not change (runtime.report_kv); else not, however long an excess lasts."""
        return self._beyond_books()[0] != self.kv.unbooked

    def _decide(self) -> None:
        """Count as used on its GPUs what each engine reports beyond the books; a trace line where such
        pages appear or go."""
        excess, why = self._beyond_books()
        for gpu in sorted(excess.keys() ^ self.kv.unbooked.keys()):
            self._host.emit("engine-kv", None, why.get(gpu, "the engines' KV reports agree with the books again"), gpu)
        self.kv.unbooked = excess

    def _beyond_books(self) -> tuple[dict[int, int], dict[int, str]]:
        """What each engine reports beyond the books of its GPUs together (a tensor-parallel engine shards its
        KV over them, while the books hold each task on one GPU), each GPU its share; and in words, by GPU."""
        excess, why = dict[int, int](), dict[int, str]()
        for (_, gpus), report in self.reports.items():
            books = sum(self.kv.pools[gpu].pages_used for gpu in gpus)
            if report.pages > books:
                for gpu in gpus:
                    excess[gpu] = excess.get(gpu, 0) + _share(report.pages - books, len(gpus))
                    why.setdefault(gpu, _beyond(report.pages, gpus, books))
        return excess, why

    def index_problems(self) -> Iterator[str]:
        """What disagrees (for invariants.py): a report of a model not served or of a GPU not there;
        unbooked pages on a GPU that no report covers, or more than its engines report there."""
        count = len(self.kv.pools)
        for model, gpus in self.reports:
            if model not in self._models or not gpus or any(not 0 <= gpu < count for gpu in gpus):
                yield f"engine KV report of {model} on gpus {list(gpus)}: no such model or GPU"
        for gpu, pages in self.kv.unbooked.items():
            reported = self.engine_view(gpu)
            if reported is None or not 0 < pages <= reported[0]:
                yield f"gpu {gpu} counts {pages} pages beyond the books, its engines report {reported}"
