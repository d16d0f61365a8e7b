"""etcd's authentication in the etcd client (apeinxfs/cluster/etcd_auth.py) against a real etcd with auth enabled.

One etcd member over TLS (tests/etcd_pki.py) with `--auth-token-ttl 2` serves the module;
the test enables authentication through the gateway (user root, role root). Checked:
keys and a watch work with the right password; a wrong one is refused in words naming
the user and the keys to check; a token left unused past its TTL is renewed without the
caller seeing it; the `[cluster]` keys etcd_user and etcd_password_file and their
refusals (pure, no etcd); a daemon configured with them joins.
"""
import errno

import pytest
import trio

from apeinxfs.cluster.etcd import Etcd
from apeinxfs.cluster.etcd_auth import Credentials
from apeinxfs.cluster.etcd_records import EtcdError, Txn
from apeinxfs.cluster.etcd_tls import client_context
from daemon import Daemon
from etcd_pki import enable_auth, pki, tls_etcd, tls_keys  # noqa: F401 - pki: a fixture
from fake_tls import serve
from test_cluster_nodes import cluster_config, joins_and_leads
from test_cluster_view import load, refusal
from test_etcd_client import reasons_of_gets, wait_for

PASSWORD = "s3cret pass"  # a space: a password is not a token
TOKEN_TTL_S = 2


@pytest.fixture(scope="module")
def member(pki, tmp_path_factory):
    """A TLS member whose tokens expire after TOKEN_TTL_S unused, with root's password and auth enabled."""
    with tls_etcd(tmp_path_factory.mktemp("etcd-auth"), pki, ("--auth-token-ttl", str(TOKEN_TTL_S))) as running:
        enable_auth(running, PASSWORD)
        yield running


def client(pki, member, password: str = PASSWORD, before: tuple[str, ...] = (), user: str = "root",
           **options) -> Etcd:
    """A client as `user` (root) with `password`, its certificate without a common name (etcd_pki.py says why),
    of the members `before` and then `member`."""
    tls = client_context(pki("ca.pem"), (pki("anonymous.pem"), pki("anonymous.key")))
    return Etcd([*before, member.client_url], tls=tls, credentials=Credentials(user, password), **options)


def logging_in(requests: list[bytes]):
    """A wait_for condition: a fake member's `requests` hold an authentication."""
    async def logged_in() -> bool:
        return b"POST /v3/auth/authenticate HTTP/1.1" in requests
    return logged_in


async def test_keys_and_a_watch_work_with_the_password(pki, member, nursery):
    """With root's password a put, a get and a watch's event go through."""
    async with client(pki, member) as etcd:
        revision = await etcd.put(b"auth/a", b"1")
        assert (await etcd.get(b"auth/a")).value == b"1"
        async with etcd.watch(b"auth/", prefix=True, start_revision=revision, nursery=nursery) as events:
            with trio.fail_after(10):  # a hang guard
                event = await events.__anext__()
        assert (event.kind, event.kv.key, event.kv.value) == ("PUT", b"auth/a", b"1")


async def test_without_credentials_etcd_refuses(pki, member):
    """A client without credentials is refused by etcd, with etcd's words."""
    tls = client_context(pki("ca.pem"), (pki("anonymous.pem"), pki("anonymous.key")))
    async with Etcd([member.client_url], tls=tls) as etcd:
        with pytest.raises(EtcdError) as caught:
            await etcd.get(b"auth/a")
    assert "etcdserver: user name is empty" in caught.value.reason


async def test_a_wrong_password_is_refused_naming_the_user_and_the_keys(pki, member):
    """A wrong password fails the call at once with EIO, naming the user and the config keys."""
    async with client(pki, member, password="wrong") as etcd:
        with pytest.raises(EtcdError) as caught:
            await etcd.get(b"auth/a")
    assert caught.value.errno == errno.EIO
    assert "authentication as 'root' failed" in caught.value.reason
    assert "cluster.etcd_user and etcd_password_file" in caught.value.reason


async def test_requests_waiting_for_a_login_refused_get_its_refusal_without_logging_in_again(pki, member):
    """Five concurrent gets with a wrong password: one login, whose refusal all five get."""
    async with client(pki, member, password="wrong") as etcd:
        logins, login = [], etcd.auth.login
        etcd.auth.login = lambda url, body: logins.append(url) or login(url, body)
        reasons = await reasons_of_gets(etcd, b"auth/a", 5)
    assert len(reasons) == 5 and all("authentication as 'root' failed" in reason for reason in reasons), reasons
    assert logins == [member.client_url]


async def test_an_expired_token_is_renewed_without_the_caller_seeing_it(pki, member, nursery):
    """A token unused past etcd's --auth-token-ttl is refused by etcd; the client authenticates again and
    the put, and a watch opened then, succeed."""
    async with client(pki, member) as etcd:
        await etcd.put(b"auth/b", b"1")
        first = etcd.auth.token
        await trio.sleep(TOKEN_TTL_S + 2)  # etcd's simple token expires meanwhile
        revision = await etcd.put(b"auth/b", b"2")
        second = etcd.auth.token
        assert second != first and (await etcd.get(b"auth/b")).value == b"2"
        await trio.sleep(TOKEN_TTL_S + 2)
        async with etcd.watch(b"auth/b", start_revision=revision, nursery=nursery) as events:
            with trio.fail_after(10):
                assert (await events.__anext__()).kv.value == b"2"
        assert etcd.auth.token not in (first, second)


async def test_a_login_hanging_at_one_member_holds_no_request_bound_for_another(pki, member, nursery):
    """A txn's login hangs at a member that never answers; a get meanwhile is served by the healthy member
    within about attempt_timeout, not at the end of its own timeout."""
    hung, requests = await serve(nursery, pki, "hang")
    async with client(pki, member, before=(hung,), timeout=30.0) as etcd, trio.open_nursery() as txn:
        txn.start_soon(failing, etcd.txn(Txn().put(b"auth/t", b"1")))
        await wait_for(logging_in(requests), "a login at the hung member")
        with trio.fail_after(15):  # a hang guard, well below the client's timeout
            assert (await etcd.range(b"auth/", prefix=True)).revision > 0
        txn.cancel_scope.cancel()


async def test_a_login_lost_at_one_member_leaves_a_txn_free_to_go_to_the_next(pki, member, nursery):
    """A member that drops the connection after taking a login: only the login was sent there, so a txn that
    cannot be repeated goes on to the healthy member and succeeds, not "outcome unknown"."""
    dropping, requests = await serve(nursery, pki, "drop")
    async with client(pki, member, before=(dropping,)) as etcd:
        with trio.fail_after(15):  # a hang guard
            assert (await etcd.txn(Txn().put(b"auth/lost", b"1"))).succeeded
    assert set(requests) == {b"POST /v3/auth/authenticate HTTP/1.1"}


async def failing(call) -> None:
    """Await `call`, whose failure is not what a test checks."""
    try:
        await call
    except EtcdError:
        pass


# -- [cluster] settings (pure) ----------------------------------------------------------------------------


def with_password_file(tmp_path, text: bytes, mode: int = 0o600) -> str:
    """A [cluster] section with user apx and a password file holding `text`, of `mode`."""
    path = tmp_path / "etcd-password"
    path.write_bytes(text)
    path.chmod(mode)
    return f'etcd = ["https://e1:1"]\netcd_user = "apx"\netcd_password_file = "{path}"'


def test_the_user_and_the_password_file_make_the_credentials(tmp_path):
    """etcd_user and etcd_password_file are read; the password is the file's text without its newline."""
    cluster = load(tmp_path, with_password_file(tmp_path, b"a b\n")).cluster
    credentials = cluster.credentials
    assert (credentials.user, credentials.password.value) == ("apx", "a b")
    assert credentials.password.paths == (str(tmp_path / "etcd-password"),)
    assert "a b" not in repr(credentials) and "a b" not in repr(Credentials("apx", "a b"))


def test_the_password_is_read_at_start(tmp_path):
    """The settings hold the password read when the config was: its file gone afterwards changes them not."""
    cluster = load(tmp_path, with_password_file(tmp_path, b"pw\n")).cluster
    (tmp_path / "etcd-password").unlink()
    assert cluster.credentials.password.value == "pw"


@pytest.mark.parametrize("text, mode, words", [
    (b"pw\n", 0o644, "is readable by every user"),
    (b"\n", 0o600, "is empty"),
    (b"\xff\xfe\n", 0o600, "is not UTF-8 text"),
])
def test_a_bad_password_file_is_refused_naming_the_key(tmp_path, text, mode, words):
    """A world-readable, empty or non-UTF-8 password file is a config error naming the key."""
    refused = refusal(lambda: load(tmp_path, with_password_file(tmp_path, text, mode)))
    assert refused.errno == errno.EINVAL
    assert "cluster.etcd_password_file" in refused.reason and words in refused.reason


def test_a_user_without_a_password_file_or_a_missing_file_is_refused(tmp_path):
    """etcd_user and etcd_password_file go together; a file that is not there is named."""
    def reason(section: str) -> str:
        return refusal(lambda: load(tmp_path, 'etcd = ["https://e1:1"]\n' + section)).reason
    assert "go together" in reason('etcd_user = "apx"')
    missing = reason('etcd_user = "apx"\netcd_password_file = "/nonexistent/pw"')
    assert "cluster.etcd_password_file: /nonexistent/pw: No such file" in missing
    assert "cluster.etcd_user must be" in reason("etcd_user = 3")


def test_a_user_with_plain_http_members_is_refused(tmp_path):
    """etcd_user with http:// members would send the password in clear: a config error saying so."""
    section = with_password_file(tmp_path, b"pw\n").replace("https://", "http://")
    refused = refusal(lambda: load(tmp_path, section))
    assert refused.errno == errno.EINVAL and "cluster.etcd_user is set but cluster.etcd has plain http://" in \
        refused.reason and "in clear" in refused.reason


def auth_keys(tmp_path, pki, user: str, password: str) -> str:
    """[cluster] keys for TLS with the anonymous certificate and etcd's user `user`, whose `password` is
    written to a file (mode 0600) under `tmp_path`."""
    path = tmp_path / "password"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return tls_keys(pki, "anonymous") + f'etcd_user = "{user}"\netcd_password_file = "{path}"\n'


def test_a_daemon_with_the_user_and_its_password_file_joins(tmp_path, pki, member):
    """A node with etcd_user and etcd_password_file (and TLS) lists itself up and leading."""
    config = cluster_config("u1", [member.client_url]) + auth_keys(tmp_path, pki, "root", PASSWORD)
    with Daemon(tmp_path / "ai", tmp_path / "state", config) as node:
        joins_and_leads(node, "u1")
