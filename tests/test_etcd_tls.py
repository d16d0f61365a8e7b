"""The etcd client over TLS (apeinxfs/cluster/etcd_tls.py) against a real etcd demanding client certificates.

One etcd member serving https with `--client-cert-auth` and a throwaway PKI made with the
openssl CLI (tests/etcd_pki.py) serve the module. Checked: keys, leases and a watch work
with the client certificate; a client without it, and one trusting another CA, are refused
at once (the reason says every member refused it by TLS, not that the client's deadline,
far longer than the test, ran out) with reasons that name TLS; the `[cluster]` TLS keys
and their refusals (pure, no etcd); a daemon whose `[cluster]` reaches etcd over TLS
publishes itself, and one without its client certificate says in /cluster that TLS refused
it.
"""
import errno

import pytest
import trio

from apeinxfs.cluster.etcd import Etcd
from apeinxfs.cluster.etcd_records import Txn, Unavailable
from apeinxfs.cluster.etcd_tls import client_context
from daemon import Daemon, poll_until
from etcd_pki import pki, tls_etcd, tls_keys  # noqa: F401 - pki: a fixture
from test_cluster_nodes import SETTLE_S, cluster_config, joins_and_leads, link
from test_cluster_view import load, refusal
from test_etcd_client import reason_of


@pytest.fixture(scope="module")
def member(pki, tmp_path_factory):
    with tls_etcd(tmp_path_factory.mktemp("etcd-tls"), pki) as running:
        yield running


HANG_GUARD_S = 60.0  # the client's deadline: far longer than a refusal takes, which fails the call at once
REFUSED = "every member refused this client by TLS"  # the reason of a call failed at once (not at the deadline)


async def refused(member, tls, nursery) -> str:
    """The reason a put through a client with `tls` fails with (Unavailable); it, a watch's and a txn's that
    cannot be repeated say that the member refused this client by TLS, not that the deadline ran out."""
    async with Etcd([member.client_url], timeout=HANG_GUARD_S, tls=tls) as etcd:
        reasons = [await reason_of(call, Unavailable) for call in (
            etcd.put(b"tls/refused", b"x"), opened(etcd.watch(b"tls/", nursery=nursery)),
            etcd.txn(Txn().put(b"tls/refused", b"x")))]
    assert all(reason.startswith(f"etcd: {what}: {REFUSED} ({member.client_url}: ") and reason.count("TLS: ") == 1
               for what, reason in zip(("/kv/put", "watch", "/kv/txn"), reasons)), reasons
    return reasons[0]


async def opened(watch) -> None:
    """Open `watch` and close it again."""
    async with watch:
        pass


async def test_keys_leases_and_a_watch_work_over_tls_with_the_client_certificate(pki, member, nursery):
    """put/get, a lease's keepalive and a watch's events, all over https with the client certificate."""
    tls = client_context(pki("ca.pem"), (pki("client.pem"), pki("client.key")))
    async with Etcd([member.client_url], tls=tls) as etcd:
        revision = await etcd.put(b"tls/a", b"1")
        assert (await etcd.get(b"tls/a")).value == b"1"
        lease = await etcd.grant(5)
        assert await etcd.keepalive_once(lease.id) > 0
        async with etcd.watch(b"tls/", prefix=True, start_revision=revision, nursery=nursery) as events:
            await etcd.put(b"tls/b", b"2", lease=lease.id)
            with trio.fail_after(10):  # a hang guard
                seen = [await events.__anext__(), await events.__anext__()]
        assert [(e.kind, e.kv.key, e.kv.value) for e in seen] == [("PUT", b"tls/a", b"1"), ("PUT", b"tls/b", b"2")]


async def test_a_client_without_its_certificate_is_refused_with_a_tls_reason(pki, member, nursery):
    """Trusting the member's CA but presenting no certificate: the member's refusal names TLS and the
    client certificate, each time (under TLS 1.3 the refusal comes after the handshake)."""
    for _ in range(3):
        reason = await refused(member, client_context(pki("ca.pem")), nursery)
        assert "TLS: the member refused the connection" in reason and "cluster.etcd_cert" in reason, reason
        assert "connection lost" not in reason and "outcome unknown" not in reason, reason


async def test_a_client_trusting_another_ca_is_refused_naming_certificate_verification(pki, member, nursery):
    """A member whose certificate another CA signed fails verification, and the reason says so."""
    reason = await refused(member, client_context(pki("other.pem"), (pki("client.pem"), pki("client.key"))), nursery)
    assert "TLS: the member's certificate failed verification: unable to get local issuer certificate" in reason
    assert "cluster.etcd_ca" in reason


async def test_the_system_cas_do_not_trust_a_private_ca(member):
    """Without etcd_ca the client verifies by the system's CAs, which do not know the test CA."""
    async with Etcd([member.client_url], timeout=HANG_GUARD_S) as etcd:
        reason = await reason_of(etcd.get(b"tls/a"), Unavailable)
    assert f"{REFUSED} ({member.client_url}: TLS: the member's certificate failed verification" in reason, reason


# -- [cluster] settings (pure) ----------------------------------------------------------------------------


def tls_section(pki, **paths) -> str:
    """A [cluster] section with one https member and the TLS keys as `paths` changes them (etcd_pki.tls_keys)."""
    return 'etcd = ["https://127.0.0.1:2379"]\n' + tls_keys(pki, **paths)


def test_tls_keys_are_read_and_make_the_clients_context(tmp_path, pki):
    """etcd_ca, etcd_cert and etcd_key are read as given; the context verifies and presents the certificate."""
    cluster = load(tmp_path, tls_section(pki)).cluster
    assert (cluster.etcd_ca, cluster.etcd_cert, cluster.etcd_key) == (pki("ca.pem"), pki("client.pem"),
                                                                      pki("client.key"))
    assert cluster.tls.context.get_ca_certs()[0]["subject"] == ((("commonName", "apeinxfs test ca"),),)
    assert load(tmp_path, 'etcd = ["https://127.0.0.1:2379"]').cluster.etcd_ca is None  # the system's CAs


def test_bad_tls_keys_are_refused_naming_the_key_and_the_file(tmp_path, pki):
    """A missing or malformed file, a lone cert, a world-readable key, TLS keys with http://, a bad https URL or
    http:// and https:// members together are config errors."""
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [
        (tls_section(pki, etcd_ca="/nonexistent/ca.pem"), "cluster.etcd_ca: /nonexistent/ca.pem: No such file"),
        (tls_section(pki, etcd_ca=str(garbage)), f"cluster.etcd_ca: {garbage} holds no PEM certificate"),
        (tls_section(pki, etcd_key="/nonexistent/k"), "cluster.etcd_key: /nonexistent/k: No such file"),
        (tls_section(pki, etcd_cert=str(garbage)), "are not a PEM certificate and its private key"),
        (tls_section(pki, etcd_key=pki("server.key")), "are not a PEM certificate and its private key"),
        (tls_section(pki, etcd_key=None), "cluster.etcd_cert and cluster.etcd_key go together"),
        ('etcd = ["https://127.0.0.1:2379"]\netcd_ca = 1\n', "cluster.etcd_ca must be a file's path"),
        (tls_section(pki).replace("https://", "http://"), "cluster.etcd_ca is set but cluster.etcd has plain http://"),
        ('etcd = ["https:/127.0.0.1:2379"]', "is not an http://HOST:PORT or https://HOST:PORT URL"),
        ('etcd = ["http://e1:1", "https://e2:1"]', "cluster.etcd mixes http:// and https:// URLs"),
    ]
    for section, words in cases:
        refused_config = refusal(lambda: load(tmp_path, section))
        assert refused_config.errno == errno.EINVAL and words in refused_config.reason, (section, refused_config)


def test_a_client_key_every_user_can_read_is_refused(tmp_path, pki):
    """The client's private key must not be world-readable, as the token file must not."""
    shared = tmp_path / "shared.key"
    shared.write_bytes(open(pki("client.key"), "rb").read())
    shared.chmod(0o644)
    assert "chmod o-r" in refusal(lambda: load(tmp_path, tls_section(pki, etcd_key=str(shared)))).reason


# -- the daemon ------------------------------------------------------------------------------------------


def tls_daemon(tmp_path, name: str, member, keys: str) -> Daemon:
    return Daemon(tmp_path / name / "ai", tmp_path / name / "state", cluster_config(name, [member.client_url]) + keys)


def test_a_daemon_reaches_etcd_over_tls_and_publishes_itself(tmp_path, pki, member):
    """A node with etcd_ca, etcd_cert and etcd_key joins: it lists itself up and leading."""
    with tls_daemon(tmp_path, "t1", member, tls_keys(pki)) as node:
        joins_and_leads(node, "t1")


def test_a_daemon_without_its_client_certificate_says_tls_refused_it(tmp_path, pki, member):
    """A node with only etcd_ca is refused by the member; /cluster says etcd is unavailable because of TLS."""
    with tls_daemon(tmp_path, "t2", member, tls_keys(pki, etcd_cert=None, etcd_key=None)) as node:
        poll_until(lambda: link(node)["Etcd"] == "unavailable", SETTLE_S, "etcd unavailable in /cluster")
        assert REFUSED in link(node)["Reason"] and "TLS: the member refused the connection" in link(node)["Reason"]
