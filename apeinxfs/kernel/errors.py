"""Errors that carry an errno and a reason in words.

Every refusal in the kernel, the parsers and the tree raises one of these; a single
boundary in the FUSE adapter (fs.py) turns them into FUSEError. Not for bugs: those are
ordinary exceptions, logged and reported as EIO.
"""
import errno


class ApeinxError(Exception):
    """A refused request: `errno` says the class, `reason` says why in words."""

    errno = errno.EIO

    def __init__(self, reason: str, replies: list[str] | None = None):
        super().__init__(reason)
        self.reason = reason
        self.replies = replies or [reason]

    def __str__(self) -> str:
        return self.reason


class Invalid(ApeinxError):
    """Malformed line, unknown key, value out of range."""

    errno = errno.EINVAL


class NotFound(ApeinxError):
    """Unknown pid, model or tenant."""

    errno = errno.ENOENT


class Denied(ApeinxError):
    """The caller may not do this."""

    errno = errno.EACCES


class NoSpace(ApeinxError):
    """The request can never fit in KV memory."""

    errno = errno.ENOSPC


class Busy(ApeinxError):
    """The task is in a state that forbids the command."""

    errno = errno.EBUSY


class TooMany(ApeinxError):
    """Too many blocked readers; try again later."""

    errno = errno.EAGAIN
