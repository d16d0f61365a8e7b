"""Tier 1: a write's lines placed one by one (cluster/placement.py `spread`) and its replies put back in line
order from the nodes' groups (cluster/spreading.py `in_line_order`); pure, no etcd, no peers."""
import errno

import pytest
from hypothesis import given, strategies as st

from apeinxfs.cluster.peer_wire import PeerDown
from apeinxfs.cluster.placement import Want, rank, spread
from apeinxfs.cluster.spreading import Group, in_line_order
from apeinxfs.kernel.errors import Denied, Invalid, NotAllRun, OverQuota, RejectLine, TryAgain

from test_placement import SIM, nodes, view

NAMES = "abcdef"


@given(st.integers(1, 6), st.integers(0, 200), st.integers(0, 40), st.integers(0, 5))
def test_equal_nodes_each_get_their_share_of_a_writes_lines(count, lines, slots_free, queued):
    """With equal records, every line is placed once, in order, on a node that may take it, and no node gets
    more than its share (the counts differ by at most one)."""
    cluster = nodes(*(view(name, slots_free=slots_free, queued=queued) for name in NAMES[:count]))
    placed = spread(cluster, "a", {}, [Want(SIM)] * lines)
    assert len(placed.nodes) == lines and set(placed.nodes) <= set(cluster)
    shares = [placed.nodes.count(name) for name in cluster]
    assert max(shares) - min(shares) <= 1 and set(placed.reasons) == set(placed.nodes)


@given(st.lists(st.sampled_from(["sim", "other", "both"]), max_size=60), st.sets(st.sampled_from(NAMES[:4])))
def test_each_line_goes_to_a_node_with_its_model_never_to_one_passed_over(models, passed):
    """Lines of several models: each lands on an up node holding its own model and not passed over, or on
    none (None) when no such node is left."""
    holds = {"a": ("sim",), "b": ("other",), "c": ("sim", "other"), "d": ("sim",)}
    cluster = nodes(*(view(name, models=held) for name, held in holds.items()))
    wants = [Want(frozenset({"sim", "other"}) if model == "both" else frozenset({model})) for model in models]
    placed = spread(cluster, "a", {}, wants, passed)
    assert len(placed.nodes) == len(wants)
    for want, node in zip(wants, placed.nodes):
        able = {name for name, held in holds.items() if want.models <= set(held) and name not in passed}
        assert node in able if able else node is None


def test_a_loaded_node_gets_lines_only_once_the_others_are_as_loaded():
    """Pressure decides: a node with 4 queued tasks gets no line until the others have taken 4 more each."""
    cluster = nodes(view("a", slots_free=0, queued=4), view("b", slots_free=0), view("c", slots_free=0))
    placed = spread(cluster, "a", {}, [Want(SIM)] * 11)
    assert placed.nodes[:8].count("a") == 0 and placed.nodes[8:].count("a") == 1
    assert "placed since its record 0" in placed.reasons["b"]


def test_tasks_placed_since_a_record_count_as_pending():
    """A node already given lines since its record (pending) takes fewer of a new write's lines."""
    placed = spread(nodes(view("a"), view("b")), "a", {"a": 3}, [Want(SIM)] * 5)
    assert placed.nodes == ["b", "b", "b", "a", "b"]


@given(st.lists(st.integers(0, 3), max_size=80))
def test_replies_come_back_in_line_order_whatever_the_grouping(where):
    """Lines grouped by node in any way: the merged replies are each line's own, in line order."""
    groups = {}
    for index, node in enumerate(where):
        groups.setdefault(node, Group(str(node), "why")).indexes.append(index)
    for group in groups.values():
        group.replies = [str(1000 + index) for index in group.indexes]
    replies = in_line_order(list(groups.values()), len(where), len(where))
    assert replies == [str(1000 + index) for index in range(len(where))]


def test_a_lost_answer_and_a_refusal_leave_the_other_pids_and_fail_as_partly_run():
    """One node answered, one refused its lines naming one of them, one's answer was lost: every line has a
    reply in order, the refused and unknown ones numbered as in the write, and the errno is EREMOTEIO (partly
    run), not line 2's EDQUOT: the write is not to be repeated whole."""
    ran = Group("a", "why", [0, 3], replies=["7", "8"])
    refused = Group("b", "why", [1, 4], failure=OverQuota("line 2: over", ["line 2: over"]))
    lost = Group("c", "why", [2], failure=PeerDown("peer c: no answer; its outcome is unknown"))
    with pytest.raises(NotAllRun) as raised:
        in_line_order([ran, refused, lost], 5, 5)
    assert raised.value.errno == errno.EREMOTEIO and "2 of 5 lines refused, 1 of unknown outcome, 2 ran" in (
        raised.value.reason)
    assert raised.value.reply() == ["7", "error: line 2: not run: node b refused the lines placed there (line 5: over)",
                                    "error: line 3: node c: peer c: no answer; its outcome is unknown", "8",
                                    "error: line 5: over"]



@pytest.mark.parametrize("local, peers, denial", [
    (OverQuota("line 1: over", ["line 1: over"]), Invalid("line 1: bad", ["line 1: bad"]), True),
    (Invalid("line 1: bad", ["line 1: bad"]), Denied("line 1: no", ["line 1: no"], RejectLine.PEER), False),
    (Invalid("line 1: bad", ["line 1: bad"]), Denied("line 1: no", ["line 1: no"]), True)])
def test_a_write_partly_run_is_audited_here_for_a_denial_whose_line_is_this_nodes(local, peers, denial):
    """Lines refused here and by a peer while others ran: the write's reject line is this node's, audited
    (a denial) where a refusal it journals is one (here, or a peer's not journaled there), not for a peer's
    denial that peer journaled."""
    ran = Group("c", "why", [2], replies=["7"])
    with pytest.raises(NotAllRun) as raised:
        in_line_order([Group("a", "why", [0], failure=local), Group("b", "why", [1], failure=peers), ran], 3, 3)
    assert raised.value.reject_line is RejectLine.HERE and raised.value.denial is denial

records = st.builds(lambda slots, queued, kv, models: (slots, queued, kv, models), st.integers(0, 6),
                    st.integers(0, 3), st.integers(0, 2), st.sampled_from([("sim",), ("other",), ("sim", "other")]))


@given(st.lists(records, min_size=1, max_size=5), st.lists(st.sampled_from(["sim", "other"]), max_size=40),
       st.dictionaries(st.sampled_from(NAMES[:5]), st.integers(0, 4)))
def test_each_line_goes_where_rank_puts_it_with_the_lines_before_it_pending(shapes, models, pending):
    """spread is rank line by line: each line's node is rank's first with the earlier lines counted as pending."""
    cluster = nodes(*(view(NAMES[i], slots_free=slots, queued=queued, kv=kv, models=held)
                      for i, (slots, queued, kv, held) in enumerate(shapes)))
    placed = spread(cluster, "b", pending, [Want(frozenset({model})) for model in models])
    load = dict(pending)
    for model, node in zip(models, placed.nodes):
        ranked = rank(cluster, frozenset({model}), "b", load)
        assert node == (ranked[0].node if ranked else None)
        if node is not None:
            load[node] = load.get(node, 0) + 1


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_a_write_none_of_whose_lines_ran_but_one_was_lost_fails_ehostdown_whatever_the_order(order):
    """One node refused its lines (EAGAIN: its pids used up), another's answer was lost, nothing ran: EHOSTDOWN
    (an outcome unknown), never the refusal's EAGAIN, which would invite repeating the lost lines, whichever
    line comes first."""
    refused_at, lost_at = order
    refused = Group("b", "why", [refused_at], failure=TryAgain("pids used up", ["pids used up"]))
    lost = Group("c", "why", [lost_at], failure=PeerDown("peer c: no answer; its outcome is unknown"))
    with pytest.raises(NotAllRun) as raised:
        in_line_order([refused, lost], 2, 2)
    assert raised.value.errno == errno.EHOSTDOWN and "1 of 2 lines refused, 1 of unknown outcome, 0 ran" in (
        raised.value.reason)


def test_a_write_that_went_to_one_node_fails_as_that_nodes_refusal():
    """All of a write's lines on one node that refused them (or another passed over before it): the refusal
    itself, its reply and errno as that node gave them, as a write forwarded whole."""
    refusal = OverQuota("tenant t over its quota", ["tenant t over its quota"])
    passed = Group("c", "why", [0, 1])  # could not be connected to: placed again
    with pytest.raises(OverQuota) as raised:
        in_line_order([passed, Group("b", "why", [0, 1], failure=refusal)], 2, 2)
    assert raised.value is refusal


def test_a_refusal_naming_a_line_names_it_as_the_writes():
    """A node sent lines 1, 3 and 5 of a write refuses its second: that line's reply and the others' reason
    both name it line 3."""
    refused = Group("b", "why", [0, 2, 4], failure=Invalid("line 2: bad", ["line 2: bad"]))
    ran = Group("a", "why", [1, 3], replies=["7", "8"])
    with pytest.raises(NotAllRun) as raised:
        in_line_order([ran, refused], 5, 5)
    assert raised.value.reply() == [
        "error: line 1: not run: node b refused the lines placed there (line 3: bad)", "7", "error: line 3: bad", "8",
        "error: line 5: not run: node b refused the lines placed there (line 3: bad)"]


def test_a_write_every_node_of_which_refused_its_lines_fails_with_its_first_lines_errno():
    """Two nodes refused their lines (quota, pids used up), nothing ran, nothing is unknown: the errno of the
    first line, in the write's order, as a single node's refusal (harmless to repeat)."""
    over = Group("b", "why", [1], failure=OverQuota("tenant t over its quota", ["tenant t over its quota"]))
    used_up = Group("c", "why", [0], failure=TryAgain("pids used up", ["pids used up"]))
    with pytest.raises(NotAllRun) as raised:
        in_line_order([over, used_up], 2, 2)
    assert raised.value.errno == errno.EAGAIN and "2 of 2 lines refused, 0 of unknown outcome" in raised.value.reason


def test_a_peers_replies_of_unicode_or_thousands_of_digits_are_no_pids_and_its_line_numbers_stay_words():
    """A node's replies "7", "²", 5,000 digits and a reason: only 7 is a pid; a refusal naming line 2 and a
    line of 5,000 digits renames line 2 and leaves the other as the node wrote it."""
    huge = "1" * 5000
    assert Group("a", "why", [0, 1, 2, 3], replies=["7", "\u00b2", huge, "error: no"]).pids() == [7]
    reason = f"line 2: bad; line {huge}: worse"
    refused = Group("b", "why", [0, 2], failure=Invalid(reason, [reason]))
    with pytest.raises(NotAllRun) as raised:
        in_line_order([refused, Group("a", "why", [1], replies=["7"])], 3, 3)
    assert raised.value.reply()[0] == f"error: line 1: not run: node b refused the lines placed there " \
        f"(line 3: bad; line {huge}: worse)"


def test_a_write_with_a_blank_line_has_one_reply_a_line_numbered_as_a_single_node_numbers_them():
    """Lines 1 and 3 of a write whose line 2 is blank (indexes 0 and 2), the second refused on its node: two
    replies, the refused one named line 3, and the reason counts the write's 2 lines."""
    ran = Group("a", "why", [0], replies=["7"])
    refused = Group("b", "why", [2], failure=Invalid("bad", ["bad"]))
    with pytest.raises(NotAllRun) as raised:
        in_line_order([ran, refused], 2, 3)
    assert raised.value.reply() == ["7", "error: line 3: bad"]
    assert "1 of 2 lines refused, 0 of unknown outcome, 1 ran" in raised.value.reason


def test_a_write_that_went_whole_to_one_node_names_its_refused_line_as_the_writes():
    """Lines 1 and 3 of a write whose line 2 is blank, both sent to b, which refuses its second line: the
    write's refusal is b's, its line named line 3 as a single node names it."""
    refusal = OverQuota("line 2: over", ["line 2: over"])
    with pytest.raises(OverQuota) as raised:
        in_line_order([Group("b", "why", [0, 2], failure=refusal)], 2, 3)
    assert raised.value.reply() == ["error: line 3: over"] and raised.value.reason == "line 3: over"


def test_a_lone_line_sent_whole_to_one_node_is_named_as_the_writes_line():
    """A write of a blank line then one line, sent to b, which refuses it as a one-line write (no `line K`):
    the write's refusal names it line 2, as a single node names it; a lost answer keeps its reason."""
    refusal = Invalid("bad", ["bad"])
    with pytest.raises(Invalid) as raised:
        in_line_order([Group("b", "why", [1], failure=refusal)], 1, 2)
    assert raised.value.reply() == ["error: line 2: bad"] and raised.value.reason == "line 2: bad"
    with pytest.raises(PeerDown) as lost:
        in_line_order([Group("b", "why", [1], failure=PeerDown("no answer"))], 1, 2)
    assert lost.value.reason == "no answer"
