"""Tier 1: the KV memory manager (kernel/memory.py) alone and inside the Kernel, explicit times.

Prefix hash chains, hits, misses and refcounts; LRU eviction; eviction, then preemption
(swap or recompute), then the OOM killer when a pool is over-subscribed; admission's
ENOSPC; and the page books after every event. Steps come from the real sim driver's
`plan`, so its prefill of the uncached part is checked too. The /memory files over a
Runtime are the tier-2 test at the end.
"""
import csv
import errno
import io

import attrs
import pytest

from apeinxfs.drivers.sim import SimDriver
from apeinxfs.kernel import Kernel
from apeinxfs.kernel.config import GpuConfig, KernelConfig, ModelConfig, SchedConfig
from apeinxfs.kernel.errors import ApeinxError
from apeinxfs.kernel.events import Step, Submit
from apeinxfs.kernel.kvmem import estimate_prompt_tokens
from apeinxfs.kernel.memory import KVManager, prompt_chain
from apeinxfs.kernel.spec import TaskSpec
from apeinxfs.kernel.task import State, Task
from apeinxfs.nodes import memory as memory_nodes
from apeinxfs.nodes.tree import Tree
from test_journal_runtime import open_runtime

TPP = 8  # tokens per page: 1 MiB pages over the default model's 128 KiB of KV per token
STEP_US = 20_000


def config(kv_mib=64, slots=4, gpus=1, **options) -> KernelConfig:
    """`kv_mib` pages of TPP tokens on each of `gpus` GPUs; `options` are the model's."""
    return KernelConfig(models=[ModelConfig(name="sim", options=options)], page_mib=1,
                        gpus=[GpuConfig(index=i, kv_mib=kv_mib, slots=slots) for i in range(gpus)])


def words(stem: str, count: int) -> str:
    """`count` distinct one-token words: stem0 stem1 ..."""
    return " ".join(f"{stem}{i}" for i in range(count))


def task(pid: int, prompt: str = "", max_tokens: int = 16) -> Task:
    """A bare task for the manager alone, as the kernel would make it."""
    return Task(pid=pid, spec=TaskSpec(name=f"t{pid}", max_tokens=max_tokens, prompt=prompt), model="sim",
                tenant="default", uid=0, submitted_us=0, tokens_in=estimate_prompt_tokens(prompt), weight=1024,
                deadline_at_us=None)


def manager(kv_mib=16, gpus=1) -> tuple[KVManager, list]:
    """A manager alone, and the (gpu, pages, pid) of each eviction it reports."""
    evictions = []
    kv = KVManager(config(kv_mib=kv_mib, gpus=gpus), lambda gpu, pages, t: evictions.append((gpu, pages, t.pid)))
    return kv, evictions


def chain(prompt: str) -> tuple:
    return prompt_chain("sim", TPP, prompt)


# -- the manager alone ------------------------------------------------------------------------


def test_chains_share_exactly_the_common_full_blocks():
    """Prompts with 16 common words share 2 block keys; the last prompt token is never in a block."""
    shared = words("s", 16)
    one, two = chain(f"{shared} {words('a', 8)}"), chain(f"{shared} {words('b', 8)}")
    assert len(one) == len(two) == 3  # BOS + 24 words = 25 tokens: 3 full blocks before the last
    assert one[:2] == two[:2] and one[2] != two[2]
    assert len(chain(words("s", 15))) == 1  # 16 tokens: the second block ends on the last token
    assert prompt_chain("other", TPP, shared)[0] != chain(shared)[0]


def test_attach_counts_hits_misses_and_shares_one_copy():
    """A second task with the same prefix hits its blocks, holds one shared copy, and prefills less."""
    kv, _ = manager()
    first, second = task(1, f"{words('s', 16)} {words('a', 8)}"), task(2, f"{words('s', 16)} {words('b', 8)}")
    assert kv.attach(first, 0) == first.tokens_in
    assert kv.attach(second, 0) == second.tokens_in - 2 * TPP
    cache = kv.caches[0]
    assert (cache.hits, cache.misses, len(cache)) == (2, 4, 4)
    assert [cache.refs[key] for key in chain(second.spec.prompt)] == [2, 2, 1]
    assert second.cached_tokens == 2 * TPP and second.kv_pages == 3 + 1  # 3 blocks, 1 private page
    assert kv.pools[0].pages_used == kv.private_pages(0) + len(cache) == 2 + 4


def test_release_keeps_blocks_cached_until_evicted():
    """A released task's private pages are freed; its blocks stay cached, unreferenced."""
    kv, _ = manager()
    one = task(1, words("s", 16))
    kv.attach(one, 0)
    kv.release(one)
    assert (one.kv_pages, kv.pools[0].pages_used, len(kv.caches[0].idle)) == (0, 2, 2)
    again = task(2, words("s", 16))
    assert kv.attach(again, 0) == again.tokens_in - 2 * TPP and not kv.caches[0].idle


def test_eviction_is_least_recently_used_and_tail_first():
    """Idle blocks go least recently released first, and a chain's deepest block before its head."""
    kv, evictions = manager(kv_mib=8)
    first, second, third = task(1, words("a", 16)), task(2, words("b", 8)), task(3, words("c", 8))
    for t in (first, second, third):
        kv.attach(t, 0)
    for t in (second, first, third):
        kv.release(t)
    cache, (a0, a1), (b0,), (c0,) = kv.caches[0], *(chain(t.spec.prompt) for t in (first, second, third))
    assert list(cache.idle) == [b0, a1, a0, c0] and kv.pools[0].pages_used == 4
    big = task(4, max_tokens=40)
    kv.attach(big, 0)  # 1 token: 1 page of the 4 free
    big.tokens_out = 32  # 33 tokens and the next: 5 pages, 4 more with 3 free, so 1 eviction
    assert kv.grow(big) and list(cache.idle) == [a1, a0, c0] and evictions == [(0, 1, 4)]


def test_grow_holds_exactly_the_pages_the_context_needs():
    """Token by token, grow leaves a task the pages for its context and next token, no more, no fewer,
    also when a page does not hold a whole number of tokens."""
    odd = KernelConfig(models=[ModelConfig(name="sim", layers=3)], page_mib=1, gpus=[GpuConfig(index=0, kv_mib=64)])
    for kv in (manager(kv_mib=64)[0], KVManager(odd, lambda *_: None)):
        grown = task(1, words("s", 40), max_tokens=300)
        kv.attach(grown, 0)
        blocks = len(grown.kv_blocks)
        for tokens_out in range(300):
            grown.tokens_out = tokens_out
            assert kv.grow(grown)
            assert grown.kv_pages - blocks == kv._private_need(grown, blocks, kv.models["sim"]), tokens_out


def test_grow_fails_without_evicting_referenced_blocks():
    """When only referenced blocks remain, grow says no and evicts nothing."""
    kv, evictions = manager(kv_mib=4)
    held, hungry = task(1, words("s", 16)), task(2, max_tokens=30)
    kv.attach(held, 0)
    kv.attach(hungry, 0)
    hungry.tokens_out = 8
    assert not kv.grow(hungry) and evictions == [] and len(kv.caches[0]) == 2


def test_place_prefers_prefix_hits_then_room():
    """A GPU that caches the prompt's prefix wins."""
    kv, _ = manager(gpus=2)
    kv.attach(task(1, words("s", 16)), 1)
    assert kv.place(task(2, words("s", 16)), 1) > kv.place(task(2, words("s", 16)), 0)


def test_a_pool_too_small_for_the_whole_context_never_fits():
    """Where pools differ in size, a task that may grow past the smaller one is placed only on the larger."""
    mixed = KernelConfig(models=[ModelConfig(name="sim")], page_mib=1,
                         gpus=[GpuConfig(index=0, kv_mib=16), GpuConfig(index=1, kv_mib=64)])
    kv = KVManager(mixed, lambda *_: None)
    assert kv.place(task(3, max_tokens=16 * TPP), 0) is None
    assert kv.place(task(3, max_tokens=16 * TPP), 1) is not None
    assert kv.place(task(4, max_tokens=15 * TPP), 0) is not None


def test_preempt_mode_is_the_cheaper_of_swap_and_recompute():
    """Over a 16 GB/s link swap wins; over a slow one recompute does; costs scale with the context."""
    fast = KVManager(config(), lambda *_: None)
    slow = KVManager(config(swap_gbps=0.01), lambda *_: None)
    one = task(1, words("w", 99))
    mode, swap_s, recompute_s = fast.preempt_mode(one)
    assert mode == "swap" and swap_s == pytest.approx(2 * 100 * 131072 / 16e9)
    assert recompute_s == pytest.approx(100 / 8000)
    assert slow.preempt_mode(one)[0] == "recompute"


# -- through the kernel ------------------------------------------------------------------------


def meminfo(kernel) -> dict:
    return {line.split(":")[0]: int(line.split()[1]) for line in memory_nodes.meminfo(kernel).splitlines()}


def assert_books(kernel) -> None:
    """Used pages are private pages plus cached blocks; no task holds more than meminfo counts."""
    kv, used = kernel.kv, meminfo(kernel)["KVPagesUsed"]
    for index, gpu in enumerate(kernel.gpus):
        assert gpu.pool.pages_used == kv.private_pages(index) + len(kv.caches[index]) <= gpu.pool.pages_total
        for t in gpu.running.values():
            assert t.kv_pages == len(t.kv_blocks) + t.kv_private and t.kv_gpu == index
    assert sum(len(g.running) for g in kernel.gpus) == len(kv.holders)
    assert all(t.kv_pages <= used for t in kernel.tasks.values())
    assert all(t.kv_pages == 0 for t in kernel.tasks.values() if t.state is not State.RUNNING)


class Sim:
    """A kernel driven by the sim driver's plans at explicit times, books checked at every event."""

    def __init__(self, kernel):
        self.kernel, self.driver, self.now = kernel, SimDriver(kernel.models), 0
        self.prefills: dict[int, list[tuple[int, int, int]]] = {}  # pid: (prefill, context, cached) of each step

    def submit(self, name, max_tokens, prompt="") -> int:
        event = Submit(spec=TaskSpec(name=name, max_tokens=max_tokens, prompt=prompt))
        self.kernel.check(event)
        return self.apply(event)

    def apply(self, event):
        result = self.kernel.apply(event, self.now)
        assert_books(self.kernel)
        return result

    def run(self) -> None:
        """Step every GPU with a batch until nothing runs; keep what each pid prefilled."""
        while any(g.running for g in self.kernel.gpus):
            self.now += STEP_US
            for index in range(len(self.kernel.gpus)):
                if self.kernel.batch(index):
                    _, chunks = self.driver.plan(self.kernel.batch(index))
                    for chunk in chunks:
                        task = self.kernel.tasks[chunk.pid]
                        self.prefills.setdefault(chunk.pid, []).append((chunk.prefill, task.context_tokens,
                                                                         task.cached_tokens))
                    self.apply(Step(gpu=index, chunks=chunks))

    def trace(self) -> list[dict]:
        return list(csv.DictReader(io.StringIO(self.kernel.trace.buffer.decode())))


def test_shared_prefix_hit_rate_matches_the_shared_block_ratio():
    """Ten tasks sharing 4 of their 6 blocks: hits are the 9 repeats of 4 blocks; the driver prefills the rest
    and reports the whole prompt, as an engine counts it."""
    sim, count, shared, unique = Sim(Kernel(config(slots=4))), 10, 4, 2
    prefix = words("s", shared * TPP)
    pids = [sim.submit(f"t{i}", 4, f"{prefix} {words(f'u{i}_', unique * TPP)}") for i in range(count)]
    sim.run()
    info = meminfo(sim.kernel)
    assert (info["PrefixHits"], info["PrefixMisses"]) == ((count - 1) * shared, shared + count * unique)
    assert info["PrefixHits"] / (info["PrefixHits"] + info["PrefixMisses"]) == (count - 1) * shared / (count * 6)
    assert sim.prefills[pids[0]][0] == (sim.kernel.tasks[pids[0]].tokens_in,) * 2 + (0,)
    assert all(sim.prefills[p][0] == (sim.kernel.tasks[p].tokens_in,) * 2 + (shared * TPP,) for p in pids[1:])
    assert all(sim.kernel.tasks[p].exit == "done" for p in pids)


def test_the_sim_times_a_prefill_by_the_tokens_it_computes():
    """A step of a task whose 3 prompt blocks are cached takes the time of the rest of its prompt; its chunk
    reports the whole prompt, as an engine counts it."""
    sim, prompt = Sim(Kernel(config(slots=4))), words("s", 24)
    sim.submit("warm", 1, prompt)
    sim.run()
    pid = sim.submit("hit", 4, prompt)
    [task] = sim.kernel.batch(0)
    seconds, [chunk] = sim.driver.plan([task])
    assert task.pid == pid and task.cached_tokens == 3 * TPP and chunk.prefill == task.tokens_in == 25
    assert seconds == sim.driver.engines["sim"].step_seconds(1, 25 - 3 * TPP)


def over_subscribed(kv_preempt_limit: int) -> Sim:
    """A warm task leaves 2 idle prefix blocks in an 8-page pool; then three 40-token tasks grow."""
    sim = Sim(Kernel(attrs.evolve(config(kv_mib=8, slots=4), sched=SchedConfig(kv_preempt_limit=kv_preempt_limit))))
    sim.submit("warm", 1, words("x", 16))
    sim.run()
    for name in "abc":
        sim.submit(name, 40)
    sim.run()
    return sim


def test_over_subscribed_pool_evicts_then_preempts_then_oom_kills():
    """Idle prefix pages go first, then tasks are preempted, and once preemption thrashes the OOM killer acts."""
    sim = over_subscribed(kv_preempt_limit=1)
    types = [row["type"] for row in sim.trace()]
    assert types.index("evict") < types.index("preempt") < types.index("oom_kill")
    killed = [t for t in sim.kernel.tasks.values() if t.exit == "oom-killed"]
    info = meminfo(sim.kernel)
    assert len(killed) == info["OOMKills"] == sim.kernel.counters.exits["oom-killed"] >= 1
    assert info["Evictions"] == 2 and info["PrefixCached"] == 0
    kill_row = next(row for row in sim.trace() if row["type"] == "oom_kill")
    assert "largest consumer" in kill_row["detail"]


def test_over_subscribed_pool_finishes_by_preemption_with_the_kernels_victims():
    """With the kernel's own victim choice every task finishes; each preemption says swap or recompute."""
    sim = over_subscribed(kv_preempt_limit=10)
    assert all(t.exit == "done" for t in sim.kernel.tasks.values())
    preempts = [row["detail"] for row in sim.trace() if row["type"] == "preempt"]
    assert preempts and all("mode=swap" in d or "mode=recompute" in d for d in preempts)


@pytest.mark.parametrize("options,mode", [({}, "swap"), ({"swap_gbps": 0.01}, "recompute")])
def test_a_preempted_task_resumes_by_its_mode(options, mode):
    """Swapped back, a task prefills nothing; recomputed, it prefills its context less its prefix hits (and
    reports its whole context)."""
    sim = Sim(Kernel(attrs.evolve(config(kv_mib=8, slots=4, **options), sched=SchedConfig(kv_preempt_limit=1))))
    prompt = words("p", 16)
    pids = [sim.submit(name, 40, prompt) for name in "ab"]
    sim.run()
    victim = next(row for row in sim.trace() if row["type"] == "preempt")
    assert f"mode={mode}" in victim["detail"]
    resumed = [step for step in sim.prefills[int(victim["pid"])][1:] if step[0]]
    assert all(fill == context and cached == 2 * TPP for fill, context, cached in resumed)  # 2 prompt blocks shared
    assert len(resumed) == (mode == "recompute") and all(sim.kernel.tasks[p].exit == "done" for p in pids)


@pytest.mark.parametrize("max_tokens,code", [(8 * TPP - 16, None), (8 * TPP - 15, errno.ENOSPC)])
def test_admission_refuses_what_can_never_fit(max_tokens, code):
    """Prompt plus max_tokens beyond the largest pool is ENOSPC; exactly a pool's worth is accepted."""
    kernel = Kernel(config(kv_mib=8))
    event = Submit(spec=TaskSpec(name="j", max_tokens=max_tokens, prompt=words("w", 15)))
    if code is None:
        kernel.check(event)
    else:
        with pytest.raises(ApeinxError) as refused:
            kernel.check(event)
        assert refused.value.errno == code


# -- tier 2: the /memory files -----------------------------------------------------------------

SMALL_PAGES = """
[kv]
page_mib = 1
[gpus]
simulated = 2
kv_mib = 64
[[models]]
name = "sim"
"""


def flat(tree, path: str) -> dict:
    """A flat keyed file at `path`, looked up name by name, as {key: value}."""
    node = tree.root
    for name in filter(None, path.split("/")):
        node = tree.lookup(node.inode, name)
    return dict(line.split(" ") for line in tree.render(node).decode().splitlines())


def test_memory_files_render_pools_and_prefix_cache(tmp_path):
    """gpuN/pool, gpuN/prefix and prefix are flat keyed and agree with meminfo and each other."""
    with open_runtime(tmp_path, SMALL_PAGES) as rt:
        tree = Tree(rt)
        for name in "ab":
            rt.commit([Submit(spec=TaskSpec(name=name, max_tokens=4, prompt=words("s", 16)))])
        pools = [flat(tree, f"/memory/gpu{g}/pool") for g in (0, 1)]
        prefix = flat(tree, "/memory/prefix")
        info = meminfo(rt.kernel)
        assert sum(int(p["pages_used"]) for p in pools) == info["KVPagesUsed"]
        assert all(int(p["pages_used"]) == int(p["pages_private"]) + int(p["pages_cached"]) for p in pools)
        assert (int(prefix["hits"]), int(prefix["misses"])) == (info["PrefixHits"], info["PrefixMisses"]) == (2, 2)
        assert prefix["hit_rate"] == "0.5000" and int(prefix["blocks"]) == int(prefix["referenced"]) == 2
        per_gpu = [flat(tree, f"/memory/gpu{g}/prefix") for g in (0, 1)]
        assert sorted(int(p["blocks"]) for p in per_gpu) == [0, 2]
