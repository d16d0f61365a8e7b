"""Tier 1: guarded.write_each against a fake etcd: each item is done as its txn is answered, so an error
midway leaves the items answered before it done (the recorder does not send them again)."""
import pytest
import trio

from apeinxfs.cluster.etcd_records import TXN_OPS, EtcdError, Txn, TxnResult
from apeinxfs.cluster.guarded import write_each
from apeinxfs.cluster.records import unchanged_at


class FlakyEtcd:
    """Answers its first `good` txns at revisions 10, 11, ...; then refuses, as etcd does a request it will
    not take."""

    def __init__(self, good: int):
        self.good, self.sent = good, []

    async def txn(self, txn: Txn) -> TxnResult:
        self.sent.append(txn)
        if len(self.sent) > self.good:
            raise EtcdError("etcdserver: too many requests")
        return TxnResult(succeeded=True, revision=9 + len(self.sent), responses=[])


def put_of(key: int) -> Txn:
    return unchanged_at(f"k{key}".encode(), 1).put(f"k{key}".encode(), b"v")


def test_an_error_midway_leaves_the_items_answered_before_it_done():
    """Twice TXN_OPS guarded puts go in two txns; the second is refused: the first txn's items were done at
    its revision before the error came out, and none of the second's."""
    etcd, done = FlakyEtcd(good=1), []
    with pytest.raises(EtcdError):
        trio.run(write_each, etcd, range(2 * TXN_OPS), put_of, lambda item, revision: done.append((item, revision)))
    assert len(etcd.sent) == 2
    assert done == [(item, 10) for item in range(TXN_OPS)]
