"""Where a submit runs in a cluster: the policy, a pure function over the nodes' records.

`rank(nodes, models, here, pending)` orders the nodes that may take a write's tasks, best
first, each with the reason in words (for the trace's `place` line). A node may take them
when it is up, holds every model the write names, and is this node or has an address for
peers. Best is least pressure, then most free KV pages, then this node (no network hop),
then the name (so every node decides alike on the same records). Pressure is the tasks that
would wait minus the slots that would stay free, once the tasks placed there since its last
record (`pending`, which its record does not show yet) took their slots. Prefix affinity
is not weighed: records carry no prefix hashes.
Pure: no etcd, no peers, no trio; routing.py does the I/O.
"""
from collections.abc import Mapping

import attrs

from .records import NodeView


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


def rank(nodes: Mapping[str, NodeView], models: frozenset[str], here: str,
         pending: Mapping[str, int]) -> list[Choice]:
    """The nodes that may take a write needing `models`, best first; empty if none may."""
    fit = [view for view in nodes.values() if eligible(view, models, here)]

    def key(view: NodeView) -> tuple:
        name = view.record.name
        return pressure(view, pending.get(name, 0)), -view.record.kv_pages_free, name != here, name
    fit.sort(key=key)
    return [Choice(view.record.name, _reason(view, pending.get(view.record.name, 0), len(fit))) for view in fit]


def _reason(view: NodeView, pending: int, count: int) -> str:
    record = view.record
    return (f"pressure {pressure(view, pending)} (queued {record.queued}, slots free {record.slots_free}, "
            f"placed since its record {pending}), KV pages free {record.kv_pages_free}; "
            f"{count} node{'s' if count != 1 else ''} up with the model")
