"""An etcd v3 client over etcd's JSON gateway (`/v3/...`), with httpx on trio.

    async with Etcd(["http://127.0.0.1:2379", ...]) as etcd:
        await etcd.put(b"k", b"v"); kv = await etcd.get(b"k")
        result = await etcd.txn(Txn().when(b"k", "mod_revision", "==", kv.mod_revision).put(b"k", b"w"))
        lease = await etcd.grant(15); nursery.start_soon(etcd.keep_alive, lease)
        async with etcd.watch(b"tasks/", prefix=True, start_revision=rev, nursery=nursery) as events: ...
        leader = await etcd.campaign(b"leader", lease.id, b"node-a")

Every request carries `Grpc-Metadata-hasleader: true`, so a member without a leader refuses
at once ("etcdserver: no leader") instead of waiting. A request goes to the member that
answered last; when that member cannot be reached, or says it has no leader, the next one
is tried, round after round, until `timeout` seconds have passed: then `Unavailable`
(EAGAIN, with the reason); at once after a round in which every member refused this client
by TLS before anything was sent (etcd_tls.py: a wrong CA or client certificate stays wrong,
so later rounds would only hide the reason until the deadline), unless a refusal took renewed
TLS files (etcd_renew.py): then a round with them follows. A request that reached a
member whose answer was lost (the member died, or etcd timed the proposal out, as it does
for 7 s after the leader dies) may have taken effect. Where repeating it is harmless
(reads, put, delete, lease calls, campaign, a txn the caller marks `repeatable`) each
attempt gets `attempt_timeout` seconds and it is sent again to the next member; any other
txn, and proclaim, then fail with `Unavailable` saying that the outcome is unknown. A
repeatable change of keys, leases or the election (UNKNOWABLE) that runs out of `timeout`
after an attempt went unanswered says so too: it may have taken effect; a read, the watch,
a lease's keepalive or revoke says only that there was no quorum. Other refusals raise
`EtcdError` (or its subclasses LeaseGone, NotLeader) with etcd's words.
Records, errors and the wire encoding: etcd_records.py; watches: etcd_watch.py; TLS:
etcd_tls.py, renewed TLS files: etcd_renew.py; etcd's authentication (user, password, token): etcd_auth.py.
"""
import math
import ssl
from typing import Awaitable, Callable, TypeVar

import attrs
import httpx
import trio

from ..kernel.errors import RejectLine
from .etcd_auth import Auth, Credentials
from .etcd_records import (API, HEADERS, EtcdError, KeyValue, LeaderKey, Lease, LeaseGone, MemberFailed, NotLeader,
                           Txn, TxnResult, Unavailable, answer_of, b64, header_revision, put_op, range_body)
from .etcd_renew import Renewing, TlsFiles
from .etcd_tls import client_context, tls_failure
from .etcd_watch import Watch, log_bug

RETRY_PAUSE_S = 0.2  # between rounds over every member (an election takes about one election timeout)
# The changes that may have taken effect, and matter, when an attempt went unanswered (a key or lease may
# exist or be gone). Not: reads, the watch, and a lease's keepalive or revoke (the caller counts a lease
# unrefreshed, or lets it expire, either way).
UNKNOWABLE = frozenset({"/kv/put", "/kv/deleterange", "/kv/txn", "/kv/compaction", "/lease/grant",
                        "/election/campaign", "/election/resign"})
UNKNOWN = "outcome unknown (it may have taken effect), "  # such a change whose attempts all went unanswered
NO_ANSWER = "no answer"  # a member's failure while an attempt is in flight there
Answer = TypeVar("Answer")


def in_flight(before: str | None) -> str:
    """A member's failure while an attempt is in flight: no answer, and why the one before failed (a TLS
    refusal, say, which the deadline must not hide)."""
    return NO_ANSWER if before is None else f"{NO_ANSWER} (before: {before})"


def tried(failures: dict[str, str]) -> str:
    """Each member's last failure, for a reason: "URL: WHY; URL: WHY"."""
    return "; ".join(f"{member}: {why}" for member, why in failures.items())


def transport_of(context: ssl.SSLContext) -> httpx.AsyncHTTPTransport:
    """httpx's transport of the client's connections with `context`: no proxies, and no cap on connections
    (every open watch and waiting campaign holds one)."""
    return httpx.AsyncHTTPTransport(verify=context, trust_env=False,
                                    limits=httpx.Limits(max_connections=None, max_keepalive_connections=32))


@attrs.frozen
class RangeResult:
    """The keys a range found, and the store's revision when it was read (to watch from + 1)."""

    kvs: list[KeyValue]
    revision: int


class Etcd:
    """A client of one etcd cluster, given every member's client URL; an async context manager. Every
    https connection uses `tls`: an SSL context (etcd_tls.client_context; by default the system's CAs, no
    client certificate), or TlsFiles, whose renewed files new connections take (etcd_renew.py); with
    `credentials` every request carries a token of etcd's authentication (etcd_auth)."""

    def __init__(self, endpoints: list[str], timeout: float = 8.0, attempt_timeout: float = 2.0,
                 connect_timeout: float = 1.0, tls: ssl.SSLContext | TlsFiles | None = None,
                 credentials: Credentials | None = None):
        if not endpoints:
            raise EtcdError("etcd: no endpoints given")
        self.endpoints = [url.rstrip("/") for url in endpoints]
        self.timeout = timeout
        self.attempt_timeout = attempt_timeout
        self.current = 0
        self.tls = tls if isinstance(tls, TlsFiles) else TlsFiles.fixed(client_context() if tls is None else tls)
        # Deadlines are trio's (the caller's or `timeout`); httpx only bounds a connect (transport_of).
        self.transport = Renewing(self.tls, transport_of)  # new connections with the current TLS files
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=connect_timeout), trust_env=False,
                                      transport=self.transport)
        self.auth = Auth(credentials, lambda url, body: self.send(url, "/auth/authenticate", body, HEADERS),
                         attempt_timeout)

    async def __aenter__(self) -> "Etcd":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.http.aclose()

    @property
    def endpoint(self) -> str:
        """The member that answered last (the next request goes there first)."""
        return self.endpoints[self.current]

    def pass_over(self, url: str) -> None:
        """Member `url` failed a stream: the next request starts at the member after it, if there (a hung
        member would hold it for an attempt)."""
        if self.endpoint == url:
            self.current = (self.current + 1) % len(self.endpoints)

    async def on_members(self, attempt: Callable[[str], Awaitable[Answer]], what: str, retry_sent: bool,
                         timeout: float | None = None, patience: float | None = None) -> Answer:
        """`attempt(url)` on the current member, then on the next ones, round after round, until one
        succeeds or `timeout` (default: the client's) runs out, then Unavailable; at once after a round in which
        every member refused this client by TLS. An attempt that may be repeated (`retry_sent`) is given up
        after `patience` s (default: the client's `attempt_timeout`)."""
        deadline = self.timeout if timeout is None else timeout
        if patience is None:
            patience = self.attempt_timeout if retry_sent else math.inf
        failures: dict[str, str] = {}  # each member's last failure, for the reason
        sent = False  # whether an attempt reached a member and its answer was lost: it may have taken effect
        with trio.move_on_after(deadline):
            while True:
                first, count = self.current, len(self.endpoints)  # from the member that answered last
                refused, context = 0, self.tls.value  # members that refused this client by TLS in this round
                for index in ((first + offset) % count for offset in range(count)):
                    url = self.endpoints[index]
                    failures[url] = in_flight(failures.get(url))  # the reason if the deadline cuts the attempt
                    try:
                        return await self.try_member(attempt, index, patience)
                    except MemberFailed as failed:
                        failures[url], sent = str(failed), sent or failed.sent
                        refused += failed.tls_refused
                        if failed.sent and not retry_sent:
                            raise Unavailable(f"etcd: {what}: outcome unknown, {url}: {failed}",
                                              reject_line=RejectLine.NONE) from None
                if refused == count and self.tls.value is context:  # a wrong CA or certificate, not renewed since
                    # the round began (a refusal looks at the files): no later round would fare better
                    raise Unavailable(f"etcd: {what}: every member refused this client by TLS ({tried(failures)})")
                await trio.sleep(RETRY_PAUSE_S)
        if not retry_sent and failures[url].startswith(NO_ANSWER):
            before = failures[url][len(NO_ANSWER):]  # " (before: WHY)" or ""
            raise Unavailable(f"etcd: {what}: outcome unknown, no answer from {url} within {deadline:g}s{before}",
                              reject_line=RejectLine.NONE)
        unknown = (sent or failures[url].startswith(NO_ANSWER)) and what in UNKNOWABLE
        raise Unavailable(f"etcd: {what}: {UNKNOWN if unknown else ''}no quorum within {deadline:g}s "
                          f"({tried(failures)})", reject_line=RejectLine.NONE if unknown else None)

    async def try_member(self, attempt: Callable[[str], Awaitable[Answer]], index: int, patience: float) -> Answer:
        """`attempt` on member `index`, which becomes the current member if it answers."""
        with trio.move_on_after(patience):
            answer = await attempt(self.endpoints[index])
            self.current = index
            return answer
        raise MemberFailed(f"no answer within {patience:g}s", sent=True)

    async def post(self, url: str, path: str, body: dict) -> dict:
        """One request to the member at `url`, authenticated where the client has credentials."""
        return await self.auth.authorized(url, lambda headers: self.send(url, path, body, headers))

    async def send(self, url: str, path: str, body: dict, headers: dict) -> dict:
        """POST `body` to `path` at `url` with `headers`; transport failures become MemberFailed."""
        try:
            response = await self.http.post(url + API + path, json=body, headers=headers)
        except httpx.TransportError as exc:
            raise await self.failure(url, exc) from None
        return answer_of(response)

    async def failure(self, url: str, exc: httpx.TransportError) -> MemberFailed:
        """What a transport failure at `url` means: TLS refused (with why) or no connection, so nothing
        was sent; or a connection lost (by TLS, say), whose request may have taken effect."""
        tls = await tls_failure(url, exc, self.tls.context)
        if tls is not None:
            if tls.tls_refused:  # renewed files may mend it: the next connection takes them
                self.tls.check(trio.current_time())
            return tls
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            return MemberFailed(f"cannot connect: {exc}", sent=False)
        return MemberFailed(f"connection lost: {exc!r}", sent=True)

    async def call(self, path: str, body: dict, retry_sent: bool = False, timeout: float | None = None,
                   patience: float | None = None) -> dict:
        """POST `body` to `path` on the first member able to answer (see the module's docstring)."""
        return await self.on_members(lambda url: self.post(url, path, body), path, retry_sent, timeout, patience)

    # Keys

    async def range(self, key: bytes, prefix: bool = False, serializable: bool = False) -> RangeResult:
        """The value of `key` (or of every key under it with `prefix`), in key order; `serializable`
        reads the member's own copy, which may lag, without the quorum round trip."""
        body = range_body(key, prefix) | ({"serializable": True} if serializable else {})
        answer = await self.call("/kv/range", body, retry_sent=True)
        return RangeResult([KeyValue.from_json(kv) for kv in answer.get("kvs", [])], header_revision(answer))

    async def get(self, key: bytes) -> KeyValue | None:
        found = (await self.range(key)).kvs
        return found[0] if found else None

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        """Store `value` at `key` (attached to `lease` if not 0); the new revision. Retried when its
        outcome is unknown: the key ends up holding `value` either way (at one or two revisions)."""
        return header_revision(await self.call("/kv/put", put_op(key, value, lease), retry_sent=True))

    async def delete(self, key: bytes, prefix: bool = False) -> int:
        """Delete `key` (or every key under it with `prefix`); how many were deleted (by the last
        attempt, when one whose outcome was unknown was retried)."""
        answer = await self.call("/kv/deleterange", range_body(key, prefix), retry_sent=True)
        return int(answer.get("deleted", 0))

    async def txn(self, txn: Txn, repeatable: bool = False) -> TxnResult:
        """Run `txn` atomically: its success ops if every guard holds, else its failure ops. When its
        outcome is unknown it fails with Unavailable, unless `repeatable` says its guards make a second
        run harmless (e.g. compare on a mod_revision that its own put changes): then it is run again,
        and a failed result may mean that the first run succeeded."""
        return TxnResult.from_json(await self.call("/kv/txn", txn.to_json(), retry_sent=repeatable))

    async def compact(self, revision: int) -> None:
        """Forget the history before `revision` (watches from earlier revisions get Compacted)."""
        await self.call("/kv/compaction", {"revision": str(revision)}, retry_sent=True)

    # Leases

    async def grant(self, ttl: int) -> Lease:
        """A new lease of `ttl` seconds (a retried grant may leave an unused lease, which expires)."""
        answer = await self.call("/lease/grant", {"TTL": str(ttl)}, retry_sent=True)
        return Lease(int(answer["ID"]), int(answer["TTL"]))

    async def keepalive_once(self, lease_id: int, timeout: float | None = None) -> int:
        """Refresh the lease; its TTL again. LeaseGone if it expired (etcd answers 200 without TTL)."""
        answer = await self.call("/lease/keepalive", {"ID": str(lease_id)}, retry_sent=True, timeout=timeout)
        if int(answer.get("TTL", 0)) <= 0:
            raise LeaseGone(f"etcd: lease {lease_id:x} has expired")
        return int(answer["TTL"])

    async def keep_alive(self, lease: Lease, *, refreshed: Callable[[float], None] = lambda sent: None,
                         task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Refresh `lease` every TTL/3 until cancelled, calling `refreshed(when)` with the trio time each
        refresh that got through was sent (etcd cannot expire the lease before that + its TTL). LeaseGone once
        etcd says it expired, or once a whole TTL passed without a refresh getting through (etcd will have
        expired it by then)."""
        expires = trio.current_time() + lease.ttl
        task_status.started()
        while True:
            await trio.sleep(lease.ttl / 3)
            try:
                sent = trio.current_time()
                expires = trio.current_time() + await self.keepalive_once(
                    lease.id, timeout=max(expires - trio.current_time(), 0.1))
                refreshed(sent)
            except Unavailable as outage:
                if trio.current_time() >= expires:
                    raise LeaseGone(f"etcd: lease {lease.id:x} not refreshed for its TTL: {outage}") from None

    async def time_to_live(self, lease_id: int) -> int:
        """Seconds the lease has left; LeaseGone if it has expired or was revoked."""
        ttl = int((await self.call("/lease/timetolive", {"ID": str(lease_id)}, retry_sent=True)).get("TTL", -1))
        if ttl < 0:
            raise LeaseGone(f"etcd: lease {lease_id:x} has expired")
        return ttl

    async def revoke(self, lease_id: int) -> None:
        """End the lease now, deleting its keys; a lease already gone is fine."""
        try:
            await self.call("/lease/revoke", {"ID": str(lease_id)}, retry_sent=True)
        except LeaseGone:
            pass

    # Elections (etcd's election service: the leader is the oldest key under the name)

    async def campaign(self, name: bytes, lease_id: int, value: bytes) -> LeaderKey:
        """Wait, for as long as it takes, until this lease leads election `name`, then proclaim `value`.
        The candidacy is a key on the lease: cancelling the wait leaves it queued, so revoke the lease
        (or resign once leader) to withdraw. Retried on another member with the same lease, the
        campaign finds its own key again."""
        body = {"name": b64(name), "lease": str(lease_id), "value": b64(value)}
        answer = await self.call("/election/campaign", body, retry_sent=True, timeout=math.inf, patience=math.inf)
        return LeaderKey.from_json(answer["leader"])

    async def proclaim(self, leader: LeaderKey, value: bytes) -> None:
        """Publish a new `value` as the leader; NotLeader if leadership was lost."""
        await self.call("/election/proclaim", {"leader": leader.to_json(), "value": b64(value)})

    async def leader(self, name: bytes) -> KeyValue | None:
        """The leader's key and value in election `name`, or None when nobody leads."""
        try:
            return KeyValue.from_json((await self.call("/election/leader", {"name": b64(name)},
                                                       retry_sent=True))["kv"])
        except NotLeader:
            return None

    async def resign(self, leader: LeaderKey) -> None:
        """Give up leadership (the next candidate leads); the lease itself stays."""
        await self.call("/election/resign", {"leader": leader.to_json()}, retry_sent=True)

    def watch(self, key: bytes, prefix: bool = False, start_revision: int | None = None, prev_kv: bool = False, *,
              nursery: trio.Nursery, on_bug=log_bug):
        """The changes to `key` (or under it) from `start_revision` (default: from now), as an async
        context manager yielding an async iterator of Event; the check of its member while it is silent runs
        in `nursery`, one that outlives the watch, and a bug there goes to `on_bug(exc)`; see etcd_watch.Watch."""
        return Watch(self, key, prefix, start_revision, prev_kv, nursery, on_bug)
