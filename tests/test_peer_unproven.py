"""Connections without the token that hold the peer server's unproven places (review of the peermend merge):
the real PeerServer on a loopback socket and the real Peer client, in process. At the cap the oldest unproven
connection makes room for a new one, so an honest peer's request is served however many idle ones came first;
and an unproven connection that sends no whole head is closed after UNPROVEN_S.
"""
import contextlib
import math
import socket

import pytest
import trio
import trio.testing

from apeinxfs.cluster.peer_client import Peer
from apeinxfs.cluster.peer_server import REQUEST_S, UNPROVEN_S, Listening, PeerServer
from apeinxfs.cluster.peer_wire import PeerRefused, TokenFile, Tokens
from apeinxfs.kernel.errors import NotFound
from apeinxfs.nodes.base import Caller
from apeinxfs.nodes.tree import Tree
from engines import free_port
from test_journal_runtime import ONE_GPU, open_runtime

TOKEN = b"unproven-test-token"
PLACES = 4  # the server's unproven cap: a small one, so the test needs few descriptors
IDLE = 3 * PLACES  # idle connections opened before the honest request: more than the places
HANG_GUARD_S = 60  # only so that a connection never closed fails the test instead of hanging it


@contextlib.asynccontextmanager
async def serving(tmp_path, unproven_s: float = UNPROVEN_S, toml: str = ONE_GPU):
    """A PeerServer with PLACES unproven places on 127.0.0.1, which waits `unproven_s` for a first head, of a
    runtime booted from `toml`; yields its URL and the runtime. Bound to a port of its own, as `prepare` binds
    the advertised one (a restart of the accept loop listens again on it)."""
    with open_runtime(tmp_path, toml) as runtime:
        server = PeerServer(Tree(runtime), TokenFile.fixed(Tokens((TOKEN,))), 4, 5.0, unproven_max=PLACES,
                            unproven_s=unproven_s)
        listening = Listening(socket.create_server(("127.0.0.1", free_port())), server.tokens)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, listening)
            yield f"http://127.0.0.1:{listening.port}", runtime
            nursery.cancel_scope.cancel()


async def idle_connections(port: int, count: int) -> list[trio.SocketStream]:
    """`count` connections that each send one byte of a head and then nothing."""
    streams = []
    for _ in range(count):
        streams.append(await trio.open_tcp_stream("127.0.0.1", port))
        await streams[-1].send_all(b"G")
    await trio.testing.wait_all_tasks_blocked()  # the server has accepted them: the honest request comes after them all
    return streams


async def test_an_honest_request_is_served_while_idle_connections_fill_the_unproven_places(tmp_path):
    """After more idle connections than places, a request with the token is answered (here NotFound for pid 1),
    not cut off as a lost answer (PeerDown)."""
    async with serving(tmp_path, math.inf) as (url, _):
        idle = await idle_connections(int(url.rsplit(":", 1)[1]), IDLE)
        async with Peer(url, TOKEN) as peer:
            with pytest.raises(NotFound):
                await peer.status(1, Caller())
        for stream in idle:
            await stream.aclose()


async def test_the_oldest_idle_connections_are_closed_first(tmp_path):
    """Of more idle connections than places, the first ones are closed by the server (they read EOF), on a
    server that waits for a first head for as long as it takes."""
    async with serving(tmp_path, math.inf) as (url, _):
        idle = await idle_connections(int(url.rsplit(":", 1)[1]), PLACES + 2)
        with trio.fail_after(HANG_GUARD_S):
            closed = [await stream.receive_some(10) for stream in idle[:2]]
        assert closed == [b"", b""]
        for stream in idle:
            await stream.aclose()


async def test_an_unproven_connection_without_a_whole_head_is_closed_after_unproven_s(tmp_path, autojump_clock):
    """A connection that sends part of a head and stops is closed by the server after UNPROVEN_S (virtual
    seconds), well before REQUEST_S."""
    async with serving(tmp_path) as (url, _):
        started = trio.current_time()
        stream = (await idle_connections(int(url.rsplit(":", 1)[1]), 1))[0]
        assert await stream.receive_some(10) == b""
        assert UNPROVEN_S - 0.5 <= trio.current_time() - started < REQUEST_S
        await stream.aclose()


async def test_bad_requests_and_evicted_connections_are_refused_and_no_bug(tmp_path):
    """Idle connections past the cap, a request that is not HTTP and one without the token are closed or
    refused (400, PeerRefused) as the server's own handling, not kept as a Bug (peer.connection)."""
    async with serving(tmp_path, math.inf) as (url, runtime):
        port = int(url.rsplit(":", 1)[1])
        idle = await idle_connections(port, PLACES + 2)
        with trio.fail_after(HANG_GUARD_S):
            garbage = await trio.open_tcp_stream("127.0.0.1", port)
            await garbage.send_all(b"NOT HTTP AT ALL\r\n\r\n")
            assert (await garbage.receive_some(100)).startswith(b"HTTP/1.1 400 ")
            async with Peer(url, b"a-wrong-token") as peer:
                with pytest.raises(PeerRefused):
                    await peer.status(1, Caller())
        for stream in [*idle, garbage]:
            await stream.aclose()
        assert runtime.supervisor.bugs == {}
