"""The client of a peer's server (peer_server.py): httpx on trio, bounded by timeouts.

    async with Peer("http://10.0.0.2:7070", tokens) as peer:
        text = await peer.status(pid, caller)            # what /tasks/PID/status shows there
        data = await peer.output(pid, caller, offset, size)
        async with peer.stream(pid, caller) as chunks:   # as `cat /tasks/PID/stream` reads it there
            async for data in chunks: ...
        line = await peer.wait(pid, caller)              # blocks until the task's tree has exited
        pids = await peer.submit(["name=a model=sim max_tokens=5"], caller)
        await peer.kill([pid], caller); await peer.ctl(pid, ["prio 3"], caller)

`caller` is the nodes.base.Caller the peer acts for. A refusal there comes back as the same
ApeinxError class (peer_wire). A peer that cannot be reached, does not answer within
`timeout` (connect: `connect_timeout`), or closes the connection mid-answer gives PeerDown
(EHOSTDOWN) with the reason (PeerUnreachable if it could not be connected to: nothing was
sent); for a command (submit, kill, ctl) whose answer was lost the
reason says that its outcome is unknown: it is never sent twice. Each request carries the
first token of `tokens` (a peer_wire.token_file, looked at again at most once a second, or
fixed bytes). A wrong token gives PeerRefused (EACCES), and the token file is looked at at
once, so that an edited file is taken by the next request. A `stream` or `wait` may idle
as long as its task is silent: the peer sends a heartbeat every HEARTBEAT_S, so a read idle
for `idle_timeout` means a peer that is stopped or cut off (PeerDown); a killed one closes
the connection (PeerDown at once).
"""
import contextlib
import time
from typing import AsyncIterator

import httpx
import trio

from ..nodes.base import Caller
from .peer_wire import (CALLER_HEADER, HEARTBEAT_S, REJECTS_HEADER, FrameReader, PeerDown, PeerRefused,
                        PeerUnreachable, TokenFile, Tokens, decode_error, encode_caller)

IDLE_TIMEOUT_S = 4 * HEARTBEAT_S  # a stream or wait with no byte for this long: the peer is stopped or cut off
UNKNOWN = "; its outcome is unknown (it may have run there)"
LINE_S = 0.001  # a command may take this much longer per line (a 20,000-line submit runs for seconds there)


class Peer:
    """A client of one peer node, at `url` (http://HOST:PORT); an async context manager."""

    def __init__(self, url: str, tokens: TokenFile | bytes, timeout: float = 5.0, connect_timeout: float = 1.0,
                 idle_timeout: float = IDLE_TIMEOUT_S):
        self.url = url.rstrip("/")
        self.tokens = TokenFile.fixed(Tokens((tokens,))) if isinstance(tokens, bytes) else tokens
        self.timeout, self.idle_timeout = timeout, idle_timeout
        self.follow_timeout = httpx.Timeout(idle_timeout, connect=connect_timeout)
        # No cap on connections (each open stream or wait holds one; the peer caps its blocked readers).
        self.http = httpx.AsyncClient(base_url=self.url + "/v1/", trust_env=False,
                                      limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
                                      timeout=httpx.Timeout(timeout, connect=connect_timeout))

    async def __aenter__(self) -> "Peer":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.http.aclose()

    async def status(self, pid: int, caller: Caller) -> str:
        return (await self.request("GET", f"tasks/{pid}/status", caller)).text

    async def output(self, pid: int, caller: Caller, offset: int = 0, size: int | None = None) -> bytes:
        """Bytes of the task's output from `offset`, at most `size` of them (None: all)."""
        last = "" if size is None else str(offset + size - 1)
        if size == 0:
            return b""
        response = await self.request("GET", f"tasks/{pid}/output", caller, headers={"range": f"bytes={offset}-{last}"})
        return b"" if response.status_code == 416 else response.content

    async def wait(self, pid: int, caller: Caller) -> str:
        """The task's exit line, once it and its children have exited."""
        async with self.follow(f"tasks/{pid}/wait", caller, 0) as chunks:
            return b"".join([data async for data in chunks]).decode()

    def stream(self, pid: int, caller: Caller, offset: int = 0):
        """An async context manager of the task's stream from `offset`: an iterator of its bytes as
        they come, which ends when the task has ended."""
        return self.follow(f"tasks/{pid}/stream", caller, offset)

    async def submit(self, lines: list[str], caller: Caller, count: int = 0) -> list[str]:
        """Submit lines placed on the peer, run as one write there; the replies (pids). `count`: the lines of
        the whole write they are part of, if more (its other nodes' tasks go into the same etcd at once), for
        the allowance of LINE_S a line here and of the peer's wait for its tasks' keys (`?lines=`)."""
        return await self.command("ctl/submit", lines, caller, count)

    async def kill(self, pids: list[int], caller: Caller) -> list[str]:
        return await self.command("ctl/kill", [str(pid) for pid in pids], caller)

    async def ctl(self, pid: int, lines: list[str], caller: Caller) -> list[str]:
        return await self.command(f"tasks/{pid}/ctl", lines, caller)

    async def command(self, path: str, lines: list[str], caller: Caller, count: int = 0) -> list[str]:
        """The replies to `lines` run as one write there, within `timeout` and LINE_S a line (of `count`, if
        more)."""
        body = "".join(f"{line}\n" for line in lines).encode()
        seconds = self.timeout + LINE_S * max(count, len(lines))
        params = {"lines": str(count)} if count > len(lines) else None
        return (await self.request("POST", path, caller, seconds, content=body, params=params)).text.splitlines()

    async def request(self, method: str, path: str, caller: Caller, seconds: float | None = None,
                      **kwargs) -> httpx.Response:
        """One request and its whole answer within `seconds` (default `timeout`; PeerDown after); refusals raised."""
        what = f"{method} {path}" + (UNKNOWN if method == "POST" else "")
        headers = self.headers(caller, kwargs.pop("headers", {}))
        seconds = seconds or self.timeout
        limit = httpx.Timeout(seconds, connect=self.http.timeout.connect)
        with self.translated(what, seconds), trio.move_on_after(seconds) as late:
            response = await self.http.request(method, path, headers=headers, timeout=limit, **kwargs)
        if late.cancelled_caught:
            raise PeerDown(f"peer {self.url}: no answer to {what} within {seconds:g}s")
        self.check(response)
        return response

    @contextlib.asynccontextmanager
    async def follow(self, path: str, caller: Caller, offset: int):
        """The bytes of a blocking file as they come, read from its frames; see `stream`."""
        with self.translated(f"GET {path}", self.idle_timeout):
            async with self.http.stream("GET", path, params={"offset": offset}, headers=self.headers(caller, {}),
                                        timeout=self.follow_timeout) as response:
                if response.status_code >= 400:
                    await response.aread()
                    self.check(response)
                chunks = self.frames(response, path)
                try:
                    yield chunks
                finally:
                    await chunks.aclose()

    async def frames(self, response: httpx.Response, path: str) -> AsyncIterator[bytes]:
        reader = FrameReader()
        with self.translated(f"GET {path}", self.idle_timeout):
            async for chunk in response.aiter_raw():
                if data := reader.feed(chunk):
                    yield data
        if not reader.at_boundary():
            raise PeerDown(f"peer {self.url}: the answer to GET {path} ended within a frame")

    def headers(self, caller: Caller, headers: dict) -> dict:
        """`headers` and those every request carries: the token this node sends now, the caller, and that this node
        journals a refusal at the peer's resolve (peer_wire.REJECTS_HEADER)."""
        authorization = self.tokens.current(time.monotonic()).authorization
        return {**headers, "authorization": authorization, CALLER_HEADER: encode_caller(caller),
                REJECTS_HEADER: "resolve"}

    def check(self, response: httpx.Response) -> None:
        """Raise the refusal an answer carries: the peer's error, or PeerRefused on 401."""
        if response.status_code == 401:
            self.tokens.check(time.monotonic())  # an edited token file is taken by the next request
            raise PeerRefused(f"peer {self.url} refused this node's token (HTTP 401): the nodes' token files differ")
        if response.status_code >= 400 and response.status_code != 416:
            raise decode_error(response.content, f"peer {self.url} (HTTP {response.status_code})")

    @contextlib.contextmanager
    def translated(self, what: str, seconds: float):
        """httpx's transport failures as PeerDown, with the reason."""
        try:
            yield
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise PeerUnreachable(f"peer {self.url}: cannot connect: {exc or type(exc).__name__}") from None
        except httpx.TimeoutException:
            raise PeerDown(f"peer {self.url}: silent for {seconds:g}s during {what}") from None
        except httpx.TransportError as exc:
            raise PeerDown(f"peer {self.url}: connection lost during {what}: {exc or type(exc).__name__}") from None
