"""Tier 1: peerdata's quick checks refuse and accept exactly what the plain rules do, with the same reasons.

peerdata.py reads every peer record the watch brings, so its checks are written for speed (the
nesting bound counted in C, pid ranges read as JSON lists). Each is compared here, on generated
values, with a plain reference written in this file: the rule as it reads, one step at a time.
"""
import json
import re

import pytest
from hypothesis import example, given, settings, strategies as st

from apeinxfs.cluster import peerdata
from apeinxfs.cluster.peerdata import MAX_COUNT, MAX_DEPTH, MAX_PIDS, Unreadable
from apeinxfs.cluster.records import NodeRecord

REFERENCE_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def reference_deepest(data: bytes) -> int:
    """The nesting of `data`'s brackets outside strings, a bracket at a time."""
    level = most = 0
    for byte in REFERENCE_STRING.sub(b"", data):
        if byte in b"[{":
            level += 1
        elif byte in b"]}":
            level -= 1
        most = max(most, level)
    return most


def reference_count(text: str, what: str) -> int:
    """How many pids "A-B,C" names, refused as the rule says: each non-empty part a range of ASCII digits,
    above the last and not reversed, under 2^63; at most MAX_PIDS pids by the time each part is added."""
    total, last = 0, -1
    for part in [part for part in text.split(",") if part]:
        shape = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", part)
        low = int(shape[1]) if shape else 0
        high = int(shape[2] if shape and shape[2] is not None else low) if shape else -1
        if not (low > last and high >= low and high < MAX_COUNT):
            raise Unreadable(f"{what}: {part[:40]!r} is not a pid range in order")
        total, last = total + high - low + 1, high
        if total > MAX_PIDS:
            raise Unreadable(f"{what} name over {MAX_PIDS} pids")
    return total


def outcome(read, *args):
    """What `read(*args)` gives: ("ok", its value) or ("refused", the reason's words)."""
    try:
        return "ok", read(*args)
    except Unreadable as exc:
        return "refused", str(exc)


JSONISH = st.lists(st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b"a", b",", b"\n", b"[" * 40, b"]" * 40,
                                    b"{" * 30, b'"[[', b'\\"']), max_size=60).map(b"".join)
NUMBER = st.one_of(st.integers(0, 2_000_000).map(str), st.integers(0, 2 ** 64).map(str),
                   st.integers(0, 99).map(lambda n: f"00{n}"), st.sampled_from(["", "x", "²", " 1", "1.5", "1e3"]))
PART = st.one_of(NUMBER, st.tuples(NUMBER, NUMBER).map("-".join), st.tuples(NUMBER, NUMBER, NUMBER).map("-".join))


@st.composite
def ranges(draw) -> str:
    """Pid ranges: mostly ascending as a node writes them, with a generated part spliced in at times."""
    firsts = sorted(draw(st.sets(st.integers(0, 10 ** 7), max_size=40)))
    parts = [f"{a}-{b - 1}" if b - 1 > a and draw(st.booleans()) else str(a) for a, b in zip(firsts, firsts[1:])]
    for _ in range(draw(st.integers(0, 3))):
        parts.insert(draw(st.integers(0, len(parts))), draw(PART))
    return ",".join(parts) + draw(st.sampled_from(["", ",", "-"]))


@settings(max_examples=800)
@given(JSONISH)
@example(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)
@example(b"[" * (MAX_DEPTH + 1))
@example(b'["]]]]",' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"]")
def test_the_nesting_bound_refuses_what_the_plain_walk_finds_too_deep(data):
    """too_deep(data) is the plain walk's depth over MAX_DEPTH, and deepest its depth, on any bytes."""
    assert peerdata.deepest(data) == reference_deepest(data)
    assert peerdata.too_deep(data) == (reference_deepest(data) > MAX_DEPTH)


LONG = ",".join(map(str, range(1, 40)))  # ranges long enough to be read as JSON lists (peerdata.LISTS_FROM)
EDGES = ["", ",,4-9,,12,", "0-0", "007-9", "1-2-3", f"1-{MAX_PIDS},{MAX_PIDS + 1}", f"1-{MAX_PIDS},{MAX_PIDS + 2}",
         f"0-{MAX_PIDS},x", f"5-{MAX_COUNT}", f"1,{MAX_COUNT}", f"1,{MAX_COUNT - 1}"]
LONG_EDGES = [f"{LONG},{tail}" for tail in (
    "", "50,,60", "50-50", "50-49", "050", "50-60-70", "50-x", f"{MAX_COUNT}", f"{MAX_COUNT - 1}", f"50-{MAX_PIDS}",
    f"50-{MAX_PIDS + 100}", "39", "²", "\ud800", " 50", "5e1", "50.0", "[50]")]  # \ud800: JSON's lone surrogate


@pytest.mark.parametrize("text", EDGES + LONG_EDGES)
def test_edges_of_pid_ranges_are_counted_and_refused_as_the_plain_rule_says(text):
    """pid_count gives the plain rule's count or reason on edges of the rule, short and long."""
    assert outcome(peerdata.pid_count, text, "tasks") == outcome(reference_count, text, "tasks")


@settings(max_examples=1500)
@given(st.one_of(ranges(), st.lists(PART, max_size=6).map(",".join)))
def test_pid_ranges_are_counted_and_refused_as_the_plain_rule_says(text):
    """pid_count gives the plain rule's count, or refuses with its reason, on any text."""
    assert outcome(peerdata.pid_count, text, "tasks") == outcome(reference_count, text, "tasks")


@pytest.mark.parametrize("text", ["1-3,5,7-9", "4-9,12"])
def test_ranges_as_a_node_writes_them_are_counted(text):
    """A record's usual ranges are counted (so the quick path above is not only compared on refusals)."""
    assert peerdata.pid_count(text, "tasks") == sum(int(b) - int(a) + 1 for a, _, b in
                                                    (part.partition("-") if "-" in part else (part, "", part)
                                                     for part in text.split(",")))


def test_a_record_read_through_the_quick_checks_keeps_every_field():
    """A record with 10,000 ranges and 1,000 use rows reads back whole through loads and record_fields, its
    ranges counted through the quick path (30,000 pids)."""
    tasks = ",".join(f"{1000 + 10 * i}-{1002 + 10 * i}" for i in range(10_000))
    value = {"tasks": tasks, "tenants": {"t": tasks}, "usage": {f"u{i}": [1, 2, 3, 4, 5, 6] for i in range(1000)}}
    assert peerdata.record_fields(peerdata.loads(json.dumps(value).encode())) == value
    assert peerdata.pid_count(tasks, "tasks") == 30_000


@pytest.mark.parametrize("tasks, tenants", [
    ("4-9,12", {"t": "4-9,12"}), ("4-9,12", {"t": "4-9"}), ("9-4", {"t": "4-9,12"}), ("4-9,12", {"t": "9-4"}),
    ("4-9,12", ["t"]), (4, {"t": "4-9,12"}), ("4-9,12", {"t": 4}), ("4-9,12", {})])
def test_a_record_read_after_another_is_read_as_if_alone(tasks, tenants):
    """A record read with its node's last record (whose pids are not checked again) is read or refused, with the
    same reason, as when read alone."""
    before = NodeRecord.from_json(json.dumps({"name": "b", "epoch": 1, "seen_us": 1, "tasks": "4-9,12",
                                              "tenants": {"t": "4-9,12"}}).encode())
    value = json.dumps({"name": "b", "epoch": 1, "seen_us": 2, "tasks": tasks, "tenants": tenants}).encode()
    assert outcome(NodeRecord.from_json, value, before) == outcome(NodeRecord.from_json, value)
