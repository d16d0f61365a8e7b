"""A bare HTTP/1.1 exchange for an engine stream: one request out, the answer read straight off the connection.

httpx's way (a Request, the connection pool, h11, five async generators deep for each line
of the answer) costs the daemon's one thread about 2.3 ms of CPU for a request of one token
to llama-server on this machine; a bare exchange about 0.5 ms. `exchange` serves
spares.stream's direct requests (http://, no proxy): a POST of JSON on a connection from
the client's network backend (spares: a spare, or one connect(2)), and an answer framed
by chunked encoding, Content-Length or the connection's end. The connection is never
kept alive (llama-server closes it after a stream anyway). A failure is raised as httpx
raises it (ConnectError, ReadError, RemoteProtocolError, ReadTimeout ...), so the openai
driver tells them apart as before. Not an HTTP client: no redirects, cookies, TLS,
compression or keep-alive.
"""
import contextlib
import json

import httpcore
import httpx

READ_BYTES = 65536
HEAD_MAX = 65536  # an answer's status line and headers longer than this are not an engine's
ERRORS = {httpcore.ConnectError: httpx.ConnectError, httpcore.ConnectTimeout: httpx.ConnectTimeout,
          httpcore.ReadError: httpx.ReadError, httpcore.ReadTimeout: httpx.ReadTimeout,
          httpcore.WriteError: httpx.WriteError, httpcore.WriteTimeout: httpx.WriteTimeout,
          httpcore.RemoteProtocolError: httpx.RemoteProtocolError}


@contextlib.contextmanager
def as_httpx():
    """Raise httpcore's network errors (what the backend's streams raise) as httpx's."""
    try:
        yield
    except tuple(ERRORS) as exc:
        raise ERRORS[type(exc)](str(exc)) from exc


async def exchange(backend, url: httpx.URL, body: dict, timeout: float) -> "Response":
    """POST `body` as JSON to `url` on a connection of `backend`; the answer, once its headers came."""
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    head = (f"POST {url.raw_path.decode('ascii')} HTTP/1.1\r\nHost: {url.netloc.decode('ascii')}\r\n"
            f"Accept: */*\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n").encode()
    with as_httpx():
        stream = await backend.connect_tcp(url.host, url.port or 80, timeout)
    response = Response(stream, timeout)
    try:
        with as_httpx():
            await stream.write(head + data, timeout)
            await response.read_head()
    except BaseException:
        await response.aclose()
        raise
    return response


class Response:
    """The answer on `stream`: status_code and headers once `read_head` returned, then the body as httpx's
    Response gives it (`aiter_raw`, `aiter_lines`, `aread`); `extensions["network_stream"]` for pacing."""

    def __init__(self, stream, timeout: float):
        self.stream, self.timeout, self.buffer = stream, timeout, b""
        self.status_code, self.headers = 0, {}
        self.extensions = {"network_stream": stream}

    async def _fill(self) -> bool:
        """Read more into the buffer; False at the connection's end."""
        with as_httpx():
            more = await self.stream.read(READ_BYTES, self.timeout)
        self.buffer += more
        return bool(more)

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

    def aiter_raw(self):
        """The body's bytes, a read's worth at a time (an async iterator)."""
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            return self._chunked()
        if "content-length" in self.headers:
            return self._counted(int(self.headers["content-length"]))
        return self._to_end()

    async def _chunked(self):
        while True:
            pieces, done = self._take_chunks()
            if pieces:
                yield b"".join(pieces)
            if done:
                return
            if not await self._fill():
                raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    def _take_chunks(self) -> tuple[list[bytes], bool]:
        """The data of the complete chunks at the buffer's head, taken off it; whether the last chunk came."""
        pieces, at = [], 0
        while (eol := self.buffer.find(b"\r\n", at)) >= 0:
            try:
                size = int(self.buffer[at:eol].split(b";", 1)[0], 16)
            except ValueError:
                raise httpx.RemoteProtocolError("bad chunk size") from None
            if size == 0:
                self.buffer = b""
                return pieces, True
            if len(self.buffer) < eol + 2 + size + 2:
                break
            pieces.append(self.buffer[eol + 2:eol + 2 + size])
            at = eol + 2 + size + 2
        self.buffer = self.buffer[at:]
        return pieces, False

    async def _counted(self, length: int):
        while len(self.buffer) < length:
            if not await self._fill():
                raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")
        yield self.buffer[:length]

    async def _to_end(self):
        while self.buffer or await self._fill():
            piece, self.buffer = self.buffer, b""
            yield piece

    async def aiter_lines(self):
        """The body's lines as text (UTF-8), without their line ends (\\n or \\r\\n)."""
        pending = b""
        async for piece in self.aiter_raw():
            *lines, pending = (pending + piece).split(b"\n")
            for line in lines:
                yield line.removesuffix(b"\r").decode("utf-8", "replace")
        if pending:
            yield pending.removesuffix(b"\r").decode("utf-8", "replace")

    async def aread(self) -> bytes:
        return b"".join([piece async for piece in self.aiter_raw()])

    async def aclose(self) -> None:
        await self.stream.aclose()
