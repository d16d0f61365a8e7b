"""Tier 1: placement's prefix affinity: the cached-prefix summary a node publishes (cluster/prefixes.py),
read off a real kernel, and how cluster/placement.rank weighs it; pure, no etcd."""
import attrs
from hypothesis import given, strategies as st

from apeinxfs.cluster.placement import AFFINITY_SLOTS, pressure, rank
from apeinxfs.cluster.prefixes import MOST_KEYS, WRITE_LINES, cached_blocks, line_chains, summary_of
from apeinxfs.cluster.records import NodeRecord, NodeView, record_of
from apeinxfs.kernel import Kernel
from apeinxfs.kernel.spec import TaskSpec
from test_memory import TPP, Sim, config, manager, task, words
from test_placement import SIM, nodes, view

SHARED = words("s", 3 * TPP)  # three full blocks, then each prompt's own words
keys = st.binary(min_size=16, max_size=16)


def ran(prompt: str) -> Kernel:
    """A kernel (1 MiB pages of TPP tokens) that ran one task of `prompt` to its end."""
    sim = Sim(Kernel(config(slots=4)))
    sim.submit("first", 2, prompt)
    sim.run()
    return sim.kernel


def holding(name: str, summary: tuple[str, int], **fields) -> NodeView:
    """view(name, ...) whose record carries `summary` (summary_of's answer)."""
    node = view(name, **fields)
    return attrs.evolve(node, record=attrs.evolve(node.record, prefixes=summary[0], prefix_blocks=summary[1]))


def spec_chains(kernel: Kernel, *prompts: str) -> list:
    return line_chains(kernel, [TaskSpec(name="t", max_tokens=2, model="sim", prompt=p) for p in prompts])


def test_a_finished_tasks_prompt_blocks_are_in_its_nodes_record_and_match_a_later_prompt():
    """After a task ran, record_of carries its idle prompt blocks; a prompt sharing 3 leading blocks finds 3,
    one sharing none finds 0, and the record's JSON round trip keeps them."""
    kernel = ran(f"{SHARED} {words('a', TPP)}")
    record = NodeRecord.from_json(record_of(kernel, 1, 0, None).to_json())
    assert record.prefix_blocks == 4  # 3 shared + 1 of its own (its last token is never in a block)
    same, other = spec_chains(kernel, f"{SHARED} {words('b', TPP)}", words("x", 4 * TPP))
    assert cached_blocks(record.prefixes, same) == 3 and cached_blocks(record.prefixes, other) == 0
    assert record_of(Kernel(config()), 1, 0, None).prefixes == ""


def test_running_tasks_chains_go_in_heads_first_within_the_cap():
    """With room for two keys and two running tasks of three blocks each, both chains' heads are published."""
    kv, _ = manager()
    first, second = task(1, f"{words('a', 3 * TPP)} end"), task(2, f"{words('b', 3 * TPP)} end")
    kv.attach(first, 0)
    kv.attach(second, 0)
    summary, count = summary_of(kv, most=2)
    assert count == 2
    assert cached_blocks(summary, first.kv_blocks) >= 1 and cached_blocks(summary, second.kv_blocks) >= 1


def test_a_writes_chains_are_its_first_lines_prompts_of_models_held_here():
    """line_chains gives each line its chain, in line order, for at most WRITE_LINES lines, and none for a
    model this node does not hold."""
    kernel = Kernel(config())
    specs = [TaskSpec(name="t", max_tokens=2, prompt=SHARED)] * (WRITE_LINES + 5)
    chains = line_chains(kernel, specs)
    assert len(chains) == len(specs) and all(chains[:WRITE_LINES]) and not any(chains[WRITE_LINES:])
    assert line_chains(kernel, [TaskSpec(name="t", max_tokens=2, model="elsewhere", prompt=SHARED)]) == [()]


@given(st.lists(keys, max_size=MOST_KEYS, unique=True))
def test_a_summary_holds_every_key_it_was_given_within_512_bytes(chain):
    """No false negative: a chain made of the summarized keys is cached whole; 256 keys fit 684 base64 chars."""
    kv, _ = manager()
    kv.caches[0].idle.update(dict.fromkeys(chain))
    summary, count = summary_of(kv)
    assert count == len(chain) and cached_blocks(summary, tuple(chain)) == len(chain)
    assert len(summary) <= 684


def test_cached_prefix_breaks_a_tie_and_the_reason_says_so():
    """Equal pressure: the node holding the write's prompt blocks ranks first, with `prefix: 3 blocks cached`."""
    kernel = ran(f"{SHARED} {words('a', TPP)}")
    chains = spec_chains(kernel, f"{SHARED} {words('b', TPP)}")
    order = rank(nodes(view("a", kv=900), holding("b", summary_of(kernel.kv)), view("c")), SIM, "a", {}, chains)
    assert order[0].node == "b" and "prefix: 3 blocks cached (counts as 3 free slots)" in order[0].reason
    assert "prefix" not in order[1].reason


def test_affinity_counts_as_at_most_its_slots_and_never_on_a_node_without_a_free_slot():
    """A cached prefix is worth up to AFFINITY_SLOTS free slots: it wins that far, not further, and not at
    all on a node whose pressure is 0 or more."""
    kernel = ran(f"{SHARED} {words('a', 8 * TPP)}")
    chains = spec_chains(kernel, f"{SHARED} {words('a', 8 * TPP)} more")
    summary = summary_of(kernel.kv)
    near = nodes(holding("b", summary, slots_free=16 - AFFINITY_SLOTS), view("c"))
    assert rank(near, SIM, "a", {}, chains)[0].node == "b"
    far = nodes(holding("b", summary, slots_free=16 - AFFINITY_SLOTS - 1), view("c"))
    assert rank(far, SIM, "a", {}, chains)[0].node == "c"
    full = nodes(holding("b", summary, slots_free=0), view("c", slots_free=1))
    order = rank(full, SIM, "a", {}, chains)
    assert [c.node for c in order] == ["c", "b"] and "not counted: no slot free" in order[1].reason


def node_views():
    """Up to six nodes with random load, models, state, and a random part of a prompt's blocks cached."""
    one = st.builds(lambda name, up, model, free, queued, held: (name, up, model, free, queued, held),
                    st.sampled_from("abcdef"), st.booleans(), st.sampled_from(["sim", "other"]),
                    st.integers(0, 20), st.integers(0, 5), st.integers(0, 8))
    return st.lists(one, max_size=6, unique_by=lambda item: item[0])


@given(node_views(), st.dictionaries(st.sampled_from("abcdef"), st.integers(0, 6)), st.randoms())
def test_rank_with_affinity_is_deterministic_eligible_and_within_the_band(found, pending, shuffle):
    """Whatever the order of the records, rank gives the same answer; it names only up nodes with the
    model; its first choice is at most AFFINITY_SLOTS busier than the least busy, and busier at all only
    where a slot is free."""
    chain = tuple(bytes([index]) * 16 for index in range(8))
    kv, _ = manager()
    views = []
    for name, up, model, free, queued, held in found:
        kv.caches[0].idle.clear()
        kv.caches[0].idle.update(dict.fromkeys(chain[:held]))
        views.append(holding(name, summary_of(kv), up=up, models=(model,), slots_free=free, queued=queued))
    order = rank(nodes(*views), SIM, "a", pending, [chain])
    shuffle.shuffle(views)
    assert rank(nodes(*views), SIM, "a", pending, [chain]) == order
    fit = [v for v in views if v.up and v.record.models == ("sim",)]
    assert sorted(c.node for c in order) == sorted(v.record.name for v in fit)
    if order:
        load = {v.record.name: pressure(v, pending.get(v.record.name, 0)) for v in fit}
        first, least = load[order[0].node], min(load.values())
        assert first <= least + AFFINITY_SLOTS and (first == least or first < 0)
