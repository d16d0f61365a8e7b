"""Tier 4: the mounted tree in front of a REAL engine, llama.cpp's llama-server, via the openai driver.

One simulated GPU with 4 slots sends each running task to the engine's 4 slots as a
streaming /v1/completions request. The counts we compare come from the engine's own
Prometheus /metrics and /slots, which the daemon also scrapes into /models/tiny/engine and
meminfo. llama-server is built once per machine (tests/engines.py).
"""
import errno
import os

import pytest

from daemon import Daemon, poll_until
from engines import (LlamaServer, llama_server, llama_server_binary, openai_daemon_config,  # noqa: F401 (fixtures)
                     tiny_model)

pytestmark = [pytest.mark.mount, pytest.mark.engine, pytest.mark.slow]


def config_for(url: str) -> str:
    return openai_daemon_config(url, model={"engine_wait_s": 2}, retries=2, backoff_s=0.1)


@pytest.fixture
def mounted(llama_server, tmp_path):
    """A daemon whose only model is served by the test's llama-server."""
    with Daemon(tmp_path / "ai", tmp_path / "state", config_text=config_for(llama_server.url)) as daemon:
        yield daemon


def predicted_total(server: LlamaServer) -> int:
    """llamacpp:tokens_predicted_total: every token the engine has generated."""
    line = next(line for line in server.get("/metrics").text.splitlines()
                if line.startswith("llamacpp:tokens_predicted_total"))
    return int(float(line.split()[1]))


def read_all(path: str) -> list[bytes]:
    """Every read(2) a `cat` of `path` would do, until EOF."""
    fd, reads = os.open(path, os.O_RDONLY), []
    try:
        while chunk := os.read(fd, 65536):
            reads.append(chunk)
    finally:
        os.close(fd)
    return reads


def wait_line(daemon: Daemon, pid: int) -> str:
    with open(daemon.path("tasks", str(pid), "wait")) as file:
        return file.read().strip()


def test_stream_prints_the_engines_tokens_and_wait_says_done(mounted, llama_server):
    """`cat stream` yields text in several reads while the engine generates; TokensOut is the engine's count."""
    before = predicted_total(llama_server)
    pid = mounted.submit('name=story model=tiny max_tokens=2000 prompt="the kernel reads a file"')
    reads = read_all(mounted.path("tasks", str(pid), "stream"))
    assert wait_line(mounted, pid) == "done"
    status = mounted.status(pid)
    assert int(status["TokensOut"]) == 2000 == predicted_total(llama_server) - before
    assert len(reads) > 1 and b"".join(reads) == open(mounted.path("tasks", str(pid), "output"), "rb").read()


def test_four_tasks_run_at_once_on_four_slots(mounted, llama_server):
    """Four submitted tasks keep the engine's four slots busy together, and all end done."""
    pids = [mounted.submit(f"name=t{n} model=tiny max_tokens=1000 prompt=\"task {n}\"") for n in range(4)]
    poll_until(lambda: llama_server.busy_slots() == 4, 20, "4 slots busy at once")
    assert [wait_line(mounted, pid) for pid in pids] == ["done"] * 4
    assert all(mounted.status(pid)["TokensOut"] == "1000" for pid in pids)


def test_kill_mid_stream_frees_the_engine_slot(mounted, llama_server):
    """Killing a task while it streams closes its request: the engine's slot goes idle at once."""
    pid = mounted.submit("name=long model=tiny max_tokens=4000 prompt=\"go on\"")
    poll_until(lambda: llama_server.busy_slots() == 1, 20, "the task's slot busy")
    with open(mounted.path("tasks", str(pid), "ctl"), "w") as ctl:
        ctl.write("kill\n")
    assert wait_line(mounted, pid) == "killed"
    poll_until(lambda: llama_server.busy_slots() == 0, 10, "the slot idle after kill")
    assert int(mounted.status(pid)["TokensOut"]) < 4000


def test_engine_death_fails_tasks_after_engine_wait_s_and_a_restarted_engine_serves(
        mounted, llama_server, llama_server_binary, tiny_model, tmp_path):
    """Killing the engine for good holds the running task and new ones for engine_wait_s (2 s here), then
    fails them naming the outage; the daemon serves on; a new engine runs tasks."""
    running = mounted.submit("name=doomed model=tiny max_tokens=4000 prompt=\"go on\"")
    poll_until(lambda: int(mounted.status(running)["TokensOut"]) > 0, 20, "tokens flowing")
    llama_server.crash()
    assert wait_line(mounted, running).startswith("failed: tiny's engine down for ")
    orphan = mounted.submit("name=orphan model=tiny max_tokens=10")
    assert wait_line(mounted, orphan).startswith("failed: tiny's engine down for ")
    assert f"unreachable: {llama_server.url}" in wait_line(mounted, orphan)
    with LlamaServer(llama_server_binary, tiny_model, tmp_path / "again.log", port=llama_server.port):
        again = mounted.submit("name=again model=tiny max_tokens=50 prompt=\"hello\"")
        assert wait_line(mounted, again) == "done" and mounted.status(again)["TokensOut"] == "50"


def engine_file(daemon: Daemon) -> dict:
    """/models/tiny/engine as a dict."""
    with open(daemon.path("models", "tiny", "engine")) as file:
        return dict(line.rstrip("\n").split(" ", 1) for line in file)


def meminfo(daemon: Daemon) -> dict:
    with open(daemon.path("memory", "meminfo")) as file:
        return {line.split(":")[0]: line.split()[1] for line in file}


def test_engine_kv_usage_shows_while_tasks_run(mounted, llama_server):
    """While 4 tasks run, /models/tiny/engine and meminfo show the engine's own non-zero KV tokens and usage."""
    pids = [mounted.submit(f"name=kv{n} model=tiny max_tokens=3000 prompt=\"fill the cache {n}\"") for n in range(4)]
    busy = poll_until(lambda: (e := engine_file(mounted))["requests_running"] == "4" and int(e["kv_tokens"]) > 400
                      and e, 30, "the engine's metrics show 4 requests holding KV")
    assert busy["source"] == f"{llama_server.url}/metrics" and busy["engine"] == "llamacpp"
    assert busy["kv_capacity_tokens"] == str(llama_server.context) and float(busy["kv_usage_pct"]) > 0
    info = meminfo(mounted)
    assert int(info["EngineKVTokens"]) > 0 and int(info["EngineKVUsage"]) > 0 and info["Engines"] == "1"
    for pid in pids:
        with open(mounted.path("tasks", str(pid), "ctl"), "w") as ctl:
            ctl.write("kill\n")
    poll_until(lambda: engine_file(mounted)["kv_tokens"] == "0", 20, "no KV held once the tasks are killed")


def ctl_write(path: str, line: str) -> None:
    """One write(2) of `line` to a ctl file; its errno, if refused, raises OSError."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def test_a_model_added_live_runs_on_the_engine_and_survives_a_remount(llama_server, tmp_path):
    """/ctl/models adds the engine's model to a sim-only daemon: it serves tasks, survives a remount, and
    `remove` is EBUSY while a task lives, then takes it away."""
    add = f"add tiny driver=openai url={llama_server.url} context=4096 layers=2 kv_heads=4 head_dim=16\n"
    before = predicted_total(llama_server)
    with Daemon(tmp_path / "ai", tmp_path / "state") as daemon:  # the default test config: one sim model
        ctl_write(daemon.path("ctl", "models"), add)
        assert sorted(os.listdir(daemon.path("models"))) == ["sim", "tiny"]
        pid = daemon.submit('name=live model=tiny max_tokens=50 prompt="hello"')
        assert wait_line(daemon, pid) == "done" and daemon.status(pid)["TokensOut"] == "50"
        assert predicted_total(llama_server) - before == 50
    with Daemon(tmp_path / "ai", tmp_path / "state") as daemon:
        assert sorted(os.listdir(daemon.path("models"))) == ["sim", "tiny"]
        pid = daemon.submit('name=again model=tiny max_tokens=3000 prompt="more"')
        with pytest.raises(OSError) as busy:
            ctl_write(daemon.path("ctl", "models"), "remove tiny\n")
        assert busy.value.errno == errno.EBUSY
        assert wait_line(daemon, pid) == "done" and predicted_total(llama_server) - before == 3050
        ctl_write(daemon.path("ctl", "models"), "remove tiny\n")
        assert os.listdir(daemon.path("models")) == ["sim"]
