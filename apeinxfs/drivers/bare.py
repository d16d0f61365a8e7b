"""A bare HTTP/1.1 exchange for an engine stream: one request out, the answer read straight off the socket.

httpx's way (a Request, the connection pool, h11, five async generators deep for each line
of the answer) costs the daemon's one thread about 2.3 ms of CPU for a request of one token
to llama-server on this machine; a bare exchange about 0.5 ms (in process, its events read
to the end: thread_time over 200 requests). `exchange` serves spares.stream's direct
requests (http://, no proxy): a POST of JSON on a socket from the client's network backend
(spares: a spare, or one connect(2)), sent and read with the socket's own non-blocking calls
(no stream layers, not even trio's socket: a call that need not wait returns at once, without
the scheduler round trio's takes; one deadline scope for the whole exchange, set only while
a call waits on the engine), and an answer framed by chunked encoding, Content-Length or the
connection's end, whose bytes come from one async generator as they come. The connection is never kept
alive (llama-server closes it after a stream anyway). A failure is raised as httpx raises it
(ConnectError, ReadError, WriteError, RemoteProtocolError, ReadTimeout ...), so the openai
driver tells them apart as before.
Not an HTTP client: no redirects, cookies, TLS, compression or keep-alive.
"""
import contextlib
import json
import math
import re

import httpcore
import httpx
import trio

from . import pacing

READ_BYTES = 65536
YIELD_READS = 4  # reads in a row that found data at once, after which a read yields to the other tasks
HEAD_MAX = 65536  # an answer's status line and headers longer than this are not an engine's
SIZE_LINE_MAX = 1024  # a chunk size line (hex digits, extensions) longer than this is not an engine's
ERRORS = {httpcore.ConnectError: httpx.ConnectError, httpcore.ConnectTimeout: httpx.ConnectTimeout}


@contextlib.asynccontextmanager
async def exchange(backend, url: httpx.URL, body: dict, timeout: float):
    """POST `body` as JSON to `url` on a connection of `backend`; yields the answer once its headers came,
    and closes the connection after. The engine may be silent `timeout` seconds at most on each send or read."""
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    head = (f"POST {url.raw_path.decode('ascii')} HTTP/1.1\r\nHost: {url.netloc.decode('ascii')}\r\n"
            f"Accept: */*\r\nAccept-Encoding: identity\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n").encode()
    try:
        sock = await backend.socket(url.host, url.port or 80, timeout)
    except tuple(ERRORS) as exc:
        raise ERRORS[type(exc)](str(exc)) from exc
    response = Response(sock, timeout)
    try:
        with response.silence:
            await response.send(head + data)
            await response.read_head()
            yield response
    finally:
        response.socket.close()
    if response.silence.cancelled_caught:
        raise (httpx.WriteTimeout if response.sending else httpx.ReadTimeout)(f"the engine was silent {timeout} s")


class Malformed(httpx.RemoteProtocolError):
    """The engine's answer breaks HTTP/1.1 (a Content-Length or chunk size that is no number): the engine's
    fault, whether or not it had answered."""


def _content_length(value: str) -> int:
    if not (value.isascii() and value.isdigit()):
        raise Malformed(f"bad Content-Length: {value[:40]!r}")
    return int(value)


def _chunk_size(line: bytes) -> int:
    size = line.split(b";", 1)[0].strip()
    if not re.fullmatch(rb"[0-9a-fA-F]{1,16}", size):
        raise Malformed(f"bad chunk size: {line[:40]!r}")
    return int(size, 16)


class Response:
    """The answer on `socket` (a connected non-blocking stdlib socket): status_code and headers once
    `read_head` returned, then the body as httpx's Response gives it (`aiter_bytes`, `aread`). `silence`
    is the exchange's deadline scope, set `timeout` ahead while a send or read waits on the engine; `reads`
    paces the reads (spares.pace)."""

    def __init__(self, socket, timeout: float):
        self.socket, self.timeout, self.buffer = socket, timeout, b""
        self.silence, self.sending, self.reads = trio.CancelScope(), False, pacing.Reads()
        self.status_code, self.headers, self.length, self.ended = 0, {}, 0, False  # length: body bytes still owed
        self.chunk_left = 0  # data bytes of the current chunk still to come
        self.next_piece, self.unyielded = self._to_end, 0  # unyielded: reads in a row that waited for nothing

    async def send(self, data: bytes) -> None:
        self.sending = True
        try:
            while data:
                try:
                    data = data[self.socket.send(data):]
                except BlockingIOError:
                    await self._wait(trio.lowlevel.wait_writable, httpx.WriteError)
        except OSError as exc:
            raise httpx.WriteError(str(exc)) from exc
        self.sending = False

    async def _fill(self) -> bool:
        """Read more into the buffer; False at the connection's end. A read that finds data waits for
        nothing; YIELD_READS of those in a row yield once (a trio checkpoint), so that an answer faster
        than the daemon parses it can hold neither its loop nor a cancel off (paced reads sleep anyway)."""
        await self.reads.wait()
        while (more := self._recv()) is None:
            await self._wait(trio.lowlevel.wait_readable, httpx.ReadError)
            self.unyielded = 0
        self.unyielded += 1
        if self.unyielded == YIELD_READS:
            self.unyielded = 0
            await trio.lowlevel.checkpoint()
        self.buffer += more
        return bool(more)

    def _recv(self) -> bytes | None:
        """What the socket holds now (b"" at the connection's end); None if nothing has come yet."""
        try:
            return self.socket.recv(READ_BYTES)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise httpx.ReadError(str(exc)) from exc

    async def _wait(self, ready, failed: type[httpx.TransportError]) -> None:
        """Wait until `ready(socket)` returns (trio.lowlevel.wait_readable, wait_writable): `timeout` s at most;
        `failed` (httpx.ReadError, WriteError) if the loop cannot watch the socket."""
        self.silence.deadline = trio.current_time() + self.timeout
        try:
            await ready(self.socket)
        except OSError as exc:  # epoll_ctl refused it (ENOMEM, ENOSPC)
            raise failed(str(exc)) from exc
        self.silence.deadline = math.inf

    async def read_head(self) -> None:
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if len(self.buffer) > HEAD_MAX:
                raise httpx.RemoteProtocolError("the answer's headers are too long")
            if not await self._fill():
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        status, *lines = self.buffer[:end].decode("latin-1").split("\r\n")
        self.buffer = self.buffer[end + 4:]
        try:
            self.status_code = int(status.split(" ", 2)[1])
        except (IndexError, ValueError):
            raise httpx.RemoteProtocolError(f"not an HTTP status line: {status[:100]!r}") from None
        fields = (line.partition(":") for line in lines)
        self.headers = {name.strip().lower(): value.strip() for name, _, value in fields}
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            self.next_piece = self._chunks
        elif "content-length" in self.headers:
            self.length, self.next_piece = _content_length(self.headers["content-length"]), self._counted

    async def _chunks(self) -> bytes:
        """The data of the next complete chunks; b"" after the last."""
        while not self.ended:
            pieces, self.ended = self._take_chunks()
            if pieces:
                return b"".join(pieces)
            if not self.ended:
                await self._fill_or_fail()
        return b""

    def _take_chunks(self) -> tuple[list[bytes], bool]:
        """The chunk data at the buffer's head, taken off it: a chunk's data as it comes, not held until the
        chunk is whole (its size is the engine's word); whether the last chunk came."""
        pieces, at = [], 0
        while True:
            if self.chunk_left:
                if not (piece := self.buffer[at:at + self.chunk_left]):
                    break
                pieces.append(piece)
                self.chunk_left, at = self.chunk_left - len(piece), at + len(piece)
            elif (eol := self.buffer.find(b"\r\n", at)) < 0:
                if len(self.buffer) - at > SIZE_LINE_MAX:
                    raise Malformed(f"a chunk size line of over {SIZE_LINE_MAX} bytes")
                break
            else:
                line, at = self.buffer[at:eol], eol + 2
                if line and (size := _chunk_size(line)) == 0:  # an empty line ends a chunk's data
                    self.buffer = b""
                    return pieces, True
                self.chunk_left = size if line else 0
        self.buffer = self.buffer[at:]
        return pieces, False

    async def _counted(self) -> bytes:
        """The body's next bytes as they come, up to the Content-Length still owed (bytes past it are dropped);
        b"" after it."""
        if self.length and not self.buffer:
            await self._fill_or_fail()
        piece, self.buffer = self.buffer[:self.length], b""
        self.length -= len(piece)
        return piece

    async def _to_end(self) -> bytes:
        """What came until the connection's end; b"" at that end."""
        if not self.buffer:
            await self._fill()
        piece, self.buffer = self.buffer, b""
        return piece

    async def _fill_or_fail(self) -> None:
        if not await self._fill():
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    async def aiter_bytes(self):
        """The body's bytes as they come."""
        while piece := await self.next_piece():
            yield piece

    async def aread(self) -> bytes:
        pieces = []
        while piece := await self.next_piece():
            pieces.append(piece)
        return b"".join(pieces)
