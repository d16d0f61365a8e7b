"""httpx for engines: connections opened ahead, requests sent in one write, straight to the transport.

A request to an engine pays for its TCP connection on the time to first token (in this
daemon's one thread, trio's connect takes 0.3-1 ms, while the reader's FUSE requests wait),
and keep-alive does not spare it: llama-server closes each connection after a stream. So
`client()` gives an ordinary `httpx.AsyncClient` (proxies from the environment included)
whose direct connections come from a `SpareBackend` (one per driver, shared by the clients
of its GPUs): httpcore's trio backend with, per engine address, one connection already open
(`Keeper`: a connected non-blocking socket). A request takes it instead of connecting; the keeper
opens the next one REFILL_S later, off the path of the first token, and renews a spare
that waited SPARE_S (engines drop idle connections after 5 s). A connection to an IP
address, spare or not, is one connect(2) (`connect`), without trio.open_tcp_stream's
resolver and nursery. A spare the engine closed anyway (readable: EOF) is dropped and the
request connects; one it closes just as the request goes out fails before any answer,
which the openai driver retries at once (openai.Stale). Proxied URLs keep httpx's own
transports (mounted from the environment) and their backend: only the client's default
transport gets spares.

`stream` sends a request the client would send straight (http://, no proxy) as a bare
exchange (bare.py) on a socket of its backend (`SpareBackend.socket`), and any other to
the transport the client picks for its URL, whose streams (`SpareBackend.connect_tcp`) hold
a request's writes until it reads (`Coalescing`): headers and body leave in one send, at
one trio checkpoint. Once `pace`d (a stream whose tokens flow), an answer of either kind
is read at most once per interval (pacing.Reads), several tokens a read. Either way the
request goes without the client's default headers, cookies, authentication, redirects and
event hooks (an engine needs none). httpx has no public API for these hooks (the default
transport and its backend, the transport for a URL): they use its private attributes,
checked where they are set. Not an HTTP client: httpx is, and bare.py for one kind of request.
"""
import contextlib
import errno
import functools
import ipaddress
import math
import os
import select
import socket

import httpcore
import httpx
import trio
from httpcore._backends.trio import TrioStream  # the stream httpcore's trio backend wraps a connection in

from ..polling import ready
from . import bare, pacing, scrape

SPARE_S = 2.0  # the longest a spare waits for a request before it is renewed (engines drop idle ones after 5 s)
REFILL_S = 0.05  # after a spare is taken, the wait before the next is opened: its connect is off the first token's path
RETRY_S = 2.0  # after a failed connect, the wait before the keeper tries again (the engine may be down)
FLUSH_BYTES = 65536  # a request body larger than this goes out in pieces as it is written


@contextlib.asynccontextmanager
async def client(backend: "SpareBackend", **options):
    """An httpx.AsyncClient(**options) whose direct connections come from `backend` (which several clients
    may share: one spare per address for all); the keepers it hosts close with it."""
    async with trio.open_nursery() as nursery, httpx.AsyncClient(**options) as http:
        install(http, backend)
        backend.nurseries.append(nursery)
        try:
            yield http
        finally:
            backend.leave(nursery)


def stream(http: httpx.AsyncClient, url: str, body: dict, timeout: float):
    """POST `body` as JSON to `url`: through a bare exchange (bare.py) on a socket of the client's backend
    where `http` sends it straight (http://, no proxy), else through the transport it has for it; an async
    context manager that yields the streaming response."""
    target = parsed(url)
    transport = http._transport_for_url(target)
    if target.scheme == "http" and transport is http._transport:
        return bare.exchange(transport._pool._network_backend, target, body, timeout)
    return transported(transport, target, body, timeout)


@contextlib.asynccontextmanager
async def transported(transport, url: httpx.URL, body: dict, timeout: float):
    """POST `body` as JSON to `url` through httpx's `transport`; yields the streaming response."""
    request = httpx.Request("POST", url, json=body, headers=scrape.IDENTITY, extensions={"timeout": httpx.Timeout(timeout).as_dict()})
    response = await transport.handle_async_request(request)
    response.request = request
    try:
        yield response
    finally:
        await response.aclose()


def pace(response, interval) -> None:
    """From now on, read `response`'s connection at most once per `interval()` seconds, asked before each
    read (if it is one of ours: a bare exchange's, or a Coalescing stream's)."""
    paced = response if isinstance(response, bare.Response) else response.extensions.get("network_stream")
    if isinstance(paced, (bare.Response, Coalescing)):
        paced.reads.pace(interval)


parsed = functools.lru_cache(maxsize=256)(httpx.URL)  # an engine's few URLs, parsed once


def install(http: httpx.AsyncClient, backend: httpcore.AsyncNetworkBackend) -> None:
    """Make `backend` the network backend of the client's default transport (not of its proxy mounts).

    httpx has no public way to give its default transport a backend without losing the proxies
    it mounts from the environment, so this sets the pool's; it fails loudly (at the driver's
    start) if httpx changes, as it does if the client lacks what `stream` uses."""
    pool = getattr(http._transport, "_pool", None)
    if type(pool) is not httpcore.AsyncConnectionPool or not hasattr(pool, "_network_backend"):
        raise TypeError(f"httpx {httpx.__version__}: the default transport's pool is {type(pool).__name__}")
    if not callable(getattr(http, "_transport_for_url", None)):  # what `stream` uses
        raise TypeError(f"httpx {httpx.__version__}: AsyncClient has no _transport_for_url")
    pool._network_backend = backend


class SpareBackend(httpcore.AsyncNetworkBackend):
    """httpcore's trio backend, with a spare connection per address, kept by a keeper running in the
    first of `nurseries` (those of the clients using this backend)."""

    def __init__(self):
        self.inner, self.nurseries = httpcore.TrioBackend(), []
        self.keepers: dict[tuple[str, int], Keeper] = {}

    def leave(self, nursery) -> None:
        """A client closes: stop the keepers in its nursery (the next request elsewhere starts new ones)."""
        self.nurseries.remove(nursery)
        self.keepers = {address: k for address, k in self.keepers.items() if k.nursery is not nursery}
        nursery.cancel_scope.cancel()

    async def socket(self, host: str, port: int, timeout: float | None) -> socket.socket:
        """A connected non-blocking socket to (`host`, `port`): the spare, or one connect(2) (bare.py reads it)."""
        return self._keeper(host, port).take() or await connect(host, port, timeout)

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        if local_address is None and not socket_options:
            sock = trio.socket.from_stdlib_socket(await self.socket(host, port, timeout))
            return Coalescing(TrioStream(trio.SocketStream(sock)))
        return Coalescing(await self.inner.connect_tcp(host, port, timeout, local_address, socket_options))

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        return Coalescing(await self.inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)

    def _keeper(self, host: str, port: int) -> "Keeper":
        if (keeper := self.keepers.get((host, port))) is None:
            keeper = Keeper(lambda: connect(host, port, RETRY_S), self.nurseries[0])
            self.keepers[host, port] = keeper
            keeper.nursery.start_soon(keeper.keep)
        return keeper


async def connect(host: str, port: int, timeout: float | None) -> socket.socket:
    """A non-blocking stdlib socket connected to `host` as httpcore's trio backend connects (TCP_NODELAY,
    httpcore's errors); to an IP address, one connect(2) without trio.open_tcp_stream's resolver and
    happy-eyeballs nursery (a third of its cost here), nor trio's wait where the connection is made at once
    (to a local engine)."""
    if (family := family_of(host)) is None:  # a name: resolved as httpcore does
        stream = await httpcore.TrioBackend().connect_tcp(host, port, timeout)
        sock = socket.socket(fileno=stream.get_extra_info("socket").detach())
        sock.setblocking(False)
        return sock
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:  # out of descriptors, say: the engine cannot be reached from here
        raise httpcore.ConnectError(exc) from exc
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        if (error := sock.connect_ex((host, port))) == errno.EINPROGRESS:
            if not ready(sock, select.POLLOUT):
                with trio.fail_after(math.inf if timeout is None else timeout):
                    await trio.lowlevel.wait_writable(sock)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, f"cannot connect to {host}:{port}: {os.strerror(error)}")
    except BaseException as exc:
        sock.close()
        if isinstance(exc, trio.TooSlowError):
            raise httpcore.ConnectTimeout(f"connect to {host}:{port} timed out") from exc
        if isinstance(exc, OSError):
            raise httpcore.ConnectError(exc) from exc
        raise
    return sock


@functools.lru_cache(maxsize=256)
def family_of(host: str) -> int | None:
    """The address family of an IP address; None for a name."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return None


class Keeper:
    """The spare connection of one address (`connect()` opens one), kept by `keep` in `nursery`: open,
    renewed every SPARE_S, opened again REFILL_S after it is taken."""

    def __init__(self, connect, nursery):
        self.connect, self.nursery = connect, nursery
        self.spare: socket.socket | None = None
        self.taken = trio.Event()

    def take(self) -> socket.socket | None:
        """The spare if the engine has not hung up on it, else None."""
        spare, self.spare = self.spare, None
        self.taken.set()
        if spare is not None and ready(spare, select.POLLIN):  # idle yet readable: EOF, the engine closed it
            spare.close()
            return None
        return spare

    async def keep(self) -> None:
        """Keep a spare open until cancelled."""
        try:
            while True:
                fresh = await self._open()
                self._drop()  # the one it renews, if not taken meanwhile
                self.spare, self.taken = fresh, trio.Event()
                with trio.move_on_after(SPARE_S):
                    await self.taken.wait()
                if self.spare is None:
                    await trio.sleep(REFILL_S)
        finally:
            self._drop()

    async def _open(self) -> socket.socket:
        while True:
            try:
                return await self.connect()
            except (httpcore.ConnectError, httpcore.ConnectTimeout, OSError):
                await trio.sleep(RETRY_S)

    def _drop(self) -> None:
        spare, self.spare = self.spare, None
        if spare is not None:
            spare.close()


class Coalescing(httpcore.AsyncNetworkStream):
    """A network stream that holds writes (up to FLUSH_BYTES) until the next read: a request's
    headers and body go out in one send. Closing drops what is held: nobody waits for its answer.
    Once paced (`reads`), a read waits until the interval after the previous one began."""

    def __init__(self, inner: httpcore.AsyncNetworkStream):
        self.inner, self.held, self.write_timeout = inner, b"", None
        self.reads = pacing.Reads()

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.held, self.write_timeout = self.held + buffer, timeout
        if len(self.held) >= FLUSH_BYTES:
            await self.flush()

    async def flush(self) -> None:
        held, self.held = self.held, b""
        await self.inner.write(held, self.write_timeout)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self.held:
            await self.flush()
        await self.reads.wait()
        return await self.inner.read(max_bytes, timeout)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> "Coalescing":
        return Coalescing(await self.inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str):
        return self.inner.get_extra_info(info)
