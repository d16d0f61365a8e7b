"""A watch that outlives the member it is connected to (etcd.Etcd.watch makes one).

    async with etcd.watch(b"tasks/", prefix=True, start_revision=rev + 1, prev_kv=True, nursery=nursery) as events:
        async for event in events:      # Event(kind="PUT" | "DELETE", kv, prev)
            ...

The gateway streams a watch as one POST to /v3/watch answered by JSON lines (`created`,
then batches of `events`). The watch remembers the revision after the last event it
handed out; when its stream breaks (the member died or restarted), the member says it
has lost its leader (the hasleader header makes etcd end the stream then), or the member
fails the check below, it connects to the next member that answers and asks again from
that revision, so no event is lost or repeated. When no member answers within the client's
timeout it raises Unavailable (at once when every member refused it by TLS); when etcd has
compacted the revisions it needs, the next iteration raises Compacted (read the state
again, then watch from the read's revision + 1).

A member that stops answering without closing the connection (a disk stall, a frozen VM,
a network that drops packets) would leave the stream silent for ever, and a watch may
be idle for hours. So after each WATCH_CHECK_S without an answer read the watch asks the
stream's own member for a linearizable count of the watched key, which that member
answers only if it is running, has a leader and a quorum, and applies; no answer within
the client's attempt_timeout, or a refusal, counts as a broken stream. A hung member is so
left within WATCH_CHECK_S + attempt_timeout (5 s); an idle member that answers keeps the stream.
A loaded cluster may answer checks later than attempt_timeout without being hung: after a
check that timed out, the watch's checks wait twice attempt_timeout, until one is answered
within attempt_timeout, so an idle watch on such a cluster moves once, not every 5 s, and a
hung member is then left within WATCH_CHECK_S + 2 x attempt_timeout (7 s).
The check runs in one task per stream, ended when the stream closes, in the nursery the
caller gives (`nursery=`): one that outlives the watch, so that the watch's own errors
reach the caller unwrapped, not in an exception group. The reader notes the time of each
answer and reads inside a cancel scope; a failed check cancels that scope (cancelling a
read of httpx's lines ends the stream, which is left anyway), so a read costs the check a
clock reading and a scope (about 5 µs), no task. A check that fails between reads fails
the next one. A bug in the check (not a failure of the member: an Exception the check does not
expect) goes to the watch's `on_bug` (the cluster's supervisor keeps it; by default it is
logged) and leaves the stream as a failed check does: the watch opens the next one, with a
checker of its own, rather than let the bug end the caller's nursery. Not for election
observation (the Observe stream): watch the election's prefix.
"""
import collections
import json
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx
import trio

from .etcd_records import (API, Compacted, EtcdError, Event, MemberFailed, answer_of, b64, header_revision,
                           range_body, refusal)

if TYPE_CHECKING:
    from .etcd import Etcd  # which imports this module

log = logging.getLogger(__name__)
# Seconds of silence after which the stream's member is checked. With the default attempt_timeout (2 s) a
# hung member is left within 5 s (7 s after a check timed out: PATIENCE_AFTER_TIMEOUT): before the client's
# timeout (8 s) has run out for any other call, and within the 10 s a settings write waits for the watch to
# bring its entry (shared.WRITE_S). An idle watch costs one linearizable read of one key per check (100 idle
# nodes: about 33 a second to the cluster).
WATCH_CHECK_S = 3.0
# After a check timed out, how many times attempt_timeout the watch's checks wait for their answer, until one
# comes within attempt_timeout: members of a loaded cluster that answer in 2-4 s are left once, not each check.
PATIENCE_AFTER_TIMEOUT = 2


def log_bug(bug: Exception) -> None:
    """A bug in a watch's check, where no supervisor hears it (Cluster.follow gives its own): logged."""
    log.error("etcd: a bug in the check of a silent watch", exc_info=bug)


class Watch:
    """The events on a key or prefix from a revision on, across member failures; see the module."""

    def __init__(self, etcd: "Etcd", key: bytes, prefix: bool, start_revision: int | None, prev_kv: bool,
                 nursery: trio.Nursery, on_bug: Callable[[Exception], None] = log_bug):
        self.etcd, self.nursery, self.on_bug = etcd, nursery, on_bug
        self.key, self.prefix, self.prev_kv = key, prefix, prev_kv
        self.next_revision = start_revision  # None: from the revision the first stream starts at
        self.pending: collections.deque[Event] = collections.deque()
        self.response: httpx.Response | None = None
        self.lines = None
        self.connections = 0  # streams opened so far (more than 1: it has reconnected)
        self.url: str | None = None  # the member the stream is open on
        self.checks = 0  # checks of the open stream's member answered while it was silent (tests read it)
        self.last_answer = 0.0  # trio time of the stream's latest answer read (or of its opening)
        self.reading = trio.CancelScope()  # around the stream's current (or next) read: a failed check cancels it
        self.failure: MemberFailed | None = None  # the check that failed, once one has
        self.checking = trio.CancelScope()  # around the stream's checker task: closing the stream cancels it
        self.check_patience = etcd.attempt_timeout  # how long a check waits for its answer (see check_member)

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
                self.handle(await self.next_answer())
            except MemberFailed as failed:
                log.info("etcd: the watch leaves %s: %s", self.url, failed)
                await self.close()
                self.etcd.pass_over(self.url)
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
        self.start_checking()

    def start_checking(self) -> None:
        """Start the open stream's checker in the caller's nursery, the stream counted silent from now."""
        self.reading, self.failure, self.checking, self.checks = trio.CancelScope(), None, trio.CancelScope(), 0
        self.last_answer = trio.current_time()
        self.nursery.start_soon(self.check_while_silent, self.checking)

    async def open_on(self, url: str) -> None:
        await self.etcd.auth.authorized(url, lambda headers: self.open_with(url, headers))

    async def open_with(self, url: str, headers: dict) -> None:
        request = self.etcd.http.build_request("POST", url + API + "/watch", json=self.create_request(),
                                               headers=headers)
        try:
            self.response = await self.etcd.http.send(request, stream=True)
        except httpx.TransportError as exc:
            failed = await self.etcd.failure(url, exc)  # its words; nothing is changed by a watch: never sent
            raise failed.unsent("cannot open a watch: ") from None
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

    async def next_answer(self) -> dict:
        """The stream's next answer; MemberFailed when the stream breaks or its member fails a check (the
        read is then cancelled, which ends the stream)."""
        reading = self.reading
        with reading:
            answer = await self.read_line()
        if reading.cancel_called:  # an answer read as the check failed is dropped: the next stream repeats it
            raise self.failure
        self.reading = trio.CancelScope()
        self.last_answer = trio.current_time()
        return answer

    async def check_while_silent(self, checking: trio.CancelScope) -> None:
        """Within `checking`, check the member after each WATCH_CHECK_S without an answer read (nor a check
        answered), until it fails one. A bug in the check (an Exception it does not expect) goes to `on_bug`
        and fails the check: the stream is left, and the next one's checker starts afresh."""
        with checking:
            try:
                await self.check_until_failed()
            except Exception as bug:
                self.on_bug(bug)
                self.fail_stream(MemberFailed(f"the check of a silent watch met a bug: {bug!r}", sent=False))

    async def check_until_failed(self) -> None:
        """Check the member after each WATCH_CHECK_S of silence until it fails a check."""
        checked = -math.inf
        while True:
            silent_since = max(self.last_answer, checked)
            await trio.sleep_until(silent_since + WATCH_CHECK_S)
            if self.last_answer <= silent_since:  # no answer came meanwhile
                if not await self.passes_check(silent_since):
                    return
                checked = trio.current_time()

    async def passes_check(self, silent_since: float) -> bool:
        """Whether the member passes a check, or the stream answers during it; if not, note the failure and
        cancel the read."""
        try:
            await self.check_member()
        except MemberFailed as failure:
            if self.last_answer > silent_since:
                return True
            self.fail_stream(failure)
            return False
        self.checks += 1
        return True

    def fail_stream(self, failure: MemberFailed) -> None:
        """End the stream's read with `failure` (the next read raises it)."""
        self.failure = failure
        self.reading.cancel()

    async def check_member(self) -> None:
        """A linearizable count of the watched key on the stream's own member (not another: `on_members`
        would move on), which needs it to run, have a leader and a quorum, and apply; MemberFailed if it
        refuses or does not answer within `check_patience`: attempt_timeout, PATIENCE_AFTER_TIMEOUT times
        that after a check timed out, until one is answered within attempt_timeout."""
        patience, sent_at = self.check_patience, trio.current_time()
        with trio.move_on_after(patience):
            try:
                await self.etcd.post(self.url, "/kv/range", {"key": b64(self.key), "count_only": True})
            except EtcdError as refused:
                raise MemberFailed(f"refused the check of a silent watch: {refused}", sent=False) from None
            if trio.current_time() - sent_at <= self.etcd.attempt_timeout:
                self.check_patience = self.etcd.attempt_timeout
            return
        self.check_patience = PATIENCE_AFTER_TIMEOUT * self.etcd.attempt_timeout
        raise MemberFailed(f"silent for {WATCH_CHECK_S:g}s, then no answer to a check within {patience:g}s",
                           sent=False)

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
        self.checking.cancel()
        if self.response is not None:
            await self.response.aclose()
        self.response = self.lines = None
