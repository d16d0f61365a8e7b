"""The KV memory manager: one page pool per GPU, each task's pages, the shared prefix cache.

A task on a GPU holds references to shared prefix blocks (the full blocks of its prompt,
`tokens_per_page` tokens each, keyed by a hash chain so prompts that start alike share
their first blocks' pages) and private pages for the rest of its context. A block no task
references stays cached until its page is needed, then goes least recently used first.
Books: a pool's used pages are its tasks' private pages plus its cached blocks.

This module decides how many pages, which blocks, what to evict and whether preempting a
task should swap or recompute. Which task to preempt, the OOM killer and the trace are the
kernel's. Pure: no clock, randomness or I/O; LRU order is the order of calls.
See docs/memory.md for the formulas and a worked example.
"""
from __future__ import annotations

import collections
import functools
import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator

from .config import MIB, KernelConfig, ModelConfig
from .kvmem import KVPool, least_prompt_tokens, pages_for, prompt_pieces
from .spec import TaskSpec
from .task import Task

Chain = tuple[bytes, ...]  # the keys of a prompt's cacheable blocks
Demand = tuple[Chain, int, int, bool]  # _demand: (chain, private pages, worst pages, new task)
Score = tuple[int, int, int]  # place(): (prefix hits, spare pages, -gpu)

SWAP_GBPS = 16.0  # host link speed for swapping KV out and in, unless a model sets `swap_gbps`
PREFILL_TOKENS_PER_S = 8000.0  # recompute speed, unless a model sets `prefill_tokens_per_s`
NO_BLOCKS = (0, 0, 0)  # PrefixCache.lookup of an empty chain
BOS = "<s>"  # the token estimate_prompt_tokens adds; not a piece the tokenizer can produce


def cacheable_blocks(prompt_tokens: int, tokens_per_page: int) -> int:
    """Full prompt blocks that can be shared; the last prompt token is always computed."""
    return (prompt_tokens - 1) // tokens_per_page if tokens_per_page else 0


@functools.lru_cache(maxsize=1024)
def prompt_chain(model: str, tokens_per_page: int, prompt: str) -> tuple[bytes, ...]:
    """The key of each cacheable block: h_i = blake2b(h_{i-1} + block i's tokens), h_0 from the model."""
    tokens = [BOS, *prompt_pieces(prompt)]
    digest = hashlib.blake2b(model.encode(), digest_size=16).digest()
    chain = []
    for start in range(0, cacheable_blocks(len(tokens), tokens_per_page) * tokens_per_page, tokens_per_page):
        block = json.dumps(tokens[start:start + tokens_per_page]).encode()
        digest = hashlib.blake2b(digest + block, digest_size=16).digest()
        chain.append(digest)
    return tuple(chain)


def _lease_gpu(task: Task) -> int:
    """The GPU of the pages a task holds (it holds some)."""
    assert task.kv_gpu is not None, f"task {task.pid} holds no KV pages"
    return task.kv_gpu


class PrefixCache:
    """One GPU's shared prompt blocks: refcounts, and the unreferenced ones in LRU order."""

    def __init__(self) -> None:
        self.refs: dict[bytes, int] = {}
        self.idle: OrderedDict[bytes, None] = OrderedDict()  # refs == 0, least recently used first
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self.refs)

    def leading(self, chain: Chain) -> int:
        """How many blocks from the chain's start are cached: the prefill they save."""
        hits = 0
        while hits < len(chain) and chain[hits] in self.refs:
            hits += 1
        return hits

    def lookup(self, chain: Chain) -> tuple[int, int, int]:
        """(leading hits, blocks cached anywhere in the chain, of those the idle ones)."""
        if not chain:
            return 0, 0, 0
        cached = [key for key in chain if key in self.refs]
        return self.leading(chain), len(cached), sum(key in self.idle for key in cached)

    def hold(self, key: bytes) -> None:
        """One more reference to `key`, cached from now on if it was not."""
        self.refs[key] = self.refs.get(key, 0) + 1
        self.idle.pop(key, None)

    def drop(self, chain: Chain) -> None:
        """Release references, the chain's tail first so its deepest blocks are evicted first."""
        for key in reversed(chain):
            self.refs[key] -= 1
            if not self.refs[key]:
                self.idle[key] = None

    def evict(self, count: int) -> int:
        """Forget up to `count` idle blocks, least recently used first; how many went."""
        gone = min(count, len(self.idle))
        for _ in range(gone):
            key, _ = self.idle.popitem(last=False)
            del self.refs[key]
        self.evictions += gone
        return gone


class KVManager:
    """The pools, prefix caches and leases of every GPU; `on_evict(gpu, pages, task)` hears evictions."""

    def __init__(self, config: KernelConfig, on_evict: Callable[[int, int, Task], None]) -> None:
        self.page_bytes = config.page_bytes
        self.models = {m.name: m for m in config.models}
        self.pools = [KVPool(config.page_bytes, g.kv_mib * MIB // config.page_bytes) for g in config.gpus]
        self.caches = [PrefixCache() for _ in config.gpus]
        self._mixed_pools = len({pool.pages_total for pool in self.pools}) > 1  # see _demand
        self.real_free: list[int | None] = [None] * len(config.gpus)  # pages NVML says are free, real GPUs
        self.unbooked: dict[int, int] = {}  # GPU -> pages its engines report beyond the books, counted used (kvreport.py)
        self.holders: dict[int, Task] = {}  # pid -> the task, for tasks holding pages (their kv_* fields)
        self.on_evict = on_evict
        self.per_page = {m.name: config.page_bytes // m.token_bytes for m in config.models}  # tokens per page
        self.watermark = config.sched.kv_watermark  # the part of a busy pool a new task must leave free

    def add_model(self, model: ModelConfig) -> None:
        """A model added at runtime (/ctl/models): its shape, and its tokens per page."""
        self.models[model.name], self.per_page[model.name] = model, self.page_bytes // model.token_bytes

    def set_real_free(self, gpu: int, free_bytes: int) -> int:
        """What NVML read as free on a real `gpu` now caps placements there; the pages that allows."""
        pages = self.real_free[gpu] = free_bytes // self.page_bytes
        return pages

    def remove_model(self, name: str) -> None:
        del self.models[name], self.per_page[name]

    def _pages(self, model: ModelConfig, tokens: int, blocks: int) -> int:
        """Pages for `tokens` tokens of which the first `blocks` blocks are shared ones."""
        return blocks + pages_for(tokens - blocks * self.per_page[model.name], model.token_bytes, self.page_bytes)

    def admit_pages(self, spec: TaskSpec, model: ModelConfig) -> int:
        """The most pages a task of `spec` can ever hold: its prompt (least_prompt_tokens: this is for refusals
        that never lift) plus all it may generate."""
        return self._worst(model, least_prompt_tokens(spec.prompt), spec.max_tokens)

    def placed_prompt(self, spec: TaskSpec, model: str, estimate: int) -> int | None:
        """Where a new task's prompt `estimate` could never fit in a GPU pool, the least_prompt_tokens its KV is
        placed at until the engine counts it (the submit found that to fit); else None: placed at the estimate."""
        config = self.models.get(model)
        if config is None or self.misfit(config, estimate, spec.max_tokens) is None:
            return None
        return least_prompt_tokens(spec.prompt)

    def misfit(self, model: ModelConfig, prompt_tokens: int, max_tokens: int) -> str | None:
        """Why a task of `prompt_tokens` and `max_tokens` could never fit in the largest GPU pool, or None."""
        need, largest = self._worst(model, prompt_tokens, max_tokens), max(pool.pages_total for pool in self.pools)
        if need <= largest:
            return None
        return f"needs {need} KV pages of {self.page_bytes / MIB:g} MiB; the largest GPU pool has {largest}"

    def _worst(self, model: ModelConfig, prompt_tokens: int, max_tokens: int) -> int:
        blocks = cacheable_blocks(prompt_tokens, self.per_page[model.name])
        return self._pages(model, prompt_tokens + max_tokens, blocks)

    def _demand(self, task: Task) -> Demand:
        """What the task needs on any GPU: its prompt's block chain, private pages beside it, the
        most pages it may ever hold (its prompt plus all it may generate), and whether it is new
        (nothing generated yet: it must leave the watermark free). The most pages is worked out
        only where pools differ in size: admission refused any task that fits in none, so when
        they are all alike every task fits in each (0 then stands for "fits")."""
        model, per_page = self.models[task.model], self.per_page[task.model]
        prompt = task.kv_prompt_tokens
        blocks = cacheable_blocks(prompt, per_page)  # fewer than the chain's if the engine counted fewer
        chain = prompt_chain(task.model, per_page, task.spec.prompt)[:blocks] if blocks > 0 else ()
        worst = self._worst(model, prompt, task.spec.max_tokens) if self._mixed_pools else 0
        return chain, self._private_need(task, len(chain), model), worst, task.tokens_out == 0

    def _private_need(self, task: Task, blocks: int, model: ModelConfig) -> int:
        """Private pages for the context and the next token, beside `blocks` shared blocks:
        _pages(model, context + 1, blocks) - blocks."""
        shared = blocks * self.per_page[model.name]
        return pages_for(task.context_tokens + 1 - shared, model.token_bytes, self.page_bytes)

    def place(self, task: Task, gpu: int) -> Score | None:
        """Whether the task fits on `gpu` now (evicting idle blocks if need be): a score, most
        prefix hits then most room to spare first, or None if it does not fit."""
        return self._fit(gpu, self._demand(task))

    def seat(self, task: Task, gpus: Iterable[int]) -> int | None:
        """Attach the task on the one of `gpus` where place() scores it highest; that GPU, or None
        if it fits on none. What the task needs is worked out once, not once per GPU."""
        if not gpus:
            return None
        best, best_score, demand = None, None, self._demand(task)
        for gpu in gpus:
            score = self._fit(gpu, demand)
            if score is not None and (best_score is None or score > best_score):
                best, best_score = gpu, score
        if best is not None:
            self._attach(task, best, demand)
        return best

    def fits_instead(self, task: Task, victim: Task) -> bool:
        """Whether `task` would fit on `victim`'s GPU once the victim has left it (its private
        pages freed, the blocks only it references idle): whether preempting it makes room."""
        gpu = _lease_gpu(victim)
        cache = self.caches[gpu]
        freed = victim.kv_private + sum(cache.refs[key] == 1 for key in victim.kv_blocks)
        return self._fit(gpu, self._demand(task), freed) is not None

    def _fit(self, gpu: int, demand: Demand, freed: int = 0) -> Score | None:
        """place()'s score on `gpu` for a task of `demand`, with `freed` more pages free than now.
        On a real GPU the room is also capped by the memory NVML last read as free (set_real_free).
        A new task on a GPU where tasks hold pages must leave `watermark` of the pool free for
        their growth: admitting work the running tasks will push out again is thrash. A resumed
        task need not: it is owed its place. The pages a GPU's engines report beyond the books count as used,
        and as pages in use that grow (the engines' work the books do not know of)."""
        pool, cache, (chain, private, worst, new) = self.pools[gpu], self.caches[gpu], demand
        if pool.pages_total < worst:
            return None
        hits, cached, idle = cache.lookup(chain) if chain else NO_BLOCKS
        need = len(chain) - cached + private
        room = pool.pages_free + len(cache.idle) - idle + freed - self.unbooked.get(gpu, 0)
        real_free = self.real_free[gpu]
        if real_free is not None:
            room = min(room, real_free)
        spare = room - need
        busy = pool.pages_used > len(cache.idle) or gpu in self.unbooked  # tasks, or the engines' other work, hold pages
        if spare < 0 or new and busy and spare < self.watermark * pool.pages_total:
            return None
        return hits, spare, -gpu

    def attach(self, task: Task, gpu: int) -> int:
        """Give the task its pages on `gpu` (place() said they fit); the prefill tokens still to compute."""
        return self._attach(task, gpu, self._demand(task))

    def _attach(self, task: Task, gpu: int, demand: Demand) -> int:
        chain, private, _worst, _new = demand
        hits, cached = self._hold(gpu, chain) if chain else (0, 0)
        pages = len(chain) - cached + private
        if not (self.pools[gpu].alloc(pages) or self._take(gpu, pages, task)):  # most often free: no eviction
            raise RuntimeError(f"attach of task {task.pid} to gpu {gpu} without room: place() first")
        task.kv_gpu, task.kv_blocks, task.kv_private = gpu, chain, private
        task.kv_holds, task.kv_pages = self._holds(task, len(chain), private), len(chain) + private
        self.holders[task.pid] = task
        if hits:
            task.cached_tokens = max(task.cached_tokens, hits * self.per_page[task.model])
        return task.context_tokens - task.cached_tokens

    def _hold(self, gpu: int, chain: Chain) -> tuple[int, int]:
        """References to the chain's blocks on `gpu` (before any eviction, so none of them is
        evicted), counted as prefix hits and misses; (leading hits, blocks that were cached)."""
        cache = self.caches[gpu]
        hits, cached, _ = cache.lookup(chain)
        for key in chain:
            cache.hold(key)
        cache.hits += hits
        cache.misses += len(chain) - hits
        return hits, cached

    def grow(self, task: Task) -> bool:
        """Pages for the task's context and next token, evicting idle blocks if need be; whether it got them."""
        if task.context_tokens < task.kv_holds:  # the next token fits in what it holds
            return True
        blocks = len(task.kv_blocks)
        need = self._private_need(task, blocks, self.models[task.model]) - task.kv_private
        if not self._take(_lease_gpu(task), need, task):
            return False
        task.kv_private += need
        task.kv_holds = self._holds(task, blocks, task.kv_private)
        task.kv_pages += need
        return True

    def _holds(self, task: Task, blocks: int, private: int) -> int:
        """Context tokens that `blocks` shared blocks and `private` pages hold (what _pages inverts:
        the private pages hold the most tokens for which pages_for gives no more)."""
        model = self.models[task.model]
        return blocks * self.per_page[task.model] + private * self.page_bytes // model.token_bytes

    def _take(self, gpu: int, pages: int, task: Task) -> bool:
        """Allocate `pages` on `gpu`, evicting idle blocks if they are short; all or nothing."""
        pool = self.pools[gpu]
        if pool.alloc(pages):
            return True
        if gone := self.caches[gpu].evict(pages - pool.pages_free):
            pool.free(gone)
            self.on_evict(gpu, gone, task)
        return pool.alloc(pages)

    def release(self, task: Task) -> None:
        """The task leaves its GPU: private pages freed, its blocks stay cached unreferenced."""
        if self.holders.pop(task.pid, None) is not None:
            gpu = _lease_gpu(task)
            self.caches[gpu].drop(task.kv_blocks)
            self.pools[gpu].free(task.kv_private)
            task.kv_gpu, task.kv_blocks, task.kv_private, task.kv_holds = None, (), 0, 0
        task.kv_pages = task.cached_tokens = 0

    def preempt_mode(self, task: Task) -> tuple[str, float, float]:
        """('swap' or 'recompute', swap seconds, recompute seconds): the cheaper way to give the
        task its KV back. Swap moves the context out and back in; recompute prefills it again."""
        model = self.models[task.model]
        gbps = float(model.options.get("swap_gbps", SWAP_GBPS))
        rate = float(model.options.get("prefill_tokens_per_s", PREFILL_TOKENS_PER_S))
        swap_s = 2 * task.context_tokens * model.token_bytes / (gbps * 1e9)
        recompute_s = task.context_tokens / rate
        return ("swap" if swap_s < recompute_s else "recompute"), swap_s, recompute_s

    def swapped_out(self, task: Task) -> None:
        """The task's KV went to host memory: it comes back whole at the next attach, no prefill."""
        task.cached_tokens = task.context_tokens

    def largest(self, gpu: int) -> int:
        """The pid holding the most pages on `gpu` (the newest on a tie): the OOM killer's pick."""
        return max((len(t.kv_blocks) + t.kv_private, pid) for pid, t in self.holders.items() if t.kv_gpu == gpu)[1]

    def private_pages(self, gpu: int) -> int:
        """Pages of `gpu` its tasks hold privately (the rest of its used pages are cached blocks)."""
        return sum(t.kv_private for t in self.holders.values() if t.kv_gpu == gpu)

    def index_problems(self, running: list[Task]) -> Iterator[str]:
        """What disagrees among the KV books (for invariants.py): leases are the running tasks'; a pool's used pages are its private pages plus cached blocks;
        block refcounts are the leases' references; the idle blocks are those with none."""
        if self.holders.keys() != {task.pid for task in running}:
            yield f"KV leases {sorted(self.holders)} are not the running tasks"
        private: collections.Counter[int] = collections.Counter()
        refs: list[collections.Counter[bytes]] = [collections.Counter() for _ in self.pools]
        for task in self.holders.values():
            if task.kv_pages != len(task.kv_blocks) + task.kv_private or task.kv_gpu is None or task.kv_gpu != task.gpu:
                yield (f"task {task.pid}: lease of {task.kv_pages} pages on gpu {task.kv_gpu} "
                       "is not its blocks and private pages")
                continue
            private[task.kv_gpu] += task.kv_private
            refs[task.kv_gpu].update(task.kv_blocks)
        for gpu, (pool, cache) in enumerate(zip(self.pools, self.caches)):
            if pool.pages_used != private[gpu] + len(cache.refs) or pool.pages_used > pool.pages_total:
                yield (f"gpu {gpu}: {pool.pages_used} pages used of {pool.pages_total}, but {private[gpu]} private "
                       f"+ {len(cache.refs)} cached")
            if {key: n for key, n in cache.refs.items() if n} != dict(refs[gpu]):
                yield f"gpu {gpu}: prefix block refcounts are not the leases' references"
            if set(cache.idle) != {key for key, n in cache.refs.items() if n == 0}:
                yield f"gpu {gpu}: idle blocks are not the cached blocks nobody references"
