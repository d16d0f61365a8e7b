"""The node-to-node wire (cluster/peer_wire.py and the server's ranges), without a daemon: errors
round-trip as their own class and errno, frames parse however the bytes are cut, the caller
header and token file are checked.
"""
import errno
import os

import pytest
import trio
import trio.testing
from hypothesis import given, strategies as st

from apeinxfs.cluster.peer_server import (FRAME_MAX, UNPROVEN_MAX, StalledSends, Unproven, byte_range,
                                          query_count)
from apeinxfs.cluster.peer_wire import (ERRORS, HEARTBEAT, FrameReader, PeerDown, RemoteError, data_frame,
                                        decode_caller, decode_error, encode_caller, encode_error, parse_address,
                                        read_tokens)
from apeinxfs.kernel.errors import ApeinxError, Degraded, Denied, Invalid, NoDriver, RejectLine
from apeinxfs.nodes.base import Caller


@pytest.mark.parametrize("cls", sorted(ERRORS.values(), key=lambda cls: cls.__name__))
def test_every_known_error_comes_back_as_its_own_class(cls):
    """Each error class the wire knows decodes to that class, with its errno, reason and replies."""
    status, body = encode_error(cls("line 2: bad thing", ["line 2: bad thing", "line 3: worse"]))
    back = decode_error(body, "peer x")
    assert type(back) is cls and back.errno == cls.errno and status >= 400
    assert back.reason == "line 2: bad thing" and back.replies == ["line 2: bad thing", "line 3: worse"]


def test_a_model_a_peer_cannot_run_is_service_unavailable_and_enxio():
    """A peer's refusal of a line whose model its driver cannot serve answers HTTP 503 and comes back ENXIO."""
    status, body = encode_error(NoDriver("model ext cannot run: the driver cannot be built: refused"))
    assert (status, decode_error(body, "peer x").errno) == (503, errno.ENXIO)


def test_degraded_keeps_the_storage_errno():
    """Degraded carries the storage's own errno (not its class's) across."""
    back = decode_error(encode_error(Degraded(errno.EROFS, "journal on a read-only disk"))[1], "peer x")
    assert type(back) is Degraded and back.errno == errno.EROFS and back.reason == "journal on a read-only disk"


def test_an_unknown_class_keeps_its_errno():
    """A refusal of a class this node lacks comes back as RemoteError with the sender's errno and reason."""
    class Strange(ApeinxError):
        errno = errno.ENOLINK
    back = decode_error(encode_error(Strange("link gone"))[1], "peer x")
    assert type(back) is RemoteError and back.errno == errno.ENOLINK and back.reason == "link gone"


def test_a_known_name_with_another_errno_is_not_trusted_as_that_class():
    """A record naming a known class with a different errno keeps the errno it carries."""
    back = decode_error(b'{"error": "Invalid", "errno": 5, "reason": "odd"}', "peer x")
    assert type(back) is RemoteError and back.errno == errno.EIO


@pytest.mark.parametrize("make, written, line", [
    (lambda: Invalid("bad line"), True, RejectLine.PEER),  # the peer's write refused it: the peer's line
    (lambda: Invalid("bad line"), False, RejectLine.HERE),  # refused before a write ran there: the asker's
    (lambda: PeerDown("no answer from c"), True, RejectLine.NONE),  # its outcome unknown there: nobody's
    (lambda: Degraded(errno.ENOSPC, "disk full"), True, RejectLine.PEER),
])
def test_whose_reject_line_a_refusal_is_crosses_the_wire(make, written, line):
    """A refusal of the peer's own write comes back as journaled by the peer (PEER), one of an unknown outcome
    there as nobody's (NONE), one made before any write ran there as the asking node's (HERE)."""
    assert decode_error(encode_error(make(), written=written)[1], "peer x").reject_line is line


def test_a_record_without_a_reject_line_is_the_peers_line():
    """A record with no reject_line (a peer of a version that journaled every refusal there) is PEER: the asking
    node writes no second line, nor audits a denial twice."""
    back = decode_error(b'{"error": "Denied", "errno": 13, "reason": "admins only"}', "peer x")
    assert type(back) is Denied and back.reject_line is RejectLine.PEER


def test_an_unknown_reject_line_word_leaves_the_line_to_the_asking_node():
    """A record whose reject_line this version does not know (another version's) keeps its class, the line HERE."""
    back = decode_error(b'{"error": "Invalid", "errno": 22, "reason": "odd", "reject_line": "later"}', "peer x")
    assert type(back) is Invalid and back.reject_line is RejectLine.HERE


@pytest.mark.parametrize("body", [b"<html>502</html>", b"{}", b'{"error": 1, "errno": "x", "reason": 2}', b"[]"])
def test_an_answer_that_is_no_error_record_is_eio_naming_the_peer(body):
    """A body that is not an error record (a proxy's page, broken JSON) is EIO saying where it came from."""
    back = decode_error(body, "peer http://b:1")
    assert back.errno == errno.EIO and back.reason.startswith("peer http://b:1")


@given(st.lists(st.one_of(st.binary(max_size=300), st.just(None)), max_size=8), st.data())
def test_frames_parse_however_the_bytes_are_cut(pieces, data):
    """Data frames and heartbeats, cut into chunks at any points, give back exactly the data, in order."""
    wire = b"".join(HEARTBEAT if piece is None else data_frame(piece) for piece in pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    reader, out = FrameReader(), bytearray()
    for start, end in zip([0, *cuts], [*cuts, len(wire)]):
        out += reader.feed(wire[start:end])
    assert bytes(out) == b"".join(piece for piece in pieces if piece is not None)
    assert reader.at_boundary()


def test_a_body_cut_within_a_frame_is_not_at_a_boundary():
    """A body ending in the middle of a data frame is seen as cut off."""
    reader = FrameReader()
    assert reader.feed(data_frame(b"hello")[:-2]) == b""
    assert not reader.at_boundary()


@pytest.mark.parametrize("wire", [b"-5\nhello", b"+x\n", b"+1" + b"0" * 20 + b"\n", b"garbage without newline"])
def test_a_malformed_frame_header_is_invalid(wire):
    """A frame header that is neither `+LEN` nor a heartbeat is refused (EINVAL), not guessed at."""
    with pytest.raises(Invalid):
        FrameReader().feed(wire)


def test_the_caller_round_trips():
    """The caller header carries uid, gid, pid, role and tenant (or none)."""
    for caller in (Caller(1000, 100, 4242, role="user", tenant="team-a"), Caller(5, 5, 1, role="viewer", tenant=None)):
        assert decode_caller(encode_caller(caller)) == caller


@pytest.mark.parametrize("text", [None, "", "{", '{"uid": -1, "gid": 0, "pid": 0, "role": "user", "tenant": "a"}',
                                  '{"uid": 1, "gid": 0, "pid": 0, "role": "god", "tenant": "a"}',
                                  '{"uid": true, "gid": 0, "pid": 0, "role": "user", "tenant": "a"}',
                                  '{"uid": 1, "gid": 0, "pid": 0, "role": "user", "tenant": 7}',
                                  '{"uid": 1, "gid": 0, "role": "user", "tenant": "a"}',
                                  '{"uid": 4294967295, "gid": 0, "pid": 0, "role": "user", "tenant": "a"}',
                                  '{"uid": 18446744073709551616, "gid": 0, "pid": 0, "role": "user", "tenant": "a"}',
                                  '{"uid": 1, "gid": 4294967295, "pid": 0, "role": "user", "tenant": "a"}',
                                  '{"uid": 1, "gid": 0, "pid": 2147483648, "role": "user", "tenant": "a"}',
                                  "[" * 5000 + "]" * 5000])
def test_a_missing_or_malformed_caller_is_invalid(text):
    """A request without a well-formed caller is refused with EINVAL."""
    with pytest.raises(Invalid, match="header"):
        decode_caller(text)


def test_the_largest_ids_the_system_types_hold_are_a_caller():
    """uid and gid 2**32-2 (one below (uid_t)-1) and pid 2**31-1 pass, at the edge of what is refused."""
    caller = Caller(2 ** 32 - 2, 2 ** 32 - 2, 2 ** 31 - 1, role="user", tenant="a")
    assert decode_caller(encode_caller(caller)) == caller


def test_the_token_is_read_stripped_from_a_private_file(tmp_path):
    """A token file its owner (and group) alone may read gives the token without surrounding whitespace."""
    path = tmp_path / "token"
    path.write_bytes(b"  s3cret\n")
    os.chmod(path, 0o640)
    assert read_tokens(str(path)).accepted == (b"s3cret",)


def test_several_tokens_one_a_line_the_first_sent_every_one_accepted(tmp_path):
    """A token file of several lines (blank ones and surrounding whitespace dropped) gives its tokens in order:
    the first is the one sent, each is accepted in an Authorization header, nothing else is; no repr shows them."""
    path = tmp_path / "token"
    path.write_bytes(b"\n  new-one \n\n\told-one\r\n\n")
    os.chmod(path, 0o600)
    tokens = read_tokens(str(path))
    assert tokens.accepted == (b"new-one", b"old-one") and tokens.authorization == "Bearer new-one"
    assert tokens.accepts(b"Bearer new-one") and tokens.accepts(b"Bearer old-one")
    assert not any(tokens.accepts(header) for header in (b"Bearer other", b"new-one", b"Bearer new-one old-one",
                                                         b"Bearer new-one\nold-one", b"Bearer ", b""))
    assert "new-one" not in repr(tokens) and "old-one" not in repr(tokens)


ROTATION = (b"old", b"old\nnew", b"new\nold", b"new")  # a token file's content at each step of a rotation


@pytest.mark.parametrize("step", range(1, len(ROTATION)))
def test_during_each_step_of_a_rotation_every_node_accepts_what_every_other_sends(tmp_path, step):
    """While a rotation's step is taken node by node (each node's file before or after the edit), the token
    each node sends is accepted by every node; skipping a step is what refuses."""
    def tokens(content: bytes):
        path = tmp_path / "token"
        path.write_bytes(content)
        os.chmod(path, 0o600)
        return read_tokens(str(path))

    def all_accepted(nodes) -> bool:
        return all(receiver.accepts(sender.authorization.encode()) for sender in nodes for receiver in nodes)

    assert all_accepted([tokens(ROTATION[step - 1]), tokens(ROTATION[step])])
    assert step < 2 or not all_accepted([tokens(ROTATION[step - 2]), tokens(ROTATION[step])])


@pytest.mark.parametrize("mode, content, reason", [(0o644, b"s3cret", "readable by every user (mode 0644)"),
                                                   (0o604, b"new\nold\n", "readable by every user (mode 0604)"),
                                                   (0o600, b" \n", "empty"),
                                                   (0o600, b"\n \n\t\n", "empty"),
                                                   (0o600, b"two words", "printable ASCII without spaces"),
                                                   (0o600, b"good\ntwo words\n", "printable ASCII without spaces"),
                                                   (0o600, "s\u00e9cret".encode(), "printable ASCII without spaces")])
def test_a_token_file_every_user_reads_or_a_bad_token_is_refused(tmp_path, mode, content, reason):
    """A world-readable token file, or an empty token or one that cannot go in a header, is refused with the reason."""
    path = tmp_path / "token"
    path.write_bytes(content)
    os.chmod(path, mode)
    with pytest.raises(Invalid, match=reason.replace("(", r"\(").replace(")", r"\)")):
        read_tokens(str(path))


def test_a_missing_token_file_is_refused(tmp_path):
    """A token file that does not exist is refused, naming it."""
    with pytest.raises(Invalid, match="token file .*No such file"):
        read_tokens(str(tmp_path / "absent"))


@pytest.mark.parametrize("text, address", [("127.0.0.1:7070", ("127.0.0.1", 7070)), ("[::1]:80", ("::1", 80)),
                                           ("node-b.example:1", ("node-b.example", 1))])
def test_addresses_parse(text, address):
    """HOST:PORT, with an IPv6 host in brackets."""
    assert parse_address(text) == address


@pytest.mark.parametrize("text", ["7070", ":7070", "host:", "host:0", "host:70000", "host:x"])
def test_bad_addresses_are_invalid(text):
    """What is not HOST:PORT with a port in 1..65535 is refused."""
    with pytest.raises(Invalid, match="HOST:PORT"):
        parse_address(text)


@pytest.mark.parametrize("text, total, expected", [("bytes=0-", 10, (0, 9)), ("bytes=3-4", 10, (3, 4)),
                                                   ("bytes=3-100", 10, (3, 9)), ("bytes=12-", 10, (12, 9))])
def test_byte_ranges(text, total, expected):
    """A range is clipped to the data; one starting past the end is left for the caller to answer 416."""
    assert byte_range(text, total) == expected


@pytest.mark.parametrize("text", ["bytes=-5", "bytes=5-2", "items=0-1", "bytes=0-1,4-5"])
def test_unsupported_ranges_are_invalid(text):
    """Suffix, reversed, multiple and non-byte ranges are refused (EINVAL)."""
    with pytest.raises(Invalid, match="range"):
        byte_range(text, 10)


@pytest.mark.parametrize("text, words", [("-5", "whole number"), ("+5", "whole number"), ("", "whole number"),
                                         ("٣", "whole number"), ("0", "in 1..1000"), ("1001", "in 1..1000"),
                                         ("999999999999", "in 1..1000"), ("9" * 5000, "in 1..1000"),
                                         ("0" * 29 + "9" * 20, "in 1..1000"), ("0" * 5000, "in 1..1000")])
def test_a_query_count_outside_its_bounds_is_invalid_and_says_why(text, words):
    """`?lines=` (and `?offset=`) takes a whole number within its bounds; else EINVAL saying which it is not."""
    with pytest.raises(Invalid, match=words):
        query_count({"lines": [text]}, "lines", 1, 1000)


def test_a_query_count_within_its_bounds_or_absent_is_taken():
    """The edges of the bounds are taken, an absent count is its default, and leading zeros add nothing."""
    assert [query_count({"lines": ["1"]}, "lines", 1, 1000), query_count({"lines": ["1000"]}, "lines", 1, 1000),
            query_count({}, "offset", 0, 10, default=0), query_count({"lines": ["0" * 5000 + "7"]}, "lines", 1, 1000)
            ] == [1, 1000, 0, 7]


async def test_a_send_the_peer_does_not_take_ends_the_connection(autojump_clock):
    """A send nobody reads is given up after stall_s (a broken connection); one read in time is whole."""
    client, server = trio.testing.lockstep_stream_pair()
    stalled = StalledSends(server, 10)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stalled.send_all, b"x" * 100)
        assert await client.receive_some(1000) == b"x" * 100
    started = trio.current_time()
    with pytest.raises(trio.BrokenResourceError, match=f"took not {FRAME_MAX} bytes in 10s"):
        await stalled.send_all(b"y")
    assert trio.current_time() - started == pytest.approx(10)


def unproven_with(most: int, soft_limit: int) -> Unproven:
    """The unproven connections of a server capped at `most`, in a process whose soft descriptor limit is `soft_limit`."""
    return Unproven(most, lambda: soft_limit)


async def test_at_the_cap_the_oldest_unproven_connection_is_evicted_for_a_new_one():
    """At the cap a new connection is admitted and the oldest one's scope is cancelled and its place taken back."""
    unproven = unproven_with(3, 1 << 20)
    tickets = [unproven.admit(trio.CancelScope()) for _ in range(4)]
    assert [ticket.scope.cancel_called for ticket in tickets] == [True, False, False, False]
    assert [ticket.held for ticket in tickets] == [False, True, True, True] and unproven.count == 3


async def test_each_ticket_gives_its_place_back_once():
    """A ticket given back twice makes room for one new connection only: the next one evicts the oldest."""
    unproven = unproven_with(2, 1 << 20)
    first, second = unproven.admit(trio.CancelScope()), unproven.admit(trio.CancelScope())
    second.give_back()
    second.give_back()
    unproven.admit(trio.CancelScope())
    assert not first.scope.cancel_called and unproven.full()
    unproven.admit(trio.CancelScope())
    assert first.scope.cancel_called and unproven.count == 2


def test_the_cap_is_a_quarter_of_the_soft_descriptor_limit_when_that_is_lower():
    """With a soft limit of 12 descriptors, 3 unproven connections fill the places, whatever `most` says."""
    unproven = unproven_with(UNPROVEN_MAX, 12)
    for _ in range(3):
        unproven.admit(trio.CancelScope())
    assert unproven.full() and unproven.count == 3
