"""Whether a request broken under TLS may have taken effect (apeinxfs/cluster/etcd_tls.tls_failure), against fake members.

A fake https member (tests/fake_tls.py) takes each request and then breaks the
connection. Checked: a txn that cannot be repeated, broken by a damaged TLS record after
it was written, fails once sent with "outcome unknown" and the TLS words, never sent
again; a member whose handshakes end in its own internal error is tried until the deadline,
not refused at once. The refusals that send nothing (a failed handshake, the member's alert
refusing the client's certificate) are checked against a real etcd in tests/test_etcd_tls.py.
"""
import pytest
import trio

from apeinxfs.cluster.etcd import Etcd
from apeinxfs.cluster.etcd_records import Txn, Unavailable
from apeinxfs.cluster.etcd_tls import client_context
from etcd_pki import pki  # noqa: F401 - pki: a fixture
from fake_tls import serve


async def test_a_txn_broken_by_a_damaged_record_after_it_was_sent_is_of_unknown_outcome(pki, nursery):
    """A damaged TLS record in place of a txn's answer: "outcome unknown" naming TLS, and the txn sent once."""
    url, requests = await serve(nursery, pki, "garbage")
    async with Etcd([url], timeout=10.0, tls=client_context(pki("ca.pem"))) as etcd:
        with trio.fail_after(10), pytest.raises(Unavailable) as caught:  # a hang guard
            await etcd.txn(Txn().put(b"k", b"v"))
    assert "outcome unknown" in caught.value.reason and "TLS: " in caught.value.reason, caught.value.reason
    assert requests == [b"POST /v3/kv/txn HTTP/1.1"]


async def test_a_handshake_ended_by_the_members_own_error_is_tried_until_the_deadline(pki, nursery):
    """A member whose handshakes end in an internal-error alert (its own certificate unloadable for a moment, as
    mid-renewal) is tried again until the client's deadline, not refused at once as a wrong certificate is."""
    url, _ = await serve(nursery, pki, "internal-error")
    async with Etcd([url], timeout=1.0, tls=client_context(pki("ca.pem"))) as etcd:
        with trio.fail_after(10), pytest.raises(Unavailable) as caught:  # a hang guard
            await etcd.get(b"k")
    reason = caught.value.reason
    assert "no quorum within 1s" in reason and "ended the connection: tlsv1 alert internal error" in reason, reason
    assert "etcd_cert" not in reason  # no certificate to blame
