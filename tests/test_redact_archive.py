"""Tier 1 and 3-4: a state directory an older daemon wrote, credentials shown in its journal, trace archive and audit
archive, read through `apeinxfs replay` and through a mount: no credential is shown, the files keep them.

`old_state` writes it as the code before the kernel hid credentials did: a Runtime with both archives whose
kernel's `redacted` is the identity (kernel.py, engines.py, rejects.py). Its rows: a model added with a password in
its URL, a task failed by an engine at that URL (then reaped: `[retention] tasks = 2`), four tasks killed, the
engine down, a task of it stalled then killed, a denied write naming the URL, and a last task failed as the first.
The trace keeps 12 lines, so the whole trace's older lines come from the archive.
"""
import subprocess

import pytest

from apeinxfs import archive
from apeinxfs import config as config_mod
from apeinxfs import verify
from apeinxfs.journal import Journal
from apeinxfs.kernel import engines as engines_module
from apeinxfs.kernel import kernel as kernel_module
from apeinxfs.kernel import rejects as rejects_module
from apeinxfs.kernel.config import ModelConfig
from apeinxfs.kernel.events import EngineHealth, Failed, Interrupted, Kill, Rejected, SetModel, Submit
from apeinxfs.kernel.spec import TaskSpec
from apeinxfs.mount import audit_archive
from apeinxfs.runtime import Runtime
from daemon import APEINXFS, FAST_CONFIG, Daemon

SECRET = "s3cretpw"
URL = f"http://bob:{SECRET}@127.0.0.1:9"
HIDDEN = "http://***@127.0.0.1:9"
OLD_CONFIG = FAST_CONFIG + "[retention]\ntasks = 2\ntrace_lines = 12\n"


def old_state(tmp_path, monkeypatch, rows=None) -> str:
    """tmp_path/state as a daemon before the kernel hid credentials left it, with `rows(rt)` (old_rows, the module's
    docstring); its path."""
    (tmp_path / "config.toml").write_text(OLD_CONFIG)
    config = config_mod.load(str(tmp_path / "config.toml"), str(tmp_path / "state"), use_nvml=False)
    with monkeypatch.context() as older_code:
        for module in (kernel_module, engines_module, rejects_module):
            older_code.setattr(module, "redacted", lambda text: text)
        rt = Runtime(config, Journal(str(tmp_path / "state" / "journal.db")), audit_archive=audit_archive(config),
                     archive=archive.Archive(str(tmp_path / "state" / "trace"), 1 << 20))
        rt.recover()
        (rows or old_rows)(rt)
    for closing in (rt.archive, rt.audit_archive, rt.journal):
        closing.close()
    return str(tmp_path / "state")


def old_rows(rt: Runtime) -> None:
    ext = ModelConfig(name="ext", driver="openai", options={"url": URL})
    rt.commit([SetModel(model=ext, what=f"add ext driver=openai url={URL}", uid=0)])
    failed_task(rt)
    for index in range(4):  # pid 1 reaped: /replay/1 comes from the archive
        killed = rt.commit([Submit(spec=TaskSpec(name=f"k{index}", max_tokens=3, prompt="hi"), uid=0)])[0]
        rt.commit([Kill(pid=killed, uid=0)])
    rt.commit([EngineHealth(model="ext", up=False, reason=f"{URL}/health: refused")])
    stalled = rt.commit([Submit(spec=TaskSpec(name="waits", max_tokens=3, prompt="hi", model="ext"), uid=0)])[0]
    rt.commit([Kill(pid=stalled, uid=0)])  # after its stall line, which names the engine's reason
    rt.commit([Rejected(path="/ctl/models", reason=f"bad url {URL}:99999", uid=1000, denial=True)])
    assert failed_task(rt) == 7 and 1 not in rt.kernel.tasks  # the lines of pids 6 and 7 are in the 12 kept


def failed_task(rt: Runtime) -> int:
    pid = rt.commit([Submit(spec=TaskSpec(name="job", max_tokens=3, prompt="hi"), uid=0)])[0]
    rt.commit([Failed(pid=pid, reason=f"engine at {URL}: HTTP 500")])
    return pid


def archived_text(state: str, stem: str) -> str:
    return b"".join(archive.lines(f"{state}/{'trace' if stem == archive.TRACE else 'audit'}", stem)).decode()


def test_replay_shows_an_old_archive_without_credentials_and_its_files_keep_them(tmp_path, monkeypatch, capsys):
    """`apeinxfs replay STATE_DIR 1` (a task only the archive holds) and `apeinxfs replay STATE_DIR` (the older lines
    from the archive) show `***@` where the files hold the password, and `--verify` passes over them."""
    state = old_state(tmp_path, monkeypatch)
    assert verify.main([state, "1"]) == 0
    timeline = capsys.readouterr().out
    assert timeline.startswith(f"pid 1 job model=sim tenant=default exit=failed: engine at {HIDDEN}: HTTP 500\n")
    assert verify.main([state]) == 0
    trace = capsys.readouterr().out
    assert f"add ext driver=openai url={HIDDEN}" in trace and f"{HIDDEN}/health: refused" in trace
    assert SECRET not in timeline + trace
    assert f"add ext driver=openai url={URL}" in archived_text(state, archive.TRACE)
    assert f"bad url {URL}" in archived_text(state, "audit")
    assert verify.main(["--verify", state]) == 0


@pytest.mark.mount
def test_a_mount_of_an_old_state_directory_shows_no_credential(tmp_path, monkeypatch):
    """Mounted over an old daemon's state: `grep -r` of the password over the tree finds nothing where it finds
    `***@` (trace, audit, the model, tenant views, a task's files), `cat replay/1` (from the archive) shows `***@`,
    and `apeinxfs replay --verify` passes."""
    state = old_state(tmp_path, monkeypatch)
    with Daemon(tmp_path / "ai", state, OLD_CONFIG) as daemon:
        found = grep(SECRET, daemon.path())
        hidden = grep("http://\\*\\*\\*@", daemon.path())
        replayed = subprocess.run(["cat", daemon.path("replay", "1")], capture_output=True, text=True, timeout=60)
    assert found == [] and {"trace/events", "trace/audit", "models/ext/config", "tenants/default/events",
                            "tasks/6/events", "tasks/7/events", "tasks/7/status"} <= set(hidden), hidden
    assert replayed.stdout.startswith(f"pid 1 job model=sim tenant=default exit=failed: engine at {HIDDEN}")
    assert SECRET not in replayed.stdout
    verified = subprocess.run(APEINXFS + ["replay", "--verify", state], capture_output=True, text=True, timeout=120)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def grep(pattern: str, tree: str) -> list[str]:
    """The files under `tree` that `grep -r` finds `pattern` in, relative to it (files it may not read left out)."""
    listed = subprocess.run(["grep", "-rl", pattern, tree], capture_output=True, text=True, timeout=120).stdout
    return [path[len(tree) + 1:] for path in listed.splitlines()]


GPU_LIKE = "http://bob:pw@h@0"  # ending a reason, `@0` is a GPU; followed by `;` in a trace line, `0` is the host


def gpu_like_reasons(rt: Runtime) -> None:
    rt.commit([SetModel(model=ModelConfig(name="ext", driver="openai", options={"url": URL}), what="add ext", uid=0)])
    rt.commit([EngineHealth(model="ext", up=False, reason=f"proxy said {GPU_LIKE}")])
    rt.commit([EngineHealth(model="ext", up=True)])
    for ending in (Failed, Interrupted):
        pid = rt.commit([Submit(spec=TaskSpec(name="job", max_tokens=3, prompt="hi"), uid=0)])[0]
        rt.commit([ending(pid=pid, reason=f"engine at {GPU_LIKE}")])


def test_verify_takes_old_reasons_hidden_each_on_its_own(tmp_path, monkeypatch, capsys):
    """`replay --verify` of an old journal whose engine-down, failed and interrupted reasons end in `@h@0` passes."""
    state = old_state(tmp_path, monkeypatch, gpu_like_reasons)
    assert "bob:pw@h@0" in archived_text(state, archive.TRACE)
    assert verify.main(["--verify", state]) == 0, capsys.readouterr().out
