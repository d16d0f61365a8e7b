"""A peer that holds the token but sends what no honest node sends (red-team findings, 2026-12-06):
a caller whose uid does not fit a uid_t, a stream offset below 0, a caller header nested past
Python's recursion limit. Each should be refused with EINVAL and leave the node as it was.
One cluster node with a peer server on a real 3-member etcd (test_peer's helpers).
"""
import errno
import json
import os

import httpx
import pytest

from etcdcluster import EtcdCluster
from test_peer import start_node, token_file

pytestmark = pytest.mark.mount
DEFAULT_CALLER = {"uid": 0, "gid": 0, "pid": 1, "role": "admin", "tenant": "default"}


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """One cluster node serving peers; yields (daemon, URL, token)."""
    root = tmp_path_factory.mktemp("hostile")
    token = b"hostile-" + os.urandom(8).hex().encode()
    with EtcdCluster(root / "etcd") as cluster:
        daemon, url = start_node(root, "a", token_file(root, token), cluster.endpoints)
        try:
            yield daemon, url, token
        finally:
            daemon.stop()


def ask(node, method: str, path: str, caller, body: bytes = b"") -> httpx.Response:
    """`method` of `path` on the node's peer server, with the token, for `caller` (a dict, or header text)."""
    _, url, token = node
    text = caller if isinstance(caller, str) else json.dumps(caller)
    headers = {"authorization": f"Bearer {token.decode()}", "apeinx-caller": text}
    return httpx.request(method, url + path, headers=headers, content=body, trust_env=False, timeout=30)


@pytest.mark.xfail(strict=True, reason="peer_wire.decode_caller takes any uid >= 0; a task owned by uid 2**64 "
                   "makes every readdir and lookup of tasks/ fail with EIO (OverflowError in pyfuse3's st_uid)")
def test_a_caller_uid_past_uid_t_is_refused_and_tasks_stay_listable(node):
    """A submit for a caller whose uid does not fit 32 bits is refused with EINVAL, and `ls tasks` still works."""
    daemon = node[0]
    answer = ask(node, "POST", "/v1/ctl/submit", {**DEFAULT_CALLER, "uid": 2 ** 64}, b"huge-uid 5 5\n")
    listing = os.listdir(daemon.path("tasks"))  # OSError EIO while such a task exists
    assert (answer.status_code, answer.json()["errno"]) == (400, errno.EINVAL) and listing is not None


@pytest.mark.xfail(strict=True, reason="peer_server.serve_node passes a negative ?offset= to the stream's poll, "
                   "which slices from the end: the last bytes come twice")
def test_a_negative_stream_offset_is_refused(node):
    """`GET tasks/PID/stream?offset=-5` is refused with EINVAL, not answered with the tail and then the whole file."""
    pid = int(ask(node, "POST", "/v1/ctl/submit", DEFAULT_CALLER, b"short 5 5\n").text)
    ask(node, "GET", f"/v1/tasks/{pid}/wait", DEFAULT_CALLER)
    answer = ask(node, "GET", f"/v1/tasks/{pid}/stream?offset=-5", DEFAULT_CALLER)
    assert answer.status_code == 400 and answer.json()["errno"] == errno.EINVAL


@pytest.mark.xfail(strict=True, reason="peer_wire.decode_caller catches ValueError, KeyError and TypeError, "
                   "not the RecursionError of a deeply nested header: 500 'internal error' and a bug logged")
def test_a_deeply_nested_caller_header_is_a_malformed_header(node):
    """A caller header nested 5,000 deep is refused as malformed (400, EINVAL), not as an internal error."""
    answer = ask(node, "GET", "/v1/tasks/1/status", "[" * 5000 + "]" * 5000)
    assert answer.status_code == 400 and answer.json()["errno"] == errno.EINVAL
