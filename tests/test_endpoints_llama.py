"""Tier 4: one model served by two real llama-servers, one per GPU (kernel/endpoints.py, drivers/openai.py):
tasks are placed on both GPUs; one engine killed with -9 midway, its tasks resume on the other and new tasks
go there too; the surviving GPU's KV books and its engine's report agree (/memory/gpuN/pool, kernel/kvreport.py).

Small on purpose (this machine has 2 cores): 2 slots per engine, short outputs.
"""
import csv
import io
import json

import pytest

from daemon import TINY_SHAPE, Daemon, poll_until
from engines import LlamaServer, llama_server_binary, tiny_model  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.mount, pytest.mark.engine, pytest.mark.slow]
TOKENS = 24
RIDING = 400  # the tasks running when an engine is killed: long enough to be midway then


def two_endpoint_config(urls: list[str]) -> str:
    """Two simulated GPUs of 2 slots; the tiny model with one endpoint per GPU, scraped every 0.3 s."""
    endpoints = ", ".join(f"{{url = {json.dumps(url)}, gpus = [{gpu}]}}" for gpu, url in enumerate(urls))
    shape = "".join(f"{key} = {value}\n" for key, value in TINY_SHAPE.items())
    return (f'[gpus]\nsimulated = 2\nslots = 2\n[[models]]\nname = "tiny"\ndriver = "openai"\ncontext = 4096\n'
            f'{shape}endpoints = [{endpoints}]\n[models.options]\nmetrics_s = 0.3\nretries = 1\nbackoff_s = 0.1\n')


def read(daemon: Daemon, *parts) -> str:
    with open(daemon.path(*parts)) as file:
        return file.read()


def pool(daemon: Daemon, gpu: int) -> dict:
    """/memory/gpuN/pool as a dict (`key value` lines)."""
    return dict(line.split(" ", 1) for line in read(daemon, "memory", f"gpu{gpu}", "pool").splitlines())


def submit_all(daemon: Daemon, first: int, count: int, tokens: int = TOKENS) -> list[int]:
    return [daemon.submit(f'name=t{n} model=tiny max_tokens={tokens} prompt="task {n} goes on"')
            for n in range(first, first + count)]


def wait_done(daemon: Daemon, pids: list[int]) -> None:
    for pid in pids:
        with open(daemon.path("tasks", str(pid), "wait")) as wait:
            assert wait.read().strip() == "done", pid


def run_all(daemon: Daemon, first: int, count: int) -> list[int]:
    """Submit `count` short tasks and wait until each ends done; their pids."""
    pids = submit_all(daemon, first, count)
    wait_done(daemon, pids)
    return pids


def reported_while_running(books: dict) -> bool:
    """The engine reports tokens in its KV cache while the books hold pages for the tasks: no more pages than
    the books (with the tiny model a page holds all their tokens), so none count beyond them."""
    return (books["tasks"] == "2" and books["engine_tokens"] not in ("-", "0")
            and 0 < int(books["engine_pages"]) <= int(books["pages_used"]) and books["unbooked_pages"] == "0")


def dispatch_gpus(daemon: Daemon, pids: list[int]) -> set[int]:
    """The GPUs the trace shows `pids` dispatched to."""
    trace = csv.DictReader(io.StringIO(read(daemon, "trace", "events")))
    return {int(row["gpu"]) for row in trace if row["type"] == "dispatch" and int(row["pid"]) in pids}


def test_two_engines_as_two_endpoints_one_killed(llama_server_binary, tiny_model, tmp_path):
    """Tasks run on both engines; one killed -9 midway: its endpoint is down (the model is not), its tasks
    resume on the other GPU and all end done; new tasks all run on the other GPU, and that GPU's books agree
    with its engine's report, while two tasks run there and once they are killed."""
    servers = [LlamaServer(llama_server_binary, tiny_model, tmp_path / f"engine{n}.log", slots=2).start()
               for n in range(2)]
    try:
        with Daemon(tmp_path / "ai", tmp_path / "state",
                    config_text=two_endpoint_config([s.url for s in servers])) as daemon:
            status = read(daemon, "models", "tiny", "status")
            assert f"Endpoints:\t{servers[0].url} gpus=0 " in status and "Gpus:\t0,1\n" in status
            before = submit_all(daemon, 0, 4, RIDING)
            poll_until(lambda: pool(daemon, 0)["tasks"] == pool(daemon, 1)["tasks"] == "2", 20, "2 tasks on each GPU")
            servers[1].crash()
            poll_until(lambda: f"{servers[1].url} gpus=1 unreachable" in read(daemon, "models", "tiny", "status"),
                       20, "the killed engine's endpoint unreachable")
            wait_done(daemon, before)
            assert all(daemon.status(pid)["TokensOut"] == str(RIDING) for pid in before)
            assert dispatch_gpus(daemon, before) == {0, 1}
            after = run_all(daemon, 4, 4)
            assert dispatch_gpus(daemon, after) == {0}
            assert "State:\tready" in read(daemon, "models", "tiny", "status")  # the model is up: one endpoint is
            long = [daemon.submit(f'name=long{n} model=tiny max_tokens=3000 prompt="a long one {n}"') for n in range(2)]
            poll_until(lambda: reported_while_running(pool(daemon, 0)), 20, "gpu0's engine reporting its running tasks")
            assert dispatch_gpus(daemon, long) == {0}
            with open(daemon.path("ctl", "kill"), "w") as kill:
                kill.write("".join(f"{pid}\n" for pid in long))
            poll_until(lambda: pool(daemon, 0)["engine_pages"] == pool(daemon, 0)["pages_used"] == "0"
                       and pool(daemon, 0)["engine_tokens"] == "0", 20, "gpu0's books and engine report agree at 0")
            assert pool(daemon, 0)["unbooked_pages"] == "0"
            trace = read(daemon, "trace", "events")
    finally:
        for server in servers:
            server.stop()
    assert "tiny at gpus=1 down: unreachable" in trace and "tiny down:" not in trace
    rows = list(csv.DictReader(io.StringIO(trace)))
    resumed = {int(row["pid"]) for row in rows if row["type"] == "resume"}
    assert resumed and resumed <= set(before)  # the tasks on the killed engine resumed ...
    last = {int(row["pid"]): int(row["gpu"]) for row in rows if row["type"] == "dispatch"}
    assert all(last[pid] == 0 for pid in resumed)  # ... on the other GPU
