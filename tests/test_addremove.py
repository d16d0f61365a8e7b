"""Tier 2: /ctl/models and /ctl/tenants share one add/remove grammar (nodes/addremove.py), each in its own words.

The lines that are neither a named `add` nor a named `remove` get each file's usage line;
a bare `add` of a tenant is refused by the tenant's name check; the refusals are EINVAL,
replies pinned as docs/apeinxfs.5.md's scripts see them, and a good line is audited with
what it said.
"""
import errno

import pytest

from apeinxfs.nodes.tree import Tree
from test_journal_runtime import open_runtime
from test_nodes import refusal
from test_tenant_nodes import audit, write

MODELS_USAGE = ("expected `add NAME driver=D [url=U | endpoints=URL@GPU,...] [context=N] [layers=N] [kv_heads=N] "
                "[head_dim=N] [dtype=T] [OPTION=VALUE...]` or `remove NAME`")
TENANTS_USAGE = "expected `add NAME [weight=N] [uids=1,2] [gids=..] [viewer_uids=..] [viewer_gids=..]` or `remove NAME`"
REFUSED = [
    ("/ctl/models", b"add\n", MODELS_USAGE),
    ("/ctl/models", b"add   \n", MODELS_USAGE),
    ("/ctl/models", b"remove\n", MODELS_USAGE),
    ("/ctl/models", b"drop sim\n", MODELS_USAGE),
    ("/ctl/models", b"add fast\n", "driver= is required (e.g. driver=openai url=http://127.0.0.1:8080)"),
    ("/ctl/tenants", b"add\n", "tenant must be 1..64 characters"),
    ("/ctl/tenants", b"remove  \n", TENANTS_USAGE),
    ("/ctl/tenants", b"Add a\n", TENANTS_USAGE),
    ("/ctl/tenants", b"add a colour=red\n", None),
]


@pytest.fixture
def tree(tmp_path):
    with open_runtime(tmp_path) as runtime:
        yield Tree(runtime)


@pytest.mark.parametrize("path, line, reason", REFUSED)
def test_a_line_neither_add_nor_remove_gets_the_files_own_reply(tree, path, line, reason):
    """Each refused line is EINVAL with its file's reply (an unknown key's reply is split_pairs', not pinned)."""
    refused = refusal(lambda: write(tree, path, line))
    assert refused.errno == errno.EINVAL
    assert reason is None or refused.reason == reason


@pytest.mark.parametrize("path, add, remove, action, details", [
    ("/ctl/models", b"add  fast driver=sim context=2048\n", b"remove fast \n", "models",
     ["add fast driver=sim context=2048", "remove fast"]),
    ("/ctl/tenants", b"add  c weight=5\n", b"remove c \n", "tenant", ["c: add c weight=5", "remove c"]),
])
def test_add_and_remove_are_audited_with_what_the_line_said(tree, path, add, remove, action, details):
    """A named `add` then `remove`, extra spaces and all, apply; the audit trail keeps both lines, trimmed."""
    write(tree, path, add)
    write(tree, path, remove)
    assert [row["detail"] for row in audit(tree) if row["action"] == action and row["result"] == "ok"] == details
