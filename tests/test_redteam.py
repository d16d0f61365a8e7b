"""Defects found by attacking a live mount (the redteam task), each reproduced and marked xfail.

Each test names the defect in its xfail reason (strict: it fails while the defect is there,
checked); whoever mends it removes the mark. Tiers 1-2 (the kernel, the runtime, the tree,
fs.Operations called directly); the shell steps on a live mount that led there are in the
reasons.
"""
import errno
import os

import pytest

from apeinxfs.fs import Operations
from apeinxfs.nodes.tree import Tree
from test_fs_ops import ROOT, ctx, fuse_errno, inode_of
from test_journal_runtime import open_runtime
from test_nodes import refusal, resolve, text
from test_tenant_nodes import ADMIN, write


@pytest.mark.xfail(strict=True, reason="fs.Operations implements none of create, mknod, mkdir, unlink, rmdir, "
                   "rename, symlink: pyfuse3's defaults answer ENOSYS, so `echo x > /ai/ctl/submt` (a typo), "
                   "`rm /ai/tasks/5/ctl`, `mkdir /ai/tasks/x` say 'Function not implemented', an errno "
                   "apeinxfs(5) ERRORS never names (it gives EPERM for chmod, chown and utime)")
@pytest.mark.parametrize("call", ["create", "mkdir", "unlink", "rmdir", "rename", "symlink"])
async def test_changing_the_tree_s_names_is_refused_with_a_documented_errno(tmp_path, call):
    """Creating, removing or renaming a name anywhere in the tree is EPERM, not ENOSYS."""
    with open_runtime(tmp_path) as runtime:
        ops = Operations(Tree(runtime))
        ctl = await inode_of(ops, "/ctl")
        calls = {
            "create": lambda: ops.create(ctl, b"new", 0o644, os.O_WRONLY, ctx()),
            "mkdir": lambda: ops.mkdir(ctl, b"new", 0o755, ctx()),
            "unlink": lambda: ops.unlink(ctl, b"submit", ctx()),
            "rmdir": lambda: ops.rmdir(ROOT, b"ctl", ctx()),
            "rename": lambda: ops.rename(ctl, b"submit", ctl, b"x", 0, ctx()),
            "symlink": lambda: ops.symlink(ctl, b"l", b"submit", ctx()),
        }
        assert await fuse_errno(calls[call]) == errno.EPERM
