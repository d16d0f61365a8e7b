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
peer went away ends within that).
Not here: the FUSE mount, the client (peer_client.py), membership.
"""
import logging
import os
import re
import socket
import time
import urllib.parse

import attrs
import h11
import trio

from ..kernel.errors import ApeinxError, Invalid, NotFound, TooMany
from ..kernel.grammar import parse_int
from ..nodes.base import Blocking, Command, Dir, Log, Show
from ..nodes.remote import RemoteTaskDir
from ..ratelog import RateLog
from .peer_wire import (CALLER_HEADER, FRAME_MAX, HEARTBEAT, HEARTBEAT_S, PeerRefused, TokenFile, data_frame,
                        decode_caller, encode_error, parse_address)

log = logging.getLogger(__name__)
PATHS = re.compile(r"tasks/[1-9][0-9]{0,14}/(status|output|stream|wait|ctl)|ctl/(submit|kill)")
PREFIX = "/v1/"
REQUEST_S = 30.0  # the most a request's head and body may take to arrive (and a kept-alive connection may idle)
BODY_MAX = 16 << 20  # the largest body taken (a bulk submit); larger: 413
HEADER_MAX = 16 << 10
RECEIVE_BYTES = 1 << 16
FRAMES = [("content-type", "application/x-apeinx-frames")]
TEXT = [("content-type", "text/plain; charset=utf-8")]


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
        sock = socket.create_server((host, port), family=family, backlog=128)
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

    def __init__(self, tree, tokens: TokenFile, max_blocked: int):
        self.tree, self.rt = tree, tree.rt
        self.tokens = tokens
        self.max_blocked = max_blocked  # stream and wait readers of peers blocked at once
        self.blocked = 0
        self.bug_log = RateLog(log)

    async def serve(self, listening: Listening, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(listening.sock))
        log.info("peer server on %s", listening.sock.getsockname()[:2])
        await trio.serve_listeners(self.connection, [listener], task_status=task_status)

    async def connection(self, stream: trio.SocketStream) -> None:
        """Requests on one connection, kept alive between them; a broken one just ends, and
        no bug escapes (it would end the daemon's nursery)."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=HEADER_MAX)
        try:
            while await self.exchange(conn, stream):
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        except Exception as exc:
            self.log_bug(exc)
        finally:
            await stream.aclose()

    def log_bug(self, exc: Exception) -> None:
        self.bug_log.log("peer", logging.ERROR, "bug serving a peer: %s: %r", type(exc).__name__, str(exc)[:200])

    async def exchange(self, conn: h11.Connection, stream) -> bool:
        """One request and its response; whether the connection may carry another. A request
        without the token is refused before its body is read."""
        request = body = None
        authorized = False  # decided once: the token file may change meanwhile
        with trio.move_on_after(REQUEST_S) as slow:
            request = await receive(conn, stream)
            authorized = isinstance(request, h11.Request) and self.authorized(request)
            if authorized:
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
        the FUSE boundary answers one)."""
        try:
            await self.dispatch(conn, stream, request, body)
        except ApeinxError as exc:
            if conn.our_state is not h11.SEND_RESPONSE:
                raise
            await send_simple(conn, stream, *encode_error(exc))
        except Exception as exc:
            if conn.our_state is not h11.SEND_RESPONSE:
                raise
            self.log_bug(exc)
            await send_simple(conn, stream, *encode_error(ApeinxError("internal error in the peer daemon (logged)")))

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
        node = self.resolve(path, caller, os.W_OK if request.method == b"POST" else os.R_OK)
        if (request.method == b"POST") != isinstance(node, Command):
            raise Invalid(f"{request.method.decode()} of {path}: use {'POST' if isinstance(node, Command) else 'GET'}")
        await self.serve_node(conn, stream, node, caller, request, body, urllib.parse.parse_qs(target.query))

    def resolve(self, path: str, caller, want: int):
        """The node at `path`, checked as the FUSE adapter checks a lookup and an open; a refusal here is not
        journaled (no write ran here): the asking node writes its `reject` line (peer_wire.encode_error)."""
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
        elif isinstance(node, Log):
            await send_range(conn, stream, node.source(), dict(request.headers).get(b"range"))
        elif isinstance(node, Blocking):
            await self.follow(conn, stream, node, parse_int(query.get("offset", ["0"])[0], "offset"))
        else:
            handle = node.open(caller, writing=True, reading=False)
            if "lines" in query:  # a write placed on several nodes
                handle.write_lines = parse_int(query["lines"][0], "lines")
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
            while (data := node.poll(offset)) != b"":
                if data is None:
                    await self.quiet(conn, stream, node.key)
                    continue
                for start in range(0, len(data), FRAME_MAX):
                    await send(conn, stream, h11.Data(data=data_frame(data[start:start + FRAME_MAX])))
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


def byte_range(text: str, total: int) -> tuple[int, int]:
    """(first, last) byte of a `bytes=A-B` or `bytes=A-` range, last clipped to the data."""
    match = re.fullmatch(r"bytes=([0-9]{1,18})-([0-9]{0,18})", text.strip())
    if match is None or (match[2] and int(match[2]) < int(match[1])):
        raise Invalid(f"range {text[:60]!r} is not bytes=A-B or bytes=A-")
    return int(match[1]), min(int(match[2]) if match[2] else total - 1, total - 1)
