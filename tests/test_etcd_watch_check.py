"""A watch whose member stops answering without closing its connection (etcd_watch.py's check).

Against a real 3-member etcd (tests/etcdcluster.py): the member a watch streams from is
stopped with SIGSTOP (it keeps its connections and answers nothing), and the watch must
go on from another member with nothing lost or repeated; an idle member that answers
keeps its watch. Without etcd: the check of a member that accepts a connection and never
answers, or refuses, ends a silent read.
"""
import functools
import json
import math
import socket

import pytest
import trio
import trio.testing

from apeinxfs.cluster import etcd_watch
from apeinxfs.cluster.daemon import Cluster
from apeinxfs.cluster.etcd import Etcd
from apeinxfs.cluster.etcd_records import EtcdError, MemberFailed
from etcdcluster import EtcdCluster
from test_journal_runtime import ONE_GPU, open_runtime

HANG_GUARD_S = 60  # only so that a broken watch fails the test instead of hanging it (virtual s on a MockClock)


@pytest.fixture
def cluster(tmp_path):
    """Three etcd members on free ports, data under tmp_path, killed by pid afterwards."""
    with EtcdCluster(tmp_path / "etcd") as running:
        yield running


@pytest.fixture
def silent_member():
    """The URL of a listening socket that nobody accepts from: connections open, nothing is answered."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


async def answer_once(stream: trio.SocketStream, answer: bytes) -> None:
    await stream.receive_some(65536)
    await stream.send_all(answer)
    await stream.aclose()


async def forward(events, send: trio.MemorySendChannel) -> None:
    """Each event of the watch, with the trio time it arrived, into `send`."""
    async for event in events:
        await send.send((event, trio.current_time()))


async def never_a_line():
    await trio.sleep_forever()
    yield  # an async generator, as httpx's lines are


async def answers_after(*gaps: float):
    """An empty answer after each gap in seconds, then silence (as httpx's lines of a stream)."""
    for gap in gaps:
        await trio.sleep(gap)
        yield '{"result": {"events": []}}'
    await trio.sleep_forever()


def answers_every(seconds: float, count: int):
    """`count` empty answers, one each `seconds`, then silence."""
    return answers_after(*[seconds] * count)


class CountedMember:
    """The stream's member as the check sees it (in place of `Etcd.post`): it counts the checks sent to it
    and answers each after `delay` seconds, with a refusal if `refuses`."""

    def __init__(self, delay: float, refuses: bool):
        self.delay, self.refuses, self.checks = delay, refuses, 0

    async def post(self, url: str, path: str, body: dict) -> dict:
        assert (path, body.get("count_only")) == ("/kv/range", True)
        self.checks += 1
        await trio.sleep(self.delay)
        if self.refuses:
            raise EtcdError("etcdserver: the counted member refuses")
        return {"count": "0"}


def watch_on(etcd: Etcd, url: str, nursery: trio.Nursery) -> etcd_watch.Watch:
    """A watch whose stream is on `url` as far as its check knows, with no checker started."""
    watch = etcd.watch(b"quiet/", prefix=True, start_revision=7, nursery=nursery)
    watch.url = url
    return watch


def silent_stream(etcd: Etcd, url: str, nursery: trio.Nursery, lines=None) -> etcd_watch.Watch:
    """A watch whose stream is open on `url`, reads `lines` (default: it says nothing), and is checked in
    `nursery`."""
    watch = watch_on(etcd, url, nursery)
    watch.lines = never_a_line() if lines is None else lines
    watch.start_checking()
    return watch


async def test_a_check_of_a_member_that_never_answers_fails_within_the_attempt_timeout(silent_member, nursery):
    """The check sent to a member that takes the connection and answers nothing raises MemberFailed."""
    async with Etcd([silent_member], attempt_timeout=0.3) as etcd:
        with trio.fail_after(HANG_GUARD_S), pytest.raises(MemberFailed, match="no answer to a check within 0.3s"):
            await watch_on(etcd, silent_member, nursery).check_member()


async def test_a_silent_read_ends_when_its_member_fails_the_check(silent_member, monkeypatch, nursery):
    """A read of a stream that stays silent is cancelled with MemberFailed once its member fails a check."""
    monkeypatch.setattr(etcd_watch, "WATCH_CHECK_S", 0.2)
    async with Etcd([silent_member], attempt_timeout=0.3) as etcd:
        watch = silent_stream(etcd, silent_member, nursery)
        with trio.fail_after(HANG_GUARD_S), pytest.raises(MemberFailed, match="silent for 0.2s"):
            await watch.next_answer()
        assert watch.checks == 0


async def test_a_stream_that_answers_within_each_check_interval_is_not_checked(nursery, autojump_clock):
    """Answers read every 2 s (fake clock) keep a member that would fail any check from being sent one;
    once they stop, it is sent one, and the next read fails."""
    member = CountedMember(delay=0.0, refuses=True)
    async with Etcd(["http://counted"]) as etcd:
        etcd.post = member.post
        watch = silent_stream(etcd, "http://counted", nursery, answers_every(2.0, 10))
        with trio.fail_after(HANG_GUARD_S):
            for _ in range(10):
                assert await watch.next_answer() == {"result": {"events": []}}
            assert member.checks == 0
            with pytest.raises(MemberFailed, match="refused the check"):
                await watch.next_answer()
        assert member.checks == 1


async def test_an_answer_read_during_a_check_that_fails_keeps_the_stream(nursery, autojump_clock):
    """A check sent after 3 s of silence that fails 1.5 s later (fake clock) does not end a stream that
    answered meanwhile: its next answer is read, and the check after it ends the stream."""
    member = CountedMember(delay=1.5, refuses=True)
    async with Etcd(["http://counted"]) as etcd:
        etcd.post = member.post
        watch = silent_stream(etcd, "http://counted", nursery, answers_after(4.0, 2.0))
        with trio.fail_after(HANG_GUARD_S):
            assert await watch.next_answer() == {"result": {"events": []}}  # at 4 s, the check sent at 3 s
            assert await watch.next_answer() == {"result": {"events": []}}  # at 6 s, after it failed at 4.5 s
            assert member.checks == 1
            with pytest.raises(MemberFailed, match="refused the check"):
                await watch.next_answer()  # the check sent at 9 s fails at 10.5 s
        assert (member.checks, trio.current_time()) == (2, pytest.approx(10.5))


async def test_a_check_failed_between_reads_fails_the_next_read(nursery, autojump_clock):
    """A member that fails a check while nobody reads its stream (fake clock; the member is a stand-in, as a
    real socket's connect would be a wait the fake clock jumps over) fails the next read, though the
    stream has an answer for it."""
    member = CountedMember(delay=0.0, refuses=True)
    async with Etcd(["http://counted"]) as etcd:
        etcd.post = member.post
        watch = silent_stream(etcd, "http://counted", nursery, answers_every(0.0, 2))
        with trio.fail_after(HANG_GUARD_S):
            assert await watch.next_answer() == {"result": {"events": []}}
            await trio.sleep(10)
            with pytest.raises(MemberFailed, match="refused the check"):
                await watch.next_answer()


async def test_a_member_that_refuses_the_check_fails_it(nursery):
    """A member whose answer to the check is one of etcd's refusals fails the check too."""
    refusal = b'{"error": "x", "message": "etcdserver: permission denied", "code": 7}'
    answer = b"HTTP/1.1 403 Forbidden\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(refusal), refusal)
    serve = functools.partial(trio.serve_tcp, functools.partial(answer_once, answer=answer), 0, host="127.0.0.1")
    listeners = await nursery.start(serve)
    url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    async with Etcd([url]) as etcd:
        with trio.fail_after(HANG_GUARD_S), pytest.raises(MemberFailed, match="refused .* permission denied"):
            await watch_on(etcd, url, nursery).check_member()


async def test_a_member_that_failed_a_stream_is_passed_over_by_the_next_request():
    """The member a stream failed on is tried last by the next request (if it was the one to try first)."""
    async with Etcd(["http://a", "http://b", "http://c"]) as etcd:
        etcd.pass_over("http://a")
        assert etcd.endpoint == "http://b"
        etcd.pass_over("http://a")
        assert etcd.endpoint == "http://b"
        etcd.current = 2
        etcd.pass_over("http://c")
        assert etcd.endpoint == "http://a"


@pytest.mark.slow
async def test_a_watch_leaves_a_member_stopped_without_closing_its_connection(cluster):
    """With the watch's member SIGSTOPped, a put made through another member arrives from another member,
    none of its revisions lost or repeated, and the next put after it."""
    follower = (cluster.leader_index() + 1) % 3  # the cluster keeps its leader: nothing ends the stream
    ordered = [cluster.endpoints[follower]] + [url for i, url in enumerate(cluster.endpoints) if i != follower]
    send, receive = trio.open_memory_channel(16)
    async with Etcd(ordered) as etcd, trio.open_nursery() as nursery:
        first = await etcd.put(b"h/before", b"0")
        async with etcd.watch(b"h/", prefix=True, start_revision=first, nursery=nursery) as events:
            nursery.start_soon(forward, events, send)
            with trio.fail_after(HANG_GUARD_S):
                assert (await receive.receive())[0].kv.mod_revision == first
                stopped = events.url
                cluster.pause(cluster.endpoints.index(stopped))
                try:
                    paused_at = trio.current_time()
                    during = await etcd.put(b"h/during", b"1")
                    event, arrived = await receive.receive()
                    after = await etcd.put(b"h/after", b"2")
                    between = [await receive.receive()]
                    while between[-1][0].kv.key != b"h/after":
                        between.append(await receive.receive())
                finally:
                    cluster.resume(cluster.endpoints.index(stopped))
            nursery.cancel_scope.cancel()
    print(f"the watch noticed the stopped member: its event arrived {arrived - paused_at:.1f}s after SIGSTOP "
          f"(WATCH_CHECK_S {etcd_watch.WATCH_CHECK_S:g}s + attempt_timeout {etcd.attempt_timeout:g}s at most, "
          f"then the reconnection)")
    # a put whose answer came too late under load is sent again (etcd.py): the key then holds its value at two
    # revisions or more, each an event of its own, the last the one the put returned
    *again, (following, _) = between
    puts = [event] + [e for e, _ in again]
    assert all((e.kv.key, e.kv.value) == (b"h/during", b"1") for e in puts)
    revisions = [e.kv.mod_revision for e in puts]
    assert revisions == sorted(set(revisions)) and revisions[-1] == during  # none lost, none repeated
    assert (following.kv.key, following.kv.mod_revision) == (b"h/after", after)
    assert events.connections == 2 and events.url != stopped


@pytest.mark.slow
async def test_an_idle_watch_on_a_member_that_answers_stays_on_it(cluster):
    """A watch silent for two checks keeps its stream and member, and still brings the next put."""
    send, receive = trio.open_memory_channel(16)
    async with Etcd(cluster.endpoints) as etcd, trio.open_nursery() as nursery:
        async with etcd.watch(b"i/", prefix=True, nursery=nursery) as events:
            nursery.start_soon(forward, events, send)
            member = events.url
            with trio.fail_after(HANG_GUARD_S):
                while events.checks < 2:
                    await trio.sleep(0.1)
                revision = await etcd.put(b"i/k", b"v")
                event, _ = await receive.receive()
            nursery.cancel_scope.cancel()
    assert (event.kv.key, event.kv.mod_revision) == (b"i/k", revision)
    assert events.connections == 1 and events.url == member


@pytest.mark.slow
async def test_a_watch_closed_or_left_by_an_exception_mid_check_leaves_no_checker(cluster, monkeypatch):
    """Once a watch closes, and once an `async with` is left by an exception while its member is being
    checked, the nursery the watch was given has no task left."""
    monkeypatch.setattr(etcd_watch, "WATCH_CHECK_S", 0.05)
    member = CountedMember(delay=math.inf, refuses=False)  # every check hangs
    async with Etcd(cluster.endpoints) as etcd, trio.open_nursery() as nursery:
        with trio.fail_after(HANG_GUARD_S):
            async with etcd.watch(b"c/", prefix=True, nursery=nursery):
                assert len(nursery.child_tasks) == 1
            await trio.testing.wait_all_tasks_blocked()
            assert len(nursery.child_tasks) == 0
            etcd.post = member.post
            with pytest.raises(KeyError):
                async with etcd.watch(b"c/", prefix=True, nursery=nursery):
                    while not member.checks:
                        await trio.sleep(0.01)
                    raise KeyError("the caller's own failure")
            await trio.testing.wait_all_tasks_blocked()
            assert len(nursery.child_tasks) == 0
        nursery.cancel_scope.cancel()


async def test_after_a_check_timed_out_checks_wait_twice_as_long_until_one_is_prompt(nursery, autojump_clock):
    """A member answering checks in 2.5 s (fake clock, attempt_timeout 2 s) fails the first check only; a
    prompt answer brings the patience back to 2 s; a member that never answers fails within 4 s at most."""
    member = CountedMember(delay=2.5, refuses=False)
    async with Etcd(["http://counted"]) as etcd:
        etcd.post = member.post
        watch = watch_on(etcd, "http://counted", nursery)
        with trio.fail_after(HANG_GUARD_S):
            with pytest.raises(MemberFailed, match="no answer to a check within 2s"):
                await watch.check_member()
            await watch.check_member()  # as the next member's stream would be checked
            await watch.check_member()
            member.delay = 0.1
            await watch.check_member()
            member.delay = 2.5
            with pytest.raises(MemberFailed, match="no answer to a check within 2s"):
                await watch.check_member()
            member.delay = math.inf
            with pytest.raises(MemberFailed, match="no answer to a check within 4s"):
                await watch.check_member()
        assert member.checks == 6


class BuggyMember:
    """The stream's member as the check sees it (in place of `Etcd.post`), where the check meets a bug of ours:
    a TypeError, as a wrong argument in the client would raise."""

    async def post(self, url: str, path: str, body: dict) -> dict:
        raise TypeError("post() got an unexpected keyword argument")


async def test_a_bug_in_the_check_leaves_the_stream_and_goes_to_on_bug(nursery, autojump_clock):
    """A bug in a silent stream's check goes to `on_bug` and ends the read as a failed check would; it does not
    end the nursery the check runs in."""
    bugs: list[Exception] = []
    async with Etcd(["http://buggy"]) as etcd:
        etcd.post = BuggyMember().post
        watch = etcd.watch(b"quiet/", prefix=True, start_revision=7, nursery=nursery, on_bug=bugs.append)
        watch.url, watch.lines = "http://buggy", never_a_line()
        watch.start_checking()
        with trio.fail_after(HANG_GUARD_S), pytest.raises(MemberFailed, match="met a bug: TypeError"):
            await watch.next_answer()
    assert [type(bug) for bug in bugs] == [TypeError]


async def test_a_bug_in_the_clusters_watch_check_is_kept_and_its_watch_goes_on(cluster, tmp_path):
    """The watch that Cluster.follow opens meets a bug in its first check: the bug is kept as /ai/health's
    `cluster.watch.check` row (Cluster.watch_check_bug, the on_bug follow passes), and the watch opens another
    stream, which is checked again and brings a later put to the view."""
    toml = ONE_GPU + f'[daemon]\nnode = "w"\n[cluster]\netcd = {json.dumps(cluster.endpoints)}\nprefix = "wcheck/"\n'
    with open_runtime(tmp_path, toml) as rt:
        node = Cluster(rt.config.cluster, rt)
        checks = FirstCheckBuggy(node.etcd.post)
        node.etcd.post = checks.post
        async with node.etcd, trio.open_nursery() as nursery:
            nursery.start_soon(node.follow, nursery)
            with trio.fail_after(HANG_GUARD_S):
                await checks.reached(2)  # the stream after the bug has a checker of its own
                revision = await node.etcd.put(b"wcheck/up/x", b"5")
                while node.view.revision < revision:
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        assert rt.supervisor.show().startswith("Bug:\tcluster.watch.check: TypeError at test_etcd_watch_check.py:")
        assert "its stream opened again" in rt.supervisor.show()


class FirstCheckBuggy:
    """`Etcd.post` whose first watch check meets a bug of ours (a TypeError); every other request goes to etcd."""

    def __init__(self, post):
        self.real_post, self.checks = post, 0

    async def post(self, url: str, path: str, body: dict) -> dict:
        if body.get("count_only"):
            self.checks += 1
            if self.checks == 1:
                raise TypeError("a bug in the check")
        return await self.real_post(url, path, body)

    async def reached(self, checks: int) -> None:
        while self.checks < checks:
            await trio.sleep(0.05)
