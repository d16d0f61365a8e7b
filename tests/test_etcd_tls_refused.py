"""Tier 1: a call that every etcd member refused by TLS fails at once, with fake members (cluster/etcd.py `on_members`).

Each fake member is an attempt function that counts its calls and fails as a member does:
refused by TLS before anything was sent (what etcd_tls.tls_failure says of a failed
handshake or a refused client certificate), no connection, "no leader", or no answer.
Checked: one round in which every member refused by TLS ends the call at once (each member
tried once), naming each member and its words, also where the refusal met the login of
etcd's authentication and where requests waited for that login; a round with any other
failure goes on until the deadline; a member's campaign refused so stands again after a
pause. Trio's MockClock jumps to the deadlines; nothing is sent anywhere.
"""
import collections
import logging

import pytest
import trio
import trio.testing

from apeinxfs.cluster.etcd import Etcd
from apeinxfs.cluster.etcd_auth import Credentials
from apeinxfs.cluster.etcd_records import Lease, MemberFailed, Unavailable
from apeinxfs.cluster.member import RETRY_S, Member
from apeinxfs.cluster.records import Keys
from test_etcd_client import reasons_of_gets

MEMBERS = ["https://127.0.0.1:1", "https://127.0.0.1:2", "https://127.0.0.1:3"]
BAD_CERTIFICATE = "TLS: the member refused the connection: sslv3 alert bad certificate"
REFUSED = "every member refused this client by TLS"


def tls_refused(url: str) -> MemberFailed:
    """What etcd_tls.tls_failure makes of member `url`'s alert refusing this client's certificate."""
    return MemberFailed(f"{BAD_CERTIFICATE} ({url})", sent=False, tls_refused=True)


OTHER_FAILURES = {
    "cannot connect": lambda url: MemberFailed("cannot connect: [Errno 111] Connection refused", sent=False),
    "no leader": lambda url: MemberFailed("etcdserver: no leader", sent=False),
    "refused by TLS then lost": lambda url: MemberFailed(f"connection lost: {BAD_CERTIFICATE}", sent=True),
}


def run_mocked(async_fn, *args):
    """`async_fn(*args)` under a clock that jumps to the next deadline whenever every task waits."""
    return trio.run(async_fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))


async def failed_call(failures: dict, retry_sent: bool = True) -> tuple[str, collections.Counter]:
    """The reason a call on MEMBERS fails with, each failing as `failures[url](url)` makes it (a member not
    in `failures` never answers), and how many attempts each member got."""
    attempts: collections.Counter = collections.Counter()

    async def attempt(url):
        attempts[url] += 1
        if url not in failures:
            await trio.sleep_forever()
        raise failures[url](url)

    async with Etcd(MEMBERS, timeout=8.0, attempt_timeout=2.0) as etcd:
        with pytest.raises(Unavailable) as caught:
            await etcd.on_members(attempt, "/kv/put", retry_sent)
    return caught.value.reason, attempts


@pytest.mark.parametrize("retry_sent", [True, False])
def test_a_round_in_which_every_member_refused_by_tls_fails_at_once(retry_sent):
    """Each member tried once, whether or not the call may be repeated; the reason names each and its words."""
    reason, attempts = run_mocked(failed_call, dict.fromkeys(MEMBERS, tls_refused), retry_sent)
    assert attempts == dict.fromkeys(MEMBERS, 1)
    assert reason == f"etcd: /kv/put: {REFUSED} (" + "; ".join(
        f"{url}: {BAD_CERTIFICATE} ({url})" for url in MEMBERS) + ")"


@pytest.mark.parametrize("other", [*OTHER_FAILURES, "no answer"])
def test_a_round_with_another_failure_goes_on_until_the_deadline(other):
    """Two members refused by TLS and one down, without a leader, lost after a refusal, or silent: rounds go
    on (any may be transient) until the client's timeout, which the reason names."""
    failures = dict.fromkeys(MEMBERS[:2], tls_refused) | (
        {MEMBERS[2]: OTHER_FAILURES[other]} if other in OTHER_FAILURES else {})
    reason, attempts = run_mocked(failed_call, failures)
    assert attempts[MEMBERS[0]] > 1 and attempts[MEMBERS[2]] > 1, attempts
    assert "no quorum within 8s" in reason and REFUSED not in reason, reason


async def refused_logins(gets: int) -> tuple[list[str], list[str]]:
    """The reasons of `gets` concurrent gets whose logins every member refused by TLS, and the logins."""
    logins: list[str] = []
    async with Etcd(MEMBERS, timeout=8.0, credentials=Credentials("apx", "pw")) as etcd:
        async def login(url, body):
            logins.append(url)
            await trio.sleep(0.1)  # the handshake: requests arriving meanwhile wait for this login
            raise tls_refused(url)
        etcd.auth.login = login
        return await reasons_of_gets(etcd, b"k", gets, Unavailable), logins


def test_logins_every_member_refused_by_tls_fail_the_calls_at_once_also_those_that_waited_for_them():
    """Five gets needing a token: every one fails with the TLS refusal of the logins, naming authentication;
    one login at each member in all (the others waited for it), not one each round until the deadline."""
    reasons, logins = run_mocked(refused_logins, 5)
    assert len(reasons) == 5 and all(reason.startswith(f"etcd: /kv/range: {REFUSED} (") and
                                     f"{MEMBERS[0]}: authentication: {BAD_CERTIFICATE}" in reason
                                     for reason in reasons), reasons
    assert logins == MEMBERS


class CampaignRefusedEtcd:
    """A client whose campaign every member refuses by TLS `refusals` times, then wins."""

    def __init__(self, refusals: int):
        self.refusals, self.campaigns = refusals, 0

    async def campaign(self, name: bytes, lease_id: int, value: bytes) -> None:
        self.campaigns += 1
        if self.campaigns <= self.refusals:
            raise Unavailable(f"etcd: /election/campaign: {REFUSED} ({MEMBERS[0]}: {BAD_CERTIFICATE})")


async def campaigned(etcd: CampaignRefusedEtcd) -> tuple[Member, float]:
    """A member's campaign through `etcd`, and the (mock) time it took."""
    member = Member(etcd, Keys("t/"), "n1", 5, record=None)  # type: ignore[arg-type]
    await member.campaign(Lease(1, 5))
    return member, trio.current_time()


def test_a_campaign_every_member_refused_by_tls_is_noted_and_stood_again_after_a_pause():
    """Two refusals (a certificate mended meanwhile), then the member leads; the reason was noted, and each
    try came RETRY_S after the last, not at once."""
    etcd = CampaignRefusedEtcd(refusals=2)
    member, took = run_mocked(campaigned, etcd)
    assert member.leading and etcd.campaigns == 3
    assert REFUSED in member.problem
    assert took == 2 * RETRY_S  # virtual time: a pause before each try again, no busy loop


def test_failures_that_differ_only_in_their_call_are_logged_once(caplog):
    """The node's loops failing in turn for one reason (a join's grant, the follower's read) log one warning, and
    the recovery one line; another reason is logged again."""
    member = Member(None, Keys("t/"), "n1", 5, record=None)  # type: ignore[arg-type]
    refused = "every member refused this client by TLS (https://m1: TLS: ...)"
    with caplog.at_level(logging.INFO, logger="apeinxfs.cluster.member"):
        for call in ["/lease/grant", "/kv/range", "watch"] * 3:
            member.note(Unavailable(f"etcd: {call}: {refused}"))
        member.note(Unavailable("etcd: /kv/range: no quorum within 8s (https://m1: cannot connect)"))
        member.note(None)
    assert [record.levelname for record in caplog.records] == ["WARNING", "WARNING", "INFO"]
    assert member.problem is None
