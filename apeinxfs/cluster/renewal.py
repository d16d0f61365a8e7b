"""A value read from files and read again once they change on disk, without a restart.

`Renewable.read_now(paths, read, wording)` calls `read()` (which raises Invalid where the files
do not load) and notes each file's stamp (inode, size, mtime_ns, ctime_ns). `current(now)` is the value in
use: once CHECK_S has passed since the last look it stats the files again (never more often: no
disk per request), and `check(now)` does so at once (a caller refused for what the value holds
looks again, so an edit is taken at its next try). Files whose stamps changed are read whole; a
read that fails is not taken: the last good value stays, `failure` says why (a row of
/ai/cluster: `state`), logged once per distinct reason, and the files are read again at each
later look until they load. Used by the etcd client's TLS files (etcd_renew.TlsFiles), the
peers' token file (peer_wire.token_file) and etcd's password file (etcd_auth.password_file,
looked at by `check` only, after etcd refused the password). Not what the files hold: `read`
knows that.
"""
import logging
import math
import os
from collections.abc import Callable
from typing import Generic, Self, TypeVar

import attrs

from ..kernel.errors import Invalid

log = logging.getLogger(__name__)
CHECK_S = 1.0  # the most often the files are looked at (stat), but after a refusal
Stamp = tuple[int, int, int, int] | None  # (inode, size, mtime_ns, ctime_ns); None where it cannot be stat'ed
T = TypeVar("T")


def stamps_of(paths: tuple[str, ...]) -> tuple[Stamp, ...]:
    """Each file's stamp: a renewal (a new file renamed in, or one rewritten) changes it, and so does a change of
    its mode or owner (a file turned readable by every user is refused, as at start)."""
    return tuple(stamp_of(path) for path in paths)


def stamp_of(path: str) -> Stamp:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns  # ctime: a chmod too


@attrs.frozen
class Wording:
    """How the log and /ai/cluster name the files and what taking them means."""

    what: str  # "renewed etcd TLS files"
    kept: str  # what stays while changed files do not load: "the files loaded before stay in use"
    taken: str  # what taking them means: "new connections use them"


@attrs.define(eq=False)
class Renewable(Generic[T]):
    """`value`, read by `read` from `paths`, read again once their stamps change."""

    paths: tuple[str, ...]
    read: Callable[[], T] = attrs.field(repr=False)  # the value the files hold now; Invalid if they do not load
    value: T = attrs.field(repr=False)  # may be a secret (a password, tokens): never in a repr
    stamps: tuple[Stamp, ...]  # the files' stamps when `value` was read
    wording: Wording
    checked: float = -math.inf  # when the files were last looked at
    failure: str | None = None  # why the files on disk now are not taken (None: they are, or unchanged)

    @classmethod
    def read_now(cls, paths: tuple[str, ...], read: Callable[[], T], wording: Wording) -> Self:
        """The value of these files, read now; Invalid if they do not load."""
        stamps = stamps_of(paths)
        return cls(paths, read, read(), stamps, wording)

    @classmethod
    def fixed(cls, value: T) -> Self:
        """`value` for good: no files to look at."""
        return cls((), lambda: value, value, (), Wording("no files", "-", "-"))

    @property
    def state(self) -> str:
        """`-` without files, `ok`, or why the files on disk are not taken."""
        if not self.paths:
            return "-"
        return "ok" if self.failure is None else f"not taken: {self.failure}; {self.wording.kept}"

    def current(self, now: float) -> T:
        """The value in use at `now`, the files looked at if CHECK_S passed since the last look."""
        if now - self.checked >= CHECK_S:
            self.check(now)
        return self.value

    def check(self, now: float) -> None:
        """Look at the files now: read them if their stamps changed, keeping the last good value if that fails."""
        self.checked = now
        stamps = stamps_of(self.paths)
        if stamps == self.stamps:
            self.failure = None  # back to the files in use
            return
        try:
            value = self.read()
        except Invalid as refused:
            if refused.reason != self.failure:
                log.warning("cluster: %s not taken: %s; %s", self.wording.what, refused.reason, self.wording.kept)
            self.failure = refused.reason
            return
        log.info("cluster: %s taken (%s): %s", self.wording.what, ", ".join(self.paths), self.wording.taken)
        self.value, self.stamps, self.failure = value, stamps, None
