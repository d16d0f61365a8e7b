"""Tiers 1-2: models added and removed live through /ctl/models, without FUSE.

The kernel's SetModel / RemoveModel events (journaled, replayed), the /ctl/models grammar
and /models/NAME/ directories on the tree, and the runtime starting a driver for a model
added while it runs (sim, under trio's autojump clock). A model added through a mount and
served by a real llama-server is in test_engine_daemon.py.
"""
import errno

import trio

from apeinxfs.kernel.events import EngineHealth, from_row, to_row
from apeinxfs.nodes.base import Caller
from apeinxfs.nodes.tree import Tree
from test_journal_runtime import open_runtime, submit
from test_nodes import refusal, resolve, text
from test_tenant_nodes import ADMIN, audit, write

ALICE = Caller(uid=1001, gid=1001, pid=11, role="user", tenant="default")
OPENAI_ADD = b"add llama driver=openai url=http://127.0.0.1:9 context=8192 layers=2 kv_heads=4 head_dim=16 retries=0\n"
SIM_ADD = b"add fast driver=sim decode_step_ms=5 batch_step_ms=0 context=2048\n"


def models(tree) -> list[str]:
    return [name for name, _ in resolve(tree, "/models").entries()]


def test_add_makes_a_model_directory_with_its_config(tmp_path):
    """`add` creates /models/NAME whose config shows the shape and the driver's options, typed."""
    with open_runtime(tmp_path) as rt:
        tree = Tree(rt)
        write(tree, "/ctl/models", OPENAI_ADD)
        assert models(tree) == ["sim", "llama"]
        config = dict(line.split(" ", 1) for line in text(tree, "/models/llama/config").splitlines())
        assert (config["driver"], config["context"], config["layers"], config["kv_bytes_per_token"]) == \
            ("openai", "8192", "2", str(2 * 2 * 4 * 16 * 2))
        assert (config["url"], config["retries"]) == ("http://127.0.0.1:9", "0")
        assert rt.kernel.models["llama"].options["retries"] == 0
        assert text(tree, "/models/llama/status").startswith("Name:\tllama\nDriver:\topenai\n")
        assert text(tree, "/models/llama/engine") == "source none\n"  # no driver runs here to scrape it


def test_model_files_keep_their_inodes_and_vanish_with_the_model(tmp_path):
    """A model's files resolve by inode; after `remove` the same inodes are ENOENT, after re-adding they work."""
    with open_runtime(tmp_path) as rt:
        tree = Tree(rt)
        write(tree, "/ctl/models", OPENAI_ADD)
        inode = resolve(tree, "/models/llama/status").inode
        assert tree.path_of(tree.node(inode)) == "/models/llama/status"
        write(tree, "/ctl/models", b"remove llama\n")
        assert models(tree) == ["sim"]
        assert refusal(lambda: tree.node(inode)).errno == errno.ENOENT
        write(tree, "/ctl/models", OPENAI_ADD)
        assert resolve(tree, "/models/llama/status").inode == inode


def test_bad_add_lines_are_refused_with_the_reason(tmp_path):
    """Missing driver=, an unknown driver or option, one out of its bounds (not clamped, unlike a journal's model), a
    bad shape, a slash or an existing name: EINVAL/EEXIST."""
    with open_runtime(tmp_path) as rt:
        tree = Tree(rt)
        cases = [(b"add x url=http://h\n", errno.EINVAL, "driver= is required"),
                 (b"add x driver=tgi url=http://h\n", errno.EINVAL, "unknown driver 'tgi'"),
                 (b"add x driver=openai\n", errno.EINVAL, "needs options.url"),
                 (b"add x driver=openai url=http://h colour=red\n", errno.EINVAL, "colour"),
                 (b"add x driver=openai url=http://h retries=200\n", errno.EINVAL,
                  "retries must be an integer from 0 to 100, not 200"),
                 (b"add x driver=openai url=http://h retries=1" + b"0" * 400 + b"\n", errno.EINVAL,
                  "retries must be an integer from 0 to 100, not 1" + "0" * 400),
                 (b"add x driver=sim layers=zero\n", errno.EINVAL, "layers must be an integer"),
                 (b"add x driver=sim dtype=fp4\n", errno.EINVAL, "dtype must be one of"),
                 (b"add a/b driver=sim\n", errno.EINVAL, "slashes"),
                 (b"add .. driver=sim\n", errno.EINVAL, "directory name"),
                 (b"add sim driver=sim\n", errno.EEXIST, "model sim exists"),
                 (b"rename sim x\n", errno.EINVAL, "expected `add NAME")]
        for line, code, words in cases:
            error = refusal(lambda: write(tree, "/ctl/models", line))
            assert (error.errno, words in error.reason) == (code, True), (line, error.reason)
        assert models(tree) == ["sim"]


def test_only_admins_manage_models(tmp_path):
    """A user may not add a model (EACCES); the refusal is audited as a denial."""
    with open_runtime(tmp_path) as rt:
        tree = Tree(rt)
        assert refusal(lambda: write(tree, "/ctl/models", SIM_ADD, caller=ALICE)).errno == errno.EACCES
        assert models(tree) == ["sim"] and audit(tree)[-1]["result"] == "denied"


def test_remove_is_busy_while_the_model_has_live_tasks_and_for_the_default(tmp_path):
    """A model with a queued or running task, or the default model, cannot be removed (EBUSY)."""
    with open_runtime(tmp_path) as rt:
        tree = Tree(rt)
        write(tree, "/ctl/models", SIM_ADD)
        pid = submit(rt, model="fast")
        error = refusal(lambda: write(tree, "/ctl/models", b"remove fast\n"))
        assert error.errno == errno.EBUSY and "1 live tasks" in error.reason
        assert refusal(lambda: write(tree, "/ctl/models", b"remove sim\n")).errno == errno.EBUSY
        assert refusal(lambda: write(tree, "/ctl/models", b"remove nope\n")).errno == errno.ENOENT
        write(tree, "/tasks/%d/ctl" % pid, b"kill\n", caller=ADMIN)
        write(tree, "/ctl/models", b"remove fast\n")
        assert models(tree) == ["sim"]
        assert [row["detail"] for row in audit(tree) if row["action"] == "models"] == [SIM_ADD.decode().strip(),
                                                                                       "remove fast"]


def test_models_survive_a_restart_through_the_journal(tmp_path):
    """Added and removed models are journaled: after recovery the same models exist, and the trace says so."""
    with open_runtime(tmp_path) as rt:
        tree = Tree(rt)
        write(tree, "/ctl/models", OPENAI_ADD + SIM_ADD)
        write(tree, "/ctl/models", b"remove fast\n")
    with open_runtime(tmp_path) as rt:
        rt.recover()
        assert list(rt.kernel.models) == ["sim", "llama"]
        assert rt.kernel.models["llama"].options == {"url": "http://127.0.0.1:9", "retries": 0}
        assert ',model,,,,,local,"remove fast by uid 0"' in rt.kernel.trace.buffer.decode()


def test_set_model_round_trips_through_a_journal_row(tmp_path):
    """A SetModel's row decodes to an equal event, its decimal prices included."""
    with open_runtime(tmp_path) as rt:
        write(Tree(rt), "/ctl/models", SIM_ADD)
        [(kind, body)] = [(kind, body) for _seq, _time, kind, body in rt.journal.rows() if kind == "setmodel"]
    decoded = from_row(kind, body)
    assert to_row(decoded) == (kind, body) and decoded.model.price.input_per_1k == 0


async def test_a_model_added_while_running_gets_its_driver(tmp_path, autojump_clock):
    """A sim model added live runs its tasks to done on its own step time; once it is removed, sim still serves."""
    with open_runtime(tmp_path) as rt:
        tree = Tree(rt)
        async with trio.open_nursery() as nursery:
            await nursery.start(rt.run)
            write(tree, "/ctl/models", SIM_ADD)
            pid = submit(rt, tokens=20, model="fast")
            with trio.fail_after(60):
                while not rt.kernel.tasks[pid].done:
                    await rt.wait_for(pid, 1.0)
            task = rt.kernel.tasks[pid]
            assert (task.exit, task.tokens_out) == ("done", 20)
            assert task.exited_us - task.submitted_us < 20 * 20_000  # its own 5 ms steps, not the 20 ms of sim
            write(tree, "/ctl/models", b"remove fast\n")
            again = submit(rt, tokens=5)
            with trio.fail_after(60):
                while not rt.kernel.tasks[again].done:
                    await rt.wait_for(again, 1.0)
            assert rt.kernel.models.keys() == {"sim"} and rt.kernel.tasks[again].exit == "done"
            nursery.cancel_scope.cancel()


def test_add_takes_the_outage_options_and_the_tree_shows_stalled_tasks(tmp_path):
    """`engine_wait_s=` and `resume_limit=` are the model's (config shows them); while its engine is down a task
    of it is counted as stalled in its status and in memory/pressure; a bad value is EINVAL naming the key."""
    with open_runtime(tmp_path) as rt:
        tree = Tree(rt)
        write(tree, "/ctl/models", OPENAI_ADD.replace(b"retries=0", b"engine_wait_s=2.5 resume_limit=1 retries=0"))
        config = dict(line.split(" ", 1) for line in text(tree, "/models/llama/config").splitlines())
        assert (config["engine_wait_s"], config["resume_limit"]) == ("2.5", "1")
        assert "retries" in rt.kernel.models["llama"].options and "resume_limit" not in rt.kernel.models["llama"].options
        rt.commit([EngineHealth(model="llama", up=False, reason="unreachable: refused")])
        submit(rt, "held", model="llama")
        assert "Stalled:\t1\n" in text(tree, "/models/llama/status")
        assert text(tree, "/memory/pressure").splitlines()[2].endswith(" stalled=1")
        bad = refusal(lambda: write(tree, "/ctl/models", b"add other driver=sim resume_limit=-1\n"))
        assert bad.errno == errno.EINVAL and "resume_limit" in bad.reason
