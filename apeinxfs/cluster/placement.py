"""Where a submit runs in a cluster: the policy, a pure function over the nodes' records.

`rank(nodes, models, here, pending, chains)` orders the nodes that may take a write's tasks,
best first, each with the reason in words (for the trace's `place` line). A node may take
them when it is up, holds every model the write names, and is this node or has an address
for peers. Best is least weighed pressure, then most prompt blocks cached, then most free
KV pages, then this node (no network hop), then the name (so every node decides alike on
the same records). Pressure is the tasks that would wait minus the slots that would stay
free, once the tasks placed there since its last record (`pending`, which its record does
not show yet) took their slots. Prefix affinity: the leading blocks of the write's prompt
`chains` that a node's record says it holds cached (prefixes.py) count as free slots there,
one a block, at most AFFINITY_SLOTS, and only while its pressure is below 0 (a slot free
beyond its queue): so affinity never sends work to a node where it would wait, nor to one
more than AFFINITY_SLOTS slots busier than the least busy.
`spread(nodes, here, pending, wants, passed)` places a write's lines one by one: each line
(its `Want`: models and prompt chain) on the best node for it as `rank` would order them,
counting the lines placed before it as pending there; so lines spread by pressure and
affinity as a burst of one-line writes does.
Pure: no etcd, no peers, no trio; routing.py does the I/O.
"""
from collections.abc import Collection, Mapping, Sequence

import attrs

from ..kernel.lazyheap import LazyHeap
from ..kernel.memory import Chain
from .prefixes import cached_blocks
from .records import NodeView

AFFINITY_SLOTS = 4  # free slots that cached leading prompt blocks may count as on a node, at most


@attrs.frozen
class Choice:
    """A node that may take the write, and why it ranks where it does."""

    node: str
    reason: str


def pressure(view: NodeView, pending: int) -> int:
    """Tasks that would wait there minus slots that would stay free, with `pending` more tasks."""
    record = view.record
    free = record.slots_free - pending
    return record.queued + max(0, -free) - max(0, free)


def eligible(view: NodeView, models: frozenset[str], here: str) -> bool:
    record = view.record
    return view.up and models <= set(record.models) and (record.name == here or bool(record.advertise))


def cached(view: NodeView, chains: Sequence[Chain]) -> int:
    """The leading blocks of the write's prompts the node's record says it holds cached, over them all."""
    return sum(cached_blocks(view.record.prefixes, chain) for chain in chains) if view.record.prefixes else 0


def weighed(view: NodeView, pending: int, blocks: int) -> int:
    """Pressure less one slot a cached block (at most AFFINITY_SLOTS), only where a slot is free beyond the queue."""
    load = pressure(view, pending)
    return load - min(blocks, AFFINITY_SLOTS) if load < 0 else load


def rank(nodes: Mapping[str, NodeView], models: frozenset[str], here: str,
         pending: Mapping[str, int], chains: Sequence[Chain] = ()) -> list[Choice]:
    """The nodes that may take a write needing `models`, whose prompts' block `chains` are these,
    best first; empty if none may."""
    fit = _fit(nodes, models, here, chains)
    fit.sort(key=lambda entry: _order(entry, pending, here))
    return [Choice(view.record.name, _reason(view, pending.get(view.record.name, 0), blocks, len(fit)))
            for view, blocks in fit]


@attrs.frozen
class Want:
    """What one line of a write needs of its node: the models it names, its prompt's block chain."""

    models: frozenset[str]
    chain: Chain = ()


@attrs.frozen
class Spread:
    """Where each line of a write goes, in line order (None: no node may take it), and why each node
    chosen ranked first for the first line placed there."""

    nodes: list[str | None]
    reasons: dict[str, str]


def spread(nodes: Mapping[str, NodeView], here: str, pending: Mapping[str, int], wants: Sequence[Want],
           passed: Collection[str] = ()) -> Spread:
    """Each line placed in turn on the best node for its `Want` (as `rank` orders them), the lines placed
    before it counted as pending there; the nodes in `passed` are left out."""
    load, chosen, reasons = dict(pending), [], {}
    queues: dict[Want, tuple[LazyHeap, dict[str, tuple[NodeView, int]]]] = {}  # each kind of line's nodes
    for want in wants:
        if (queue := queues.get(want)) is None:
            queue = queues[want] = _queue(nodes, want, here, passed, load)
        name = queue[0].peek()
        chosen.append(name)
        if want.chain:  # a line's own prompt chain: seldom again (built anew from `load` if it is)
            del queues[want]
        if name is None:
            continue
        if name not in reasons:
            view, blocks = queue[1][name]
            reasons[name] = _reason(view, load.get(name, 0), blocks, len(queue[1]))
        load[name] = load.get(name, 0) + 1
        for heap, fit in queues.values():
            if name in fit:
                heap.set(name, _order(fit[name], load, here))
    return Spread(chosen, reasons)


def _queue(nodes: Mapping[str, NodeView], want: Want, here: str, passed: Collection[str],
           load: Mapping[str, int]) -> tuple[LazyHeap, dict[str, tuple[NodeView, int]]]:
    """The nodes that may take a line of `want` (but `passed`), by name with their cached blocks, and a heap of
    them by `_order` (whose priorities end with the node's name, as LazyHeap's must)."""
    chains = [want.chain] if want.chain else []
    fit = {view.record.name: (view, blocks) for view, blocks in _fit(nodes, want.models, here, chains)
           if view.record.name not in passed}
    heap = LazyHeap()
    for name, entry in fit.items():
        heap.set(name, _order(entry, load, here))
    return heap, fit


def _fit(nodes: Mapping[str, NodeView], models: frozenset[str], here: str,
         chains: Sequence[Chain]) -> list[tuple[NodeView, int]]:
    """The nodes that may take tasks needing `models`, each with the blocks of `chains` it holds cached."""
    return [(view, cached(view, chains)) for view in nodes.values() if eligible(view, models, here)]


def _order(entry: tuple[NodeView, int], pending: Mapping[str, int], here: str) -> tuple:
    """The sort key of a node for placement (lower first), with `pending` tasks placed there since its record."""
    view, blocks = entry
    name = view.record.name
    return (weighed(view, pending.get(name, 0), blocks), -blocks, -view.record.kv_pages_free, name != here, name)


def _reason(view: NodeView, pending: int, blocks: int, count: int) -> str:
    record, load = view.record, pressure(view, pending)
    prefix = ""
    if blocks:
        counted = (f"counts as {_many(min(blocks, AFFINITY_SLOTS), 'free slot')}" if load < 0
                   else "not counted: no slot free")
        prefix = f", prefix: {_many(blocks, 'block')} cached ({counted})"
    return (f"pressure {load} (queued {record.queued}, slots free {record.slots_free}, "
            f"placed since its record {pending}), KV pages free {record.kv_pages_free}{prefix}; "
            f"{_many(count, 'node')} up with the model")


def _many(count: int, thing: str) -> str:
    return f"{count} {thing}{'s' if count != 1 else ''}"
