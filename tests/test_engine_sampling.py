"""Tier 4: sampling keys through the mounted tree to a REAL engine, llama.cpp's llama-server.

JSON submits on a read-write `ctl/submit` fd, as a script would write them; the tasks run
on llama-server (tests/engines.py) through the openai driver, one after another so that
no batch neighbour changes the arithmetic.
"""
import errno

import pytest

from daemon import Daemon
from engines import llama_server, llama_server_binary, openai_daemon_config, tiny_model  # noqa: F401 (fixtures)
from test_shell import write_rw

pytestmark = [pytest.mark.mount, pytest.mark.engine, pytest.mark.slow]


@pytest.fixture
def mounted(llama_server, tmp_path):
    """A daemon whose only model is served by the test's llama-server."""
    config = openai_daemon_config(llama_server.url, retries=2, backoff_s=0.1)
    with Daemon(tmp_path / "ai", tmp_path / "state", config_text=config) as daemon:
        yield daemon


def run_to_end(daemon: Daemon, line: str) -> tuple[int, str, bytes]:
    """Submit `line`, wait for the task: its pid, its wait line and its output."""
    failed, reply = write_rw(daemon.path("ctl", "submit"), line)
    assert failed is None, reply
    pid = int(reply)
    with open(daemon.path("tasks", str(pid), "wait")) as wait, \
            open(daemon.path("tasks", str(pid), "output"), "rb") as output:
        return pid, wait.read().strip(), output.read()


def test_temperature_0_seed_7_twice_gives_byte_identical_output(mounted):
    """Two JSON submits with the same prompt, temperature 0 and seed 7 end done with the same bytes."""
    line = '{"name": "det", "prompt": "the kernel reads a file", "max_tokens": 64, "temperature": 0, "seed": 7}'
    (_, first_exit, first), (_, second_exit, second) = run_to_end(mounted, line), run_to_end(mounted, line)
    assert first_exit == second_exit == "done" and first and first == second


def test_the_seed_reaches_the_engine_at_a_high_temperature(mounted):
    """At temperature 1.5 the same seed repeats the text and another seed changes it: the engine got the seed."""
    line = '{"name": "s", "prompt": "a small model", "max_tokens": 48, "temperature": 1.5, "seed": %d}'
    outputs = [run_to_end(mounted, line % seed)[2] for seed in (7, 7, 8)]
    assert outputs[0] == outputs[1] != outputs[2]


def test_a_stop_string_ends_the_task_done_before_it(mounted):
    """stop="e": the engine ends the text before the first e, and the task is done short of max_tokens."""
    pid, exit_line, output = run_to_end(mounted, 'name=stop prompt="the kernel" max_tokens=400 temperature=0 stop=e')
    assert exit_line == "done" and output and b"e" not in output
    status = mounted.status(pid)
    assert int(status["TokensOut"]) < 400 and status["Sampling"] == "temperature=0 stop=e"


def test_temperature_minus_1_is_einval_naming_the_range_on_the_same_fd(mounted):
    """A bad temperature fails the write with EINVAL, and the fd's reply names the range."""
    failed, reply = write_rw(mounted.path("ctl", "submit"), '{"prompt": "x", "temperature": -1}')
    assert failed == errno.EINVAL
    assert reply == b"error: temperature must be a number in 0..2, not -1\n"
