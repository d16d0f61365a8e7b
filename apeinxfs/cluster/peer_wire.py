"""What node-to-node requests carry on the wire, both ways: errors, frames, the caller, the token.

- Errors: an `ApeinxError` travels as JSON `{"error": CLASS, "errno": N, "reason": ..., "replies": [...]}`
  and comes back as the same class (so the FUSE boundary gives the caller the same errno);
  a class the receiver does not know comes back as `RemoteError` with the sender's errno.
- Frames: the body of `stream` and `wait` (which block) is a sequence of frames, so a silent
  task still shows a live peer: `+LEN\\n` then LEN bytes of the file, or `.\\n`, a heartbeat
  sent after HEARTBEAT_S without news. The body's end is the file's end.
- The caller: whom a peer acts for (uid, gid, pid, role, tenant), as the asking node found
  it, in the `Apeinx-Caller` header; the token vouches for the asking node.
- Reject lines: an error record says whose trace has the `reject` line of a refused write
  (`reject_line`); the asking node says in the `Apeinx-Rejects: resolve` header that it writes
  those of refusals before any write ran on the peer. Either missing: the other end is of a
  version that journaled every refusal on the peer (docs/cluster.md, Mixed versions).
- The token: read from a file nobody but its owner and group may read, one a line: the first
  is sent, every one accepted (so the token can be changed in steps: docs/cluster.md), read
  again once the file is edited (renewal.Renewable: at most once a second, at a request).
Not the server (peer_server.py) nor the client (peer_client.py).
"""
import errno
import functools
import hmac
import json
import re

import attrs

from ..kernel.access import RANKS
from ..kernel.errors import (ApeinxError, Busy, Degraded, Denied, Exists, Hidden, Invalid, NoDriver, NoSpace,
                             NotFound, NotPermitted, OverQuota, RejectLine, TooMany)
from ..nodes.base import Caller
from .renewal import Renewable, Wording
from .secretfile import read_private

HEARTBEAT_S = 2.0  # a blocked stream or wait sends a heartbeat frame after this long without news
FRAME_MAX = 1 << 16  # the most bytes of a file one data frame carries
HEARTBEAT = b".\n"
CALLER_HEADER = "apeinx-caller"
REJECTS_HEADER = "apeinx-rejects"  # "resolve": the asking node journals a refusal at the peer's resolve
TOKEN_BYTES = re.compile(rb"[\x21-\x7e]+")
TOKEN_WORDING = Wording("edited peer token file", "the tokens loaded before stay in use",
                        "its first token is sent, each is accepted")
STATUS_OF_ERRNO = {errno.EINVAL: 400, errno.EACCES: 403, errno.EPERM: 403, errno.EDQUOT: 403, errno.ENOENT: 404,
                   errno.EBUSY: 409, errno.EEXIST: 409, errno.E2BIG: 413, errno.EAGAIN: 503,
                   errno.ENXIO: 503}  # ENXIO: a model whose driver cannot be built there (NoDriver): it cannot serve it


class PeerDown(ApeinxError):
    """A peer could not be reached, or went silent or away during a request: a command's outcome is unknown."""

    errno = errno.EHOSTDOWN
    reject_line = RejectLine.NONE


class PeerUnreachable(PeerDown):
    """A peer could not be connected to: nothing was sent, so a command may go elsewhere (or is refused here)."""

    reject_line = RejectLine.HERE


class PeerRefused(ApeinxError):
    """A peer refused the token (HTTP 401): the nodes' token files differ, or none was sent."""

    errno = errno.EACCES


class RemoteError(ApeinxError):
    """A peer's refusal of a class this node does not know: its errno and reason, as sent."""

    def __init__(self, remote_errno: int, reason: str, replies: list[str] | None = None,
                 reject_line: RejectLine | None = None):
        super().__init__(reason, replies, reject_line)
        self.errno = remote_errno


ERRORS = {cls.__name__: cls for cls in (Invalid, NotFound, Hidden, Denied, NotPermitted, OverQuota, NoSpace,
                                        Exists, Busy, TooMany, NoDriver, PeerDown, PeerRefused)}


def encode_error(exc: ApeinxError, written: bool = False) -> tuple[int, bytes]:
    """The HTTP status and JSON body that carry `exc` to a peer, with whose `reject` line it is, as the asking
    node will read it: `written`: a refusal this node journaled (a write of its own: `"reject_line": "peer"`,
    or "none" for an outcome it does not know), else its own word ("here": the asking node writes it)."""
    line = RejectLine.PEER if written and exc.reject_line is RejectLine.HERE else exc.reject_line
    body = {"error": type(exc).__name__, "errno": exc.errno, "reason": exc.reason, "replies": exc.replies,
            "reject_line": line.value}
    return STATUS_OF_ERRNO.get(exc.errno, 500), json.dumps(body).encode()


def decode_error(body: bytes, where: str) -> ApeinxError:
    """The error a peer's JSON body carries, as its own class where this node knows it (same
    name and errno), else RemoteError; its `reject_line` the peer's word: PEER where it has none (a version that
    journaled every refusal there), HERE for a word this version does not know (a later one's); a body that is not
    such JSON is an EIO naming `where`."""
    try:
        fields = json.loads(body)
        name, number, reason = fields["error"], fields["errno"], fields["reason"]
        replies = [str(reply) for reply in fields.get("replies") or [reason]]
        word = fields.get("reject_line", RejectLine.PEER.value)
        line = next((kind for kind in RejectLine if kind.value == word), RejectLine.HERE)
        if not (isinstance(name, str) and isinstance(number, int) and isinstance(reason, str)):
            raise TypeError(name, number, reason)
    except (ValueError, KeyError, TypeError):
        return RemoteError(errno.EIO, f"{where}: an answer that is no error record: {body[:200]!r}")
    known = ERRORS.get(name)
    if known is not None and known.errno == number:
        return known(reason, replies, reject_line=line)
    if name == Degraded.__name__:
        return Degraded(number, reason, reject_line=line)
    return RemoteError(number, reason, replies, reject_line=line)


def data_frame(data: bytes) -> bytes:
    return b"+%d\n" % len(data) + data


class FrameReader:
    """Parses frames from chunks as they come: `feed(chunk)` returns the file's bytes in them
    (b'' for heartbeats or partial frames); Invalid on a malformed frame header."""

    def __init__(self):
        self.buffer = bytearray()
        self.needed = None  # bytes still due of the data frame being read

    def feed(self, chunk: bytes) -> bytes:
        self.buffer += chunk
        out = bytearray()
        while True:
            if self.needed is None and not self._header():
                return bytes(out)
            if len(self.buffer) < self.needed:
                return bytes(out)
            out += self.buffer[:self.needed]
            del self.buffer[:self.needed]
            self.needed = None

    def _header(self) -> bool:
        """Consume heartbeats and one data frame's header; False if no whole header is buffered."""
        while (end := self.buffer.find(b"\n")) >= 0:
            header = bytes(self.buffer[:end])
            del self.buffer[:end + 1]
            if header == b".":
                continue
            if not (header[:1] == b"+" and header[1:].isdigit() and len(header) < 16):
                raise Invalid(f"peer sent a malformed frame header {header[:40]!r}")
            self.needed = int(header[1:])
            return True
        if len(self.buffer) > 16:
            raise Invalid(f"peer sent a malformed frame header {bytes(self.buffer[:40])!r}")
        return False

    def at_boundary(self) -> bool:
        """Whether the body may end here (no frame half read)."""
        return self.needed is None and not self.buffer


def encode_caller(caller: Caller) -> str:
    return json.dumps({"uid": caller.uid, "gid": caller.gid, "pid": caller.pid, "role": caller.role,
                       "tenant": caller.tenant})


def decode_caller(text: str | None) -> Caller:
    """The Caller of an `Apeinx-Caller` header; Invalid if it is missing or malformed (ids beyond
    what uid_t, gid_t and pid_t hold among them: Caller's validators)."""
    if text is None:
        raise Invalid(f"no {CALLER_HEADER} header: a peer must say whom it asks for")
    try:
        fields = json.loads(text)
        caller = Caller(fields["uid"], fields["gid"], fields["pid"], role=fields["role"], tenant=fields["tenant"])
    except (ValueError, KeyError, TypeError, RecursionError, Invalid):  # RecursionError: JSON nested too deep
        raise Invalid(f"malformed {CALLER_HEADER} header {text[:100]!r}") from None
    if caller.role not in RANKS or not (caller.tenant is None or isinstance(caller.tenant, str)):
        raise Invalid(f"malformed {CALLER_HEADER} header {text[:100]!r}")
    return caller


@attrs.frozen
class Tokens:
    """A token file's tokens, in its order: the first is the one this node sends, every one is accepted."""

    accepted: tuple[bytes, ...] = attrs.field(repr=False)  # at least one; never in a repr (logs, tracebacks)

    @property
    def authorization(self) -> str:
        """The `Authorization` header this node sends."""
        return "Bearer " + self.accepted[0].decode()

    def accepts(self, authorization: bytes) -> bool:
        """Whether an `Authorization` header carries one of the tokens (each compared in constant time)."""
        matches = [hmac.compare_digest(authorization, b"Bearer " + token) for token in self.accepted]
        return any(matches)


def read_tokens(path: str) -> Tokens:
    """The shared tokens in `path`, one a line (surrounding whitespace and blank lines dropped); Invalid if
    the file is missing, readable by every user, or holds no token or one that cannot go in a header."""
    secret = read_private(path, f"token file {path}", "act for any user on every node")
    tokens = tuple(line.strip() for line in secret.splitlines() if line.strip())
    if not tokens:
        raise Invalid(f"token file {path} is empty")
    if not all(TOKEN_BYTES.fullmatch(token) for token in tokens):
        raise Invalid(f"token file {path}: the token must be printable ASCII without spaces (it goes in a header), "
                      f"one a line")
    return Tokens(tokens)


TokenFile = Renewable[Tokens]


def token_file(path: str) -> TokenFile:
    """The tokens of `path`, read now (Invalid as read_tokens) and read again once the file is edited. One
    is shared by the peer server, the peers' clients and /ai/cluster, each looking at time.monotonic()."""
    return Renewable.read_now((path,), functools.partial(read_tokens, path), TOKEN_WORDING)


def parse_address(address: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) as (host, port); Invalid if it is not one."""
    host, _, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise Invalid(f"peer address {address!r} is not HOST:PORT")
    return host, int(port)
