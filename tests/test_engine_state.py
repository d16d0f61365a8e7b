"""Tiers 1 and 3: /models/NAME/status says its engine's real state, from the driver's checks.

Pure first (how a check's outcome becomes a state, and since when it holds), then live
mounts: a sim model is ready; a real llama-server is ready, and unreachable with its last
error and since when once it is killed; a URL to a closed port is unreachable from the start.
"""
import time

import httpx
import pytest

from apeinxfs.drivers import enginestate, scrape
from daemon import TINY_SHAPE, Daemon, engine_config, poll_until
from engines import free_port, llama_server, llama_server_binary, openai_daemon_config, tiny_model  # noqa: F401

pytestmark = pytest.mark.mount
S = 1_000_000


def test_a_state_keeps_its_since_until_it_changes():
    """Checks that find the same state keep `since` (and take the latest error); another state starts anew."""
    first = enginestate.advance(None, "unreachable", "refused", 5 * S)
    again = enginestate.advance(first, "unreachable", "timed out", 9 * S)
    back = enginestate.advance(again, "ready", None, 12 * S)
    assert (again.since_us, again.error) == (5 * S, "timed out")
    assert (back.state, back.since_us, back.error) == ("ready", 12 * S, None)


def test_status_rows_say_the_state_since_when_in_utc_and_the_last_error():
    """Since is ISO 8601 UTC; LastError `-` when there is none; no report yet reads `starting`."""
    rows = dict(enginestate.rows(enginestate.EngineState("unreachable", 1_700_000_000 * S, "connection refused")))
    assert rows == {"State": "unreachable", "Since": "2023-11-14T22:13:20Z", "LastError": "connection refused"}
    assert dict(enginestate.rows(None)) == {"State": "starting", "Since": "-", "LastError": "-"}


def test_a_scrapes_failure_says_loading_unreachable_or_answered():
    """HTTP 503 is starting, no connection unreachable, any other answer (no metrics: 404) ready."""
    request = httpx.Request("GET", "http://engine/metrics")

    def status_error(code: int) -> httpx.HTTPStatusError:
        return httpx.HTTPStatusError("x", request=request, response=httpx.Response(code, request=request))
    assert scrape.state_of(status_error(503)) == "starting"
    assert scrape.state_of(status_error(404)) == "ready"
    assert scrape.state_of(httpx.ConnectError("refused", request=request)) == "unreachable"
    assert scrape.state_of(httpx.ReadTimeout("slow", request=request)) == "unreachable"


def model_status(daemon, name: str) -> dict:
    with open(daemon.path("models", name, "status")) as file:
        return dict(line.rstrip("\n").split(":\t", 1) for line in file)


def test_a_sim_model_is_ready_once_started(tmp_path):
    """The default sim model reads State: ready, with a Since and no error."""
    with Daemon(tmp_path / "ai", tmp_path / "state") as daemon:
        status = poll_until(lambda: (s := model_status(daemon, "sim"))["State"] == "ready" and s, 10, "sim ready")
        assert status["LastError"] == "-" and status["Since"].endswith("Z")


def test_an_engine_at_a_closed_port_is_unreachable_with_its_error(tmp_path):
    """A model whose URL nobody listens on reads unreachable, the connection error and since when."""
    url = f"http://127.0.0.1:{free_port()}"
    with Daemon(tmp_path / "ai", tmp_path / "state", config_text=openai_daemon_config(url, metrics_s=0.2)) as daemon:
        status = poll_until(lambda: (s := model_status(daemon, "tiny"))["State"] == "unreachable" and s, 20,
                            "the model reads unreachable")
        assert status["LastError"].startswith(f"{url}/metrics: ") and "connect" in status["LastError"]
        assert time.strptime(status["Since"], "%Y-%m-%dT%H:%M:%SZ")


def test_a_real_engine_is_ready_then_unreachable_once_killed(llama_server, tmp_path):
    """llama-server up: ready; killed (kill -9): unreachable, naming the error, since after the kill."""
    config = openai_daemon_config(llama_server.url, metrics_s=0.2)
    with Daemon(tmp_path / "ai", tmp_path / "state", config_text=config) as daemon:
        ready = poll_until(lambda: (s := model_status(daemon, "tiny"))["State"] == "ready" and s, 20, "ready")
        assert ready["LastError"] == "-"
        llama_server.crash()
        down = poll_until(lambda: (s := model_status(daemon, "tiny"))["State"] == "unreachable" and s, 20,
                          "unreachable after the engine died")
        assert down["LastError"] != "-" and down["Since"] >= ready["Since"]


def test_a_llamacpp_model_without_its_file_has_failed(tmp_path):
    """A llamacpp model whose model_path is missing reads failed, saying which file."""
    missing = tmp_path / "gone.gguf"
    config = engine_config("llamacpp", shape=TINY_SHAPE, model_path=str(missing))
    with Daemon(tmp_path / "ai", tmp_path / "state", config_text=config) as daemon:
        status = poll_until(lambda: (s := model_status(daemon, "tiny"))["State"] == "failed" and s, 20, "failed")
        assert status["LastError"] == f"model_path {missing}: no such file"
