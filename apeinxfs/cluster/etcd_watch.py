"""A watch that outlives the member it is connected to (etcd.Etcd.watch makes one).

    async with etcd.watch(b"tasks/", prefix=True, start_revision=rev + 1, prev_kv=True) as events:
        async for event in events:      # Event(kind="PUT" | "DELETE", kv, prev)
            ...

The gateway streams a watch as one POST to /v3/watch answered by JSON lines (`created`,
then batches of `events`). The watch remembers the revision after the last event it
handed out; when its stream breaks (the member died or restarted) or the member says it
has lost its leader (the hasleader header makes etcd end the stream then), it connects
to the next member that answers and asks again from that revision, so no event is lost
or repeated. When no member answers within the client's timeout it raises Unavailable;
when etcd has compacted the revisions it needs, the next iteration raises Compacted (read
the state again, then watch from the read's revision + 1). Not detected: a member that stops answering without
closing the connection or losing its leader (a watch has no read deadline: it may be idle
for hours). Not for election observation (the Observe stream): watch the election's prefix.
"""
import collections
import json
from typing import TYPE_CHECKING

import httpx

from .etcd_records import (API, Compacted, EtcdError, Event, MemberFailed, answer_of, header_revision,
                           range_body, refusal)
from .etcd_tls import tls_failure

if TYPE_CHECKING:
    from .etcd import Etcd  # which imports this module


class Watch:
    """The events on a key or prefix from a revision on, across member failures; see the module."""

    def __init__(self, etcd: "Etcd", key: bytes, prefix: bool, start_revision: int | None, prev_kv: bool):
        self.etcd = etcd
        self.key, self.prefix, self.prev_kv = key, prefix, prev_kv
        self.next_revision = start_revision  # None: from the revision the first stream starts at
        self.pending: collections.deque[Event] = collections.deque()
        self.response: httpx.Response | None = None
        self.lines = None
        self.connections = 0  # streams opened so far (more than 1: it has reconnected)
        self.url: str | None = None  # the member the stream is open on

    async def __aenter__(self) -> "Watch":
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def __aiter__(self) -> "Watch":
        return self

    async def __anext__(self) -> Event:
        while not self.pending:
            try:
                self.handle(await self.read_line())
            except MemberFailed:
                await self.close()
                await self.connect()
        return self.pending.popleft()

    def create_request(self) -> dict:
        request = range_body(self.key, self.prefix) | {"prev_kv": self.prev_kv}
        if self.next_revision is not None:
            request["start_revision"] = str(self.next_revision)
        return {"create_request": request}

    async def connect(self) -> None:
        """A stream from `next_revision` on the first member that accepts it (Unavailable if none)."""
        await self.etcd.on_members(self.open_on, "watch", retry_sent=True)

    async def open_on(self, url: str) -> None:
        await self.etcd.auth.authorized(url, lambda headers: self.open_with(url, headers))

    async def open_with(self, url: str, headers: dict) -> None:
        request = self.etcd.http.build_request("POST", url + API + "/watch", json=self.create_request(),
                                               headers=headers)
        try:
            self.response = await self.etcd.http.send(request, stream=True)
        except httpx.TransportError as exc:
            tls = await tls_failure(url, exc, self.etcd.tls)
            raise MemberFailed(tls or f"cannot open a watch: {exc!r}", sent=False) from None
        self.lines = self.response.aiter_lines()
        try:
            if self.response.status_code != 200:
                await self.response.aread()
                answer_of(self.response)  # raises what the refusal means
            self.handle(await self.read_line())  # `created`, or the member's refusal
        except BaseException:
            await self.close()
            raise
        self.connections += 1
        self.url = url

    async def read_line(self) -> dict:
        """The stream's next JSON answer; MemberFailed when the stream breaks or ends."""
        try:
            line = ""
            while not line.strip():
                line = await self.lines.__anext__()
        except StopAsyncIteration:
            raise MemberFailed("the watch stream ended", sent=False) from None
        except httpx.TransportError as exc:
            raise MemberFailed(f"the watch stream broke: {exc!r}", sent=False) from None
        try:
            return json.loads(line)
        except ValueError:  # a line cut off where the stream broke
            raise MemberFailed(f"the watch stream broke inside a line: {line[:80]!r}", sent=False) from None

    def handle(self, answer: dict) -> None:
        """Queue the events of one answer and advance `next_revision`; raise what an error means."""
        if isinstance(answer.get("error"), dict):
            raise refusal(int(answer["error"].get("http_code", 500)), answer["error"])
        result = answer.get("result", answer)
        if result.get("canceled"):
            if "compact_revision" in result:
                raise Compacted(int(result["compact_revision"]))
            raise EtcdError(f"etcd: the watch was cancelled: {result.get('cancel_reason', 'no reason given')}")
        if result.get("created") and self.next_revision is None:
            self.next_revision = header_revision(result) + 1
        for raw in result.get("events", []):
            event = Event.from_json(raw)
            self.next_revision = event.kv.mod_revision + 1
            self.pending.append(event)

    async def close(self) -> None:
        if self.response is not None:
            await self.response.aclose()
        self.response = self.lines = None
