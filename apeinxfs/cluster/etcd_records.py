"""What the etcd client sends and returns: attrs records, the transaction builder, errors.

The JSON gateway's encoding lives here and nowhere else: keys and values are base64,
int64 fields are strings, and fields at their zero value are left out of answers (a
failed txn has no `succeeded`, a PUT event no `type`, a range with no match no `kvs`);
so does what its error answers mean (`refusal`: a member fault to route around, or
etcd's refusal to raise). Not the transport (etcd.py) nor the watch stream (etcd_watch.py).
"""
import base64
import errno

import attrs
import httpx

from ..kernel.errors import ApeinxError


class EtcdError(ApeinxError):
    """etcd refused a request (its words in the reason): a bug or misuse, not an outage."""

    errno = errno.EIO


class Unavailable(EtcdError):
    """No etcd quorum answered in time (members down, no leader, partition): try again later."""

    errno = errno.EAGAIN


class LeaseGone(EtcdError):
    """The lease expired or was revoked: everything attached to it is deleted."""

    errno = errno.ENOENT


class NotLeader(EtcdError):
    """An election has no leader, or the given leader key no longer leads it."""


class Compacted(EtcdError):
    """A watch asked for revisions etcd has compacted away; `revision` is the oldest still kept."""

    def __init__(self, revision: int):
        super().__init__(f"etcd: revisions before {revision} are compacted; read the state again")
        self.revision = revision


API = "/v3"
HEADERS = {"Grpc-Metadata-hasleader": "true"}  # a member without a leader refuses at once
TXN_OPS = 128  # the most operations one txn carries (etcd's --max-txn-ops default)
NO_LEADER = "etcdserver: no leader"  # that refusal (an election's own "election: no leader" is NotLeader)


class MemberFailed(Exception):
    """One member could not serve a request; `sent` if the request may have taken effect there; `tls_refused`
    if TLS refused this client there before anything was sent (a wrong CA, no client certificate or one the
    member does not trust: trying again does not help, unlike a member down or without a leader)."""

    def __init__(self, reason: str, sent: bool, tls_refused: bool = False):
        super().__init__(reason)
        self.sent, self.tls_refused = sent, tls_refused

    def unsent(self, context: str) -> "MemberFailed":
        """This failure after `context` ("authentication: "), of a request that was not sent: the member failed
        what had to come first (a login, opening a stream). A TLS refusal stays one."""
        return MemberFailed(f"{context}{self}", sent=False, tls_refused=self.tls_refused)


def refusal(status: int, error: dict) -> Exception:
    """What an error answer from the gateway means: a member fault (MemberFailed) or etcd's refusal."""
    message = error.get("message") or str(error.get("error", error))
    code = int(error.get("code", error.get("grpc_code", 2)))
    if message == NO_LEADER:
        return MemberFailed(message, sent=False)  # refused before proposing: safe anywhere
    if code in (4, 14) or status == 503:  # DEADLINE_EXCEEDED, UNAVAILABLE: proposed, outcome unknown
        return MemberFailed(message, sent=True)
    if "lease not found" in message:
        return LeaseGone(f"etcd: {message}")
    if message in ("election: no leader", "election: not leader"):
        return NotLeader(f"etcd: {message}")
    return EtcdError(f"etcd: {message} (HTTP {status}, gRPC code {code})")


def answer_of(response: httpx.Response) -> dict:
    """The JSON of a unary answer (a streamed one's first `result`), or the error it stands for."""
    try:
        body = response.json()
    except ValueError:
        raise MemberFailed(f"HTTP {response.status_code}: {response.text[:200]!r}", sent=True) from None
    if response.status_code != 200:
        raise refusal(response.status_code, body)
    if isinstance(body.get("error"), dict):
        raise refusal(int(body["error"].get("http_code", 500)), body["error"])
    return body.get("result", body)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: bytes) -> bytes:
    """The range_end that makes a range cover every key starting with `prefix` (etcd's rule)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\0"  # all keys
    return stripped[:-1] + bytes([stripped[-1] + 1])


@attrs.frozen
class KeyValue:
    """One key as etcd stores it; `lease` 0 means none."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0

    @classmethod
    def from_json(cls, kv: dict) -> "KeyValue":
        return cls(key=unb64(kv["key"]), value=unb64(kv.get("value", "")),
                   create_revision=int(kv.get("create_revision", 0)),
                   mod_revision=int(kv.get("mod_revision", 0)),
                   version=int(kv.get("version", 0)), lease=int(kv.get("lease", 0)))


@attrs.frozen
class Event:
    """A change seen by a watch: `kind` is PUT or DELETE; `prev` only when the watch asked for it."""

    kind: str
    kv: KeyValue
    prev: KeyValue | None

    @classmethod
    def from_json(cls, event: dict) -> "Event":
        prev = event.get("prev_kv")
        return cls(kind=event.get("type", "PUT"), kv=KeyValue.from_json(event["kv"]),
                   prev=KeyValue.from_json(prev) if prev else None)


@attrs.frozen
class Lease:
    """A granted lease: its id and the TTL etcd gave it, in seconds."""

    id: int
    ttl: int


@attrs.frozen
class LeaderKey:
    """Proof of leadership from `campaign`: pass it to proclaim and resign, compare on it in txns."""

    name: bytes
    key: bytes
    rev: int
    lease: int

    @classmethod
    def from_json(cls, leader: dict) -> "LeaderKey":
        return cls(name=unb64(leader["name"]), key=unb64(leader["key"]), rev=int(leader["rev"]),
                   lease=int(leader["lease"]))

    def to_json(self) -> dict:
        return {"name": b64(self.name), "key": b64(self.key), "rev": str(self.rev), "lease": str(self.lease)}


COMPARE_RESULTS = {"==": "EQUAL", "!=": "NOT_EQUAL", "<": "LESS", ">": "GREATER"}
COMPARE_TARGETS = {"value": "VALUE", "version": "VERSION", "create_revision": "CREATE",
                   "mod_revision": "MOD", "lease": "LEASE"}


@attrs.frozen
class Compare:
    """One guard of a txn: `target` of `key` (value, version, create_revision, mod_revision, lease)
    `op` (==, !=, <, >) `operand` (bytes for value, an int for the others)."""

    key: bytes
    target: str = attrs.field(validator=attrs.validators.in_(COMPARE_TARGETS))
    op: str = attrs.field(validator=attrs.validators.in_(COMPARE_RESULTS))
    operand: bytes | int

    def to_json(self) -> dict:
        operand = b64(self.operand) if self.target == "value" else str(self.operand)
        return {"key": b64(self.key), "target": COMPARE_TARGETS[self.target],
                "result": COMPARE_RESULTS[self.op], self.target: operand}


def put_op(key: bytes, value: bytes, lease: int = 0) -> dict:
    """A put inside a txn (also the body of /kv/put)."""
    body = {"key": b64(key), "value": b64(value)}
    if lease:
        body["lease"] = str(lease)
    return body


def range_body(key: bytes, prefix: bool = False) -> dict:
    """The body of a range or delete of `key`, or of every key under it with `prefix`."""
    body = {"key": b64(key)}
    if prefix:
        body["range_end"] = b64(prefix_end(key))
    return body


@attrs.define
class Txn:
    """A transaction built step by step: `when(...)` guards, then `on_success` / `on_failure`
    puts, deletes and gets; `etcd.txn(txn)` runs it atomically."""

    compares: list[Compare] = attrs.Factory(list)
    success: list[dict] = attrs.Factory(list)
    failure: list[dict] = attrs.Factory(list)

    def when(self, key: bytes, target: str, op: str, operand: bytes | int) -> "Txn":
        self.compares.append(Compare(key, target, op, operand))
        return self

    def put(self, key: bytes, value: bytes, lease: int = 0, *, on_failure: bool = False) -> "Txn":
        return self._add(on_failure, {"request_put": put_op(key, value, lease)})

    def delete(self, key: bytes, prefix: bool = False, *, on_failure: bool = False) -> "Txn":
        return self._add(on_failure, {"request_delete_range": range_body(key, prefix)})

    def get(self, key: bytes, prefix: bool = False, *, on_failure: bool = False) -> "Txn":
        return self._add(on_failure, {"request_range": range_body(key, prefix)})

    def _add(self, on_failure: bool, op: dict) -> "Txn":
        (self.failure if on_failure else self.success).append(op)
        return self

    def size(self) -> int:
        """About the bytes of the values it puts (as etcd receives them: base64 carries 3 in 4 characters)."""
        puts = [op["request_put"] for op in self.success + self.failure if "request_put" in op]
        return sum(len(put["value"]) for put in puts) * 3 // 4

    def to_json(self) -> dict:
        return {"compare": [c.to_json() for c in self.compares], "success": self.success,
                "failure": self.failure}


@attrs.frozen
class TxnResult:
    """Whether the guards held, the revision after the txn, and per branch op its answer:
    a list of KeyValue for a get, the number deleted for a delete, None for a put."""

    succeeded: bool
    revision: int
    responses: list

    @classmethod
    def from_json(cls, answer: dict) -> "TxnResult":
        return cls(succeeded=answer.get("succeeded", False), revision=header_revision(answer),
                   responses=[op_result(response) for response in answer.get("responses", [])])


def op_result(response: dict):
    """One txn op's answer (see TxnResult)."""
    if "response_range" in response:
        return [KeyValue.from_json(kv) for kv in response["response_range"].get("kvs", [])]
    if "response_delete_range" in response:
        return int(response["response_delete_range"].get("deleted", 0))
    return None


def header_revision(answer: dict) -> int:
    return int(answer.get("header", {}).get("revision", 0))
