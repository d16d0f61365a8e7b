"""Tier 1: drivers/bare.py, the bare HTTP/1.1 exchange of an engine stream, on a scripted socket.

The answer comes in the pieces a test chooses (a chunk cut anywhere, a line across reads);
no real socket, no engine. The openai driver's tests run it against fake engines over TCP
(test_openai_driver.py), and bench_tokens.py against llama-server.
"""
import socket

import httpx
import pytest
import trio

from apeinxfs.drivers import bare, sse

URL = httpx.URL("http://127.0.0.1:8080/v1/completions?x=1")


class Scripted:
    """A non-blocking socket that gives `pieces` one per recv, then b'' (the connection's end), or raises
    `error` instead of that end; it records what is sent."""

    def __init__(self, pieces, error=None):
        self.pieces, self.error, self.sent, self.closed = list(pieces), error, b"", False

    def send(self, data):
        self.sent += data
        return len(data)

    def recv(self, max_bytes):
        if self.pieces:
            return self.pieces.pop(0)
        if self.error is not None:
            raise self.error
        return b""

    def close(self):
        self.closed = True


class Backend:
    def __init__(self, stream):
        self.stream = stream

    async def socket(self, host, port, timeout):
        assert (host, port) == ("127.0.0.1", 8080)
        return self.stream


def cut(data: bytes, *at: int) -> list[bytes]:
    """`data` in pieces cut at the offsets `at`."""
    bounds = [0, *at, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def chunked(*pieces: bytes) -> bytes:
    """`pieces` in HTTP/1.1 chunked encoding, ended."""
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


CHUNKED = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
           + chunked(b'data: {"a":1}\n', b"\n", 'data: {"b":"é"}\n\n'.encode()))


async def test_the_request_is_one_post_of_json_that_asks_to_close():
    """One send: the request line with path and query, Host, the JSON's length, Connection: close, the body."""
    stream = Scripted([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
    async with bare.exchange(Backend(stream), URL, {"prompt": "é"}, 5) as response:
        head, _, body = stream.sent.partition(b"\r\n\r\n")
        assert head.split(b"\r\n")[0] == b"POST /v1/completions?x=1 HTTP/1.1"
        assert b"Host: 127.0.0.1:8080" in head and b"Connection: close" in head
        assert body == '{"prompt":"é"}'.encode() and f"Content-Length: {len(body)}".encode() in head
        assert (response.status_code, await response.aread()) == (200, b"")
    assert stream.closed


@pytest.mark.parametrize("cuts", [(), (5,), (90, 97, 101), tuple(range(1, len(CHUNKED)))])
async def test_chunked_lines_come_whole_however_the_reads_cut_them(cuts):
    """Headers, chunk sizes, data and a two-byte character cut across reads anywhere give the same lines."""
    async with bare.exchange(Backend(Scripted(cut(CHUNKED, *cuts))), URL, {}, 5) as response:
        assert response.status_code == 200 and response.headers["content-type"] == "text/event-stream"
        assert [line async for line in sse.lines(response.aiter_bytes())] == ['data: {"a":1}', "", 'data: {"b":"é"}', ""]


async def test_a_counted_body_and_one_to_the_end_of_the_connection():
    """Content-Length reads that many bytes; without it or chunking, the body ends with the connection."""
    counted = Scripted([b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nno", b"ne!extra"])
    async with bare.exchange(Backend(counted), URL, {}, 5) as response:
        assert (response.status_code, await response.aread()) == (404, b"none!")
    to_end = Scripted([b"HTTP/1.1 200 OK\r\n\r\nline one\r\nline", b" two"])
    async with bare.exchange(Backend(to_end), URL, {}, 5) as response:
        assert [line async for line in sse.lines(response.aiter_bytes())] == ["line one", "line two"]


@pytest.mark.parametrize("framing", [b"Transfer-Encoding: chunked\r\n\r\nfffffffffff\r\n", b"Content-Length: 999999999\r\n\r\n"])
async def test_a_body_comes_as_read_whatever_size_the_engine_announces(framing):
    """A chunk or Content-Length larger than what came gives what came at once, not held until it is whole."""
    stream = Scripted([b"HTTP/1.1 200 OK\r\n" + framing + b"data: a\n", b"data: b\n"])
    async with bare.exchange(Backend(stream), URL, {}, 5) as response:
        pieces = response.aiter_bytes()
        assert [await anext(pieces), await anext(pieces)] == [b"data: a\n", b"data: b\n"]
        await pieces.aclose()


async def test_failures_are_httpx_errors_and_close_the_connection():
    """No answer at all, a reset before it, a cut chunked body: the httpx errors the openai driver tells apart."""
    silent = Scripted([])
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        async with bare.exchange(Backend(silent), URL, {}, 5):
            pass
    assert silent.closed
    with pytest.raises(httpx.ReadError):
        async with bare.exchange(Backend(Scripted([], ConnectionResetError("reset"))), URL, {}, 5):
            pass
    with pytest.raises(httpx.RemoteProtocolError, match="complete message body"):
        async with bare.exchange(Backend(Scripted(cut(CHUNKED, 120)[:1])), URL, {}, 5) as response:
            await response.aread()


async def test_an_engine_silent_past_the_timeout_is_a_read_timeout(autojump_clock):
    """A read that waits longer than the timeout ends the exchange with httpx.ReadTimeout, before or after
    the headers; time spent between reads does not count."""
    class Hanging(Scripted):
        """Once its pieces are read, a socket whose engine is silent: recv would block, and waiting for it
        waits on a real socket nobody writes to."""

        def __init__(self, pieces, silent):
            super().__init__(pieces)
            self.silent = silent

        def recv(self, max_bytes):
            if self.pieces:
                return super().recv(max_bytes)
            raise BlockingIOError

        def fileno(self):
            return self.silent.fileno()

    silent, _ = socket.socketpair()
    with silent, _:
        with pytest.raises(httpx.ReadTimeout):
            async with bare.exchange(Backend(Hanging([], silent)), URL, {}, 5):
                pass
        head = Hanging([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"1\r\na\r\n"], silent)
        started = trio.current_time()
        with pytest.raises(httpx.ReadTimeout):
            async with bare.exchange(Backend(head), URL, {}, 5) as response:
                await trio.sleep(10)
                await response.aread()
    assert trio.current_time() - started == pytest.approx(15) and head.closed


async def test_an_answer_that_never_runs_dry_lets_other_tasks_run_and_a_cancel_in():
    """An engine that always has more to read (every recv finds data) holds neither the daemon's other
    tasks off nor a cancel: its reader yields every few reads."""
    class Flood(Scripted):
        """A head, then a line per recv, up to `most` reads (a bound, so that a reader that never yields
        still ends)."""

        def __init__(self, most):
            super().__init__([b"HTTP/1.1 200 OK\r\n\r\n"])
            self.reads, self.most = 0, most

        def recv(self, max_bytes):
            self.reads += 1
            return super().recv(max_bytes) if self.pieces else b"data: {}\n" if self.reads < self.most else b""

    flood = Flood(most=100_000)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            async def cancel_soon():
                for _ in range(3):
                    await trio.lowlevel.checkpoint()  # runs only when the reader yields
                scope.cancel()
            nursery.start_soon(cancel_soon)
            async with bare.exchange(Backend(flood), URL, {}, 5) as response:
                async for _ in sse.lines(response.aiter_bytes()):
                    pass
    assert scope.cancelled_caught and flood.reads < 100 and flood.closed
