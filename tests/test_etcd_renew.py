"""Renewed TLS files and a changed password taken by a running etcd client (cluster/etcd_renew.py, etcd_auth.py).

Pure tier (files of a throwaway PKI, time passed in): TlsFiles looks at its files no more
than once per CHECK_S, takes a renewed set that loads, and keeps the last good context,
saying and logging why once, while a set does not load (a certificate without its key yet,
a half-written key, a key readable by every user); after a refused login, Auth reads its
password file again (a fake login that refuses all but one password); the transport of a
replaced context is closed once its last stream ends (a fake transport that answers); a CA
gone between its check and its load is not taken. Against real etcd members serving https
with `--client-cert-auth` (tests/etcd_pki.py): a client whose certificate is renewed under
it goes on without a restart, its open watch included; new connections take the files on
disk (a certificate of a CA the member does not trust is refused, then a renewed good one
is taken at the next try); a client certificate of a new CA, once the member trusts both;
a half-written key not taken while the old context keeps working; and a daemon whose
password is changed in etcd, then in its file, logs in again by itself. Those clients look at
their files at every call (CHECK_S set to 0) or at a refusal only (CHECK_S past any test), so
no test waits for a look.
"""
import logging
import os
import shutil
from pathlib import Path

import httpx
import pytest
import trio

from apeinxfs.cluster.etcd import Etcd
from apeinxfs.cluster.etcd_auth import Auth, Credentials
from apeinxfs.cluster.etcd_records import EtcdError, Unavailable
from apeinxfs.cluster import etcd_auth, etcd_tls, renewal
from apeinxfs.cluster.etcd_renew import Renewing, TlsFiles
from apeinxfs.cluster.renewal import CHECK_S
from daemon import Daemon, poll_until
from etcd_pki import enable_auth, gateway, pki, sign, tls_etcd  # noqa: F401 - pki: a fixture
from test_cluster_nodes import SETTLE_S, cluster_config, joins_and_leads, link
from test_etcd_auth import auth_keys
from test_etcd_client import reason_of

ROOT_PASSWORD = "root pass"
REFUSALS_ONLY_S = 3600.0  # a CHECK_S no test outlasts: the files are looked at by a refusal's check only
NOT_A_PAIR = "are not a PEM certificate and its private key"  # etcd_tls's words for a key that does not match


@pytest.fixture(scope="module")
def renewals(pki):
    """Two more client certificates without a common name: `renewed` of the test CA, `stranger` of the other CA."""
    sign(pki.root, "renewed", "/O=apeinxfs renewed")
    sign(pki.root, "stranger", "/O=apeinxfs stranger", ca="other")
    return pki


@pytest.fixture(scope="module")
def member(renewals, tmp_path_factory):
    """A member trusting the test CA only."""
    with tls_etcd(tmp_path_factory.mktemp("etcd-renew"), renewals) as running:
        yield running


def install(pki, folder: Path, name: str, files: tuple[str, ...] = ("pem", "key")) -> None:
    """Renew the client's files in `folder` with certificate `name`'s: each written aside and renamed in
    (as cert-manager and certbot do), key mode 0600; `files` picks which of the two."""
    folder.mkdir(exist_ok=True)
    for suffix in files:
        aside = folder / f".client.{suffix}.new"
        shutil.copyfile(pki(f"{name}.{suffix}"), aside)
        aside.chmod(0o600)
        os.replace(aside, folder / f"client.{suffix}")


def files_of(pki, folder: Path, name: str = "anonymous") -> TlsFiles:
    """TlsFiles of the test CA and the client's files in `folder`, certificate `name`'s installed first."""
    install(pki, folder, name)
    return TlsFiles.load(pki("ca.pem"), (str(folder / "client.pem"), str(folder / "client.key")))


# -- TlsFiles (pure: files, time passed in) ----------------------------------------------------------------


def test_files_are_looked_at_at_most_once_per_check_and_a_renewed_set_is_taken(renewals, tmp_path):
    """A renewal within CHECK_S of the last look is not seen; at CHECK_S it is loaded and taken."""
    files = files_of(renewals, tmp_path)
    first = files.current(100.0)
    install(renewals, tmp_path, "renewed")
    assert files.current(100.0 + CHECK_S / 2) is first  # not looked at: no stat per request
    taken = files.current(100.0 + CHECK_S)
    assert taken is not first and files.failure is None and files.state == "ok"
    assert files.current(100.0 + 2 * CHECK_S) is taken  # unchanged files are not loaded again


def test_a_certificate_without_its_new_key_is_not_taken_until_the_key_comes(renewals, tmp_path, caplog):
    """Certificate renewed, key not yet: the old context stays, the reason is shown and logged once; the key
    written, the set is taken at the next look."""
    files = files_of(renewals, tmp_path)
    good = files.context
    install(renewals, tmp_path, "renewed", files=("pem",))
    with caplog.at_level(logging.WARNING, logger="apeinxfs.cluster.renewal"):
        for second in range(3):
            assert files.current(float(second)) is good
    assert NOT_A_PAIR in files.failure and files.state.startswith(f"not taken: config: cluster.etcd_cert")
    assert files.state.endswith("the files loaded before stay in use")
    assert len([record for record in caplog.records if NOT_A_PAIR in record.getMessage()]) == 1
    install(renewals, tmp_path, "renewed", files=("key",))
    assert files.current(3.0) is not good and files.state == "ok"


@pytest.mark.parametrize("damage, words", [
    (lambda key: key.write_bytes(key.read_bytes()[:len(key.read_bytes()) // 2]), NOT_A_PAIR),  # half written
    (lambda key: key.chmod(0o644), "is readable by every user"),
])
def test_a_damaged_renewed_key_is_not_taken(renewals, tmp_path, damage, words):
    """A renewed key half written, or readable by every user, is not taken: the old context stays."""
    files = files_of(renewals, tmp_path)
    good = files.context
    install(renewals, tmp_path, "renewed")
    damage(tmp_path / "client.key")
    files.check(1.0)
    assert files.context is good and words in files.failure


def test_a_ca_gone_between_its_check_and_its_load_is_not_taken(renewals, tmp_path, monkeypatch):
    """The CA file removed just after it was found readable (a renewal replacing it, the race modelled by
    removing it in the check): the set is not taken, with the file's words, instead of an OSError escaping."""
    ca = tmp_path / "ca.pem"
    shutil.copyfile(renewals("ca.pem"), ca)
    install(renewals, tmp_path, "anonymous")
    files = TlsFiles.load(str(ca), (str(tmp_path / "client.pem"), str(tmp_path / "client.key")))
    good, checked = files.context, etcd_tls.readable

    def readable_then_gone(name: str, path: str) -> str:
        found = checked(name, path)
        if name == "etcd_ca":
            os.unlink(path)
        return found
    monkeypatch.setattr(etcd_tls, "readable", readable_then_gone)
    install(renewals, tmp_path, "renewed")
    files.check(1.0)
    assert files.context is good and "etcd_ca" in files.failure and "No such file" in files.failure


def test_without_files_nothing_is_looked_at():
    """Without TLS files (the system's CAs) the context stays; /ai/cluster's row says -."""
    files = TlsFiles.load()
    context = files.context
    assert files.current(1e9) is context and files.state == "-" and files.paths == ()


class Answering(httpx.AsyncBaseTransport):
    """A transport that answers every request 200 with a body, and knows whether it was closed."""

    def __init__(self, context):
        self.context, self.closed = context, False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert not self.closed
        return httpx.Response(200, stream=httpx.ByteStream(b"answer"))

    async def aclose(self) -> None:
        self.closed = True


async def test_a_replaced_transport_is_closed_once_its_last_stream_ends(renewals, tmp_path):
    """Renewed files: the next request goes through a transport of the new context; the one before is closed
    when the stream open on it ends, not before."""
    files, made = files_of(renewals, tmp_path), []
    transport = Renewing(files, lambda context: made.append(Answering(context)) or made[-1])
    async with httpx.AsyncClient(transport=transport) as client:
        async with client.stream("POST", "https://m/watch") as open_stream:
            install(renewals, tmp_path, "renewed")
            files.check(trio.current_time())
            assert (await client.post("https://m/put")).content == b"answer"
            assert [one.context for one in made] == [made[0].context, files.context] and not made[0].closed
            await open_stream.aread()
        assert made[0].closed and not made[1].closed


# -- against real etcd ------------------------------------------------------------------------------------


def good_client(pki, member) -> Etcd:
    """A client with the test's certificate, fixed: to put keys beside the client under test."""
    return Etcd([member.client_url], tls=TlsFiles.load(pki("ca.pem"), (pki("anonymous.pem"), pki("anonymous.key"))))


async def test_new_connections_take_renewed_files_while_an_open_watch_goes_on(renewals, member, tmp_path, nursery,
                                                                              monkeypatch):
    """Renewed to a certificate of a CA the member does not trust, the next call (the files looked at by each)
    is refused while the watch opened before goes on; renewed again to a good certificate while the files are
    looked at by a refusal only, the next call works: its first try is refused, the refusal takes the files,
    and a round with them follows, without a restart."""
    monkeypatch.setattr(renewal, "CHECK_S", 0.0)
    async with Etcd([member.client_url], timeout=60.0, tls=files_of(renewals, tmp_path)) as etcd, \
            good_client(renewals, member) as other:
        revision = await etcd.put(b"renew/a", b"1")
        async with etcd.watch(b"renew/", prefix=True, start_revision=revision + 1, nursery=nursery) as events:
            install(renewals, tmp_path, "stranger")
            reason = await reason_of(etcd.get(b"renew/a"), Unavailable)
            assert "every member refused this client by TLS" in reason and "bad certificate" in reason, reason
            await other.put(b"renew/b", b"2")
            with trio.fail_after(10):  # a hang guard
                event = await events.__anext__()
            assert (event.kv.key, event.kv.value) == (b"renew/b", b"2")  # its connection predates the renewal
        monkeypatch.setattr(renewal, "CHECK_S", REFUSALS_ONLY_S)
        install(renewals, tmp_path, "renewed")
        before = etcd.tls.context
        assert (await etcd.get(b"renew/a")).value == b"1" and etcd.tls.state == "ok"
        assert etcd.tls.context is not before  # its first try refused, the refusal took the files


async def test_a_client_certificate_of_a_new_ca_is_taken_once_the_member_trusts_both(renewals, tmp_path, monkeypatch):
    """A member trusting the test CA and the other CA: a client renewed to a certificate of the same CA, then of
    the other CA, keeps working through each renewal, each taken at the next call (the files looked at by
    each: the client's context changed, and the transport its requests go through is the new context's)."""
    monkeypatch.setattr(renewal, "CHECK_S", 0.0)
    bundle = tmp_path / "both.pem"
    bundle.write_bytes(Path(renewals("ca.pem")).read_bytes() + Path(renewals("other.pem")).read_bytes())
    with tls_etcd(tmp_path / "etcd", renewals, ("--trusted-ca-file", str(bundle))) as both:
        async with Etcd([both.client_url], timeout=60.0, tls=files_of(renewals, tmp_path / "client")) as etcd:
            for name in ("renewed", "stranger"):
                before = etcd.tls.context
                await etcd.put(b"renew/" + name.encode(), b"1")
                install(renewals, tmp_path / "client", name)
                await etcd.put(b"renew/" + name.encode(), b"2")
                assert etcd.tls.context is not before and etcd.tls.state == "ok"
                assert etcd.transport.context is etcd.tls.context


async def test_a_half_written_key_is_not_taken_and_the_old_context_keeps_working(renewals, member, tmp_path,
                                                                                  monkeypatch):
    """Certificate renewed, key half written: calls go on with the context before, the client says why; the
    key written whole, the set is taken at the next call (the files looked at by each)."""
    monkeypatch.setattr(renewal, "CHECK_S", 0.0)
    async with Etcd([member.client_url], timeout=60.0, tls=files_of(renewals, tmp_path)) as etcd:
        good = etcd.tls.context
        install(renewals, tmp_path, "renewed", files=("pem",))
        whole = Path(renewals("renewed.key")).read_bytes()
        (tmp_path / "client.key").write_bytes(whole[:len(whole) // 2])
        await etcd.put(b"renew/half", b"1")
        assert etcd.tls.context is good and etcd.tls.state.startswith("not taken: ") and NOT_A_PAIR in etcd.tls.state
        install(renewals, tmp_path, "renewed", files=("key",))
        await etcd.put(b"renew/half", b"2")
        assert etcd.tls.context is not good and etcd.tls.state == "ok"


# -- the password file read again (pure: a fake etcd login) ----------------------------------------------------


def fake_etcd(password: list[str]):
    """A login that, as etcd's /auth/authenticate, gives a token for `password[0]` and refuses any other."""
    async def login(url: str, body: dict) -> dict:
        if body["password"] != password[0]:
            raise EtcdError("etcd: etcdserver: authentication failed, invalid user ID or password")
        return {"token": f"token of {body['password']}"}
    return login


def password_file(tmp_path, text: str, mode: int = 0o600) -> str:
    path = tmp_path / "password"
    path.write_text(text + "\n")
    path.chmod(mode)
    return str(path)


async def test_after_a_refusal_the_next_login_reads_the_password_file_again(tmp_path, caplog):
    """Refused with the old password, a login after the file changed uses the new one and logs so once; one
    before it changed, or a file readable by every user (logged once), keeps the old one."""
    in_etcd = ["new pass"]  # not the old one's length: a file rewritten within one clock tick is seen
    auth = Auth(Credentials("u", etcd_auth.password_file(password_file(tmp_path, "old"))), fake_etcd(in_etcd), 2.0)
    with caplog.at_level(logging.INFO, logger="apeinxfs.cluster.renewal"):
        for _ in range(2):
            assert "authentication failed" in await reason_of(auth.log_in("https://m"), EtcdError)
        password_file(tmp_path, "new pass", 0o644)
        for _ in range(2):
            assert "authentication failed" in await reason_of(auth.log_in("https://m"), EtcdError)
        password_file(tmp_path, "new pass")
        assert await auth.log_in("https://m") == "token of new pass"
    said = [record.getMessage() for record in caplog.records]
    assert len([line for line in said if "is readable by every user" in line]) == 1
    assert len([line for line in said if "changed etcd password file taken" in line]) == 1


# -- a daemon's password, changed in etcd and then in its file -----------------------------------------------


def as_root(member, pki, path: str, body: dict) -> None:
    """POST `body` to /v3/`path` as etcd's root (password ROOT_PASSWORD), with a certificate without a common
    name (the gateway refuses one with a common name once authentication is on); asserting HTTP 200."""
    verify = TlsFiles.load(pki("ca.pem"), (pki("anonymous.pem"), pki("anonymous.key"))).context
    url = f"{member.client_url}/v3/"
    token = httpx.post(url + "auth/authenticate", json={"name": "root", "password": ROOT_PASSWORD},
                       verify=verify).json()["token"]
    answer = httpx.post(url + path, json=body, headers={"Authorization": token}, verify=verify)
    assert answer.status_code == 200, (path, answer.text)


def test_a_daemon_whose_password_changed_in_etcd_and_then_in_its_file_logs_in_again(renewals, tmp_path):
    """User `rotor` (role root): its password changed in etcd, the node's etcd calls are refused; written to the
    node's password file, the node logs in with it by itself and says so once in its log."""
    with tls_etcd(tmp_path / "etcd", renewals) as member:
        gateway(member, "auth/user/add", {"name": "rotor", "password": "old pass"})
        enable_auth(member, ROOT_PASSWORD)
        as_root(member, renewals, "auth/user/grant", {"user": "rotor", "role": "root"})
        config = cluster_config("p1", [member.client_url]) + auth_keys(tmp_path, renewals, "rotor", "old pass")
        with Daemon(tmp_path / "ai", tmp_path / "state", config) as node:
            joins_and_leads(node, "p1")
            as_root(member, renewals, "auth/user/changepw", {"name": "rotor", "password": "new pass"})
            poll_until(lambda: "authentication as 'rotor' failed" in link(node)["Reason"], SETTLE_S,
                       "the node's logins refused with the old password")
            password = tmp_path / "password"
            password.write_text("new pass\n")
            log = tmp_path / "state" / "daemon.log"  # whole: log_tail's last 3000 characters may have lost the line
            # both: a lease keepalive (which etcd does not authenticate) may say ok before any login
            poll_until(lambda: "changed etcd password file taken" in log.read_text() and link(node)["Etcd"] == "ok",
                       SETTLE_S, "the node took the new password and etcd answers it")
            assert log.read_text().count("changed etcd password file taken") == 1
