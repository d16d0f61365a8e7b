"""etcd's authentication for the etcd client: a user's password, the token it gets, the token's renewal.

`read_password(path)` reads `[cluster] etcd_password_file` (not readable by every user;
surrounding newlines stripped). `Auth(credentials, login)` holds the token etcd's
/v3/auth/authenticate gave for the credentials (None: etcd without authentication, no
header). `authorized(url, send)` runs `send(headers)` with the token in the
`Authorization` header, authenticating at member `url` first where there is no token
yet; when etcd answers that the token is invalid (a simple token expires after
`--auth-token-ttl` unused, 300 s by default) or older than the auth store (a user or
role changed), it authenticates once more and sends again. An authentication gets
`patience` seconds (the client's attempt_timeout) of its own, whatever the request's;
requests that need a new token at a member wait for the authentication in flight there,
if any, and for no other (a login hanging at one member holds no request bound for
another); when it fails, they fail with it (a wrong password costs etcd one check, not
one per waiting request). A login that fails at a member is a MemberFailed that sent
nothing (only the login was sent, not the request it precedes); refused by TLS, it stays a
TLS refusal, so a call whose logins every member refused by TLS fails at once (etcd.py). A
refused password is an EtcdError naming the user and the keys to check; the next login reads
the password file again (`Credentials.password_file`, with read_password's checks) and,
where it changed, logs so once and logs in with the new password (a password changed in
etcd, then in the file, needs no restart). Not TLS (etcd_tls.py), which carries it.
"""
import logging
from typing import Awaitable, Callable, TypeVar

import attrs
import trio

from ..kernel.errors import Invalid
from .etcd_records import HEADERS, EtcdError, MemberFailed
from .etcd_tls import ETCD_GRANT
from .secretfile import read_private

log = logging.getLogger(__name__)
STALE_TOKEN = ("invalid auth token", "revision of auth store is old")  # etcd's words: authenticate again
WRONG_PASSWORD = "authentication failed"  # etcd's words for a login with a wrong user or password
Answer = TypeVar("Answer")


@attrs.frozen
class Credentials:
    """A user of etcd and its password (repr leaves the password out), read from `password_file` if given."""

    user: str
    password: str = attrs.field(repr=False)
    password_file: str | None = None  # read again after etcd refused the password


def read_password(path: str) -> str:
    """The password in the file at `path`; Invalid naming cluster.etcd_password_file if it cannot do."""
    raw = read_private(path, f"config: cluster.etcd_password_file: {path}", ETCD_GRANT).strip(b"\r\n")
    try:
        password = raw.decode()
    except UnicodeDecodeError:
        raise Invalid(f"config: cluster.etcd_password_file: {path} is not UTF-8 text") from None
    if not password:
        raise Invalid(f"config: cluster.etcd_password_file: {path} is empty")
    return password


@attrs.define(eq=False)
class Login:
    """One authentication in flight at a member; those needing a token there wait until it is `over`."""

    over: trio.Event = attrs.Factory(trio.Event)
    failure: EtcdError | MemberFailed | None = None  # why it failed, which its waiters fail with too


class Auth:
    """The token of `credentials` (None: no authentication), got through `login(url, body)`, a POST
    of `body` to /auth/authenticate at member `url` that answers etcd's JSON, within `patience` s."""

    def __init__(self, credentials: Credentials | None, login: Callable[[str, dict], Awaitable[dict]],
                 patience: float):
        self.credentials, self.login, self.patience = credentials, login, patience
        self.token: str | None = None
        self.logins: dict[str, Login] = {}  # the authentication in flight at each member
        self.doubted = False  # etcd refused the password: read its file again before the next login
        self.unread: str | None = None  # why the password file could not be read again, once logged

    async def authorized(self, url: str, send: Callable[[dict], Awaitable[Answer]]) -> Answer:
        """`send(headers)` with the token; once more with a new token if etcd calls this one stale."""
        if self.credentials is None:
            return await send(HEADERS)
        token = self.token or await self.renew(url, None)
        try:
            return await send(HEADERS | {"Authorization": token})
        except EtcdError as refused:
            if not any(words in refused.reason for words in STALE_TOKEN):
                raise
        return await send(HEADERS | {"Authorization": await self.renew(url, token)})

    async def renew(self, url: str, stale: str | None) -> str:
        """A token other than `stale`: the one another request got meanwhile, or a new one from `url` (the
        authentication in flight there, if one is)."""
        while self.token is None or self.token == stale:
            login = self.logins.get(url)
            if login is None:
                return await self.log_in(url)
            await login.over.wait()
            if login.failure is not None:
                raise again(login.failure)
        return self.token

    async def log_in(self, url: str) -> str:
        """A new token from member `url`, which those needing one there meanwhile wait for."""
        login = self.logins[url] = Login()
        try:
            with trio.move_on_after(self.patience):
                self.token = await self.authenticate(url)
                return self.token
            raise MemberFailed(f"authentication: no answer within {self.patience:g}s", sent=False)
        except (EtcdError, MemberFailed) as failed:
            login.failure = failed
            raise
        finally:
            self.logins.pop(url).over.set()

    async def authenticate(self, url: str) -> str:
        credentials = self.current()
        body = {"name": credentials.user, "password": credentials.password}
        try:
            return str((await self.login(url, body))["token"])
        except MemberFailed as failed:  # only the login was sent: the request it precedes was not
            raise failed.unsent("authentication: ") from None
        except EtcdError as refused:
            self.doubted = WRONG_PASSWORD in refused.reason
            raise EtcdError(f"etcd: authentication as {credentials.user!r} failed: {refused.reason} "
                            f"(check cluster.etcd_user and etcd_password_file)") from None

    def current(self) -> Credentials:
        """The credentials to log in with: after etcd refused the password, with its file's password now."""
        assert self.credentials is not None
        path = self.credentials.password_file
        if self.doubted and path is not None:
            self.doubted = False
            try:
                password = read_password(path)
            except Invalid as unread:
                if unread.reason != self.unread:
                    log.warning("cluster: cannot read the etcd password again: %s", unread.reason)
                self.unread = unread.reason
                return self.credentials
            self.unread = None
            if password != self.credentials.password:
                log.info("cluster: %s holds a new etcd password: logging in with it", path)
                self.credentials = attrs.evolve(self.credentials, password=password)
        return self.credentials


def again(failure: EtcdError | MemberFailed) -> EtcdError | MemberFailed:
    """A login's failure as a new exception, for a request that waited for that login to raise."""
    if isinstance(failure, MemberFailed):
        return failure.unsent("")
    return EtcdError(failure.reason)
