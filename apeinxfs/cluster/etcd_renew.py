"""Renewed TLS files for the etcd client: new connections use the CA, certificate and key on disk now.

`TlsFiles.load(ca, (cert, key))` builds the client's SSL context (etcd_tls.client_context, with
its checks) and notes each file's stamp (inode, size, mtime_ns). `current(now)` is the context a
new connection takes: once CHECK_S has passed since the last look it stats the files again
(never more often: no disk per request), and `check(now)` does so at once (the client calls it
after a TLS refusal, so a refused client takes a renewed certificate at its next try). A set
whose stamps changed is loaded whole; a set that fails to load (a key that does not match the
certificate: renewal tools write one file, then the other) is not taken: the last good context
stays, `failure` says why (/ai/cluster's `TlsRenewal` row), logged once per distinct reason,
and the set is loaded again at each later look until it loads. etcd's own server and Go client
load the files at every handshake (etcd-io/etcd#9541); Python's ssl has no such hook, so
`Renewing`, the client's httpx transport, opens new connections through a transport made for the
current context and closes a replaced one once its last request or stream ends: connections
already open go on. Not the files' contents (etcd_tls.py), nor etcd's password (etcd_auth.py).
"""
import logging
import math
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import attrs
import httpx
import trio

from ..kernel.errors import Invalid
from .etcd_tls import client_context

log = logging.getLogger(__name__)
CHECK_S = 1.0  # the most often the files are looked at (stat), but after a TLS refusal
CLOSE_S = 1.0  # the longest the close of a replaced transport's idle connections may take
Stamp = tuple[int, int, int] | None  # a file's (inode, size, mtime_ns); None where it cannot be stat'ed


def stamps_of(paths: tuple[str, ...]) -> tuple[Stamp, ...]:
    """Each file's stamp: a renewal (a new file renamed in, or one rewritten) changes it."""
    return tuple(stamp_of(path) for path in paths)


def stamp_of(path: str) -> Stamp:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_ino, found.st_size, found.st_mtime_ns


@attrs.define(eq=False)
class TlsFiles:
    """The etcd client's SSL context and the files it was loaded from, loaded again once they change."""

    ca: str | None
    certificate: tuple[str, str] | None  # (cert, key)
    context: ssl.SSLContext
    stamps: tuple[Stamp, ...]  # the files' stamps when `context` was loaded
    checked: float = -math.inf  # when the files were last looked at (trio time)
    failure: str | None = None  # why the files on disk now are not taken (None: they are, or unchanged)

    @classmethod
    def load(cls, ca: str | None = None, certificate: tuple[str, str] | None = None) -> "TlsFiles":
        """The context of these files, read now; Invalid naming the key whose file is bad."""
        stamps = stamps_of(paths_of(ca, certificate))
        return cls(ca, certificate, client_context(ca, certificate), stamps)

    @classmethod
    def fixed(cls, context: ssl.SSLContext) -> "TlsFiles":
        """`context` for good: no files to look at."""
        return cls(None, None, context, ())

    @property
    def paths(self) -> tuple[str, ...]:
        return paths_of(self.ca, self.certificate)

    @property
    def state(self) -> str:
        """/ai/cluster's TlsRenewal row: `-` without files, `ok`, or why the files on disk are not taken."""
        if not self.paths:
            return "-"
        return "ok" if self.failure is None else f"not taken: {self.failure}; the files loaded before stay in use"

    def current(self, now: float) -> ssl.SSLContext:
        """The context a connection opened at `now` takes, the files looked at if CHECK_S passed since last."""
        if now - self.checked >= CHECK_S:
            self.check(now)
        return self.context

    def check(self, now: float) -> None:
        """Look at the files now: load them if their stamps changed, keeping the last good context if that fails."""
        self.checked = now
        stamps = stamps_of(self.paths)
        if stamps == self.stamps:
            self.failure = None  # back to the files in use
            return
        try:
            context = client_context(self.ca, self.certificate)
        except Invalid as refused:
            if refused.reason != self.failure:
                log.warning("cluster: renewed etcd TLS files not taken: %s; the files loaded before stay in use",
                            refused.reason)
            self.failure = refused.reason
            return
        log.info("cluster: renewed etcd TLS files taken (%s): new connections use them", ", ".join(self.paths))
        self.context, self.stamps, self.failure = context, stamps, None


def paths_of(ca: str | None, certificate: tuple[str, str] | None) -> tuple[str, ...]:
    return ((ca,) if ca is not None else ()) + (certificate or ())


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
