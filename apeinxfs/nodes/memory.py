"""/memory: the KV cache as /proc/meminfo and PSI show it, and per-GPU pool and prefix files.

`meminfo` sums every GPU pool, then adds what the engines themselves say of their KV
caches (the last scrape of each, drivers/metrics.py, summed over engines); `gpuN/pool` and
`gpuN/prefix` are one GPU's books and its prefix cache, `prefix` the cache over all GPUs,
in cgroup v2's flat keyed format (`key value` lines). What the numbers mean is
docs/memory.md; this module only renders them.
"""
from ..drivers.metrics import combine
from ..kernel.task import State


def _kib(pages: int, page_bytes: int) -> int:
    return pages * page_bytes // 1024


def meminfo(kernel, observations=()) -> str:
    """KV pages over all GPU pools, then the engines' own KV figures; /proc/meminfo layout."""
    pools, caches = kernel.kv.pools, kernel.kv.caches
    page = kernel.config.page_bytes
    total, free = sum(p.pages_total for p in pools), sum(p.pages_free for p in pools)
    sizes = [("KVTotal", _kib(total, page)), ("KVFree", _kib(free, page)), ("KVUsed", _kib(total - free, page)),
             ("KVPageSize", page // 1024), ("PrefixCached", _kib(sum(len(c) for c in caches), page))]
    counts = [("KVPagesTotal", total), ("KVPagesFree", free), ("KVPagesUsed", total - free),
              ("PrefixHits", sum(c.hits for c in caches)), ("PrefixMisses", sum(c.misses for c in caches)),
              ("Evictions", kernel.counters.evictions),
              ("OOMKills", kernel.counters.oom_kills), ("Preemptions", kernel.counters.preempted),
              ("TasksRunning", kernel.tasks.count(State.RUNNING)),
              ("TasksWaiting", kernel.tasks.count(State.QUEUED)
               + kernel.tasks.count(State.PREEMPTED))]
    return ("".join(f"{key + ':':<16}{value:>8} kB\n" for key, value in sizes)
            + "".join(f"{key + ':':<16}{value:>8}\n" for key, value in counts + _engines(observations)))


def _engines(observations) -> list[tuple[str, int]]:
    """The engines' KV usage (percent), tokens, capacity and requests, over those whose last scrape read."""
    readings = [o.reading for o in observations if o.reading is not None]
    total = combine(readings)
    return [("EngineKVUsage", round(100 * total.kv_usage) if total.kv_usage is not None else 0),
            ("EngineKVTokens", total.kv_tokens), ("EngineKVLimit", total.kv_capacity),
            ("EngineRunning", total.running), ("EngineWaiting", total.waiting), ("Engines", len(readings))]


def pressure(kernel, now_us: int) -> str:
    """Time runnable tasks spent stalled for lack of KV pages, PSI format; then for a down engine
    (kernel/engines.py), with the tasks stalled so now."""
    engines = kernel.engines
    return (kernel.moves.kv_some.line("some", now_us) + kernel.moves.kv_full.line("full", now_us)
            + engines.clock.line("engine", now_us).replace("\n", f" stalled={engines.waiting()}\n"))


def _flat(pairs) -> str:
    return "".join(f"{key} {value}\n" for key, value in pairs)


def pool(kernel, gpu: int, view: str | None = None) -> str:
    """One GPU's pool: pages in all, used (private to tasks + cached blocks), free, the pages that
    the GPU's real free memory (NVML) has room for (`-` on a simulated GPU); its tasks (of tenant `view`
    only, unless None: an admin's, every tenant's; the pages are the GPU's whoever reads); the KV pages
    and tokens its engines last reported (`-` if none did), and the pages they hold beyond the books,
    which count as used there (kernel/kvreport.py)."""
    kv, books = kernel.kv, kernel.kv.pools[gpu]
    real_free = "-" if kv.real_free[gpu] is None else kv.real_free[gpu]
    engine_pages, engine_tokens = kernel.engines.kv_reports.engine_view(gpu) or ("-", "-")
    return _flat([("page_bytes", books.page_bytes), ("pages_total", books.pages_total),
                  ("pages_used", books.pages_used), ("pages_free", books.pages_free), ("pages_real_free", real_free),
                  ("pages_private", kv.private_pages(gpu)), ("pages_cached", len(kv.caches[gpu])),
                  ("tasks", _running(kernel.gpus[gpu], view)), ("engine_pages", engine_pages),
                  ("engine_tokens", engine_tokens), ("unbooked_pages", kv.unbooked.get(gpu, 0))])


def _running(gpu, view: str | None) -> int:
    """The tasks running on `gpu`, of tenant `view` only unless None."""
    return sum(view in (None, task.tenant) for task in gpu.running.values())


def prefix(caches) -> str:
    """Prefix cache counters over `caches`: blocks held, referenced or idle, hits, misses, evictions."""
    blocks, idle = sum(len(c) for c in caches), sum(len(c.idle) for c in caches)
    hits, misses = sum(c.hits for c in caches), sum(c.misses for c in caches)
    return _flat([("blocks", blocks), ("referenced", blocks - idle), ("idle", idle), ("hits", hits),
                  ("misses", misses), ("hit_rate", f"{hits / (hits + misses) if hits + misses else 0:.4f}"),
                  ("evictions", sum(c.evictions for c in caches))])
