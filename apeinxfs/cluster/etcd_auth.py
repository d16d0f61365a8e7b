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
refused password is an EtcdError naming the user and the keys to check; the next login looks
at the password file again (`password_file`: a renewal.Renewable, read with read_password's
checks where the file changed since it was read; a file that does not load is logged once and
the password in use stays) and logs in with what it holds (a password changed in etcd, then
in the file, needs no restart). Not TLS (etcd_tls.py), which carries it.
"""
import functools
from typing import Awaitable, Callable, TypeVar

import attrs
import trio

from ..kernel.errors import Invalid
from .etcd_records import HEADERS, EtcdError, MemberFailed
from .etcd_tls import ETCD_GRANT
from .renewal import Renewable, Wording
from .secretfile import read_private

STALE_TOKEN = ("invalid auth token", "revision of auth store is old")  # etcd's words: authenticate again
WRONG_PASSWORD = "authentication failed"  # etcd's words for a login with a wrong user or password
Answer = TypeVar("Answer")
PASSWORD_WORDING = Wording("changed etcd password file", "the password in use stays", "the next login uses it")


def _renewable(password: str | Renewable[str]) -> Renewable[str]:
    return Renewable.fixed(password) if isinstance(password, str) else password


@attrs.frozen
class Credentials:
    """A user of etcd and its password (repr leaves the password out): fixed (a str), or its file's
    (`password_file`), looked at again after etcd refused it."""

    user: str
    password: Renewable[str] = attrs.field(converter=_renewable, repr=False)


def password_file(path: str) -> Renewable[str]:
    """The password in the file at `path`, read now; Invalid naming cluster.etcd_password_file if it cannot be."""
    return Renewable.read_now((path,), functools.partial(read_password, path), PASSWORD_WORDING)


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
        self.doubted = False  # etcd refused the password: look at its file again before the next login

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
        assert self.credentials is not None
        credentials = self.credentials
        body = {"name": credentials.user, "password": self.password()}
        try:
            return str((await self.login(url, body))["token"])
        except MemberFailed as failed:  # only the login was sent: the request it precedes was not
            raise failed.unsent("authentication: ") from None
        except EtcdError as refused:
            self.doubted = WRONG_PASSWORD in refused.reason
            raise EtcdError(f"etcd: authentication as {credentials.user!r} failed: {refused.reason} "
                            f"(check cluster.etcd_user and etcd_password_file)") from None

    def password(self) -> str:
        """The password to log in with: after etcd refused it, its file's now if the file changed and loads."""
        assert self.credentials is not None
        password = self.credentials.password
        if self.doubted:
            self.doubted = False
            password.check(trio.current_time())
        return password.value


def again(failure: EtcdError | MemberFailed) -> EtcdError | MemberFailed:
    """A login's failure as a new exception, for a request that waited for that login to raise."""
    if isinstance(failure, MemberFailed):
        return failure.unsent("")
    return EtcdError(failure.reason)
