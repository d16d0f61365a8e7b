"""The peer server's bug boundaries (review of the supervise branch): the real PeerServer on a loopback socket and
the real Peer client, in process (test_peer_unproven's `serving`). A refusal raised once an answer began ends that
connection and is no bug; while the accept loop waits for its restart after a bug, a new connection is refused
(accepted and reset, its request unread) instead of waiting unread past the asker's timeout, the port still
listening so that no other socket may take it, and the restart serves on the same port.
"""
import errno
import socket

import pytest
import trio
import trio.testing

from apeinxfs.cluster.peer_client import Peer
from apeinxfs.cluster.peer_server import PeerServer
from apeinxfs.cluster.peer_wire import PeerDown
from apeinxfs.kernel.errors import NotFound
from apeinxfs.kernel.events import Kill
from apeinxfs.nodes.base import Caller
from apeinxfs.nodes.ringlog import RingLog
from apeinxfs.nodes.tree import Tree
from apeinxfs.supervise import RESTART_MIN_S
from test_journal_runtime import ONE_GPU, open_runtime, submit
from test_peer_unproven import HANG_GUARD_S, TOKEN, serving

REAPED_AT_EXIT = ONE_GPU + "\n[retention]\ntasks = 0\n"  # an exited task is forgotten at once


async def test_a_wait_whose_task_is_reaped_meanwhile_ends_its_connection_and_is_no_bug(tmp_path):
    """A peer waits on a task that is then killed and reaped: the wait, whose answer had begun, ends (PeerDown:
    the connection closed) and no Bug is kept, where `peer.connection` counted the NotFound as one."""
    async with serving(tmp_path, toml=REAPED_AT_EXIT) as (url, runtime):
        pid = submit(runtime, tokens=1000)
        async with Peer(url, TOKEN) as peer, trio.open_nursery() as nursery:
            async def kill_once_waited():
                await trio.testing.wait_all_tasks_blocked(0.1)  # the wait's answer began: it waits for the task
                runtime.commit([Kill(pid=pid, uid=1000)])
            nursery.start_soon(kill_once_waited)
            with trio.fail_after(HANG_GUARD_S), pytest.raises(PeerDown):
                await peer.wait(pid, Caller(uid=1000))
        assert pid not in runtime.kernel.tasks
        assert runtime.supervisor.bugs == {}


def accept_fails_once(monkeypatch) -> list:
    """Make trio's SocketListener.accept raise a bug at its first call; the calls, kept."""
    real, calls = trio.SocketListener.accept, []
    async def fails_once(listener):
        calls.append(listener)
        if len(calls) == 1:
            raise ValueError("a bug in accept")
        return await real(listener)
    monkeypatch.setattr(trio.SocketListener, "accept", fails_once)
    return calls


async def test_while_the_accept_loop_waits_for_its_restart_connections_are_reset_then_served(
        tmp_path, monkeypatch, mock_clock):
    """trio's accept fails once: until the restart (the clock held still), a peer's submit is accepted and reset
    unread (PeerDown; it did not run), where it was queued unread; once RESTART_MIN_S passed, the
    same port answers a peer (NotFound for pid 1)."""
    calls = accept_fails_once(monkeypatch)
    async with serving(tmp_path) as (url, runtime):
        await trio.testing.wait_all_tasks_blocked()
        assert runtime.supervisor.bugs["peer.accept"].times == 1
        async with Peer(url, TOKEN) as peer:
            with pytest.raises(PeerDown):  # PeerUnreachable when the reset came before the connect completed
                await peer.submit(["name=a model=sim max_tokens=5"], Caller(uid=1000))
        assert runtime.kernel.tasks == {}
        mock_clock.jump(RESTART_MIN_S)
        await trio.testing.wait_all_tasks_blocked()
        async with Peer(url, TOKEN) as peer:
            with pytest.raises(NotFound):
                await peer.status(1, Caller())
        assert len(calls) >= 3 and runtime.supervisor.bugs["peer.accept"].times == 1


async def test_while_the_accept_loop_waits_for_its_restart_no_other_socket_can_listen_on_its_port(
        tmp_path, monkeypatch, mock_clock):
    """During the wait the port still listens, so a socket with SO_REUSEADDR cannot bind it (EADDRINUSE) and take
    peers' requests and their token, as it could beside the socket shut down for the wait."""
    accept_fails_once(monkeypatch)
    async with serving(tmp_path) as (url, runtime):
        await trio.testing.wait_all_tasks_blocked()
        assert runtime.supervisor.bugs["peer.accept"].times == 1
        with socket.socket() as intruder:
            intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError) as taken:
                intruder.bind(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        assert taken.value.errno == errno.EADDRINUSE


async def test_a_rings_log_is_refused_as_not_served_before_anything_is_sent(tmp_path):
    """serve_node refuses a RingLog (the trace), whose source is a pair, as not served (NotFound), before it sends
    anything: no peer path names one today, and a path added for one would otherwise fail slicing a tuple."""
    with open_runtime(tmp_path, ONE_GPU) as runtime:
        server = PeerServer(Tree(runtime), None, 4, 5.0)
        with pytest.raises(NotFound, match="not served to peers"):
            await server.serve_node(None, None, RingLog.of(runtime.kernel.trace), Caller(uid=0), None, b"", {})
