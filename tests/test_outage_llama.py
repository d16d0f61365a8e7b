"""Tier 4: a real llama-server killed with -9 and restarted on its port: the queued and running
tasks ride out the outage (kernel/engines.py, drivers/openai.py) and all end done.

The issue's case: 4 slots, 24 tasks of 400 tokens, the engine killed 0.5 s after they are
submitted and started again 5 s later. While it is down /models/tiny/status says so and
/memory/pressure counts the stalled tasks; the trace has the `engine` lines of the outage and
a `resume` line for each task whose stream broke.
"""
import csv
import io
import time

import pytest

from daemon import Daemon, poll_until
from engines import LlamaServer, llama_server_binary, openai_daemon_config, tiny_model  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.mount, pytest.mark.engine, pytest.mark.slow]
TASKS, TOKENS = 24, 400


def read(daemon: Daemon, *parts) -> str:
    with open(daemon.path(*parts)) as file:
        return file.read()


def stalled(daemon: Daemon) -> int:
    """The `stalled=` count of /memory/pressure's `engine` line."""
    engine = next(line for line in read(daemon, "memory", "pressure").splitlines() if line.startswith("engine "))
    return int(engine.rsplit("stalled=", 1)[1])


def test_a_five_second_engine_outage_loses_no_task(llama_server_binary, tiny_model, tmp_path):
    """24 tasks of 400 tokens, the engine killed after 0.5 s and back 5 s later: all 24 end done with
    their 400 tokens; the trace shows the engine going down and up and each resume."""
    server = LlamaServer(llama_server_binary, tiny_model, tmp_path / "first.log", slots=4).start()
    try:
        with Daemon(tmp_path / "ai", tmp_path / "state",
                    config_text=openai_daemon_config(server.url)) as daemon:  # default retries, backoff, waits
            pids = [daemon.submit(f'name=t{n} model=tiny max_tokens={TOKENS} prompt="task {n} goes on"')
                    for n in range(TASKS)]
            time.sleep(0.5)
            server.crash()
            poll_until(lambda: "State:\tunreachable" in read(daemon, "models", "tiny", "status"), 10, "tiny unreachable")
            poll_until(lambda: stalled(daemon) > 0, 10, "tasks stalled while the engine is down")
            time.sleep(5)
            server = LlamaServer(llama_server_binary, tiny_model, tmp_path / "again.log", slots=4,
                                 port=server.port).start()
            for pid in pids:
                with open(daemon.path("tasks", str(pid), "wait")) as wait:
                    assert wait.read().strip() == "done", pid
            assert all(daemon.status(pid)["TokensOut"] == str(TOKENS) for pid in pids)
            trace = list(csv.DictReader(io.StringIO(read(daemon, "trace", "events"))))
    finally:
        server.stop()
    engine = [row for row in trace if row["type"] == "engine"]
    assert engine[0]["detail"].startswith("tiny down: unreachable") and engine[-1]["detail"].startswith("tiny up after ")
    resumed = {row["pid"] for row in trace if row["type"] == "resume"}
    crash = min(int(row["seq"]) for row in trace if row["type"] == "resume" or row in engine[:1])
    began = {row["pid"] for row in trace if row["type"] == "first_token" and int(row["seq"]) < crash}
    ended = {row["pid"] for row in trace if row["type"] == "exit" and int(row["seq"]) > crash}
    assert resumed and began & ended <= resumed  # every task streaming when the engine died resumed
    dispatched = [row["pid"] for row in trace if row["type"] == "dispatch"]
    assert all(dispatched.count(pid) >= 2 for pid in resumed)  # and was dispatched again
