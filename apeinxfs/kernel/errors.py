"""Errors that carry an errno and a reason in words.

Every refusal in the kernel, the parsers and the tree raises one of these; a single
boundary in the FUSE adapter (fs.py) turns them into FUSEError. Not for bugs: those are
ordinary exceptions, logged and reported as EIO.
"""
import enum
import errno


class RejectLine(enum.Enum):
    """Which node's trace gets the `reject` line of a write that failed with an error (apeinxfs(5), ERRORS):
    decided where the error is made; acted on by the write's handle (nodes/base.CommandHandle.journal), and read
    where an error is made of others: a split write's (cluster/spreading.in_line_order) and one sent to a peer
    (cluster/peer_wire.encode_error)."""

    HERE = "here"  # this node refused it, or no node could judge it (a peer not reached, its early refusal)
    PEER = "peer"  # a peer refused it and wrote the line
    NONE = "none"  # not known to be refused: its outcome is unknown, or it applies later


class ApeinxError(Exception):
    """A refused request: `errno` says the class, `reason` says why in words; `reject_line` whose trace records
    it as a refused write (a class's default, or the maker's)."""

    errno = errno.EIO
    denial = False  # refused because of who asked (role, namespace, policy, quota): audited
    reject_line = RejectLine.HERE

    def __init__(self, reason: str, replies: list[str] | None = None, reject_line: RejectLine | None = None):
        super().__init__(reason)
        self.reason = reason
        self.replies = replies or [reason]
        if reject_line is not None:
            self.reject_line = reject_line

    def __str__(self) -> str:
        return self.reason

    def reply(self) -> list[str]:
        """What the writer reads back after this refusal (apeinxfs(5), Replies): `error: ` and each reason."""
        return [f"error: {reply}" for reply in self.replies]


class Invalid(ApeinxError):
    """Malformed line, unknown key, value out of range."""

    errno = errno.EINVAL


class NotFound(ApeinxError):
    """Unknown pid, model or tenant."""

    errno = errno.ENOENT


class Hidden(NotFound):
    """Another tenant's task or tenant: it does not exist for this caller (a namespace)."""

    denial = True


class Denied(ApeinxError):
    """The caller may not do this."""

    errno = errno.EACCES
    denial = True


class NotPermitted(ApeinxError):
    """An operation the file system never allows (chmod, chown, utime on its files)."""

    errno = errno.EPERM


class OverQuota(ApeinxError):
    """A tenant's quota or token budget is exhausted."""

    errno = errno.EDQUOT
    denial = True


class NoSpace(ApeinxError):
    """The request can never fit in KV memory."""

    errno = errno.ENOSPC


class Exists(ApeinxError):
    """The thing to add is already there."""

    errno = errno.EEXIST


class Busy(ApeinxError):
    """The task is in a state that forbids the command."""

    errno = errno.EBUSY


class TooMany(ApeinxError):
    """Too many blocked readers; try again later."""

    errno = errno.EAGAIN


class TryAgain(ApeinxError):
    """Not possible now for want of something the cluster grants (a pid block) or that exiting tasks free
    (limits.live_tasks): try again later."""

    errno = errno.EAGAIN


class TooBig(ApeinxError):
    """A write holds more lines than one may (limits.write_lines): split it."""

    errno = errno.E2BIG


class NoBuffers(ApeinxError):
    """A uid's open descriptors would buffer more unfinished lines than they may (limits.pending_bytes)."""

    errno = errno.ENOBUFS


class NoDriver(ApeinxError):
    """A task of a model this node has no driver for (its driver cannot be built: enginehost.CannotRun), as
    Linux answers the open of a device that no driver serves."""

    errno = errno.ENXIO


class NoMemory(ApeinxError):
    """A uid's open descriptors would hold more bytes of rendered snapshots than they may (limits.open_bytes)."""

    errno = errno.ENOMEM


class Degraded(ApeinxError):
    """The journal cannot be written (disk full, I/O error, read-only): state changes wait until it can.

    Its errno is the storage's own (ENOSPC, EIO, EROFS), not the class's."""

    def __init__(self, os_errno: int, reason: str, reject_line: RejectLine | None = None):
        super().__init__(reason, reject_line=reject_line)
        self.errno = os_errno


class NotAllRun(ApeinxError):
    """A write whose lines were placed on several nodes and did not all run there: some were refused by
    their node, or their node's answer was lost (outcome unknown), while others may have run.

    Its errno is that of the first line that did not run where none ran, else EREMOTEIO (partly run); its
    reply has a line for each line written, in order: the pid of one that ran, or `error: line N: REASON`.
    `reject_line`: PEER when every line that did not run was refused by a peer that journaled it, else HERE
    (this node's lines refused, answers lost, a peer's refusal it did not journal: the node written to).
    `denial`: whether a refusal whose line is this node's is a denial (its reject line is then audited here)."""

    def __init__(self, line_errno: int, reason: str, outcome: list[str], reject_line: RejectLine,
                 denial: bool = False):
        super().__init__(reason, reject_line=reject_line)
        self.errno = line_errno
        self.outcome = outcome
        self.denial = denial

    def reply(self) -> list[str]:
        return self.outcome
