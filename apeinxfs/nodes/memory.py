"""/memory/meminfo and /memory/pressure: the KV cache as /proc/meminfo and PSI show it."""
from ..kernel.task import State


def _kib(pages: int, page_bytes: int) -> int:
    return pages * page_bytes // 1024


def meminfo(kernel) -> str:
    """KV pages over all GPU pools, /proc/meminfo layout."""
    pools = [g.pool for g in kernel.gpus]
    page = kernel.config.page_bytes
    total, free = sum(p.pages_total for p in pools), sum(p.pages_free for p in pools)
    sizes = [("KVTotal", _kib(total, page)), ("KVFree", _kib(free, page)), ("KVUsed", _kib(total - free, page)),
             ("KVPageSize", page // 1024), ("PrefixCached", 0)]
    counts = [("KVPagesTotal", total), ("KVPagesFree", free), ("KVPagesUsed", total - free),
              ("PrefixHits", 0), ("PrefixMisses", 0), ("Evictions", kernel.counters.evictions),
              ("OOMKills", kernel.counters.oom_kills), ("Preemptions", kernel.counters.preempted),
              ("TasksRunning", kernel.state_counts.get(State.RUNNING, 0)),
              ("TasksWaiting", kernel.state_counts.get(State.QUEUED, 0)
               + kernel.state_counts.get(State.PREEMPTED, 0))]
    return ("".join(f"{key + ':':<16}{value:>8} kB\n" for key, value in sizes)
            + "".join(f"{key + ':':<16}{value:>8}\n" for key, value in counts))


def pressure(kernel, now_us: int) -> str:
    """Time runnable tasks spent stalled for lack of KV pages, PSI format."""
    return kernel.kv_some.line("some", now_us) + kernel.kv_full.line("full", now_us)
