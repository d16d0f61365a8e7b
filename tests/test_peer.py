"""Node-to-node traffic between two real daemons on this machine (cluster/peer_server.py and
peer_client.py): node A's client reads and drives node B's tasks and gets B's refusals as the
same errors, B's bytes as `cat` reads them on B, and PeerDown, never a hang, once B is gone.
Both are cluster nodes (`[cluster]` advertise and token_file) on one 3-member etcd.
"""
import errno
import math
import os
import signal
import socket

import types

import httpx
import pyfuse3
import pytest
import trio

from apeinxfs.cluster import peer_wire
from apeinxfs.cluster.peer_client import Peer
from apeinxfs.cluster.peer_wire import HEARTBEAT_S, PeerDown, PeerRefused, encode_caller
from apeinxfs.kernel.errors import ApeinxError, Denied, Hidden, Invalid, NotFound, RejectLine
from apeinxfs.fs import Operations
from apeinxfs.nodes.base import Caller
from apeinxfs.nodes.buffers import WRITE_LINES
from apeinxfs.nodes.remote import remote_file
from apeinxfs.nodes.tree import Tree
from daemon import Daemon, poll_until, sim_config
from engines import free_port
from etcdcluster import EtcdCluster
from test_journal_runtime import open_runtime
from test_renewal import edit

pytestmark = pytest.mark.mount
SLOW_CONFIG = sim_config(20)  # 50 tokens a second: a long task streams for minutes
LONG_TASK = "long 5000 5"
CALLER = Caller(uid=os.getuid(), gid=os.getgid(), pid=os.getpid())
CALLER_JSON = encode_caller(CALLER)
ROOT_CTX = types.SimpleNamespace(uid=os.getuid(), gid=os.getgid(), pid=os.getpid(), umask=0o022)  # pyfuse3's ctx
HANG_GUARD_S = 60  # far past every timeout: reaching it means something hangs


def token_file(directory, token: bytes, mode: int = 0o600) -> str:
    path = os.path.join(directory, "token")
    with open(path, "wb") as file:
        file.write(token + b"\n")
    os.chmod(path, mode)
    return path


def node_config(root, name: str, token_path: str, endpoints: list[str], port: int) -> str:
    """A cluster node's config: the slow sim engine, `[cluster]` on `endpoints` with a peer server on
    127.0.0.1:`port`, and keys of its own under a prefix named after `root` (one per test)."""
    urls = ", ".join(f'"{url}"' for url in endpoints)
    return (SLOW_CONFIG + f'\n[daemon]\nnode = "{name}"\n[cluster]\netcd = [{urls}]\nadvertise = "127.0.0.1:{port}"\n'
            f'token_file = "{token_path}"\nprefix = "peer-{os.path.basename(root)}/"\n')


def start_node(root, name: str, token_path: str, endpoints: list[str]) -> tuple[Daemon, str]:
    """A cluster node with a peer server on a free 127.0.0.1 port, once it has pids to give; and its URL."""
    port = free_port()
    daemon = Daemon(root / name / "ai", root / name / "state", node_config(root, name, token_path, endpoints, port))
    daemon.start()
    poll_until(lambda: "PidsLeft:\t0\n" not in open(daemon.path("cluster")).read(), HANG_GUARD_S, "a pid block")
    return daemon, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    """One 3-member etcd for the module's cluster nodes (each test's under a prefix of its own)."""
    with EtcdCluster(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster.endpoints


@pytest.fixture
def nodes(tmp_path, etcd):
    """Daemons A and B, each with a peer server sharing one token; yields (a, a's URL, b, b's URL, token)."""
    token = b"s3cret-" + os.urandom(8).hex().encode()
    path = token_file(tmp_path, token)
    a, a_url = start_node(tmp_path, "a", path, etcd)
    try:
        b, b_url = start_node(tmp_path, "b", path, etcd)
        try:
            yield a, a_url, b, b_url, token
        finally:
            b.stop()
    finally:
        a.stop()


def submit_on(url: str, token: bytes, line: str) -> int:
    """Submit `line` on the node at `url` itself, through its peer server (a write to its mount is placed
    on the best node of the cluster, which may be another)."""
    headers = {"authorization": "Bearer " + token.decode(), "apeinx-caller": CALLER_JSON}
    reply = httpx.post(f"{url}/v1/ctl/submit", content=f"{line}\n", headers=headers, trust_env=False)
    return int(reply.text)


async def cat(path: str) -> bytes:
    return (await trio.run_process(["cat", path], capture_stdout=True)).stdout


async def test_a_live_stream_from_another_node_is_what_cat_reads_there(nodes):
    """Stream a task running on B from A's client while it runs, kill it through the client, and
    get exactly the bytes `cat` reads from B's stream, the same status text and the same wait line."""
    a, a_url, b, b_url, token = nodes
    pid = submit_on(b_url, token, LONG_TASK)
    received = bytearray()
    with trio.fail_after(HANG_GUARD_S):
        async with Peer(b_url, token) as peer, peer.stream(pid, CALLER) as chunks:
            async for data in chunks:
                if not received:
                    assert b.status(pid)["State"] == "R (running)"
                    assert await peer.kill([pid], CALLER) == ["ok"]
                received += data
            assert await peer.wait(pid, CALLER) == (await cat(b.path("tasks", str(pid), "wait"))).decode()
            assert await peer.status(pid, CALLER) == (await cat(b.path("tasks", str(pid), "status"))).decode()
    assert bytes(received) == await cat(b.path("tasks", str(pid), "stream"))
    assert b.status(pid)["Exit"].startswith("killed") and received


async def test_output_ranges_and_forwarded_submits(nodes):
    """Submits forwarded to A and to B each run on the node asked and answer its pid; the output read
    by ranges matches that node's file."""
    a, a_url, b, b_url, token = nodes
    with trio.fail_after(HANG_GUARD_S):
        async with Peer(a_url, token) as peer_a, Peer(b_url, token) as peer_b:
            [on_a] = await peer_a.submit(["name=on-a model=sim max_tokens=3"], CALLER)
            [pid] = await peer_b.submit(["name=forwarded model=sim max_tokens=30"], CALLER)
            assert await peer_b.wait(int(pid), CALLER) == "done\n"
            output = await cat(b.path("tasks", pid, "output"))
            assert await peer_b.output(int(pid), CALLER) == output and output
            assert await peer_b.output(int(pid), CALLER, 3, 5) == output[3:8]
            assert await peer_b.output(int(pid), CALLER, len(output)) == b""
    assert b.status(int(pid))["Name"] == "forwarded" and a.status(int(on_a))["Name"] == "on-a"


async def test_refusals_come_back_as_the_same_errors(nodes):
    """B's refusals reach A's client as the same classes and errnos, with B's reasons."""
    a, a_url, b, b_url, token = nodes
    async with Peer(b_url, token) as peer:
        with pytest.raises(NotFound) as unknown:
            await peer.status(99999, CALLER)
        with pytest.raises(Invalid) as bad:
            await peer.submit(["name=x model=sim max_tokens=-3"], CALLER)
        with pytest.raises(Invalid):
            await peer.ctl(submit_on(b_url, token, "short 5 5"), ["warp 9"], CALLER)
    assert unknown.value.errno == errno.ENOENT and "99999" in unknown.value.reason
    assert bad.value.errno == errno.EINVAL and "max_tokens" in bad.value.reason


async def test_a_peer_write_refused_by_the_limits_leaves_its_reject_line(nodes):
    """A peer's submit of more lines than limits.write_lines is E2BIG from B, and B's trace keeps a reject line
    for it, as a write through B's mount gets."""
    a, a_url, b, b_url, token = nodes
    async with Peer(b_url, token) as peer:
        with pytest.raises(ApeinxError) as refused:
            await peer.submit(["name=x model=sim max_tokens=1"] * (WRITE_LINES + 1), CALLER)
    assert refused.value.errno == errno.E2BIG and "limits.write_lines" in refused.value.reason
    with open(b.path("trace", "events")) as events:
        assert f"/ctl/submit: a write holds at most {WRITE_LINES} lines (limits.write_lines)" in events.read()


async def test_the_peer_checks_the_caller_as_its_mount_does(nodes):
    """Another tenant's caller does not see B's task (Hidden, ENOENT); a viewer may not submit there (EACCES),
    refused before any write ran on B: its reject line (and audit) is the asking node's, not B's (that the asking
    node writes both: test_rejects_cluster.py, test_a_role_refused_at_bs_resolve_is_journaled_and_audited_on_a_only)."""
    a, a_url, b, b_url, token = nodes
    pid = submit_on(b_url, token, "short 5 5")
    outsider = Caller(uid=4242, gid=4242, pid=1, role="user", tenant="other")
    viewer = Caller(uid=4243, gid=4243, pid=1, role="viewer", tenant="default")
    async with Peer(b_url, token) as peer:
        with pytest.raises(Hidden):
            await peer.status(pid, outsider)
        with pytest.raises(Denied) as denied:
            await peer.submit(["short 5 5"], viewer)
    assert denied.value.reject_line is RejectLine.HERE
    assert "4243" not in (await cat(b.path("trace", "audit"))).decode()


NOT_SERVED = [  # (method, path, headers besides the token, the status expected); PID: a task of B's
    ("GET", "/v1/trace/events", {"apeinx-caller": CALLER_JSON}, 404),
    ("GET", "/v1/tasks/PID/prompt", {"apeinx-caller": CALLER_JSON}, 404),
    ("POST", "/v1/tasks/PID/status", {"apeinx-caller": CALLER_JSON}, 400),
    ("GET", "/v1/ctl/submit", {"apeinx-caller": CALLER_JSON}, 400),
    ("DELETE", "/v1/tasks/PID/status", {"apeinx-caller": CALLER_JSON}, 400),
    ("GET", "/v1/tasks/PID/status", {}, 400),
    ("GET", "/v1/tasks/PID/output", {"apeinx-caller": CALLER_JSON, "range": "bytes=-3"}, 400),
]


async def test_what_the_peer_server_does_not_serve(nodes):
    """Files outside the peer endpoints, wrong methods, a missing caller or a bad range are refused with an error record."""
    a, a_url, b, b_url, token = nodes
    pid = submit_on(b_url, token, "short 5 5")
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {token.decode()}"}) as http:
        for method, path, headers, status in NOT_SERVED:
            answer = await http.request(method, b_url + path.replace("PID", str(pid)), headers=headers)
            assert (answer.status_code, answer.json()["errno"] in (errno.ENOENT, errno.EINVAL)) == (status, True), path


async def test_a_wrong_or_missing_token_is_refused_with_401(nodes):
    """Without B's token the request is refused with 401, which the client gives as PeerRefused (EACCES)."""
    a, a_url, b, b_url, token = nodes
    pid = submit_on(b_url, token, "short 5 5")
    async with Peer(b_url, b"not-the-token") as peer:
        with pytest.raises(PeerRefused) as refused:
            await peer.status(pid, CALLER)
    async with httpx.AsyncClient() as http:
        bare = await http.get(f"{b_url}/v1/tasks/{pid}/status", headers={"apeinx-caller": CALLER_JSON})
    assert refused.value.errno == errno.EACCES and "token" in refused.value.reason
    assert bare.status_code == 401 and b"Name" not in bare.content


async def test_a_refused_client_looks_at_its_token_file_at_once(nodes, tmp_path):
    """A client whose token file was edited when no look is due is refused (401) once, looks at the file at
    that refusal, and its next request carries the edited file's token: it does not wait for a look by time."""
    a, a_url, b, b_url, token = nodes
    mine = tmp_path / "client" / "token"
    mine.parent.mkdir()
    edit(mine, b"stale\n")
    tokens = peer_wire.token_file(str(mine))
    tokens.checked = math.inf  # the last look as if at the end of time: no look falls due by the clock
    edit(mine, token + b"\nstale\n")
    async with Peer(b_url, tokens) as peer:
        with pytest.raises(PeerRefused):
            await peer.submit(["name=refused model=sim max_tokens=2"], CALLER)
        [pid] = await peer.submit(["name=taken model=sim max_tokens=2"], CALLER)
        assert "Name:\ttaken\n" in await peer.status(int(pid), CALLER)


@pytest.mark.slow
async def test_heartbeats_keep_a_silent_stream_open_and_a_stopped_peer_ends_it(nodes):
    """A stream of a task stopped (through ctl) stays open on heartbeats past the idle timeout; once
    B itself is stopped (SIGSTOP), the read fails with PeerDown instead of hanging."""
    a, a_url, b, b_url, token = nodes
    pid = submit_on(b_url, token, LONG_TASK)
    outcome = {}

    async def read_to_end(chunks):
        try:
            async for _ in chunks:
                pass
            outcome["ended"] = True
        except PeerDown as exc:
            outcome["down"] = exc

    with trio.fail_after(HANG_GUARD_S):
        async with Peer(b_url, token, idle_timeout=3 * HEARTBEAT_S) as peer, peer.stream(pid, CALLER) as chunks:
            await chunks.__anext__()
            assert await peer.ctl(pid, ["stop"], CALLER) == ["ok"]
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(read_to_end, chunks)
                    await trio.sleep(2 * peer.idle_timeout)
                    assert not outcome  # still open: neither ended nor failed
                    os.kill(b.proc.pid, signal.SIGSTOP)
            finally:
                os.kill(b.proc.pid, signal.SIGCONT)
    assert outcome["down"].errno == errno.EHOSTDOWN and "silent" in outcome["down"].reason


async def test_a_killed_peer_gives_ehostdown(nodes):
    """kill -9 of B ends A's stream of B's task and later requests with PeerDown (EHOSTDOWN)."""
    a, a_url, b, b_url, token = nodes
    pid = submit_on(b_url, token, LONG_TASK)
    with trio.fail_after(HANG_GUARD_S):
        async with Peer(b_url, token) as peer:
            async with peer.stream(pid, CALLER) as chunks:
                await chunks.__anext__()
                b.kill9()
                with pytest.raises(PeerDown) as during:
                    async for _ in chunks:
                        pass
            with pytest.raises(PeerDown) as after:
                await peer.status(pid, CALLER)
    assert during.value.errno == after.value.errno == errno.EHOSTDOWN
    assert "cannot connect" in after.value.reason


REMOTE_INODE = 900_000  # a free inode of the in-process tree, for the remote files


async def open_remote(ops, node) -> int:
    """Open `node`, put in the tree at a free inode, through the FUSE adapter; its file handle."""
    node.inode = REMOTE_INODE + len(ops.tree.static)
    ops.tree.static[node.inode] = node
    return (await ops.open(node.inode, os.O_RDONLY, ROOT_CTX)).fh


async def read_from(ops, fh: int, offset: int) -> bytes:
    """Read through the adapter from `offset` to the end, 4 KiB at a time."""
    data = b""
    while chunk := await ops.read(fh, offset + len(data), 4096):
        data += chunk
    return data


async def test_a_fuse_read_of_a_remote_task_is_served_through_the_peer(nodes, tmp_path):
    """The FUSE adapter of a node without the task (in process) reads B's task through remote files:
    status, output and a live stream give what `cat` reads on B; a blocked remote wait admitted as a
    reader ends with EINTR when its reader is interrupted, as Ctrl-C ends a local one."""
    a, a_url, b, b_url, token = nodes
    pid, silent = submit_on(b_url, token, LONG_TASK), submit_on(b_url, token, LONG_TASK)
    with open_runtime(tmp_path) as runtime, trio.fail_after(HANG_GUARD_S):
        ops = Operations(Tree(runtime))
        async with Peer(b_url, token) as peer:
            fhs = {name: await open_remote(ops, remote_file(peer, pid, name)) for name in ("status", "output", "stream")}
            first = await ops.read(fhs["stream"], 0, 4096)
            assert b.status(pid)["State"] == "R (running)" and first
            await peer.kill([pid], CALLER)
            streamed = first + await read_from(ops, fhs["stream"], len(first))
            assert streamed == await cat(b.path("tasks", str(pid), "stream"))
            assert await read_from(ops, fhs["output"], 0) == await cat(b.path("tasks", str(pid), "output"))
            assert await read_from(ops, fhs["status"], 0) == await cat(b.path("tasks", str(pid), "status"))
            wait, ended = await open_remote(ops, remote_file(peer, silent, "wait")), {}

            async def read_wait():
                try:
                    ended["read"] = await ops.read(wait, 0, 100)
                except pyfuse3.FUSEError as exc:
                    ended["errno"] = exc.errno
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_wait)
                while not ops.rt.readers.blocked:
                    await trio.sleep(0.01)
                next(iter(ops.rt.readers.blocked)).interrupt()
            await peer.kill([silent], CALLER)
    assert ended == {"errno": errno.EINTR}


def test_a_world_readable_token_file_stops_the_start(tmp_path, etcd):
    """A daemon asked to serve peers with a token file every user may read refuses to start, saying why."""
    path = token_file(tmp_path, b"open-secret", mode=0o644)
    with pytest.raises(RuntimeError, match="readable by every user"):
        start_node(tmp_path, "c", path, etcd)


def test_an_address_in_use_stops_the_start(tmp_path, etcd):
    """A daemon whose peer address is taken refuses to start, saying it cannot listen there."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        config = node_config(tmp_path, "c", token_file(tmp_path, b"s3cret"), etcd, taken.getsockname()[1])
        with pytest.raises(RuntimeError, match="cannot listen on 127.0.0.1"):
            Daemon(tmp_path / "ai", tmp_path / "state", config).start()
