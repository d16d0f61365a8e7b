"""Tier 1: drivers/spares.py, httpx for engines: spare connections, one send per request, paced reads, proxies.

Real sockets on 127.0.0.1 (`trio.serve_tcp`) on trio's real clock, or a fake network
stream on the autojump clock; no engine, no mount. The openai driver's retry of a spare
the engine dropped is in test_openai_driver.py.
"""
import select

import httpcore
import pytest
import trio

from apeinxfs.drivers import spares
from fakehttp import read_request

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"


class Server:
    """Answers each request `ok`; counts connections accepted and open; hangs up unasked on those listed
    in `hang_up` (1 = the first accepted)."""

    def __init__(self, hang_up=()):
        self.hang_up, self.accepted, self.open, self.requests, self.port = set(hang_up), 0, 0, [], None

    async def start(self, nursery) -> "Server":
        listeners = await nursery.start(trio.serve_tcp, self.handle, 0)
        self.port = listeners[0].socket.getsockname()[1]
        return self

    async def handle(self, stream) -> None:
        self.accepted += 1
        if self.accepted in self.hang_up:
            return
        self.open += 1
        try:
            if (request := await read_request(stream)) is not None:
                self.requests.append(request)
                await stream.send_all(ANSWER)
        finally:
            self.open -= 1


class Until(trio.abc.Instrument):
    """Sets `met` once `predicate()` holds, looked at after every step of every task (where state changes)."""

    def __init__(self, predicate):
        self.predicate, self.met = predicate, trio.Event()

    def after_task_step(self, task) -> None:
        if self.predicate():
            self.met.set()


async def until(predicate, timeout: float = 5.0) -> None:
    """Return at the first task step after which `predicate()` holds, not a polling interval later;
    `timeout` (real seconds) only bounds a test that would otherwise hang."""
    if predicate():
        return
    instrument = Until(predicate)
    trio.lowlevel.add_instrument(instrument)
    try:
        with trio.fail_after(timeout):
            await instrument.met.wait()
    finally:
        trio.lowlevel.remove_instrument(instrument)


async def post(http, url: str):
    """One request through spares.stream: (the socket a bare exchange went on, else None; the answer's body)."""
    async with spares.stream(http, url, {"prompt": "hi"}, 5) as response:
        return getattr(response, "socket", None), await response.aread()


def backend_of(http) -> spares.SpareBackend:
    return http._transport._pool._network_backend


async def test_a_request_goes_out_on_the_spare_opened_ahead(nursery):
    """After a first request, the keeper opens a spare to that address, and the next request is sent on it."""
    server = await Server().start(nursery)
    url = f"http://127.0.0.1:{server.port}/v1/completions"
    async with spares.client(spares.SpareBackend()) as http:
        assert (await post(http, url))[1] == b"ok"
        keeper = backend_of(http).keepers["127.0.0.1", server.port]
        await until(lambda: keeper.spare is not None)
        spare = keeper.spare
        assert await post(http, url) == (spare, b"ok")
    assert [r.body for r in server.requests] == [{"prompt": "hi"}] * 2


async def test_a_connection_httpcore_asks_for_is_the_spare_too(nursery):
    """A connection httpcore's pool asks the backend for (an https engine's) is the spare, as a trio stream that
    carries a request and its answer."""
    server = await Server().start(nursery)
    async with spares.client(spares.SpareBackend()) as http:
        await post(http, f"http://127.0.0.1:{server.port}/v1/completions")
        keeper = backend_of(http).keepers["127.0.0.1", server.port]
        await until(lambda: keeper.spare is not None)
        spare = keeper.spare.fileno()
        stream = await backend_of(http).connect_tcp("127.0.0.1", server.port, 5)
        assert stream.get_extra_info("socket").fileno() == spare
        await stream.write(b"POST /v1/completions HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}")
        assert await stream.read(4096) == ANSWER
        await stream.aclose()
    assert [r.body for r in server.requests] == [{"prompt": "hi"}, {}]


async def test_a_spare_the_engine_closed_is_dropped_and_the_request_connects(nursery):
    """A spare the engine hung up on (EOF waiting on it) is not used: the request gets a connection of its own."""
    server = await Server(hang_up={2}).start(nursery)  # 1: the first request's, 2: the first spare
    url = f"http://127.0.0.1:{server.port}/v1/completions"
    async with spares.client(spares.SpareBackend()) as http:
        await post(http, url)
        keeper = backend_of(http).keepers["127.0.0.1", server.port]
        await until(lambda: keeper.spare is not None and spares.ready(keeper.spare, select.POLLIN))
        dead = keeper.spare
        stream, body = await post(http, url)
    assert stream is not dead and body == b"ok" and len(server.requests) == 2


async def test_a_spare_is_renewed_before_engines_drop_idle_ones(nursery, monkeypatch):
    """A spare nobody takes is replaced every SPARE_S, the old one closed: one connection open at a time."""
    monkeypatch.setattr(spares, "SPARE_S", 0.05)
    server = await Server().start(nursery)
    async with spares.client(spares.SpareBackend()) as http:
        backend_of(http)._keeper("127.0.0.1", server.port)
        await until(lambda: server.accepted >= 4)
        await until(lambda: server.open == 1)  # the renewed ones closed (4 would stay open if they were not)
    await until(lambda: server.open == 0)


async def test_clients_sharing_a_backend_share_one_spare_per_address(nursery):
    """Clients on one backend (a driver's GPUs) share one spare per address; when the client whose nursery runs
    its keeper closes, the spare closes and another client's next request starts a keeper of its own."""
    server = await Server().start(nursery)
    url, backend = f"http://127.0.0.1:{server.port}/v1/completions", spares.SpareBackend()
    close_first, first_closed = trio.Event(), trio.Event()

    async def first_client(task_status=trio.TASK_STATUS_IGNORED):
        async with spares.client(backend) as http:
            await post(http, url)
            task_status.started()
            await close_first.wait()
        first_closed.set()
    await nursery.start(first_client)
    async with spares.client(backend) as second:
        keeper = backend.keepers["127.0.0.1", server.port]
        await until(lambda: keeper.spare is not None)
        spare = keeper.spare
        assert (await post(second, url))[0] is spare  # the first client's keeper serves the second
        close_first.set()
        await first_closed.wait()
        await until(lambda: server.open == 0)
        assert backend.keepers == {}
        await post(second, url)
        assert backend.keepers["127.0.0.1", server.port].nursery is backend.nurseries[0]


async def test_proxied_urls_keep_httpx_proxy_transport(nursery, monkeypatch):
    """With HTTP_PROXY set, a request goes to the proxy (absolute URL), and no spare is opened anywhere."""
    proxy = await Server().start(nursery)
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    async with spares.client(spares.SpareBackend()) as http:
        assert (await post(http, "http://engine.invalid:8000/v1/completions"))[1] == b"ok"
        assert backend_of(http).keepers == {}
    assert [(r.path, r.body) for r in proxy.requests] == [("http://engine.invalid:8000/v1/completions",
                                                          {"prompt": "hi"})]


class FakeStream(httpcore.AsyncNetworkStream):
    """A network stream that records writes and answers every read with b'x'."""

    def __init__(self):
        self.writes = []

    async def write(self, buffer, timeout=None):
        self.writes.append(buffer)

    async def read(self, max_bytes, timeout=None):
        return b"x"


async def test_writes_wait_for_the_next_read_and_go_out_in_one():
    """A request's writes reach the socket as one send, when the answer is first read; a large one at once."""
    inner = FakeStream()
    stream = spares.Coalescing(inner)
    await stream.write(b"POST / HTTP/1.1\r\n\r\n")
    await stream.write(b"{}")
    assert inner.writes == []
    await stream.read(100)
    assert inner.writes == [b"POST / HTTP/1.1\r\n\r\n{}"]
    await stream.write(b"y" * spares.FLUSH_BYTES)
    assert inner.writes[1:] == [b"y" * spares.FLUSH_BYTES]


async def test_a_paced_stream_reads_at_most_once_per_interval(autojump_clock):
    """Once paced, reads begin pace_s apart (the first pace_s after pacing began), however fast data comes."""
    stream = spares.Coalescing(FakeStream())
    await stream.read(100)
    stream.reads.pace(lambda: 0.005)
    started = trio.current_time()
    times = []
    for _ in range(3):
        await stream.read(100)
        times.append(trio.current_time() - started)
    assert [round(t, 6) for t in times] == [0.005, 0.01, 0.015]


async def test_connect_reaches_an_address_and_maps_a_refusal_to_httpcore(nursery):
    """connect() opens a connection to an IP address without the resolver; a refused one raises
    httpcore.ConnectError naming the address, which the keeper and the openai driver retry."""
    server = await Server().start(nursery)
    with trio.socket.from_stdlib_socket(await spares.connect("127.0.0.1", server.port, 5)) as sock:
        await sock.send(b"GET / HTTP/1.1\r\n\r\n")
        assert (await sock.recv(4096)).startswith(b"HTTP/1.1 200")
    with trio.socket.socket() as unused:  # bound, never listening: connect(2) is refused
        await unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        with pytest.raises(httpcore.ConnectError, match=f"cannot connect to 127.0.0.1:{port}: Connection refused"):
            await spares.connect("127.0.0.1", port, 5)
