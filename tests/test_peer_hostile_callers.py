"""A peer that holds the token but sends what no honest node sends (red-team findings, 2026-12-06):
a caller whose uid does not fit a uid_t, a stream offset below 0, a caller header nested past
Python's recursion limit (each should be refused with EINVAL and leave the node as it was), and a
stream reader that stops reading (it should be dropped, not hold its blocked-reader slot for good).
Cluster nodes with a peer server on a real 3-member etcd (test_peer's helpers).
"""
import errno
import json
import os
import socket

import httpx
import pytest

from daemon import Daemon, poll_until, sim_config
from engines import free_port
from etcdcluster import EtcdCluster
from test_peer import HANG_GUARD_S, SLOW_CONFIG, node_config, start_node, token_file

pytestmark = pytest.mark.mount
DEFAULT_CALLER = {"uid": 0, "gid": 0, "pid": 1, "role": "admin", "tenant": "default"}


STALLED_READERS = 2  # the node's max_waiters: this many stalled streams take every slot
STALL_S = 1  # the small node's peer_stall_s: a stalled stream is dropped after this long
BIG_TASK = "name=big max_tokens=32000"  # about 190 KB of output: more than a stalled socket's buffers take


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    with EtcdCluster(tmp_path_factory.mktemp("etcd")) as cluster:
        yield cluster.endpoints


@pytest.fixture(scope="module")
def node(tmp_path_factory, etcd):
    """One cluster node serving peers; yields (daemon, URL, token)."""
    root = tmp_path_factory.mktemp("hostile")
    token = b"hostile-" + os.urandom(8).hex().encode()
    daemon, url = start_node(root, "a", token_file(root, token), etcd)
    try:
        yield daemon, url, token
    finally:
        daemon.stop()


@pytest.fixture
def small_node(tmp_path, etcd):
    """A cluster node with a fast sim, room for STALLED_READERS blocked readers and peer_stall_s STALL_S; yields
    (daemon, URL, token)."""
    token = b"stalled-" + os.urandom(8).hex().encode()
    port = free_port()
    config = node_config(tmp_path, "s", token_file(tmp_path, token), etcd, port)
    config = config.replace(SLOW_CONFIG, sim_config(0.01)).replace("[daemon]\n", f"[daemon]\nmax_waiters = {STALLED_READERS}\n")
    config = config.replace("[cluster]\n", f"[cluster]\npeer_stall_s = {STALL_S}\n")
    daemon = Daemon(tmp_path / "s" / "ai", tmp_path / "s" / "state", config)
    daemon.start()
    try:
        poll_until(lambda: "PidsLeft:\t0\n" not in open(daemon.path("cluster")).read(), HANG_GUARD_S, "a pid block")
        yield daemon, f"http://127.0.0.1:{port}", token
    finally:
        daemon.stop()


def ask(node, method: str, path: str, caller, body: bytes = b"") -> httpx.Response:
    """`method` of `path` on the node's peer server, with the token, for `caller` (a dict, or header text)."""
    _, url, token = node
    text = caller if isinstance(caller, str) else json.dumps(caller)
    headers = {"authorization": f"Bearer {token.decode()}", "apeinx-caller": text}
    return httpx.request(method, url + path, headers=headers, content=body, trust_env=False, timeout=30)


def test_a_caller_uid_past_uid_t_is_refused_and_tasks_stay_listable(node):
    """A submit for a caller whose uid does not fit 32 bits is refused with EINVAL, and `ls tasks` still works."""
    daemon = node[0]
    answer = ask(node, "POST", "/v1/ctl/submit", {**DEFAULT_CALLER, "uid": 2 ** 64}, b"huge-uid 5 5\n")
    listing = os.listdir(daemon.path("tasks"))  # OSError EIO while such a task exists
    assert (answer.status_code, answer.json()["errno"]) == (400, errno.EINVAL) and listing is not None


def test_a_negative_stream_offset_is_refused(node):
    """`GET tasks/PID/stream?offset=-5` is refused with EINVAL, not answered with the tail and then the whole file."""
    pid = int(ask(node, "POST", "/v1/ctl/submit", DEFAULT_CALLER, b"short 5 5\n").text)
    ask(node, "GET", f"/v1/tasks/{pid}/wait", DEFAULT_CALLER)
    answer = ask(node, "GET", f"/v1/tasks/{pid}/stream?offset=-5", DEFAULT_CALLER)
    assert answer.status_code == 400 and answer.json()["errno"] == errno.EINVAL


def test_a_deeply_nested_caller_header_is_a_malformed_header(node):
    """A caller header nested 5,000 deep is refused as malformed (400, EINVAL), not as an internal error."""
    answer = ask(node, "GET", "/v1/tasks/1/status", "[" * 5000 + "]" * 5000)
    assert answer.status_code == 400 and answer.json()["errno"] == errno.EINVAL


def test_a_submit_counted_past_this_nodes_write_lines_runs(node):
    """`POST ctl/submit?lines=N` with N past this node's limits.write_lines (another node's may be larger) runs,
    its wait for etcd bounded by this node's own bound."""
    answer = ask(node, "POST", "/v1/ctl/submit?lines=999999999999", DEFAULT_CALLER, b"long 5 5\n")
    assert answer.status_code == 200 and int(answer.text) > 0


def raw_answer(node, request: bytes) -> bytes:
    """The bytes the node's peer port sends back for `request`, until it closes the connection."""
    with socket.create_connection(("127.0.0.1", int(node[1].rsplit(":", 1)[1])), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize("request_bytes, status", [(b"NOT HTTP AT ALL\r\n\r\n", b"400"),
                                                   (b"GET /v1/ctl/kill HTTP/1.1\r\nx: " + b"y" * 17000, b"431")])
def test_a_request_that_is_not_http_or_too_long_is_answered_before_the_close(node, request_bytes, status):
    """Bytes that are not HTTP get a 400, a head past 16 KiB a 431, each with an EINVAL record, then the close."""
    head, _, body = raw_answer(node, request_bytes).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 " + status) and json.loads(body)["errno"] == errno.EINVAL


def test_a_submit_of_more_lines_than_a_write_takes_is_413_e2big(node):
    """A submit body of more lines than limits.write_lines is refused 413 with E2BIG, not as a server error."""
    answer = ask(node, "POST", "/v1/ctl/submit", DEFAULT_CALLER, b"many 5 5\n" * 10001)
    assert (answer.status_code, answer.json()["errno"]) == (413, errno.E2BIG)


def stalled_stream(node, pid: int) -> socket.socket:
    """A connection that asks for the task's stream and then never reads (a receive buffer of 4 KiB)."""
    _, url, token = node
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1])))
    sock.sendall(f"GET /v1/tasks/{pid}/stream HTTP/1.1\r\nHost: peer\r\nAuthorization: Bearer {token.decode()}\r\n"
                 f"apeinx-caller: {json.dumps(DEFAULT_CALLER)}\r\n\r\n".encode())
    return sock


def test_a_stream_reader_that_stops_reading_gives_its_slot_back(small_node):
    """Streams that nobody reads, of a task that has ended, are dropped in time, so a new stream is served."""
    daemon = small_node[0]
    pid = daemon.submit(BIG_TASK)
    poll_until(lambda: daemon.status(pid)["State"].startswith("Z"), HANG_GUARD_S, "the big task ends")
    stalled = [stalled_stream(small_node, pid) for _ in range(STALLED_READERS)]
    try:
        poll_until(lambda: ask(small_node, "GET", f"/v1/tasks/{pid}/wait", DEFAULT_CALLER).status_code == 200,
                   HANG_GUARD_S, "a wait served while stalled streams held every slot")
    finally:
        for sock in stalled:
            sock.close()
