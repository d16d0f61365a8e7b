"""Renewed TLS files for the etcd client: new connections use the CA, certificate and key on disk now.

`TlsFiles.load(ca, (cert, key))` builds the client's SSL context (etcd_tls.client_context, with
its checks) and notes each file's stamp; it is a renewal.Renewable (the looking: stamps, at most
once per CHECK_S, the last good context kept while a renewed set does not load, the failure said
once). `current(now)` is the context a new connection takes; the client calls `check(now)` after
a TLS refusal, so a refused client takes a renewed certificate at its next try. A set that fails
to load (a key that does not match the certificate: renewal tools write one file, then the
other) is not taken: `failure` says why (/ai/cluster's `TlsRenewal` row). etcd's own server and
Go client load the files at every handshake (etcd-io/etcd#9541); Python's ssl has no such hook,
so `Renewing`, the client's httpx transport, opens new connections through a transport made for
the current context and closes a replaced one once its last request or stream ends: connections
already open go on. Not the files' contents (etcd_tls.py), nor etcd's password (etcd_auth.py).
"""
import functools
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import attrs
import httpx
import trio

from .etcd_tls import client_context
from .renewal import Renewable, Wording

CLOSE_S = 1.0  # the longest the close of a replaced transport's idle connections may take
TLS_WORDING = Wording("renewed etcd TLS files", "the files loaded before stay in use", "new connections use them")


@attrs.define(eq=False)
class TlsFiles(Renewable[ssl.SSLContext]):
    """The etcd client's SSL context and the files it was loaded from, loaded again once they change."""

    @classmethod
    def load(cls, ca: str | None = None, certificate: tuple[str, str] | None = None) -> "TlsFiles":
        """The context of these files, read now; Invalid naming the key whose file is bad."""
        paths = ((ca,) if ca is not None else ()) + (certificate or ())
        return cls.read_now(paths, functools.partial(client_context, ca, certificate), TLS_WORDING)

    @property
    def context(self) -> ssl.SSLContext:
        """The context a connection opened now takes (`current(now)` looks at the files first)."""
        return self.value


class Released(httpx.AsyncByteStream):
    """A response's body that calls `release()` once when closed (its connection is back in the pool)."""

    def __init__(self, stream: httpx.AsyncByteStream, release: Callable[[], Awaitable[None]]):
        self.stream, self.release = stream, release
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self.stream.aclose()
        finally:
            if not self.closed:
                self.closed = True
                await self.release()


class Renewing(httpx.AsyncBaseTransport):
    """httpx's transport for `files`' current context: a transport `make(context)` per context, the
    replaced one closed once no request or response body uses it."""

    def __init__(self, files: TlsFiles, make: Callable[[ssl.SSLContext], httpx.AsyncBaseTransport]):
        self.files, self.make = files, make
        self.context = files.context
        self.transport = make(self.context)
        self.users = {self.transport: 0}  # each open transport's requests and response bodies in flight

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        transport = await self.now()
        self.users[transport] += 1
        try:
            response = await transport.handle_async_request(request)
        except BaseException:
            await self.release(transport)
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(response.status_code, headers=response.headers, extensions=response.extensions,
                              stream=Released(response.stream, lambda: self.release(transport)))

    async def now(self) -> httpx.AsyncBaseTransport:
        """The transport of the files' current context, made (and the one before let go) where it changed."""
        context = self.files.current(trio.current_time())
        if context is not self.context:
            replaced, self.context = self.transport, context
            self.transport = self.make(context)
            self.users[self.transport] = 0
            if not self.users[replaced]:
                await self.close(replaced)
        return self.transport

    async def release(self, transport: httpx.AsyncBaseTransport) -> None:
        """One use of `transport` ended; a replaced transport is closed with its last use."""
        if transport not in self.users:  # the client was closed meanwhile
            return
        self.users[transport] -= 1
        if transport is not self.transport and not self.users[transport]:
            await self.close(transport)

    async def close(self, transport: httpx.AsyncBaseTransport) -> None:
        """Close replaced `transport`'s idle connections, within CLOSE_S even if the caller is cancelled."""
        del self.users[transport]
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_S):
            await transport.aclose()

    async def aclose(self) -> None:
        for transport in list(self.users):
            await transport.aclose()
        self.users.clear()
