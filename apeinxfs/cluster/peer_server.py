"""The peer server: other nodes read and drive this node's tasks over HTTP/1.1 (h11 on trio).

A request names a file of this node's tree, one of PATHS, and is served by the same nodes
(nodes/) that serve the FUSE mount, with the same checks, for the caller the asking node
names (peer_wire.decode_caller): `GET` of a `status` gives its text, of `output` its bytes
(a `Range: bytes=A-B` or `bytes=A-` gives 206 and Content-Range), of `stream` or `wait` the
file as `cat` would read it, in frames (peer_wire) until it ends; `POST` of `ctl/submit`,
`ctl/kill` or `tasks/PID/ctl` runs the body's lines as a write(2) of them would, and answers
the reply lines (`POST ctl/submit?lines=N`: they are part of a write of N lines placed on
several nodes, whose allowance their wait for their keys takes). Every request needs `Authorization: Bearer TOKEN`, TOKEN one of those the
token file holds now (compared in constant time; else 401; the file looked at again at most
once a second, at a request: peer_wire.token_file). Refusals go back as peer_wire error
records. A blocked `stream` or `wait` sleeps on the runtime's Notifier like a local reader,
waking at each change of its key or after HEARTBEAT_S to send a heartbeat (so a reader whose
peer went away ends within that). A peer that does not take FRAME_MAX bytes of a response
(or the rest of it) within `stall_s` ([cluster] peer_stall_s) loses its connection, and so
its blocked reader's slot: StalledSends. Connections that have not yet sent a request with the
token are at most UNPROVEN_MAX, and a quarter of the descriptors the daemon may open
(RLIMIT_NOFILE, read at each connection), so that idle connections from anyone cannot take the
descriptors the mount, journal and snapshots need: a new one beyond makes room by closing the
oldest unproven one (a flood cannot hold the places; a fresh request gets in), and each must send
its first whole head within UNPROVEN_S. The accept loop is supervised (supervise.py: `peer.accept`,
restarted on the same socket after a bug; until then the socket still listens, so no other process can take
its port, and each connection is reset at once, its request unread); a bug in a connection
that escapes its requests (its admission, a response under way) closes that connection alone
(`peer.connection`); a request's bug before its answer began is answered EIO.
Not here: the FUSE mount, the client (peer_client.py), membership.
"""
import contextlib
import logging
import math
import os
import re
import resource
import socket
import struct
import time
import urllib.parse
from collections.abc import Callable

import attrs
import h11
import trio

from ..kernel.errors import ApeinxError, Invalid, NotFound, RejectLine, TooMany
from ..nodes.base import Blocking, Command, Dir, Log, Show
from ..nodes.remote import RemoteTaskDir
from ..nodes.ringlog import RingLog
from ..ratelog import RateLog
from .peer_wire import (CALLER_HEADER, FRAME_MAX, HEARTBEAT, HEARTBEAT_S, REJECTS_HEADER, PeerRefused, TokenFile,
                        data_frame, decode_caller, encode_error, parse_address)

log = logging.getLogger(__name__)
# the files served to peers: their Logs are buffers (a RingLog, whose source is a pair, is refused: serve_node)
PATHS = re.compile(r"tasks/[1-9][0-9]{0,14}/(status|output|stream|wait|ctl)|ctl/(submit|kill)")
PREFIX = "/v1/"
REQUEST_S = 30.0  # the most a request's head and body may take to arrive (and a kept-alive connection may idle)
UNPROVEN_S = 5.0  # the most a new connection's first head may take to arrive whole (an honest peer sends it at once)
BODY_MAX = 16 << 20  # the largest body taken (a bulk submit); larger: 413
HEADER_MAX = 16 << 10
OFFSET_MAX = 2 ** 63 - 1  # an off_t; also the most `?lines=` taken (then clamped to this node's write_lines)
UNPROVEN_MAX = 256  # connections without an authorized request yet (and a quarter of RLIMIT_NOFILE at most)
RECEIVE_BYTES = 1 << 16
BACKLOG = 128  # connections the kernel queues for the accept loop
FRAMES = [("content-type", "application/x-apeinx-frames")]
TEXT = [("content-type", "text/plain; charset=utf-8")]


@attrs.frozen
class Refusing:
    """The task that resets peers' connections while the accept loop waits for its restart: its scope, and
    the event set once it ended."""

    scope: trio.CancelScope
    ended: trio.Event


def reset(stream: trio.SocketStream) -> None:
    """Close `stream` with an RST (SO_LINGER 0), its request unread; one already reset by its peer just closes."""
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.socket.close()


@attrs.frozen
class Listening:
    """A bound, listening socket and the token file whose tokens peers must send, prepared before the
    mount so a bad address or token file fails the daemon's start with its reason."""

    sock: socket.socket
    tokens: TokenFile

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]


def prepare(advertise: str, tokens: TokenFile) -> Listening:
    """Listen on `advertise` (HOST:PORT) for peers who send one of `tokens`."""
    host, port = parse_address(advertise)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=BACKLOG)
    except OSError as exc:
        raise Invalid(f"peer server cannot listen on {advertise}: {exc.strerror}") from None
    return Listening(sock, tokens)


def listening_for(cluster) -> Listening | None:
    """The peer server's socket for `[cluster]` advertise and token_file (settings.ClusterSettings, which
    read the file); None on a single node or a cluster node without them."""
    if cluster is None or cluster.advertise is None or cluster.tokens is None:
        return None
    return prepare(cluster.advertise, cluster.tokens)


class PeerServer:
    """Serves this node's tree (a nodes.tree.Tree) to peers; `serve` runs it until cancelled."""

    def __init__(self, tree, tokens: TokenFile, max_blocked: int, stall_s: float, unproven_max: int = UNPROVEN_MAX,
                 unproven_s: float = UNPROVEN_S):
        self.tree, self.rt = tree, tree.rt
        self.tokens = tokens
        self.max_blocked = max_blocked  # stream and wait readers of peers blocked at once
        self.stall_s = stall_s  # the longest a send may wait for the peer to take bytes
        self.blocked = 0
        self.unproven = Unproven(unproven_max)
        self.unproven_s = unproven_s  # the most an unproven connection's first head may take
        self.bug_log = RateLog(log)
        self.flood_log = RateLog(log)
        self.refusing: Refusing | None = None  # while `accept` waits for its restart after a bug

    async def serve(self, listening: Listening, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve peers until cancelled: the accept loop supervised as `peer.accept` (supervise.py: a bug there
        is logged, shown in /ai/health and the loop started again on the same socket; `accept` says what a
        peer meets meanwhile), each connection in a task of a nursery that outlives the loop's restarts, so a
        bug in the loop closes none of them."""
        log.info("peer server on %s", listening.sock.getsockname()[:2])
        with trio.socket.from_stdlib_socket(listening.sock) as sock:
            listener = trio.SocketListener(sock)
            async with trio.open_nursery() as connections:
                task_status.started()
                await self.rt.supervisor.supervised("peer.accept", self.accept, listener, connections)

    async def accept(self, listener: trio.SocketListener, connections: trio.Nursery) -> None:
        """Accept peers' connections (trio's accept waits out a lack of descriptors), each served in
        `connections`. The socket never stops listening, so that no other process may bind and listen on its
        port (SO_REUSEADDR lets one beside a bound socket that does not listen) and take the peers' token:
        after a bug, until the restart, `reset_until_restart` accepts each connection and resets it unread."""
        await self.stop_refusing()
        try:
            while True:
                connections.start_soon(self.connection, await listener.accept())
        except Exception:
            self.refusing = await connections.start(self.reset_until_restart, listener)
            raise

    async def reset_until_restart(self, listener: trio.SocketListener, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Reset each connection at once (SO_LINGER 0: an RST, its request never read, so never run), where it
        would wait unread past the asker's timeout, until `stop_refusing`; a bug here is kept as `peer.accept`'s
        and leaves connections queued until the restart."""
        ended = trio.Event()
        try:
            with trio.CancelScope() as scope:
                task_status.started(Refusing(scope, ended))
                while True:
                    reset(await listener.accept())
        except Exception as bug:
            self.rt.supervisor.note("peer.accept", bug, "connections queued until the restart")
        finally:
            ended.set()

    async def stop_refusing(self) -> None:
        """End `reset_until_restart` (if a bug started it) before accepting again: no connection is reset after."""
        if self.refusing is not None:
            self.refusing.scope.cancel()
            await self.refusing.ended.wait()
            self.refusing = None

    async def connection(self, socket_stream: trio.SocketStream) -> None:
        """One peer's connection, whose bug ends it alone: an Exception that escapes its requests and their
        answers (its admission, a bug in a response under way) is kept as the Bug `peer.connection`
        (supervise.py, /ai/health) and the connection closed."""
        try:
            await self.converse(socket_stream)
        except Exception as bug:
            self.rt.supervisor.note("peer.connection", bug, "its connection closed")
        finally:
            await trio.aclose_forcefully(socket_stream)

    async def converse(self, socket_stream: trio.SocketStream) -> None:
        """Requests on one connection, kept alive between them; a broken or stalled one just ends."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=HEADER_MAX)
        stream = StalledSends(socket_stream, self.stall_s)
        with trio.CancelScope() as evicted:  # cancelled when a newer unproven connection needs the place
            ticket = self.admit(evicted)
            try:
                while await self.exchange(conn, stream, ticket):
                    conn.start_next_cycle()
            except h11.RemoteProtocolError as exc:
                await refuse_malformed(conn, stream, exc)
            except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
                pass
            finally:
                ticket.give_back()
                await stream.aclose()

    def admit(self, scope: trio.CancelScope) -> "Ticket":
        """A place among the unproven for the connection running in `scope`; at the cap the oldest is closed
        to make room, and that logged (rate-limited: a flood is not a bug)."""
        if self.unproven.full():
            self.flood_log.log("unproven", logging.WARNING, "peer server: %d connections have sent no request "
                               "with the token; closing the oldest for each new one", self.unproven.count)
        return self.unproven.admit(scope)

    def log_bug(self, exc: Exception) -> None:
        self.bug_log.log("peer", logging.ERROR, "bug serving a peer: %s: %r", type(exc).__name__, str(exc)[:200])

    async def exchange(self, conn: h11.Connection, stream, ticket: "Ticket") -> bool:
        """One request and its response; whether the connection may carry another. A request
        without the token is refused before its body is read."""
        request = body = None
        authorized = False  # decided once: the token file may change meanwhile
        with trio.move_on_after(REQUEST_S) as slow:
            with trio.move_on_after(self.unproven_s if ticket.held else math.inf):
                request = await receive(conn, stream)
            authorized = isinstance(request, h11.Request) and self.authorized(request)
            if authorized:
                ticket.give_back()
                body = await read_body(conn, stream)
        if not isinstance(request, h11.Request):  # closed, or kept alive idle past REQUEST_S
            return False
        if body is None:  # unauthorized, too slow or too large: answered, then closed
            await self.refuse(conn, stream, authorized, slow.cancelled_caught)
            return False
        await self.answer(conn, stream, request, body)
        return conn.our_state is h11.DONE

    def authorized(self, request: h11.Request) -> bool:
        """Whether the request carries one of the tokens (compared in constant time)."""
        return self.tokens.current(time.monotonic()).accepts(dict(request.headers).get(b"authorization", b""))

    async def refuse(self, conn, stream, authorized: bool, slow: bool) -> None:
        close = [("connection", "close")]
        if not authorized:
            _, record = encode_error(PeerRefused("missing or wrong token: the nodes' token files differ"))
            await send_simple(conn, stream, 401, record, [("www-authenticate", "Bearer"), *close])
        else:
            await send_simple(conn, stream, 408 if slow else 413, b"", close)

    async def answer(self, conn, stream, request: h11.Request, body: bytes) -> None:
        """Serve `request`, or send its refusal while no response has started (a bug: EIO, as
        the FUSE boundary answers one). A refusal once it started (a `wait` on a task reaped meanwhile)
        leaves the response unfinished: the connection is closed, and that is no bug."""
        try:
            await self.dispatch(conn, stream, request, body)
        except ApeinxError as exc:
            if conn.our_state is h11.SEND_RESPONSE:
                await send_simple(conn, stream, *encode_error(exc))
            else:
                log.info("peer server: %s, after its answer began: connection closed", exc.reason)
        except Exception as exc:
            if conn.our_state is not h11.SEND_RESPONSE:
                raise
            self.log_bug(exc)  # no reject line anywhere, as a bug on one node writes none: the lines may have run
            bug = ApeinxError("internal error in the peer daemon (logged)", reject_line=RejectLine.NONE)
            await send_simple(conn, stream, *encode_error(bug))

    async def dispatch(self, conn, stream, request: h11.Request, body: bytes) -> None:
        headers = dict(request.headers)
        caller = decode_caller(headers[CALLER_HEADER.encode()].decode("latin-1")
                               if CALLER_HEADER.encode() in headers else None)
        target = urllib.parse.urlsplit(request.target.decode("ascii", "replace"))
        path = target.path.removeprefix(PREFIX)
        if not target.path.startswith(PREFIX) or not PATHS.fullmatch(path):
            raise NotFound(f"no peer endpoint {target.path!r}")
        if request.method not in (b"GET", b"POST"):
            raise Invalid(f"method {request.method.decode('latin-1')!r}: peers use GET and POST")
        node = self.resolved(path, caller, request.method == b"POST", REJECTS_HEADER.encode() in headers)
        if (request.method == b"POST") != isinstance(node, Command):
            raise Invalid(f"{request.method.decode()} of {path}: use {'POST' if isinstance(node, Command) else 'GET'}")
        await self.serve_node(conn, stream, node, caller, request, body, urllib.parse.parse_qs(target.query))

    def resolved(self, path: str, caller, writing: bool, asker_journals: bool):
        """`resolve` for a write or a read; a write's refusal, when the asking node does not say it journals those
        (REJECTS_HEADER: a version that took every peer's refusal as journaled there), journaled here and sent so."""
        try:
            return self.resolve(path, caller, os.W_OK if writing else os.R_OK)
        except ApeinxError as exc:
            if writing and not asker_journals:
                self.rt.reject(f"/{path}", exc, caller.uid, caller.pid, caller.tenant)
                exc.reject_line = RejectLine.PEER
            raise

    def resolve(self, path: str, caller, want: int):
        """The node at `path`, checked as the FUSE adapter checks a lookup and an open; a refusal here is not
        journaled (no write ran here): the asking node writes its `reject` line (peer_wire.encode_error), unless
        it is of an older version (`resolved`)."""
        node = self.tree.root
        for name in path.split("/"):
            node = node.child(name) if isinstance(node, Dir) else None
            if node is None or isinstance(node, RemoteTaskDir):  # a peer asks for this node's own tasks only
                raise NotFound(f"no /{path} on this node")
            if node.tenant is not None:
                caller.may(node, 0)
        caller.may(node, want)
        return node

    async def serve_node(self, conn, stream, node, caller, request, body: bytes, query: dict) -> None:
        if isinstance(node, Show):
            await send_simple(conn, stream, 200, self.tree.render(node), TEXT)
        elif isinstance(node, RingLog):  # its source is (text, dropped): no path of PATHS names one
            raise NotFound("a ring's log (trace, audit) is not served to peers")
        elif isinstance(node, Log):
            await send_range(conn, stream, node.source(), dict(request.headers).get(b"range"))
        elif isinstance(node, Blocking):
            await self.follow(conn, stream, node, query_count(query, "offset", 0, OFFSET_MAX, default=0))
        else:
            handle = node.open(caller, writing=True, reading=False)
            if "lines" in query:  # a write placed on several nodes: its lines, up to this node's bound on its wait
                handle.write_lines = min(query_count(query, "lines", 1, OFFSET_MAX), self.rt.buffers.write_lines)
            # whole lines (a submit waits for etcd): the handle is left holding nothing, so it needs no close
            try:
                await handle.write_here(body if body.endswith(b"\n") else body + b"\n")
            except ApeinxError as exc:  # the write's refusal, journaled here as a write of this node's
                return await send_simple(conn, stream, *encode_error(exc, written=True))
            await send_simple(conn, stream, 200, handle.reply, TEXT)

    async def follow(self, conn, stream, node: Blocking, offset: int) -> None:
        """A blocking file from `offset` to its end, in frames, as `cat` would read it."""
        if self.blocked >= self.max_blocked:
            raise TooMany(f"too many blocked peer readers ({self.blocked}); try again")
        self.blocked += 1
        try:
            await send(conn, stream, h11.Response(status_code=200, headers=FRAMES))
            while (data := node.poll(offset, FRAME_MAX)) != b"":
                if data is None:
                    await self.quiet(conn, stream, node.key)
                    continue
                await send(conn, stream, h11.Data(data=data_frame(data)))
                offset += len(data)
            await send(conn, stream, h11.EndOfMessage())
        finally:
            self.blocked -= 1

    async def quiet(self, conn, stream, key) -> None:
        """Sleep until `key` changes; a heartbeat if HEARTBEAT_S pass first."""
        with trio.move_on_after(HEARTBEAT_S) as silence:
            await self.rt.notifier.wait(key)
        if silence.cancelled_caught:
            await send(conn, stream, h11.Data(data=HEARTBEAT))


def descriptor_soft_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@attrs.define
class Unproven:
    """The connections that have not yet sent a request with the token, oldest first: at most `most` and
    a quarter of the descriptor limit now (so that one lowered at run time lowers the cap)."""

    most: int = UNPROVEN_MAX
    soft_limit: Callable[[], int] = descriptor_soft_limit
    tickets: dict["Ticket", None] = attrs.Factory(dict)  # ordered by admission

    @property
    def count(self) -> int:
        return len(self.tickets)

    def full(self) -> bool:
        return self.count >= min(self.most, self.soft_limit() // 4)

    def admit(self, scope: trio.CancelScope) -> "Ticket":
        """A new connection's ticket, `scope` the one its connection runs in; while the cap is reached, the
        oldest unproven connection is evicted (its scope cancelled) to make room."""
        while self.tickets and self.full():
            next(iter(self.tickets)).evict()
        ticket = Ticket(self, scope)
        self.tickets[ticket] = None
        return ticket


@attrs.define(eq=False)
class Ticket:
    """One connection's place among the unproven, given back once: at its first request with the
    token, at its end, or when evicted for a newer one."""

    unproven: Unproven
    scope: trio.CancelScope

    @property
    def held(self) -> bool:
        return self in self.unproven.tickets

    def give_back(self) -> None:
        self.unproven.tickets.pop(self, None)

    def evict(self) -> None:
        self.give_back()
        self.scope.cancel()


@attrs.frozen
class StalledSends:
    """A connection's stream whose send ends it (BrokenResourceError) unless the peer takes each
    FRAME_MAX bytes of it (or the rest) within `stall_s`."""

    stream: trio.SocketStream
    stall_s: float

    async def send_all(self, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(view), FRAME_MAX):
            with trio.move_on_after(self.stall_s) as stalled:
                await self.stream.send_all(view[start:start + FRAME_MAX])
            if stalled.cancelled_caught:  # the stream is left half sent: only closing it is safe
                raise trio.BrokenResourceError(f"the peer took not {FRAME_MAX} bytes in {self.stall_s:g}s")

    async def receive_some(self, max_bytes: int) -> bytes:
        return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.stream.aclose()


async def refuse_malformed(conn: h11.Connection, stream, exc: h11.RemoteProtocolError) -> None:
    """Answer a request that is not HTTP, or whose head passes HEADER_MAX, with h11's status for it (400,
    431) and an EINVAL record, if no response has started; the connection then closes."""
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    _, record = encode_error(Invalid(f"malformed HTTP request: {exc}"))
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        await send_simple(conn, stream, exc.error_status_hint, record, [("connection", "close")])


async def receive(conn: h11.Connection, stream):
    """The next h11 event, reading from `stream` as needed."""
    while (event := conn.next_event()) is h11.NEED_DATA:
        conn.receive_data(await stream.receive_some(RECEIVE_BYTES))
    return event


async def read_body(conn: h11.Connection, stream) -> bytes | None:
    """The request's body; None, leaving it unread, once it passes BODY_MAX."""
    body = bytearray()
    while isinstance(event := await receive(conn, stream), h11.Data):
        body += event.data
        if len(body) > BODY_MAX:
            return None
    return bytes(body)


async def send(conn: h11.Connection, stream, event) -> None:
    await stream.send_all(conn.send(event))


async def send_simple(conn, stream, status: int, body: bytes, headers=()) -> None:
    headers = [*headers, ("content-length", str(len(body)))]
    await send(conn, stream, h11.Response(status_code=status, headers=headers))
    await send(conn, stream, h11.Data(data=body))
    await send(conn, stream, h11.EndOfMessage())


async def send_range(conn, stream, source, wanted: bytes | None) -> None:
    """All of the buffer `source`, or the range asked for: 206 with Content-Range, 416 past its end."""
    total = len(source)
    if wanted is None:
        return await send_simple(conn, stream, 200, bytes(source))
    start, end = byte_range(wanted.decode("latin-1"), total)
    if start >= total:
        return await send_simple(conn, stream, 416, b"", [("content-range", f"bytes */{total}")])
    await send_simple(conn, stream, 206, bytes(source[start:end + 1]), [("content-range", f"bytes {start}-{end}/{total}")])


def query_count(query: dict, name: str, lowest: int, highest: int, default: int | None = None) -> int:
    """The whole number `?name=` in lowest..highest (absent: `default`); Invalid saying which it is not."""
    text = query.get(name, [str(default)])[0]
    if not (text.isascii() and text.isdigit()):
        raise Invalid(f"?{name}= must be a whole number, not {text[:40]!r}")
    digits = text.lstrip("0") or "0"  # leading zeros add no value: only the rest is bounded and parsed
    if len(digits) > len(str(highest)) or not lowest <= (value := int(digits)) <= highest:
        raise Invalid(f"?{name}= must be in {lowest}..{highest}, not {text[:40]}")
    return value


def byte_range(text: str, total: int) -> tuple[int, int]:
    """(first, last) byte of a `bytes=A-B` or `bytes=A-` range, last clipped to the data."""
    match = re.fullmatch(r"bytes=([0-9]{1,18})-([0-9]{0,18})", text.strip())
    if match is None or (match[2] and int(match[2]) < int(match[1])):
        raise Invalid(f"range {text[:60]!r} is not bytes=A-B or bytes=A-")
    return int(match[1]), min(int(match[2]) if match[2] else total - 1, total - 1)
